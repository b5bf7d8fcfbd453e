-- Accepted work is re-publishable: a `queued` record keeps its full request (function snapshot
-- and payload, JSON) until the record turns terminal, when `request` is set back to NULL.
ALTER TABLE invocations ADD COLUMN request TEXT;

-- Serves `stale_queued`: queued records, oldest first, across namespaces.
CREATE INDEX invocations_queued ON invocations (created_at, id) WHERE status = 'queued';
