/*
 * loadgen.c - closed-loop TCP echo load generator for the yieldio benchmarks.
 *
 * Why C and why single-threaded epoll: the generator must be cheaper than
 * every server it measures (including a C epoll echo server), so that the
 * figures describe the server and not the client.  One thread pinned to its
 * own core by the runner keeps the measurement simple and reproducible.
 *
 * Model: N connections, each sends one message of S bytes, waits until
 * exactly S bytes of echo have come back (in however many pieces), verifies
 * every byte, records the round-trip time and sends the next message.
 *
 * Every message differs per connection and per request: it is a window into
 * a random pool at an offset derived from (connection, sequence), with the
 * connection id and sequence number stamped into its first 8 bytes.  A
 * server that reorders, drops, duplicates, prefixes or cross-wires bytes is
 * therefore caught by a memcmp against the message that was sent.
 *
 * Phases: connect (bounded, batched non-blocking connects with retries),
 * warm-up (not counted), measurement.  Progress events and the final result
 * are single-line JSON objects on stdout so the runner can sample server
 * CPU/RSS exactly at the window edges.
 *
 * --idle mode: connect, do exactly one echo per connection, report
 * "idle_ready", then hold the connections open until stdin reaches EOF (the
 * runner closes it after reading the server's RSS) or --hold seconds pass.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define POOL_SPREAD 4096u   /* distinct message start offsets in the pool */
#define MAX_EVENTS 1024
#define MAX_CONNECT_RETRIES 30
#define SCRATCH_SIZE (256 * 1024)
#define HDR_LEN (cfg.size < 8 ? cfg.size : 8)

/* ---------------------------------------------------------------- time */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ----------------------------------------------------------- histogram */
/*
 * Log-linear latency histogram in nanoseconds: exact below 128 ns, then 64
 * sub-buckets per power of two (relative error < 1.6 %).  Fixed size, so a
 * long run cannot grow memory, unlike a sorted sample.
 */
#define HIST_SUB 64
#define HIST_MAX_EXP 44 /* ~4.9 hours; larger values are clamped */
#define HIST_BUCKETS (128 + (HIST_MAX_EXP - 7 + 1) * HIST_SUB)

static uint64_t hist[HIST_BUCKETS];

static int hist_index(uint64_t v) {
    if (v < 128) return (int)v;
    int e = 63 - __builtin_clzll(v);
    if (e > HIST_MAX_EXP) return HIST_BUCKETS - 1;
    int shift = e - 6;
    int sub = (int)(v >> shift) - HIST_SUB;
    return 128 + (e - 7) * HIST_SUB + sub;
}

/* Midpoint of a bucket, the value we report for a percentile falling in it. */
static double hist_value(int idx) {
    if (idx < 128) return (double)idx;
    int e = (idx - 128) / HIST_SUB + 7;
    int sub = (idx - 128) % HIST_SUB + HIST_SUB;
    int shift = e - 6;
    double lo = (double)((uint64_t)sub << shift);
    double width = (double)(1ull << shift);
    return lo + width / 2.0;
}

static double hist_percentile(uint64_t total, double pct) {
    if (total == 0) return 0.0;
    uint64_t rank = (uint64_t)((pct / 100.0) * (double)total);
    if (rank >= total) rank = total - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen > rank) return hist_value(i);
    }
    return hist_value(HIST_BUCKETS - 1);
}

/* ---------------------------------------------------------- connection */

enum conn_state {
    C_PENDING,    /* not yet tried, or waiting for a retry */
    C_CONNECTING, /* non-blocking connect in flight */
    C_IDLE,       /* connected, nothing in flight */
    C_BUSY,       /* a request is in flight */
    C_DONE,       /* idle mode: its one echo completed */
    C_DEAD,       /* failed for good */
};

struct conn {
    int fd;
    int id;
    enum conn_state state;
    int retries;
    int want_out;      /* EPOLLOUT currently registered */
    uint32_t seq;
    size_t sent;
    size_t got;
    uint64_t t_start;
    uint64_t retry_at;
    unsigned char hdr[8];      /* message bytes [0, HDR_LEN): connection id, seq */
    const unsigned char *body; /* message byte i >= HDR_LEN is body[i] (points into the pool) */
};

struct config {
    const char *host;
    int port;
    int conns;
    size_t size;
    double warmup;
    double duration;
    double connect_timeout;
    int connect_batch;
    int idle;
    double hold;
};

struct stats {
    uint64_t connect_failed;
    uint64_t mismatches;
    uint64_t resets;       /* ECONNRESET, EPIPE, unexpected EOF, other I/O errors */
    uint64_t requests;     /* completed inside the measurement window */
    uint64_t total_requests; /* including warm-up */
    uint64_t lat_sum_ns;
    uint64_t lat_max_ns;
    uint64_t connect_retries;
};

static struct config cfg;
static struct stats st;
static struct conn *conns;
static unsigned char *pool;
static unsigned char scratch[SCRATCH_SIZE];
static int epfd;
static struct sockaddr_in target;
static int alive; /* connections not dead */

/* -------------------------------------------------------- message build */

static void fill_pool(void) {
    uint64_t x = 0x9E3779B97F4A7C15ull;
    size_t n = cfg.size + POOL_SPREAD;
    pool = malloc(n);
    if (!pool) { perror("malloc"); exit(2); }
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17; /* xorshift64 */
        pool[i] = (unsigned char)(x >> 24);
    }
}

/* Prepare the next message of a connection: a window into the pool chosen by
 * (id, seq), with id and seq stamped at the front so that even two
 * connections landing on the same offset send different bytes.  The body is
 * never copied: it is sent from, and verified against, the pool itself, which
 * keeps the generator's per-byte cost to the kernel's copies and one memcmp. */
static void build_message(struct conn *c) {
    uint32_t off = (uint32_t)(((uint64_t)c->id * 2654435761u + (uint64_t)c->seq * 40503u) % POOL_SPREAD);
    uint32_t hdr[2] = {(uint32_t)c->id, c->seq};
    memcpy(c->hdr, hdr, sizeof hdr);
    c->body = pool + off;
}

/* Does data[0, n) equal message bytes [c->got, c->got + n)? */
static int matches(const struct conn *c, const unsigned char *data, size_t n) {
    size_t pos = c->got;
    if (pos + n > cfg.size) return 0;
    if (pos < HDR_LEN) {
        size_t k = n < HDR_LEN - pos ? n : HDR_LEN - pos;
        if (memcmp(data, c->hdr + pos, k) != 0) return 0;
        data += k;
        pos += k;
        n -= k;
    }
    return n == 0 || memcmp(data, c->body + pos, n) == 0;
}

/* Send message bytes [c->sent, S) with one sendmsg: header rest + body. */
static ssize_t send_rest(struct conn *c) {
    struct iovec iov[2];
    int cnt = 0;
    size_t from = c->sent;
    if (from < HDR_LEN) {
        iov[cnt++] = (struct iovec){.iov_base = c->hdr + from, .iov_len = HDR_LEN - from};
        from = HDR_LEN;
    }
    if (from < cfg.size)
        iov[cnt++] = (struct iovec){.iov_base = (void *)(c->body + from), .iov_len = cfg.size - from};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
    return sendmsg(c->fd, &m, MSG_NOSIGNAL);
}

/* ------------------------------------------------------------ plumbing */

static void emit_event(const char *name) {
    printf("{\"event\": \"%s\", \"t\": %.6f}\n", name, now_ns() / 1e9);
    fflush(stdout);
}

static void set_interest(struct conn *c, int want_out) {
    if (c->want_out == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void kill_conn(struct conn *c) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->state != C_DEAD) alive--;
    c->state = C_DEAD;
}

static int is_retryable(int err) {
    return err == ECONNREFUSED || err == EAGAIN || err == ETIMEDOUT ||
           err == ECONNRESET || err == EADDRNOTAVAIL || err == ECONNABORTED;
}

static void schedule_retry(struct conn *c, int err) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (is_retryable(err) && c->retries < MAX_CONNECT_RETRIES) {
        uint64_t backoff_ms = 5ull << (c->retries < 7 ? c->retries : 7); /* 5 ms .. 640 ms */
        c->retries++;
        st.connect_retries++;
        c->retry_at = now_ns() + backoff_ms * 1000000ull;
        c->state = C_PENDING;
    } else {
        st.connect_failed++;
        kill_conn(c);
    }
}

/* Start a non-blocking connect; its completion is seen through EPOLLOUT. */
static void start_connect(struct conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        /* EMFILE and friends: not worth retrying */
        st.connect_failed++;
        kill_conn(c);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (connect(fd, (struct sockaddr *)&target, sizeof target) == 0) {
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        c->state = C_CONNECTING; /* completion is seen through EPOLLOUT */
        return;
    }
    if (errno == EINPROGRESS) {
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        c->state = C_CONNECTING;
        return;
    }
    schedule_retry(c, errno);
}

/* ------------------------------------------------------ request engine */

static void send_some(struct conn *c) {
    while (c->sent < cfg.size) {
        ssize_t n = send_rest(c);
        if (n > 0) {
            c->sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_interest(c, 1);
            return;
        }
        st.resets++;
        kill_conn(c);
        return;
    }
    set_interest(c, 0);
}

static void start_request(struct conn *c) {
    c->seq++;
    build_message(c);
    c->sent = 0;
    c->got = 0;
    c->state = C_BUSY;
    c->t_start = now_ns();
    send_some(c);
}

static uint64_t window_start_ns, window_end_ns;

/* Returns 1 when the connection's request completed during this call. */
static int recv_some(struct conn *c) {
    for (;;) {
        size_t want = cfg.size - c->got;
        if (want == 0) {
            /* Nothing is expected: any byte now is extra data from the server. */
            want = 1;
        }
        if (want > SCRATCH_SIZE) want = SCRATCH_SIZE;
        ssize_t n = recv(c->fd, scratch, want, 0);
        if (n > 0) {
            if (c->state != C_BUSY || !matches(c, scratch, (size_t)n)) {
                st.mismatches++;
                kill_conn(c);
                return 0;
            }
            c->got += (size_t)n;
            if (c->got == cfg.size) {
                uint64_t t = now_ns();
                uint64_t lat = t - c->t_start;
                st.total_requests++;
                if (t >= window_start_ns && t < window_end_ns) {
                    st.requests++;
                    st.lat_sum_ns += lat;
                    if (lat > st.lat_max_ns) st.lat_max_ns = lat;
                    hist[hist_index(lat)]++;
                }
                return 1;
            }
            continue;
        }
        if (n == 0) {
            st.resets++; /* server closed the connection on us */
            kill_conn(c);
            return 0;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        st.resets++;
        kill_conn(c);
        return 0;
    }
}

/* ---------------------------------------------------------- the phases */

/* Connect every connection, at most connect_batch in flight at once.
 * Returns the number connected. */
static int connect_phase(void) {
    uint64_t deadline = now_ns() + (uint64_t)(cfg.connect_timeout * 1e9);
    int connected = 0, in_flight = 0, next = 0;
    struct epoll_event events[MAX_EVENTS];

    while (now_ns() < deadline) {
        int pending = 0;
        uint64_t now = now_ns();
        /* Launch fresh connections and due retries up to the batch limit. */
        for (; next < cfg.conns && in_flight < cfg.connect_batch; next++) {
            start_connect(&conns[next]);
            if (conns[next].state == C_CONNECTING) in_flight++;
        }
        for (int i = 0; i < next; i++) {
            struct conn *c = &conns[i];
            if (c->state != C_PENDING) continue;
            pending++;
            if (in_flight < cfg.connect_batch && c->retry_at <= now) {
                start_connect(c);
                if (c->state == C_CONNECTING) in_flight++;
            }
        }
        if (next >= cfg.conns && in_flight == 0 && pending == 0) break;

        int n = epoll_wait(epfd, events, MAX_EVENTS, 5);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->state != C_CONNECTING) continue;
            in_flight--;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err == 0 && (events[i].events & (EPOLLERR | EPOLLHUP))) err = ECONNRESET;
            if (err == 0) {
                c->state = C_IDLE;
                set_interest(c, 0);
                connected++;
            } else {
                schedule_retry(c, err);
            }
        }
    }
    /* Whatever is still unconnected at the deadline has failed. */
    for (int i = 0; i < cfg.conns; i++) {
        struct conn *c = &conns[i];
        if (c->state == C_PENDING || c->state == C_CONNECTING) {
            st.connect_failed++;
            kill_conn(c);
        }
    }
    return connected;
}

/* One event-loop turn for the request engine. */
static void pump(int timeout_ms, int closed_loop) {
    struct epoll_event events[MAX_EVENTS];
    int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
    for (int i = 0; i < n; i++) {
        struct conn *c = events[i].data.ptr;
        if (c->state == C_DEAD) continue; /* killed earlier in this batch */
        uint32_t ev = events[i].events;
        if ((ev & EPOLLOUT) && c->state == C_BUSY) send_some(c);
        if (c->state == C_DEAD) continue;
        if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            if (recv_some(c)) {
                if (closed_loop) start_request(c);
                else { c->state = C_DONE; set_interest(c, 0); }
            }
        }
    }
}

/* After the window: let requests in flight complete (uncounted, bounded to
 * DRAIN_S) so connections close with nothing unread.  Closing with echo data
 * still queued would make the kernel send RST, and servers would see resets
 * that are an artefact of the benchmark ending, not of their behaviour. */
#define DRAIN_S 2.0
static void drain_in_flight(void) {
    uint64_t deadline = now_ns() + (uint64_t)(DRAIN_S * 1e9);
    for (;;) {
        int busy = 0;
        for (int i = 0; i < cfg.conns; i++) busy += conns[i].state == C_BUSY;
        if (busy == 0 || now_ns() >= deadline) break;
        pump(20, 0);
    }
}

static double run_closed_loop(double *cpu_used, double *window_s) {
    for (int i = 0; i < cfg.conns; i++)
        if (conns[i].state == C_IDLE) start_request(&conns[i]);

    uint64_t t0 = now_ns();
    window_start_ns = t0 + (uint64_t)(cfg.warmup * 1e9);
    window_end_ns = window_start_ns + (uint64_t)(cfg.duration * 1e9);
    int in_window = 0;
    double cpu0 = 0;
    uint64_t t;
    while ((t = now_ns()) < window_end_ns && alive > 0) {
        if (!in_window && t >= window_start_ns) {
            in_window = 1;
            cpu0 = cpu_seconds();
            emit_event("measure_start");
        }
        uint64_t next_edge = in_window ? window_end_ns : window_start_ns;
        int timeout_ms = (int)((next_edge - t) / 1000000ull) + 1;
        if (timeout_ms > 100) timeout_ms = 100;
        pump(timeout_ms, 1);
    }
    if (!in_window) { /* every connection died during warm-up */
        window_start_ns = window_end_ns = now_ns();
        cpu0 = cpu_seconds();
        emit_event("measure_start");
    }
    uint64_t end = now_ns();
    if (end > window_end_ns) end = window_end_ns;
    *cpu_used = cpu_seconds() - cpu0;
    emit_event("measure_end");
    *window_s = (double)(end - window_start_ns) / 1e9;
    drain_in_flight();
    return *window_s;
}

/* Idle mode: one echo per connection, then hold them open. */
/* The echoes go at most connect_batch at a time: the point is the memory of
 * idle connections, and 10,000 simultaneous first messages would instead
 * measure how a server copes with a stampede (a thread-per-connection server
 * can livelock on the GIL). */
static int run_idle(void) {
    window_start_ns = 0;
    window_end_ns = UINT64_MAX;
    uint64_t deadline = now_ns() + (uint64_t)((cfg.warmup + cfg.duration) * 1e9);
    int next = 0;
    for (;;) {
        int busy = 0;
        for (int i = 0; i < cfg.conns; i++) busy += conns[i].state == C_BUSY;
        for (; next < cfg.conns && busy < cfg.connect_batch; next++) {
            if (conns[next].state == C_IDLE) {
                start_request(&conns[next]);
                busy++;
            }
        }
        if ((busy == 0 && next >= cfg.conns) || now_ns() >= deadline) break;
        pump(20, 0);
    }
    int done = 0;
    for (int i = 0; i < cfg.conns; i++) done += conns[i].state == C_DONE;
    printf("{\"event\": \"idle_ready\", \"conns_ready\": %d, \"t\": %.6f}\n", done, now_ns() / 1e9);
    fflush(stdout);

    /* Hold until the runner closes our stdin, or the hold time passes. */
    uint64_t hold_end = now_ns() + (uint64_t)(cfg.hold * 1e9);
    struct pollfd pfd = {.fd = 0, .events = POLLIN};
    while (now_ns() < hold_end) {
        int r = poll(&pfd, 1, 100);
        if (r > 0) {
            char buf[256];
            ssize_t n = read(0, buf, sizeof buf);
            if (n <= 0) break;
        }
        if (r > 0 && (pfd.revents & (POLLHUP | POLLERR | POLLNVAL))) break;
    }
    /* Connections that the server dropped while idle count as resets. */
    struct epoll_event events[MAX_EVENTS];
    int n = epoll_wait(epfd, events, MAX_EVENTS, 0);
    for (int i = 0; i < n; i++) {
        struct conn *c = events[i].data.ptr;
        if (c->state == C_DONE && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
            st.resets++;
            kill_conn(c);
        }
    }
    return done;
}

/* ------------------------------------------------------------------ cli */

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s --port P [--host 127.0.0.1] [--conns N] [--size BYTES]\n"
            "          [--warmup S] [--duration S] [--connect-timeout S]\n"
            "          [--connect-batch N] [--idle [--hold S]]\n",
            argv0);
    exit(2);
}

static void parse_args(int argc, char **argv) {
    cfg = (struct config){
        .host = "127.0.0.1", .port = 0, .conns = 100, .size = 1024,
        .warmup = 1.0, .duration = 4.0, .connect_timeout = 30.0,
        .connect_batch = 256, .idle = 0, .hold = 30.0,
    };
    static const struct option opts[] = {
        {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},
        {"conns", required_argument, 0, 'c'},
        {"size", required_argument, 0, 's'},
        {"warmup", required_argument, 0, 'w'},
        {"duration", required_argument, 0, 'd'},
        {"connect-timeout", required_argument, 0, 't'},
        {"connect-batch", required_argument, 0, 'b'},
        {"idle", no_argument, 0, 'i'},
        {"hold", required_argument, 0, 'H'},
        {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': cfg.host = optarg; break;
        case 'p': cfg.port = atoi(optarg); break;
        case 'c': cfg.conns = atoi(optarg); break;
        case 's': cfg.size = (size_t)strtoull(optarg, NULL, 10); break;
        case 'w': cfg.warmup = atof(optarg); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 't': cfg.connect_timeout = atof(optarg); break;
        case 'b': cfg.connect_batch = atoi(optarg); break;
        case 'i': cfg.idle = 1; break;
        case 'H': cfg.hold = atof(optarg); break;
        default: usage(argv[0]);
        }
    }
    /* Upper bounds keep every run finite whatever the caller passes. */
    if (cfg.port <= 0 || cfg.port > 65535 || cfg.conns <= 0 || cfg.size == 0 ||
        cfg.warmup < 0 || cfg.duration <= 0 || cfg.duration > 3600 || cfg.warmup > 600 ||
        cfg.connect_timeout <= 0 || cfg.connect_timeout > 600 || cfg.hold < 0 || cfg.hold > 3600 ||
        cfg.connect_batch <= 0)
        usage(argv[0]);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    raise_nofile();

    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)cfg.port);
    if (inet_pton(AF_INET, cfg.host, &target.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address\n");
        return 2;
    }

    fill_pool();
    conns = calloc((size_t)cfg.conns, sizeof *conns);
    if (!conns) { perror("calloc"); return 2; }
    for (int i = 0; i < cfg.conns; i++) {
        conns[i].fd = -1;
        conns[i].id = i;
        conns[i].state = C_PENDING;
        conns[i].seq = 0;
    }
    alive = cfg.conns;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) { perror("epoll_create1"); return 2; }

    uint64_t tc = now_ns();
    int connected = connect_phase();
    double connect_s = (now_ns() - tc) / 1e9;
    printf("{\"event\": \"connected\", \"conns_connected\": %d, \"connect_s\": %.3f, \"t\": %.6f}\n",
           connected, connect_s, now_ns() / 1e9);
    fflush(stdout);

    double cpu_used = 0, window_s = 0;
    int idle_ready = -1;
    if (cfg.idle) {
        idle_ready = run_idle();
    } else if (connected > 0) {
        run_closed_loop(&cpu_used, &window_s);
    } else {
        emit_event("measure_start");
        emit_event("measure_end");
    }

    int open_at_end = 0;
    for (int i = 0; i < cfg.conns; i++) open_at_end += conns[i].state != C_DEAD;
    uint64_t errors = st.connect_failed + st.mismatches + st.resets;
    double rps = window_s > 0 ? st.requests / window_s : 0.0;
    double mib = rps * (double)cfg.size / (1024.0 * 1024.0);
    printf("{\"event\": \"result\", \"mode\": \"%s\", \"conns\": %d, \"size\": %zu, "
           "\"conns_connected\": %d, \"conns_open_at_end\": %d, \"connect_s\": %.3f, "
           "\"connect_retries\": %llu, \"idle_ready\": %d, "
           "\"warmup_s\": %.3f, \"window_s\": %.6f, \"requests\": %llu, \"total_requests\": %llu, "
           "\"requests_per_s\": %.2f, \"mib_per_s\": %.3f, "
           "\"lat_mean_us\": %.2f, \"lat_p50_us\": %.2f, \"lat_p99_us\": %.2f, \"lat_max_us\": %.2f, "
           "\"errors\": %llu, \"connect_failed\": %llu, \"mismatches\": %llu, \"resets\": %llu, "
           "\"cpu_s\": %.4f, \"cpu_frac\": %.4f}\n",
           cfg.idle ? "idle" : "closed_loop", cfg.conns, cfg.size, connected, open_at_end, connect_s,
           (unsigned long long)st.connect_retries, idle_ready,
           cfg.warmup, window_s, (unsigned long long)st.requests,
           (unsigned long long)st.total_requests, rps, mib,
           st.requests ? st.lat_sum_ns / 1e3 / st.requests : 0.0,
           hist_percentile(st.requests, 50.0) / 1e3, hist_percentile(st.requests, 99.0) / 1e3,
           st.lat_max_ns / 1e3, (unsigned long long)errors,
           (unsigned long long)st.connect_failed, (unsigned long long)st.mismatches,
           (unsigned long long)st.resets, cpu_used, window_s > 0 ? cpu_used / window_s : 0.0);
    fflush(stdout);
    return 0;
}
