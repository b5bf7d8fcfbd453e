#!/usr/bin/env bash
# Memory of `fnmesh up` while it takes, stores, fetches and unpacks a large, incompressible
# function archive (#16 item 6: code is streamed, never held whole). Prints the process's
# resident set (VmRSS) and its peak (VmHWM) before the deploy, after it and after the first
# invocation (which fetches the code into the node's cache and unpacks it).
#
#   scripts/measure/large-code-rss.sh [MiB of random data, default 45] [fnmesh binary]
set -euo pipefail
mib=${1:-45}
bin=${2:-${CARGO_TARGET_DIR:-target}/debug/fnmesh}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export FNMESH_URL="http://127.0.0.1:$port" FNMESH_API_KEY=measure-admin-key-0123456789abcdef
FNMESH_ADMIN_KEY=$FNMESH_API_KEY "$bin" up --listen "127.0.0.1:$port" --data-dir "$work/data" \
    >"$work/up.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "$FNMESH_URL/healthz" >/dev/null && break; sleep 0.2; done
mkdir "$work/code"
printf 'import os\ndef handle(event, context):\n    return os.path.getsize(os.path.join(os.path.dirname(__file__), "blob.bin"))\n' \
    >"$work/code/main.py"
head -c "$((mib * 1024 * 1024))" /dev/urandom >"$work/code/blob.bin"
mem() { awk '/^VmRSS|^VmHWM/ {printf "%s %d MiB  ", $1, $2 / 1024}' "/proc/$pid/status"; echo; }
echo "archive: ${mib} MiB of random data (incompressible); fnmesh: $bin"
printf 'before the deploy:        '; mem
"$bin" fn deploy "$work/code" --name big --runtime python3 --handler main.handle >/dev/null
printf 'after the deploy:         '; mem
"$bin" invoke big --data '{}' | grep -E '^(status|result):' | tr -s ' \n' ' '; echo
printf 'after the first invoke:   '; mem
du -sh "$work/data" | awk '{print "data dir: " $1}'
