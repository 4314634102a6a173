#!/usr/bin/env bash
# Fuzzes the decoders with cargo-fuzz (libFuzzer, nightly toolchain), each
# target for SECONDS (default 600), then minimises the corpus in
# fuzz/corpus/<target>/, which the normal test suite replays. A crash is
# saved under fuzz/artifacts/<target>/; copy it to fuzz/regressions/<target>/
# once fixed so that it is replayed forever.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(frame_decoder control_message handshake ssh_master_messages)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in "${TARGETS[@]}"; do
    echo "==> fuzzing $t for ${SECONDS_EACH}s"
    cargo +nightly fuzz run "$t" -- -max_total_time="$SECONDS_EACH" -max_len=8192
    cargo +nightly fuzz cmin "$t"
done
