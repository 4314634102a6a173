#!/usr/bin/env bash
# Builds ferry and shows it working: a "guest" network namespace runs
# ferry-agent and a Python web server; ferry on the host publishes the
# server's port on the host's localhost the moment it starts listening.
# Needs root (it creates a network namespace); cleans up everything it starts.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then exec sudo -E env "PATH=$PATH" "$0" "$@"; fi
cd "$(dirname "$0")/.."
PORT=${FERRY_DEMO_PORT:-8000}

for tool in ip curl python3; do
    command -v "$tool" >/dev/null || { echo "demo needs '$tool' (apt-get install iproute2 curl python3)" >&2; exit 1; }
done

echo "==> building (cargo build --release --bins)"
cargo build --release --bins --quiet

NS="ferry-demo-$$"
WORK=$(mktemp -d)          # mktemp -d creates the directory with mode 0700
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "==> creating guest network namespace $NS"
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up

echo "==> creating the instance secret both sides must prove they hold"
SECRET=$(target/release/ferry secret --file "$WORK/secret")
echo "    $SECRET (mode $(stat -c %a "$SECRET"))"

echo "==> starting ferry-agent in the guest on unix:$WORK/agent.sock"
ip netns exec "$NS" target/release/ferry-agent --listen "unix:$WORK/agent.sock" --secret-file "$SECRET" 2>"$WORK/agent.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$WORK/agent.sock" ] && break; sleep 0.05; done

echo "==> starting ferry on the host"
target/release/ferry run --agent "unix:$WORK/agent.sock" --secret-file "$SECRET" --control-socket "$WORK/ferry.sock" 2>"$WORK/ferry.log" &
PIDS+=($!)

mkdir "$WORK/www"
echo "Hello from the guest namespace $NS, served by python3 -m http.server on its 127.0.0.1:$PORT" >"$WORK/www/index.html"
echo "==> starting python3 -m http.server $PORT inside the guest"
ip netns exec "$NS" python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$WORK/www" 2>/dev/null >/dev/null &
PIDS+=($!)

echo "==> the host has no such server; ferry publishes the guest's port:"
for _ in $(seq 200); do
    if out=$(curl -sf --max-time 2 "http://127.0.0.1:$PORT/"); then
        echo "    \$ curl http://127.0.0.1:$PORT/"
        echo "    $out"
        echo "==> ferry's log:"
        sed 's/^/    /' "$WORK/ferry.log"
        echo "==> ferry status:"
        target/release/ferry status --control-socket "$WORK/ferry.sock" | sed 's/^/    /'
        echo "==> demo OK; cleaning up"
        exit 0
    fi
    sleep 0.05
done
echo "demo FAILED: the port never appeared on the host" >&2
cat "$WORK/ferry.log" "$WORK/agent.log" >&2
exit 1
