-- Dead letters: invocations whose delivery attempts ran out, kept (with their full request)
-- until an admin replays or deletes them. Their invocation record turns `dead_lettered`.

-- Invocation records may now be `dead_lettered`. The CHECK of 0001_initial.sql was declared
-- inline without a name, so PostgreSQL named it `invocations_status_check`.
ALTER TABLE invocations DROP CONSTRAINT invocations_status_check;
ALTER TABLE invocations ADD CONSTRAINT invocations_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timeout', 'dead_lettered'));

CREATE TABLE dead_letters (
    id               uuid             NOT NULL PRIMARY KEY,
    namespace        text COLLATE "C" NOT NULL,
    function         text COLLATE "C" NOT NULL,
    version          bigint           NOT NULL,
    attempts         bigint           NOT NULL,
    last_error       jsonb,
    request          jsonb            NOT NULL,
    dead_lettered_at timestamptz      NOT NULL
);

-- `list_dead_letters` of one namespace, newest first (ids are UUIDv7); the admin listing of
-- all namespaces walks the primary key.
CREATE INDEX dead_letters_by_namespace ON dead_letters (namespace, id DESC);
