#!/usr/bin/env bash
# Installs what the tests and the benchmarks need on a fresh Debian machine
# that has the Rust toolchain, cargo-nextest, gcc and python3; run by
# scripts/test.sh and .ci/run. Needs root. Idempotent: installs only what
# is missing. The real-VM suite's QEMU, kernels and guest binaries are
# prepared by scripts/vm-setup.sh.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then exec sudo -E env "PATH=$PATH" "$0" "$@"; fi
cd "$(dirname "$0")/.."
. scripts/lib/apt.sh

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v socat >/dev/null || need+=(socat)              # bench baseline
[ -x /usr/sbin/sshd ] || need+=(openssh-server)           # ssh ControlMaster and Lima tests; bench baseline (ssh -L)
command -v ssh >/dev/null || need+=(openssh-client)       # the same, client side
command -v go >/dev/null || need+=(golang-go)             # bench baseline (yamux, built from bench/yamux)
[ -d /usr/share/gocode/src/github.com/hashicorp/yamux ] || need+=(golang-github-hashicorp-yamux-dev)
command -v dig >/dev/null || need+=(dnsutils)             # UDP tests: dig on the host and in the guest
[ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)          # UDP tests: a DNS server in the guest and on the host
[ -x /usr/sbin/dockerd ] || need+=(docker.io)             # socket test: docker -> dockerd in the guest
command -v nsenter >/dev/null || need+=(util-linux)       # guests with a private mount namespace
command -v bindfs >/dev/null || need+=(bindfs)            # file-event tests: a FUSE view of a host dir
command -v inotifywait >/dev/null || need+=(inotify-tools) # file-event tests: a real watcher
[ -x /usr/bin/node ] || need+=(nodejs)                    # file-event tests: Node's fs.watch
command -v file >/dev/null || need+=(file)                # release test: what the agent binaries are
command -v man >/dev/null || need+=(man-db)               # release test: the man pages format
command -v zsh >/dev/null || need+=(zsh)                  # release test: the zsh completion loads
command -v fish >/dev/null || need+=(fish)                # release test: the fish completion parses
command -v systemd-analyze >/dev/null || need+=(systemd) # lifecycle: `systemd-analyze verify` checks the user unit
command -v lsof >/dev/null || need+=(lsof)               # ferry doctor names the process holding a port
command -v iperf3 >/dev/null || need+=(iperf3)           # ssh master test: iperf3, an idle control connection and a bulk one
apt_install "${need[@]}"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
echo "install-test-deps: ready"
