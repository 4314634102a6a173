#!/usr/bin/env bash
# Builds a release for this host: dist/ferry-<version>-<host-target>/ with
#   bin/ferry, bin/limactl-ferry (a link to ferry),
#   share/ferry/ferry-agent.Linux-x86_64, share/ferry/ferry-agent.Linux-aarch64,
#   share/man/man1/ferry.1 and a page per subcommand (ferry-run.1, ...),
#   share/bash-completion/completions/ferry, share/zsh/site-functions/_ferry,
#   share/fish/vendor_completions.d/ferry.fish
# (static musl agents, Lima's layout for its guest agents: `limactl ferry
# start` takes the one matching the guest's `uname -m`), and a tarball of it.
# The agents are cross-built with scripts/cargo-target (rust-lld links them,
# no C cross toolchain needed).
#   scripts/dist.sh            # host target of this toolchain
#   FERRY_DIST_HOST=aarch64-apple-darwin scripts/dist.sh   # on a Mac, its own
set -euo pipefail
cd "$(dirname "$0")/.."
target_tool=scripts/cargo-target
host=${FERRY_DIST_HOST:-$(rustc -vV | awk '/^host:/{print $2}')}
version=$(cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="ferry"))')
out=dist/ferry-$version-$host
rm -rf "$out" && mkdir -p "$out/bin" "$out/share/ferry"

if [ "$host" = "$(rustc -vV | awk '/^host:/{print $2}')" ]; then
    cargo build -q --release -p ferry
    install -m 0755 target/release/ferry "$out/bin/ferry"
else
    "$target_tool" "$host" build -q --release -p ferry
    install -m 0755 "target/$host/release/ferry" "$out/bin/ferry"
fi
ln -s ferry "$out/bin/limactl-ferry"
# Man pages and completion scripts, generated from the CLI's definitions by a
# ferry that runs here (the host's own build, also when cross-building).
if [ "$host" != "$(rustc -vV | awk '/^host:/{print $2}')" ]; then cargo build -q --release -p ferry; fi
docs_ferry=target/release/ferry
mkdir -p "$out/share/bash-completion/completions" "$out/share/zsh/site-functions" "$out/share/fish/vendor_completions.d"
"$docs_ferry" man --dir "$out/share/man/man1"
"$docs_ferry" completions bash >"$out/share/bash-completion/completions/ferry"
"$docs_ferry" completions zsh >"$out/share/zsh/site-functions/_ferry"
"$docs_ferry" completions fish >"$out/share/fish/vendor_completions.d/ferry.fish"
for arch in x86_64 aarch64; do
    "$target_tool" "$arch-unknown-linux-musl" build -q --release -p ferry-agent
    install -m 0755 "target/$arch-unknown-linux-musl/release/ferry-agent" "$out/share/ferry/ferry-agent.Linux-$arch"
done
tar -C dist -czf "$out.tar.gz" "$(basename "$out")"
echo "dist: $out and $out.tar.gz"
