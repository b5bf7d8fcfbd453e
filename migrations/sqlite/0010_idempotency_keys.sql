-- Idempotency keys of invocations (`Idempotency-Key` on invoke), per namespace: the
-- invocation a key made and the fingerprint (function and payload) it is bound to. A key is
-- written in the transaction that commits its invocation's `queued` record, so a stored key
-- always has its invocation; it is removed with that invocation (retention) and may be taken
-- again 24 hours after it was made. Mirrors migrations/postgres/0009_idempotency_keys.sql.
CREATE TABLE idempotency_keys (
    namespace     TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);

CREATE INDEX idempotency_keys_by_invocation ON idempotency_keys (invocation_id);
