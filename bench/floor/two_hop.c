/*
 * The floor of a two-hop forwarder, a baseline of the forwarding bench.
 *
 * One process on each side, one thread each, level-triggered epoll, a copy
 * buffer per direction, and nothing else: no authentication, no framing, no
 * runtime. Every connection costs what the topology itself costs (the host
 * side accepts and dials a Unix socket, the guest side accepts that and
 * dials the target), so ferry's connections/s and round trips divided by
 * this path's show what ferry adds to the topology, and this path divided
 * by the direct path shows what the topology costs on the machine.
 *
 *   two_hop host  HOST_PORT  SOCKET   TCP 127.0.0.1:HOST_PORT -> Unix SOCKET
 *   two_hop guest SOCKET  TARGET_PORT Unix SOCKET -> TCP 127.0.0.1:TARGET_PORT
 *
 * Built by the bench with the machine's C compiler (see bench/src/paths.rs).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF (64 * 1024)

/* One socket of a relayed pair, and the bytes read from it that wait for
 * its peer to take them. */
struct end {
    int fd;
    struct end *peer;
    char *buf;
    size_t start, len;
    int eof;          /* read(2) returned 0: the peer's write side is shut */
    unsigned watched; /* the events epoll watches for on fd (0: not registered) */
    int dead;         /* closed; freed once the current batch of events is done */
    struct end *next_dead;
};

static int ep;
static struct end *graveyard;

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* What fd must be watched for: its own bytes while nothing of it waits,
 * room for the peer's bytes while some wait. */
static void rewatch(struct end *e) {
    unsigned want = 0;
    if (!e->eof && e->len == 0)
        want |= EPOLLIN;
    if (e->peer->len > 0)
        want |= EPOLLOUT;
    if (want == e->watched)
        return;
    /* A socket with nothing to wait for leaves epoll, which would otherwise
     * keep reporting its hang-up. */
    struct epoll_event ev = {.events = want, .data.ptr = e};
    int op = !want ? EPOLL_CTL_DEL : e->watched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(ep, op, e->fd, &ev) < 0)
        die("epoll_ctl");
    e->watched = want;
}

/* Closes both sockets; the ends are freed after the current batch of
 * events, which may still name them. */
static void close_pair(struct end *e) {
    struct end *ends[2] = {e, e->peer};
    for (int i = 0; i < 2; i++) {
        close(ends[i]->fd);
        ends[i]->dead = 1;
        ends[i]->next_dead = graveyard;
        graveyard = ends[i];
    }
}

/* Writes what `from` holds to its peer; -1 if the peer failed. */
static int flush(struct end *from) {
    while (from->len > 0) {
        ssize_t w = write(from->peer->fd, from->buf + from->start, from->len);
        if (w < 0)
            return errno == EAGAIN ? 0 : -1;
        from->start += (size_t)w;
        from->len -= (size_t)w;
    }
    if (from->eof)
        shutdown(from->peer->fd, SHUT_WR);
    return 0;
}

/* Reads from `e` and passes it on; -1 on a failure of either socket. */
static int pump(struct end *e) {
    if (e->eof || e->len > 0)
        return 0;
    if (!e->buf && !(e->buf = malloc(BUF)))
        die("malloc");
    ssize_t n = read(e->fd, e->buf, BUF);
    if (n < 0)
        return errno == EAGAIN ? 0 : -1;
    e->start = 0;
    e->len = (size_t)n;
    e->eof = n == 0;
    return flush(e);
}

static struct end *add(int fd) {
    struct end *e = calloc(1, sizeof *e);
    if (!e)
        die("calloc");
    e->fd = fd;
    return e;
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "host") && strcmp(argv[1], "guest"))) {
        fprintf(stderr, "usage: two_hop host HOST_PORT SOCKET | two_hop guest SOCKET TARGET_PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int host = !strcmp(argv[1], "host"), one = 1;
    const char *path = host ? argv[3] : argv[2];
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof un.sun_path) {
        fprintf(stderr, "socket path too long\n");
        return 2;
    }
    strcpy(un.sun_path, path);
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    in.sin_port = htons((unsigned short)atoi(host ? argv[2] : argv[3]));

    int l = socket(host ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0)
        die("socket");
    if (host)
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (host ? bind(l, (struct sockaddr *)&in, sizeof in) : bind(l, (struct sockaddr *)&un, sizeof un))
        die("bind");
    if (listen(l, 1024))
        die("listen");
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &lev);

    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct end *e = evs[i].data.ptr;
            if (!e) {
                int a = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (a < 0)
                    continue;
                int b = socket(host ? AF_UNIX : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                /* A blocking connect: to a local socket or on loopback it is
                 * done at once; the socket is made non-blocking after. */
                if (b < 0 || (host ? connect(b, (struct sockaddr *)&un, sizeof un)
                                   : connect(b, (struct sockaddr *)&in, sizeof in))) {
                    close(a);
                    if (b >= 0)
                        close(b);
                    continue;
                }
                if (fcntl(b, F_SETFL, fcntl(b, F_GETFL) | O_NONBLOCK) < 0)
                    die("fcntl");
                setsockopt(host ? a : b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct end *x = add(a), *y = add(b);
                x->peer = y;
                y->peer = x;
                rewatch(x);
                rewatch(y);
                continue;
            }
            if (e->dead)
                continue;
            struct end *p = e->peer;
            /* Room on e: p's waiting bytes go first; then e's own bytes. */
            if ((evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && flush(p) < 0) {
                close_pair(e);
                continue;
            }
            if ((evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && pump(e) < 0) {
                close_pair(e);
                continue;
            }
            if (e->eof && p->eof && e->len == 0 && p->len == 0) {
                close_pair(e);
                continue;
            }
            rewatch(e);
            rewatch(p);
        }
        while (graveyard) {
            struct end *d = graveyard;
            graveyard = d->next_dead;
            free(d->buf);
            free(d);
        }
    }
}
