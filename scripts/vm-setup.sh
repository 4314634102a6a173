#!/usr/bin/env bash
# Prepares the real-VM suite (tests/vm.rs): QEMU, a Debian guest kernel and its
# modules, the vhost-device-vsock backend and a static ferry-agent, all cached
# outside the repository in $FERRY_VM_CACHE (default ~/.cache/ferry-vm).
# Idempotent: a second run only rebuilds the agent if it changed.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${FERRY_VM_CACHE:-$HOME/.cache/ferry-vm}
mkdir -p "$CACHE"

# 1. QEMU from bookworm-backports: this image's qemu-utils comes from there,
#    and bookworm's own qemu-system-x86 would replace it.
. scripts/lib/apt.sh
if ! command -v qemu-system-x86_64 >/dev/null || ! dpkg -s busybox-static cpio >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then echo "vm-setup: run as root to install qemu" >&2; exit 1; fi
    . /etc/os-release
    ensure_backports
    target=()
    [ "${VERSION_CODENAME:-}" = bookworm ] && target=(-t bookworm-backports)
    apt_install "${target[@]}" qemu-system-x86
    apt_install busybox-static cpio xz-utils
fi

# 2. The guest kernel: Debian's stock one, booted as the uncompressed vmlinux
#    (PVH direct boot, about twice as fast under TCG), with its modules.
if [ ! -f "$CACHE/vmlinux" ] || [ ! -f "$CACHE/modules/virtio-rng.ko" ]; then
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{p=$2} END{print p}')
    ver=${pkg#linux-image-}
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download "$pkg" >/dev/null && dpkg -x "$pkg"_*.deb root)
    off=$(LC_ALL=C grep -abo $'\xfd7zXZ\x00' "$tmp/root/boot/vmlinuz-$ver" | awk -F: 'NR==1{print $1}')
    tail -c +$((off + 1)) "$tmp/root/boot/vmlinuz-$ver" > "$tmp/vmlinux.xz"
    xz -dc --single-stream "$tmp/vmlinux.xz" > "$CACHE/vmlinux.tmp"
    rm -rf "$CACHE/modules" && mkdir -p "$CACHE/modules"
    k="$tmp/root/lib/modules/$ver/kernel"
    for m in drivers/virtio/{virtio_ring,virtio,virtio_pci_legacy_dev,virtio_pci_modern_dev,virtio_pci}.ko \
             net/vmw_vsock/{vsock,vmw_vsock_virtio_transport_common,vmw_vsock_virtio_transport}.ko \
             fs/netfs/netfs.ko fs/fscache/fscache.ko net/9p/{9pnet,9pnet_virtio}.ko fs/9p/9p.ko \
             drivers/char/hw_random/virtio-rng.ko \
             net/ipv4/{inet_diag,tcp_diag,udp_diag}.ko; do
        f="$k/$m"; [ -f "$f" ] || f="$f.xz"
        [ -f "$f" ] || { echo "vm-setup: module $m missing in $pkg" >&2; continue; }
        case "$f" in *.xz) xz -dc "$f" > "$CACHE/modules/$(basename "${m}")" ;; *) cp "$f" "$CACHE/modules/" ;; esac
    done
    mv "$CACHE/vmlinux.tmp" "$CACHE/vmlinux"
    rm -rf "$tmp"
fi

# 3. The userspace vhost-user vsock backend.
if [ ! -x "$CACHE/bin/vhost-device-vsock" ]; then
    cargo install -q --locked --root "$CACHE" vhost-device-vsock@0.3.0
fi

# 4. A static ferry-agent and the guest's test services for the initramfs
#    (no musl target needed).
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target x86_64-unknown-linux-gnu -p ferry-agent -p ferry-vm-guest
install -m 0755 target/x86_64-unknown-linux-gnu/release/ferry-agent "$CACHE/ferry-agent"
install -m 0755 target/x86_64-unknown-linux-gnu/release/ferry-vm-guest "$CACHE/ferry-vm-guest"
cp /bin/busybox "$CACHE/busybox"
echo "vm-setup: ready in $CACHE"
