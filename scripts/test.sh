#!/usr/bin/env bash
# Runs every test: unit and property tests, the end-to-end suite (real
# ferry-agent in a guest network namespace, real ferry on the host), the
# same TCP, UDP, socket and fault suites again on the portable data paths
# that macOS runs (FERRY_PORTABLE=1), and the real-VM suite (QEMU). Needs
# root; installs what the tests need first (scripts/install-test-deps.sh,
# scripts/vm-setup.sh). Builds the binaries once, in release mode.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then exec sudo -E env "PATH=$PATH" "$0" "$@"; fi
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo build --release --workspace --bins
# The release (ferry, the Lima plugin link, static agents for x86_64 and
# aarch64 guests) that tests/release.rs checks.
scripts/dist.sh
# The real-VM suite's QEMU, guest kernel and static binaries (cached outside
# the repository). A machine that cannot prepare them fails here.
scripts/vm-setup.sh
cargo nextest run --release --workspace --no-fail-fast --no-tests=pass -E 'not binary(vm)' "$@"
# The portable data paths (copy relay, one datagram per call, plain buffer
# options): what a macOS host runs, exercised here by both binaries.
FERRY_PORTABLE=1 cargo nextest run --release --no-fail-fast --no-tests=pass -p ferry-mux -p ferry-tests \
    -E 'package(ferry-mux) | binary(tcp_forwarding) | binary(udp) | binary(sockets) | binary(faults) | binary(host_platform) | binary(ssh_master)' "$@"
# The guest is emulated (TCG): run it alone, so that it is not starved of CPU
# by the other suites (its keepalives would time out).
# One guest at a time, for the same reason.
cargo nextest run --release -p ferry-tests --test vm --no-fail-fast --no-tests=pass --test-threads 1 "$@"
