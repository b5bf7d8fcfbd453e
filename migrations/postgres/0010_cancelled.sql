-- Invocation records may now be `cancelled` (`POST /v1/invocations/{id}/cancel`). The CHECK
-- was last set by 0002_dead_letters.sql. SQLite's table has no CHECK on status.
ALTER TABLE invocations DROP CONSTRAINT invocations_status_check;
ALTER TABLE invocations ADD CONSTRAINT invocations_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timeout', 'dead_lettered',
                      'cancelled'));

-- The pruner's partial index covers every terminal status, now `cancelled` too (its query
-- names all five, which the old predicate does not imply).
DROP INDEX invocations_finished;
CREATE INDEX invocations_finished ON invocations (updated_at, id)
    WHERE status IN ('succeeded', 'failed', 'timeout', 'dead_lettered', 'cancelled');
