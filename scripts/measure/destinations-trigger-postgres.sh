#!/bin/bash
# Cost of the destinations migration on PostgreSQL's terminal updates: N records updated to
# `succeeded` one statement each (one transaction), before the migration's trigger, after it
# for records without destinations, and with a delivery each.
set -e
# Usage: scripts/measure/destinations-trigger-postgres.sh [N] (a PostgreSQL on 127.0.0.1:5432,
# user postgres, trust auth, as Debian's; it makes and drops a database of its own).
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=${1:-20000}
DB=fnmesh_trig_$$
psql -q -U postgres -h 127.0.0.1 -c "CREATE DATABASE $DB" >/dev/null
trap 'psql -q -U postgres -h 127.0.0.1 -c "DROP DATABASE $DB" >/dev/null' EXIT
P="psql -q -U postgres -h 127.0.0.1 -d $DB -v ON_ERROR_STOP=1"
for f in $ROOT/migrations/postgres/00*.sql; do
  case "$f" in *0011_destinations*) ;; *) $P -f "$f" >/dev/null;; esac
done
run() { # $1: label, $2: destinations flag, $3: deliveries (1/0)
  $P -At <<SQL
TRUNCATE invocations;
$( [ "$MIGRATED" = 1 ] && echo "TRUNCATE destination_deliveries;" )
INSERT INTO invocations (id, namespace, function, version, status, attempt, body, created_at, updated_at $( [ "$MIGRATED" = 1 ] && echo ", destinations"))
SELECT gen_random_uuid(), 'ns', 'f', 1, 'queued', 0, jsonb_build_object('x', repeat('y', 800)), now(), now() $( [ "$MIGRATED" = 1 ] && echo ", $2")
FROM generate_series(1, $N);
$( [ "$3" = 1 ] && echo "INSERT INTO destination_deliveries SELECT gen_random_uuid(), id, 'ns', 'success', '{}', 'waiting', 0, now(), NULL, NULL, now() FROM invocations;" )
DO \$\$
DECLARE r record; t0 timestamptz; best float := 1e9; took float;
BEGIN
  t0 := clock_timestamp();
  FOR r IN SELECT id FROM invocations LOOP
    UPDATE invocations SET status = 'succeeded', attempt = 1, body = body, updated_at = now() WHERE id = r.id;
  END LOOP;
  took := extract(epoch FROM clock_timestamp() - t0) * 1e6 / $N;
  RAISE NOTICE '$1: % us per update', round(took::numeric, 2);
END \$\$;
SQL
}
MIGRATED=0 run before 0 0 2>&1 | grep NOTICE
MIGRATED=0 run before 0 0 2>&1 | grep NOTICE
$P -f $ROOT/migrations/postgres/0011_destinations.sql >/dev/null
MIGRATED=1 run "after, no destinations" false 0 2>&1 | grep NOTICE
MIGRATED=1 run "after, no destinations" false 0 2>&1 | grep NOTICE
MIGRATED=1 run "after, a delivery each" true 1 2>&1 | grep NOTICE
MIGRATED=1 run "after, a delivery each" true 1 2>&1 | grep NOTICE
