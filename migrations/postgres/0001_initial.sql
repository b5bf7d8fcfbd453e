-- fnmesh production metadata store (PostgreSQL), schema version 1.
--
-- Mirrors the SQLite schema (migrations/sqlite/), PostgreSQL-native: each record's full JSON
-- lives in a jsonb `body`, the other columns exist for keys, fencing and listing; timestamps
-- are timestamptz; ids are uuid. Names and namespaces use the "C" collation so that listing
-- order (and cursors) is byte order, the same as SQLite's.

-- One row per function: its stable id and its latest version.
CREATE TABLE functions (
    namespace      text COLLATE "C" NOT NULL,
    name           text COLLATE "C" NOT NULL,
    id             uuid             NOT NULL,
    latest_version bigint           NOT NULL,
    created_at     timestamptz      NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- Every version of every function; removed with the function.
CREATE TABLE function_versions (
    namespace  text COLLATE "C" NOT NULL,
    name       text COLLATE "C" NOT NULL,
    version    bigint           NOT NULL,
    body       jsonb            NOT NULL,
    created_at timestamptz      NOT NULL,
    PRIMARY KEY (namespace, name, version),
    FOREIGN KEY (namespace, name) REFERENCES functions (namespace, name) ON DELETE CASCADE
);

-- Invocation records. Ids are UUIDv7, so `id` order is creation order.
-- `request` holds the accepted request (function snapshot and payload) while the record is
-- not terminal, so stale `queued` work can be re-published; it is set to NULL by the update
-- that makes the record terminal.
CREATE TABLE invocations (
    id         uuid             NOT NULL PRIMARY KEY,
    namespace  text COLLATE "C" NOT NULL,
    function   text COLLATE "C" NOT NULL,
    version    bigint           NOT NULL,
    status     text             NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timeout')),
    attempt    bigint           NOT NULL,
    body       jsonb            NOT NULL,
    request    jsonb,
    created_at timestamptz      NOT NULL,
    updated_at timestamptz      NOT NULL
);

-- `list_invocations`: by namespace, optionally by function or status, newest first.
CREATE INDEX invocations_by_namespace ON invocations (namespace, id DESC);
CREATE INDEX invocations_by_function ON invocations (namespace, function, id DESC);
CREATE INDEX invocations_by_status ON invocations (namespace, status, id DESC);
-- `stale_queued`: queued records across namespaces, oldest first. Small: rows leave it as
-- soon as a node starts them.
CREATE INDEX invocations_queued ON invocations (created_at, id) WHERE status = 'queued';

-- Captured output of an invocation (scoped through the invocation's namespace on read).
CREATE TABLE invocation_logs (
    id        uuid    NOT NULL PRIMARY KEY,
    text      text    NOT NULL,
    truncated boolean NOT NULL
);

-- API keys: only the SHA-256 of each key is stored.
CREATE TABLE api_keys (
    id         text             NOT NULL PRIMARY KEY,
    key_hash   text             NOT NULL UNIQUE,
    name       text             NOT NULL,
    role       text             NOT NULL,
    namespace  text COLLATE "C" NOT NULL,
    created_at timestamptz      NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz
);
