-- Access control: per-function grants of API keys, refresh tokens, namespace quotas.
-- Mirrors migrations/sqlite/0004_auth.sql.

-- The only functions a key may touch: a JSON array of names, NULL for all of its namespace.
ALTER TABLE api_keys ADD COLUMN functions jsonb;

-- `list_api_keys` of one namespace, by id.
CREATE INDEX api_keys_by_namespace ON api_keys (namespace, id);

-- Refresh tokens: only the SHA-256 of each is stored. A family is the chain of rotations
-- that started with one token request; reusing a rotated (`used_at`) token revokes it all.
CREATE TABLE refresh_tokens (
    token_hash text        NOT NULL PRIMARY KEY,
    family_id  text        NOT NULL,
    key_id     text        NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz
);

CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);

-- Per-namespace limits; NULL is unlimited, an absent row is unlimited in everything.
CREATE TABLE namespace_quotas (
    namespace       text COLLATE "C" NOT NULL PRIMARY KEY,
    max_functions   bigint,
    max_memory_mb   bigint,
    max_concurrency bigint,
    updated_at      timestamptz      NOT NULL
);
