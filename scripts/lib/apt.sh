# Shared apt helpers for the set-up scripts (sourced, not run).

# The Debian archive this machine already uses, read from its own apt
# sources (deb822 .sources files or one-line .list files): the first URI
# whose path ends in /debian. The project names no mirror of its own.
debian_mirror() {
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk 'tolower($1)=="uris:" {for (i=2;i<=NF;i++) print $i}' | grep -E '/debian/?$' | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' \
            | grep -E '/debian/?$' | head -n1 || true)
    fi
    [ -n "$uri" ] || { echo "no Debian archive in this machine's apt sources" >&2; return 1; }
    echo "${uri%/}"
}

# Adds bookworm-backports from the machine's own mirror (QEMU and friends
# come from there on bookworm), once.
ensure_backports() {
    . /etc/os-release
    [ "${VERSION_CODENAME:-}" = bookworm ] || return 0
    grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
    echo "deb $(debian_mirror) bookworm-backports main" > /etc/apt/sources.list.d/ferry-backports.list
    APT_UPDATED=
}

APT_UPDATED=
# Installs Debian packages, updating the package lists first once per run.
apt_install() {
    [ $# -gt 0 ] || return 0
    if [ -z "$APT_UPDATED" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
