#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root: sandboxes need cgroups and namespaces):
#   ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
unset RUST_BACKTRACE   # pathrs/procfs capture a backtrace per handled error: slow sandboxes
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings
cargo test --locked --workspace --all-features
