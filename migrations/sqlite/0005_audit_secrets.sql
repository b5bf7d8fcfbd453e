-- The audit log: one row per management call and per authentication failure. It holds ids,
-- names and statuses only: never a request body, a credential or a secret value.
-- `id` is a UUIDv7 (listing order); `at` is RFC 3339 text in UTC.
CREATE TABLE audit_log (
    id        TEXT    NOT NULL PRIMARY KEY,
    at        TEXT    NOT NULL,
    actor     TEXT    NOT NULL,
    namespace TEXT,
    action    TEXT    NOT NULL,
    target    TEXT,
    outcome   TEXT    NOT NULL,
    status    INTEGER NOT NULL,
    source    TEXT
);

CREATE INDEX audit_log_by_actor ON audit_log (actor, id DESC);
CREATE INDEX audit_log_by_namespace ON audit_log (namespace, id DESC);

-- Function secrets, sealed with AES-256-GCM (see shared/src/secrets.rs): the id of the key
-- that sealed each value, its nonce and the ciphertext. Removed with their function.
CREATE TABLE function_secrets (
    namespace  TEXT NOT NULL,
    function   TEXT NOT NULL,
    name       TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (namespace, function, name),
    FOREIGN KEY (namespace, function) REFERENCES functions (namespace, name) ON DELETE CASCADE
);
