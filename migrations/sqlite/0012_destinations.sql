-- Deliveries of finished async invocations to their function's destinations
-- (`config.destinations`): one row per destination, inserted with the invocation's `queued`
-- record (same transaction), so an accepted invocation's deliveries are never lost.
--
-- A row waits (`waiting`) until its invocation's record turns terminal; the trigger below
-- makes it due (`pending`) or `skipped` in the transaction that writes that status, whichever
-- path writes it (the recorder's batches, a fenced update, a dead letter, an import, a
-- cancel). Gateways then claim due rows (`next_at` moved past a lease), send them and settle
-- them: `delivered`, `failed`, or `pending` again at a later `next_at` (backoff).
-- Mirrors migrations/postgres/0011_destinations.sql.
-- Whether an invocation has deliveries: the trigger below fires only for those (a record
-- without destinations costs no trigger call when it finishes).
ALTER TABLE invocations ADD COLUMN destinations INTEGER NOT NULL DEFAULT 0;

CREATE TABLE destination_deliveries (
    id            TEXT    NOT NULL PRIMARY KEY,
    invocation_id TEXT    NOT NULL,
    namespace     TEXT    NOT NULL,
    on_status     TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    attempts      INTEGER NOT NULL,
    next_at       TEXT    NOT NULL,
    last_error    TEXT,
    delivered_at  TEXT,
    created_at    TEXT    NOT NULL
);

CREATE INDEX destination_deliveries_by_invocation ON destination_deliveries (invocation_id);
-- What gateways claim: due rows, soonest first.
CREATE INDEX destination_deliveries_due ON destination_deliveries (next_at)
    WHERE state = 'pending';

CREATE TRIGGER destination_deliveries_ready
AFTER UPDATE OF status ON invocations
WHEN NEW.destinations = 1
     AND NEW.status IN ('succeeded', 'failed', 'timeout', 'dead_lettered', 'cancelled')
     AND OLD.status <> NEW.status
BEGIN
    UPDATE destination_deliveries
    SET state = CASE
            WHEN (on_status = 'success' AND NEW.status = 'succeeded')
              OR (on_status = 'failure' AND NEW.status IN ('failed', 'timeout', 'dead_lettered'))
            THEN 'pending' ELSE 'skipped' END,
        next_at = NEW.updated_at
    WHERE invocation_id = NEW.id AND state = 'waiting';
END;
