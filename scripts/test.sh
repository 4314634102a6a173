#!/usr/bin/env bash
# Runs every test: unit and property tests, the end-to-end suite (real
# ferry-agent in a guest network namespace, real ferry on the host) and the
# real-VM suite (QEMU), which need root. Builds the binaries once, in release mode.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then exec sudo -E env "PATH=$PATH" "$0" "$@"; fi
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
# The real-VM suite's QEMU, guest kernel and static binaries (cached outside
# the repository); without them tests/vm.rs fails, without QEMU it skips.
scripts/vm-setup.sh || echo "test.sh: vm-setup failed; the real-VM suite will not run" >&2
cargo nextest run --release --workspace --no-fail-fast --no-tests=pass -E 'not binary(vm)' "$@"
# The guest is emulated (TCG): run it alone, so that it is not starved of CPU
# by the other suites (its keepalives would time out).
cargo nextest run --release -p ferry-tests --test vm --no-fail-fast --no-tests=pass "$@"
