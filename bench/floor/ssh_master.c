/*
 * The floor of the ssh ControlMaster route, a baseline of the forwarding
 * bench.
 *
 * It carries each connection the way ferry's master route does (see
 * mux/src/ssh_master): it asks the master for a stdio forward, passes it
 * the client's socket as stdin and a pipe's write end as stdout, and moves
 * what comes back from the pipe to the client with splice(2). One thread,
 * level-triggered epoll, and nothing else: no rules, no admission, no
 * fallback, no status, no runtime. So `ferry (ssh master)` divided by this
 * path shows what ferry adds to the route, and this path divided by
 * `ssh -L` what the route itself costs against ssh's own forwarder.
 *
 *   ssh_master HOST_PORT CONTROL_SOCKET TARGET_PORT
 *       TCP 127.0.0.1:HOST_PORT -> the master at CONTROL_SOCKET
 *       -> 127.0.0.1:TARGET_PORT on the server side
 *
 * Built by the bench with the machine's C compiler (see bench/src/paths.rs).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MUX_MSG_HELLO 0x00000001u
#define MUX_C_NEW_STDIO_FWD 0x10000008u
#define MUX_S_SESSION_OPENED 0x80000006u

/* What an epoll event is about: a connection and which of its descriptors. */
struct watch {
    struct conn *c;
    int which; /* 0 listener, 1 control, 2 back, 3 client */
};

/* One carried connection: the client, the control connection that holds
 * the forward, and the read end of the master's stdout. */
struct conn {
    int client, control, back;
    struct watch on_control, on_back, on_client;
    unsigned char answer[512];
    size_t len;
    int opened, back_done, control_done, waiting_client;
    int dead; /* finished; freed once the current batch of events is done */
    struct conn *next_dead;
};

static int ep;
static struct conn *graveyard;
static struct sockaddr_un master;
static char target[16];
static unsigned target_port;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void watch_fd(int op, int fd, unsigned events, struct watch *w) {
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(ep, op, fd, &ev) < 0)
        die("epoll_ctl");
}

/* Sends fd with one byte, as OpenSSH's mm_receive_fd expects. */
static int send_fd(int sock, int fd) {
    char byte = 0;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof control};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET, cm->cmsg_type = SCM_RIGHTS, cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    return sendmsg(sock, &msg, 0) == 1 ? 0 : -1;
}

/* Ends a connection whose control and back descriptors are no longer
 * watched. (The master holds a copy of the client's socket, so closing
 * ours would not take it out of epoll.) Events of this batch may still
 * name it, so it is freed after the batch. */
static void finish(struct conn *c) {
    if (c->waiting_client)
        epoll_ctl(ep, EPOLL_CTL_DEL, c->client, NULL);
    close(c->client);
    close(c->control);
    if (c->back >= 0)
        close(c->back);
    c->dead = 1;
    c->next_dead = graveyard;
    graveyard = c;
}

/* Ends a connection the master did not carry (or that broke the
 * protocol): the master may hold a copy of the client's socket, so the
 * client is shut down both ways rather than only closed. */
static void refuse(struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->control, NULL);
    if (c->opened && !c->back_done)
        epoll_ctl(ep, EPOLL_CTL_DEL, c->back, NULL);
    shutdown(c->client, SHUT_RDWR);
    finish(c);
}

/* Asks the master to forward a new client; the answer comes on control.
 * A client that cannot be carried (out of descriptors, no master) is
 * closed. */
static void carry(int client) {
    int one = 1, pipefd[2] = {-1, -1};
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as ferry's listener does */
    struct conn *c = calloc(1, sizeof *c);
    int control = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (!c || control < 0 || connect(control, (struct sockaddr *)&master, sizeof master) < 0 ||
        pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) < 0) {
        perror("control connection");
        close(client);
        if (control >= 0)
            close(control);
        free(c);
        return;
    }
    c->client = client, c->control = control, c->back = -1;
    c->on_control = (struct watch){c, 1}, c->on_back = (struct watch){c, 2}, c->on_client = (struct watch){c, 3};
    unsigned char m[128];
    size_t n = 0, host = strlen(target);
    put32(m, 8), put32(m + 4, MUX_MSG_HELLO), put32(m + 8, 4), n = 12;
    size_t body = 4 + 4 + 4 + 4 + host + 4;
    put32(m + n, body), put32(m + n + 4, MUX_C_NEW_STDIO_FWD), put32(m + n + 8, 1), put32(m + n + 12, 0);
    put32(m + n + 16, host), memcpy(m + n + 20, target, host), put32(m + n + 20 + host, target_port);
    n += 4 + body;
    int asked = write(c->control, m, n) == (ssize_t)n && send_fd(c->control, client) == 0 &&
                send_fd(c->control, pipefd[1]) == 0;
    close(pipefd[1]);
    c->back = pipefd[0];
    fcntl(c->control, F_SETFL, O_NONBLOCK);
    watch_fd(EPOLL_CTL_ADD, c->control, EPOLLIN, &c->on_control);
    if (!asked) {
        perror("asking the master");
        refuse(c);
    }
}

/* Reads the master's messages: its hello, then the forward's answer; then
 * only its end (EOF) once the forward is over. */
static void control_readable(struct conn *c) {
    ssize_t r = read(c->control, c->answer + c->len, sizeof c->answer - c->len);
    if (r < 0 && errno == EAGAIN)
        return;
    if (r <= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->control, NULL);
        c->control_done = 1;
        if (c->back_done || !c->opened)
            finish(c);
        return;
    }
    c->len += r;
    while (c->len >= 4) {
        size_t whole = 4 + (size_t)get32(c->answer);
        if (whole < 8 || whole > sizeof c->answer) {
            refuse(c); /* not a message the master sends */
            return;
        }
        if (c->len < whole)
            break;
        uint32_t kind = get32(c->answer + 4);
        if (kind == MUX_S_SESSION_OPENED && !c->opened) {
            c->opened = 1;
            watch_fd(EPOLL_CTL_ADD, c->back, EPOLLIN, &c->on_back);
        } else if (kind != MUX_MSG_HELLO) {
            refuse(c); /* refused, or out of protocol */
            return;
        }
        memmove(c->answer, c->answer + whole, c->len - whole);
        c->len -= whole;
    }
}

/* Moves what the master wrote back to the client, pipe to socket. */
static void back_readable(struct conn *c) {
    for (;;) {
        ssize_t n = splice(c->back, NULL, c->client, NULL, 1 << 20, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0)
            continue;
        if (n < 0 && errno == EAGAIN) {
            /* Empty pipe or full client: the pipe's count tells which (a
             * write by the master in between only costs a wake-up). */
            int pending = 0;
            ioctl(c->back, FIONREAD, &pending);
            if (pending > 0 && !c->waiting_client) {
                /* The client is full: wait for room instead of bytes. */
                epoll_ctl(ep, EPOLL_CTL_DEL, c->back, NULL);
                watch_fd(EPOLL_CTL_ADD, c->client, EPOLLOUT, &c->on_client);
                c->waiting_client = 1;
            }
            return;
        }
        /* EOF (or a client gone): the master has ended its stdout. */
        shutdown(c->client, SHUT_WR);
        epoll_ctl(ep, EPOLL_CTL_DEL, c->back, NULL);
        c->back_done = 1;
        if (c->control_done)
            finish(c);
        return;
    }
}

static void client_writable(struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->client, NULL);
    c->waiting_client = 0;
    watch_fd(EPOLL_CTL_ADD, c->back, EPOLLIN, &c->on_back);
    back_readable(c);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: ssh_master HOST_PORT CONTROL_SOCKET TARGET_PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Three descriptors per connection: the full bench's 1000 streams need
     * more than the usual soft limit. */
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    master.sun_family = AF_UNIX;
    snprintf(master.sun_path, sizeof master.sun_path, "%s", argv[2]);
    snprintf(target, sizeof target, "127.0.0.1");
    target_port = atoi(argv[3]);
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1024) < 0)
        die("listen");
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1");
    static struct watch listener = {NULL, 0};
    watch_fd(EPOLL_CTL_ADD, l, EPOLLIN, &listener);
    struct epoll_event events[64];
    for (;;) {
        int n = epoll_wait(ep, events, 64, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct watch *w = events[i].data.ptr;
            if (w->c && w->c->dead)
                continue;
            if (w->which == 0) {
                int client;
                while ((client = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
                    carry(client);
                if (errno == EMFILE || errno == ENFILE)
                    usleep(1000); /* out of descriptors: let connections end */
            } else if (w->which == 1) {
                control_readable(w->c);
            } else if (w->which == 2) {
                back_readable(w->c);
            } else {
                client_writable(w->c);
            }
        }
        while (graveyard) {
            struct conn *c = graveyard;
            graveyard = c->next_dead;
            free(c);
        }
    }
}
