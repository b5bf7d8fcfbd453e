-- fnmesh embedded metadata store (SQLite), schema version 1.
--
-- Each record's full JSON lives in `body`; the other columns exist for keys, fencing and
-- listing. Timestamps are RFC 3339 text in UTC.

-- One row per function: its stable id and its latest version.
CREATE TABLE functions (
    namespace      TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    latest_version INTEGER NOT NULL,
    created_at     TEXT    NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- Every version of every function; removed with the function.
CREATE TABLE function_versions (
    namespace  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    PRIMARY KEY (namespace, name, version),
    FOREIGN KEY (namespace, name) REFERENCES functions (namespace, name) ON DELETE CASCADE
);

-- Invocation records. Ids are UUIDv7 in canonical text, so `id` order is creation order.
CREATE TABLE invocations (
    id         TEXT    NOT NULL PRIMARY KEY,
    namespace  TEXT    NOT NULL,
    function   TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    status     TEXT    NOT NULL,
    attempt    INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);

CREATE INDEX invocations_by_namespace ON invocations (namespace, id DESC);
CREATE INDEX invocations_by_function ON invocations (namespace, function, id DESC);
CREATE INDEX invocations_by_status ON invocations (namespace, status, id DESC);

-- Captured output of an invocation (scoped through the invocation's namespace on read).
CREATE TABLE invocation_logs (
    id        TEXT    NOT NULL PRIMARY KEY,
    text      TEXT    NOT NULL,
    truncated INTEGER NOT NULL
);

-- API keys: only the SHA-256 of each key is stored.
CREATE TABLE api_keys (
    id         TEXT NOT NULL PRIMARY KEY,
    key_hash   TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    namespace  TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
);
