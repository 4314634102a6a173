#!/usr/bin/env bash
# Prepares the real-VM suite (tests/vm.rs) for an x86_64 and an aarch64 guest:
# QEMU (x86 and arm), Debian's guest kernels and their modules, busybox, the
# vhost-device-vsock backend and static (musl) ferry-agent and test services
# per architecture, all cached outside the repository in $FERRY_VM_CACHE
# (default ~/.cache/ferry-vm; the aarch64 guest's files in its aarch64/).
# Packages come from the machine's own apt sources. Idempotent: a second run
# only rebuilds the guest binaries if they changed.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${FERRY_VM_CACHE:-$HOME/.cache/ferry-vm}
mkdir -p "$CACHE"

# 1. QEMU from bookworm-backports: this image's qemu-utils comes from there,
#    and bookworm's own qemu-system-x86 would replace it.
. scripts/lib/apt.sh
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v qemu-system-aarch64 >/dev/null \
    || ! dpkg -s busybox-static cpio >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then echo "vm-setup: run as root to install qemu" >&2; exit 1; fi
    . /etc/os-release
    ensure_backports
    target=()
    [ "${VERSION_CODENAME:-}" = bookworm ] && target=(-t bookworm-backports)
    apt_install "${target[@]}" qemu-system-x86 qemu-system-arm
    apt_install busybox-static cpio xz-utils
fi

# The guest kernel modules the suite loads (virtio PCI, vsock, 9p, entropy,
# sock_diag), copied from an unpacked kernel package; those built into the
# kernel are absent, and the guest's init skips them.
copy_modules() { # <unpacked package root> <kernel version> <dest>
    local k="$1/lib/modules/$2/kernel" m f
    rm -rf "$3" && mkdir -p "$3"
    for m in drivers/virtio/{virtio_ring,virtio,virtio_pci_legacy_dev,virtio_pci_modern_dev,virtio_pci}.ko \
             net/vmw_vsock/{vsock,vmw_vsock_virtio_transport_common,vmw_vsock_virtio_transport}.ko \
             fs/netfs/netfs.ko fs/fscache/fscache.ko net/9p/{9pnet,9pnet_virtio}.ko fs/9p/9p.ko \
             drivers/char/hw_random/virtio-rng.ko \
             net/ipv4/{inet_diag,tcp_diag,udp_diag}.ko; do
        f="$k/$m"; [ -f "$f" ] || f="$f.xz"
        [ -f "$f" ] || { echo "vm-setup: module $m not in the $2 package (built in?)" >&2; continue; }
        case "$f" in *.xz) xz -dc "$f" > "$3/$(basename "${m}")" ;; *) cp "$f" "$3/" ;; esac
    done
}

# 2. The x86_64 guest kernel: Debian's stock one, booted as the uncompressed
#    vmlinux (PVH direct boot, about twice as fast under TCG), with its modules.
if [ ! -f "$CACHE/vmlinux" ] || [ ! -f "$CACHE/modules/virtio-rng.ko" ]; then
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{p=$2} END{print p}')
    ver=${pkg#linux-image-}
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download "$pkg" >/dev/null && dpkg -x "$pkg"_*.deb root)
    off=$(LC_ALL=C grep -abo $'\xfd7zXZ\x00' "$tmp/root/boot/vmlinuz-$ver" | awk -F: 'NR==1{print $1}')
    tail -c +$((off + 1)) "$tmp/root/boot/vmlinuz-$ver" > "$tmp/vmlinux.xz"
    xz -dc --single-stream "$tmp/vmlinux.xz" > "$CACHE/vmlinux.tmp"
    copy_modules "$tmp/root" "$ver" "$CACHE/modules"
    mv "$CACHE/vmlinux.tmp" "$CACHE/vmlinux"
    rm -rf "$tmp"
fi

# 2b. The aarch64 guest: Debian's arm64 kernel (an uncompressed Image), its
#     modules and busybox for arm64, fetched with this machine's apt sources
#     into a throwaway package list for that architecture.
A64=$CACHE/aarch64
if [ ! -f "$A64/Image" ] || [ ! -f "$A64/modules/virtio-rng.ko" ] || [ ! -x "$A64/busybox" ]; then
    tmp=$(mktemp -d)
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$A64"
    arm=(-o APT::Architecture=arm64 -o APT::Architectures=arm64 -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache")
    apt-get "${arm[@]}" update -qq
    pkg=$(apt-cache "${arm[@]}" depends linux-image-arm64 | awk '/Depends: linux-image-[0-9]/{p=$2} END{print p}')
    ver=${pkg#linux-image-}
    (cd "$tmp" && apt-get "${arm[@]}" download "$pkg" busybox-static >/dev/null 2>&1 \
        && dpkg -x "$pkg"_*.deb root && dpkg -x busybox-static_*.deb root)
    copy_modules "$tmp/root" "$ver" "$A64/modules"
    install -m 0755 "$tmp/root/bin/busybox" "$A64/busybox"
    cp "$tmp/root/boot/vmlinuz-$ver" "$A64/Image.tmp" && mv "$A64/Image.tmp" "$A64/Image"
    rm -rf "$tmp"
fi

# 3. The userspace vhost-user vsock backend.
if [ ! -x "$CACHE/bin/vhost-device-vsock" ]; then
    cargo install -q --locked --root "$CACHE" vhost-device-vsock@0.3.0
fi

# 4. Static (musl) ferry-agent and test services for each guest's initramfs:
#    the same agent builds a release ships (scripts/dist.sh).
target_tool=scripts/cargo-target
for arch in x86_64 aarch64; do
    "$target_tool" "$arch-unknown-linux-musl" build -q --release -p ferry-agent -p ferry-vm-guest
done
install -m 0755 target/x86_64-unknown-linux-musl/release/ferry-agent "$CACHE/ferry-agent"
install -m 0755 target/x86_64-unknown-linux-musl/release/ferry-vm-guest "$CACHE/ferry-vm-guest"
cp /bin/busybox "$CACHE/busybox"
install -m 0755 target/aarch64-unknown-linux-musl/release/ferry-agent "$A64/ferry-agent"
install -m 0755 target/aarch64-unknown-linux-musl/release/ferry-vm-guest "$A64/ferry-vm-guest"
echo "vm-setup: ready in $CACHE"
