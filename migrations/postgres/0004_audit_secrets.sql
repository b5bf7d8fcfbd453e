-- The audit log: one row per management call and per authentication failure. It holds ids,
-- names and statuses only: never a request body, a credential or a secret value.
-- `id` is a UUIDv7 (listing order).
CREATE TABLE audit_log (
    id        uuid             NOT NULL PRIMARY KEY,
    at        timestamptz      NOT NULL,
    actor     text COLLATE "C" NOT NULL,
    namespace text COLLATE "C",
    action    text COLLATE "C" NOT NULL,
    target    text,
    outcome   text             NOT NULL,
    status    integer          NOT NULL,
    source    text
);

CREATE INDEX audit_log_by_actor ON audit_log (actor, id DESC);
CREATE INDEX audit_log_by_namespace ON audit_log (namespace, id DESC);

-- Function secrets, sealed with AES-256-GCM (see shared/src/secrets.rs): the id of the key
-- that sealed each value, its nonce and the ciphertext. Removed with their function.
CREATE TABLE function_secrets (
    namespace  text COLLATE "C" NOT NULL,
    function   text COLLATE "C" NOT NULL,
    name       text COLLATE "C" NOT NULL,
    key_id     text             NOT NULL,
    nonce      bytea            NOT NULL,
    ciphertext bytea            NOT NULL,
    updated_at timestamptz      NOT NULL,
    PRIMARY KEY (namespace, function, name),
    FOREIGN KEY (namespace, function) REFERENCES functions (namespace, name) ON DELETE CASCADE
);
