-- Access control: per-function grants of API keys, refresh tokens, namespace quotas.

-- The only functions a key may touch: a JSON array of names, NULL for all of its namespace.
ALTER TABLE api_keys ADD COLUMN functions TEXT;

-- `list_api_keys` of one namespace, by id.
CREATE INDEX api_keys_by_namespace ON api_keys (namespace, id);

-- Refresh tokens: only the SHA-256 of each is stored. A family is the chain of rotations
-- that started with one token request; reusing a rotated (`used_at`) token revokes it all.
CREATE TABLE refresh_tokens (
    token_hash TEXT NOT NULL PRIMARY KEY,
    family_id  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    revoked_at TEXT
);

CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);

-- Per-namespace limits; NULL is unlimited, an absent row is unlimited in everything.
CREATE TABLE namespace_quotas (
    namespace       TEXT    NOT NULL PRIMARY KEY,
    max_functions   INTEGER,
    max_memory_mb   INTEGER,
    max_concurrency INTEGER,
    updated_at      TEXT    NOT NULL
);
