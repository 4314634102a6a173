#!/usr/bin/env bash
# Bounded soak of ferry's forwarding (default 10 minutes): throughput over
# time, checksummed echoes, RSS and descriptor counts at the end. Needs root.
#   scripts/soak.sh [MINUTES]
set -euo pipefail
if [ "$(id -u)" != 0 ]; then exec sudo -E env "PATH=$PATH" "$0" "$@"; fi
cd "$(dirname "$0")/.."
cargo build --release --bins
cargo bench -p ferry-bench --bench soak -- --minutes "${1:-10}"
