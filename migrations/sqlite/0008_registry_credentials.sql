-- Registry credentials of a namespace (`PUT /v1/registries/{host}`), sealed with AES-256-GCM
-- like function secrets (the user name and password together, bound to namespace and host):
-- the id of the key that sealed it, its nonce and the ciphertext. Mirrors
-- migrations/postgres/0007_registry_credentials.sql.
CREATE TABLE registry_credentials (
    namespace  TEXT NOT NULL,
    host       TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (namespace, host)
);
