-- Deliveries of finished async invocations to their function's destinations
-- (`config.destinations`): one row per destination, inserted with the invocation's `queued`
-- record (same transaction), so an accepted invocation's deliveries are never lost.
--
-- A row waits (`waiting`) until its invocation's record turns terminal; the trigger below
-- makes it due (`pending`) or `skipped` in the transaction that writes that status, whichever
-- path writes it (the recorder's batches, a fenced update, a dead letter, an import, a
-- cancel). Gateways then claim due rows (`next_at` moved past a lease, `SKIP LOCKED`), send
-- them and settle them: `delivered`, `failed`, or `pending` again at a later `next_at`.
-- Mirrors migrations/sqlite/0012_destinations.sql.
-- Whether an invocation has deliveries: the trigger below fires only for those (a record
-- without destinations costs no trigger call when it finishes).
ALTER TABLE invocations ADD COLUMN destinations boolean NOT NULL DEFAULT false;

CREATE TABLE destination_deliveries (
    id            uuid             NOT NULL PRIMARY KEY,
    invocation_id uuid             NOT NULL,
    namespace     text COLLATE "C" NOT NULL,
    on_status     text             NOT NULL CHECK (on_status IN ('success', 'failure')),
    target        jsonb            NOT NULL,
    state         text             NOT NULL
        CHECK (state IN ('waiting', 'pending', 'delivered', 'failed', 'skipped')),
    attempts      bigint           NOT NULL,
    next_at       timestamptz      NOT NULL,
    last_error    text,
    delivered_at  timestamptz,
    created_at    timestamptz      NOT NULL
);

CREATE INDEX destination_deliveries_by_invocation ON destination_deliveries (invocation_id);
-- What gateways claim: due rows, soonest first.
CREATE INDEX destination_deliveries_due ON destination_deliveries (next_at)
    WHERE state = 'pending';

CREATE FUNCTION destination_deliveries_ready() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE destination_deliveries
    SET state = CASE
            WHEN (on_status = 'success' AND NEW.status = 'succeeded')
              OR (on_status = 'failure' AND NEW.status IN ('failed', 'timeout', 'dead_lettered'))
            THEN 'pending' ELSE 'skipped' END,
        next_at = NEW.updated_at
    WHERE invocation_id = NEW.id AND state = 'waiting';
    RETURN NULL;
END;
$$;

-- Only on a change to a terminal status: one call per finished invocation, none per start.
CREATE TRIGGER destination_deliveries_ready
AFTER UPDATE OF status ON invocations
FOR EACH ROW
WHEN (NEW.destinations
      AND NEW.status IN ('succeeded', 'failed', 'timeout', 'dead_lettered', 'cancelled')
      AND OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION destination_deliveries_ready();
