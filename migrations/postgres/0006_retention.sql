-- Retention: the pruner removes finished invocations (with their logs) last updated before the
-- retention cut-off, oldest first, in small batches. Mirrors
-- migrations/sqlite/0007_retention.sql.
CREATE INDEX invocations_finished ON invocations (updated_at, id)
    WHERE status IN ('succeeded', 'failed', 'timeout', 'dead_lettered');
