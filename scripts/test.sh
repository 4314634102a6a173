#!/usr/bin/env bash
# Runs every test: unit and property tests, then the end-to-end suite (real
# ferry-agent in a guest network namespace, real ferry on the host), which
# needs root. Builds the binaries once, in release mode.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then exec sudo -E env "PATH=$PATH" "$0" "$@"; fi
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
cargo nextest run --release --workspace --no-fail-fast "$@"
