-- Lineage of minted API keys, and aggregated authentication failures in the audit log.
-- Mirrors migrations/sqlite/0006_key_lineage.sql.

-- The key that minted this one (NULL: made by an operator or the bootstrap), and the root of
-- its lineage for rate limits and caps (NULL: the key is its own root). Revoking a key
-- revokes every key below it (`parent_id` chains).
ALTER TABLE api_keys ADD COLUMN parent_id text;
ALTER TABLE api_keys ADD COLUMN root_id text;

CREATE INDEX api_keys_by_parent ON api_keys (parent_id);

-- How many calls an entry stands for: 1, or the number of authentication failures of one
-- source and action aggregated over a window.
ALTER TABLE audit_log ADD COLUMN count integer NOT NULL DEFAULT 1;
