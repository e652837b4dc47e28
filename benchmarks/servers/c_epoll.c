/*
 * c_epoll.c - minimal single-threaded epoll echo server: the practical
 * ceiling the Python servers are compared against.
 *
 * Level-triggered, non-blocking.  On readable: recv into a shared 64 KiB
 * buffer and send it straight back.  If the kernel takes only part of it
 * (EAGAIN), the rest is copied into a per-connection pending buffer and the
 * connection stops reading until that is drained on EPOLLOUT: the same
 * back-pressure a well-behaved Python server applies, without which a slow
 * reader would make the server buffer without bound.
 *
 * usage: c_epoll --port P [--host 127.0.0.1]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 65536
#define MAX_EVENTS 512

struct conn {
    int fd;
    char *pending; /* bytes received but not yet echoed */
    size_t pending_len;
    size_t pending_off;
};

static int epfd;
static char buf[BUF_SIZE];

static void close_conn(struct conn *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

static void watch(struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Send as much of [data, data+len) as the kernel takes; return bytes sent or -1. */
static ssize_t send_all_possible(int fd, const char *data, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, data + off, len - off, MSG_NOSIGNAL);
        if (n > 0) { off += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        return -1;
    }
    return (ssize_t)off;
}

static void on_readable(struct conn *c) {
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        close_conn(c);
        return;
    }
    if (n < 0) return;
    ssize_t sent = send_all_possible(c->fd, buf, (size_t)n);
    if (sent < 0) { close_conn(c); return; }
    if (sent < n) {
        size_t rest = (size_t)(n - sent);
        c->pending = malloc(rest);
        if (!c->pending) { close_conn(c); return; }
        memcpy(c->pending, buf + sent, rest);
        c->pending_len = rest;
        c->pending_off = 0;
        watch(c, EPOLLOUT); /* stop reading until the echo is drained */
    }
}

static void on_writable(struct conn *c) {
    ssize_t sent = send_all_possible(c->fd, c->pending + c->pending_off, c->pending_len - c->pending_off);
    if (sent < 0) { close_conn(c); return; }
    c->pending_off += (size_t)sent;
    if (c->pending_off == c->pending_len) {
        free(c->pending);
        c->pending = NULL;
        c->pending_len = c->pending_off = 0;
        watch(c, EPOLLIN);
    }
}

static void accept_all(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return; /* EAGAIN, or EMFILE: try again on the next wakeup */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) { close(fd); continue; }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) { close(fd); free(c); }
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0;
    static const struct option opts[] = {
        {"host", required_argument, 0, 'h'}, {"port", required_argument, 0, 'p'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'h') host = optarg;
        else if (o == 'p') port = atoi(optarg);
        else { fprintf(stderr, "usage: %s --port P [--host H]\n", argv[0]); return 2; }
    }
    if (port <= 0 || port > 65535) { fprintf(stderr, "usage: %s --port P [--host H]\n", argv[0]); return 2; }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) { fprintf(stderr, "bad host\n"); return 2; }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("listen");
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) { accept_all(lfd); continue; }
            if (c->pending) {
                if (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_writable(c);
            } else if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                on_readable(c);
            }
        }
    }
}
