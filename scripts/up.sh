#!/usr/bin/env bash
# One command from a fresh Debian 12 checkout to a running platform (as root):
#   ./scripts/up.sh            # installs what is needed, builds, runs `fnmesh up`
# Extra arguments go to `fnmesh up` (e.g. --listen 0.0.0.0:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p fnmesh-cli
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target_dir/release/fnmesh" up "$@"
