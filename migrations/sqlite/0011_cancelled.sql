-- Invocation records may now be `cancelled` (`POST /v1/invocations/{id}/cancel`; the table
-- has no CHECK on status). The pruner's partial index covers every terminal status, now
-- `cancelled` too (its query names all five, which the old predicate does not imply).
-- Mirrors migrations/postgres/0010_cancelled.sql.
DROP INDEX invocations_finished;
CREATE INDEX invocations_finished ON invocations (updated_at, id)
    WHERE status IN ('succeeded', 'failed', 'timeout', 'dead_lettered', 'cancelled');
