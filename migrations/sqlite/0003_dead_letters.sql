-- Dead letters: invocations whose delivery attempts ran out, kept (with their full request)
-- until an admin replays or deletes them. Their invocation record turns `dead_lettered`.
-- `last_error` and `request` are JSON; `dead_lettered_at` is RFC 3339 text in UTC.
CREATE TABLE dead_letters (
    id               TEXT    NOT NULL PRIMARY KEY,
    namespace        TEXT    NOT NULL,
    function         TEXT    NOT NULL,
    version          INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    last_error       TEXT,
    request          TEXT    NOT NULL,
    dead_lettered_at TEXT    NOT NULL
);

-- `list_dead_letters` of one namespace, newest first (ids are UUIDv7); the admin listing of
-- all namespaces walks the primary key.
CREATE INDEX dead_letters_by_namespace ON dead_letters (namespace, id DESC);
