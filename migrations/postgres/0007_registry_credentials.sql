-- Registry credentials of a namespace (`PUT /v1/registries/{host}`), sealed with AES-256-GCM
-- like function secrets (the user name and password together, bound to namespace and host):
-- the id of the key that sealed it, its nonce and the ciphertext. Mirrors
-- migrations/sqlite/0008_registry_credentials.sql.
CREATE TABLE registry_credentials (
    namespace  text COLLATE "C" NOT NULL,
    host       text COLLATE "C" NOT NULL,
    key_id     text             NOT NULL,
    nonce      bytea            NOT NULL,
    ciphertext bytea            NOT NULL,
    updated_at timestamptz      NOT NULL,
    PRIMARY KEY (namespace, host)
);
