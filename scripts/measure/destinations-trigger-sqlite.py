#!/usr/bin/env python3
# Usage: python3 scripts/measure/destinations-trigger-sqlite.py [N]
# Cost of the destinations migration on SQLite's terminal updates (the recorder's writes of
# finished async invocations): N records inserted queued, then each updated to `succeeded`
# (one statement each, one transaction), before the migration, after it for records without
# destinations, and for records with deliveries.
import glob, os, sqlite3, sys, time, uuid
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
N = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
base = ''.join(open(f).read() for f in sorted(glob.glob(os.path.join(ROOT, 'migrations/sqlite/00*.sql'))) if '0012' not in f)
dest = open(os.path.join(ROOT, 'migrations/sqlite/0012_destinations.sql')).read()
def run(migrated, with_deliveries):
    db = sqlite3.connect(':memory:')
    db.executescript(base)
    if migrated:
        db.executescript(dest)
    ids = [str(uuid.uuid4()) for _ in range(N)]
    now = '2026-12-06T00:00:00.000000Z'
    body = '{"x":"' + 'y' * 800 + '"}'
    cols = "id, namespace, function, version, status, attempt, body, created_at, updated_at" + (", destinations" if migrated else "")
    vals = "?, 'ns', 'f', 1, 'queued', 0, ?, ?, ?" + (", ?" if migrated else "")
    rows = [(i, body, now, now) + ((1 if with_deliveries else 0,) if migrated else ()) for i in ids]
    db.executemany(f"INSERT INTO invocations ({cols}) VALUES ({vals})", rows)
    if with_deliveries:
        db.executemany("INSERT INTO destination_deliveries VALUES (?, ?, 'ns', 'success', '{}', 'waiting', 0, ?, NULL, NULL, ?)", [(str(uuid.uuid4()), i, now, now) for i in ids])
    db.commit()
    t = time.perf_counter()
    for i in ids:
        db.execute("UPDATE invocations SET status = 'succeeded', attempt = 1, body = ?, updated_at = ? WHERE id = ?", (body, now, i))
    db.commit()
    return (time.perf_counter() - t) / N * 1e6
best = lambda *a: min(run(*a) for _ in range(5))
a, b, c = best(False, False), best(True, False), best(True, True)
print(f"sqlite {sqlite3.sqlite_version}, {N} terminal updates, µs per update: before {a:.2f}; "
      f"after, no destinations {b:.2f} ({b/a:.2f}x); after, with a delivery each {c:.2f} ({c/a:.2f}x)")
