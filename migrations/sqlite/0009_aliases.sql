-- Aliases of functions (`PUT /v1/functions/{name}/aliases/{alias}`): a named pointer to one
-- version or a weighted split over several. `body` is the whole alias as JSON (its routing,
-- the routing it replaced, its revision); it goes with its function. Mirrors
-- migrations/postgres/0008_aliases.sql.
CREATE TABLE function_aliases (
    namespace  TEXT NOT NULL,
    function   TEXT NOT NULL,
    name       TEXT NOT NULL,
    body       TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (namespace, function, name),
    FOREIGN KEY (namespace, function) REFERENCES functions (namespace, name) ON DELETE CASCADE
);
