-- Aliases of functions (`PUT /v1/functions/{name}/aliases/{alias}`): a named pointer to one
-- version or a weighted split over several. `body` is the whole alias as JSON (its routing,
-- the routing it replaced, its revision); it goes with its function. Mirrors
-- migrations/sqlite/0009_aliases.sql.
CREATE TABLE function_aliases (
    namespace  text COLLATE "C" NOT NULL,
    function   text COLLATE "C" NOT NULL,
    name       text COLLATE "C" NOT NULL,
    body       jsonb            NOT NULL,
    updated_at timestamptz      NOT NULL,
    PRIMARY KEY (namespace, function, name),
    FOREIGN KEY (namespace, function) REFERENCES functions (namespace, name) ON DELETE CASCADE
);
