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
 *
 * --tls: the same echo loop over TLS 1.3 (OpenSSL), handshakes done in the
 * connect phase so that the window measures the encrypted echo alone.  The
 * plain path is untouched: TLS has its own send/receive functions, chosen
 * once per event, so plain runs cost what they did before TLS existed.
 * Certificates are not verified: the generator talks to a server it started
 * itself on loopback, with a throw-away self-signed certificate, and checking
 * a chain would only add client work that is not the server's.  Only TLS 1.3
 * is offered and no session is ever resumed (no cache, no tickets kept), so
 * every connection is a full handshake: ECDHE key exchange, the server's
 * signature, its Finished.
 *
 * --tls --handshakes: the rate of new connections.  Each of N slots loops
 * over a connection's whole life: connect, full handshake, one echo (checked
 * as above), close_notify, then wait for the server to close its side before
 * closing ours, so the server's teardown is inside the cycle too.  A
 * "request" is one such cycle: requests/s is handshakes/s, and the latency is
 * from connect() to the echo's last byte, what a new client waits.
 *
 * --rate R: open loop, R requests/s over all connections (R/N each).  Request
 * i of connection c has an intended send time, start + c/R + i*N/R (start:
 * the beginning of the warm-up), so the connections take turns and the sends
 * are evenly spaced.  A request goes out at its time, or at once when the
 * echo of the connection's previous request came back after it (one request
 * in flight per connection), and its latency is counted from the intended
 * time, not from the send: wrk2's correction of coordinated omission, where
 * a closed loop samples a stalled server once per connection and the
 * percentiles hide the stall.  `yieldio load --rate` measures the same thing,
 * so the two can be compared figure for figure.  To send on time it sleeps
 * in epoll_wait until about 1 ms before the next intended time (epoll_wait
 * counts in milliseconds and may wake late by the timer slack), then spins,
 * polling the sockets with a zero timeout and reading CLOCK_MONOTONIC, so a
 * request leaves within microseconds of its time and an echo is seen as it
 * arrives.  At rates where a send is due every millisecond or less, it
 * therefore uses its whole core: its CPU figure says nothing in this mode.
 * The result adds the rate asked, the requests sent in the window and how
 * many of them went out more than 1 ms late; requests_per_s is the rate
 * achieved (echoes completed in the window).  Plain TCP only (not with
 * --tls or --idle).  The closed loop is untouched by it: the open loop has
 * its own main loop around the same event pump, and every function of the
 * closed loop compiles to the same instructions as before it existed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
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
/* For the per-byte and per-request helpers that both the plain and the TLS
 * path call: with two callers gcc would stop inlining them, and the plain
 * path would pay calls it did not pay before TLS existed. */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

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
    C_HANDSHAKE,  /* TLS: TCP connected, handshake in progress */
    C_CLOSING,    /* TLS handshake mode: close_notify sent, waiting for the server to close */
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
    SSL *ssl;                  /* TLS mode only; NULL on the plain path */
    int write_wants_out;       /* TLS: the send of a message waits for writability */
    int read_wants_out;        /* TLS: the handshake, a read or the close waits for writability */
    int close_sent;            /* TLS handshake mode: our close_notify is out */
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
    int tls;
    int handshakes; /* with tls: connection-rate mode */
    double rate;    /* open loop: requests/s over all connections; 0: closed loop */
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
    uint64_t handshake_failed; /* TLS handshakes the server failed or broke off */
    uint64_t tcp_connects;     /* TCP connections established, in every mode */
    uint64_t sessions_reused;  /* TLS: must stay 0, every handshake is a full one */
    uint64_t sent;             /* open loop: requests sent inside the measurement window */
    uint64_t sent_late;        /* open loop: of those, sent more than LATE_NS after their intended time */
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
ALWAYS_INLINE int matches(const struct conn *c, const unsigned char *data, size_t n) {
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

/* Stop watching a connection's socket, close it and free its TLS state. */
static void close_socket(struct conn *c) {
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

static void kill_conn(struct conn *c) {
    close_socket(c);
    if (c->state != C_DEAD) alive--;
    c->state = C_DEAD;
}

static int is_retryable(int err) {
    return err == ECONNREFUSED || err == EAGAIN || err == ETIMEDOUT ||
           err == ECONNRESET || err == EADDRNOTAVAIL || err == ECONNABORTED;
}

static void schedule_retry(struct conn *c, int err) {
    close_socket(c);
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

/* An echo came back whole: count it, and time it from c->t_start if it
 * completed inside the measurement window. */
ALWAYS_INLINE void count_echo(const struct conn *c) {
    uint64_t t = now_ns();
    uint64_t lat = t - c->t_start;
    st.total_requests++;
    if (t >= window_start_ns && t < window_end_ns) {
        st.requests++;
        st.lat_sum_ns += lat;
        if (lat > st.lat_max_ns) st.lat_max_ns = lat;
        hist[hist_index(lat)]++;
    }
}

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
                count_echo(c);
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

/* ----------------------------------------------------------------- TLS */
/*
 * The same request engine over OpenSSL on the same non-blocking sockets and
 * level-triggered epoll.  An SSL call that cannot go on says which readiness
 * it waits for (SSL_ERROR_WANT_READ/WRITE): EPOLLIN is always watched, so
 * only the wish for writability needs recording.  Two calls can wait at once,
 * the send of a message and the reading side (handshake, echo, close), hence
 * two flags; EPOLLOUT is watched while either is set, never otherwise (a
 * writable socket would wake every epoll_wait).
 */

static SSL_CTX *tls_ctx;
static unsigned char tls_out[SCRATCH_SIZE]; /* message bytes laid out contiguously for SSL_write */
static int hs_stopping;                      /* handshake mode: the window is over, start no new cycle */
static char tls_version[32], tls_cipher[64], tls_group[32]; /* as the first handshake negotiated them */

static void tls_init(void) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx) { ERR_print_errors_fp(stderr); exit(2); }
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(tls_ctx, TLS1_3_VERSION);
    /* No chain verification (see the top of this file); the server's
     * CertificateVerify signature is still checked, as TLS 1.3 requires. */
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    /* No session cache and no session set on a new SSL: the tickets servers
     * send are read and dropped, so no handshake is ever a resumption. */
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    /* A server closing without close_notify reads as an EOF, as on the plain
     * path, not as a protocol error. */
    SSL_CTX_set_options(tls_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* SSL_write returns once some records are out, like send(); a retry
     * after WANT_WRITE offers the same bytes from tls_out again. */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* OpenSSL's socket BIO writes with write(), not send(MSG_NOSIGNAL): a
     * server's reset must be an error to count, not the generator's death. */
    signal(SIGPIPE, SIG_IGN);
}

enum tls_outcome { TLS_WANT_READ, TLS_WANT_WRITE, TLS_CLOSED, TLS_FAILED };

/* What a failed SSL call (returning ret <= 0) means.  OpenSSL's error queue
 * is emptied, so that a later SSL_get_error is not misled by leftovers. */
static enum tls_outcome tls_outcome(const struct conn *c, int ret) {
    int err = SSL_get_error(c->ssl, ret);
    ERR_clear_error();
    switch (err) {
    case SSL_ERROR_WANT_READ: return TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return TLS_CLOSED; /* close_notify, or EOF (IGNORE_UNEXPECTED_EOF) */
    default: return TLS_FAILED;
    }
}

static void tls_update_interest(struct conn *c) {
    /* A connect in flight keeps the EPOLLOUT that reports its completion. */
    if (c->fd >= 0 && c->state != C_CONNECTING) set_interest(c, c->write_wants_out || c->read_wants_out);
}

/* TCP is connected: attach a fresh SSL (no session: a full handshake). */
static void tls_begin(struct conn *c) {
    c->ssl = SSL_new(tls_ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd)) { ERR_print_errors_fp(stderr); exit(2); }
    SSL_set_connect_state(c->ssl);
    c->state = C_HANDSHAKE;
    c->write_wants_out = c->read_wants_out = 0;
    c->close_sent = 0;
}

/* Drive the handshake: 1 done, 0 waiting for the socket, -1 failed (counted). */
static int tls_handshake(struct conn *c) {
    c->read_wants_out = 0;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        if (SSL_session_reused(c->ssl)) st.sessions_reused++;
        if (!tls_version[0]) {
            snprintf(tls_version, sizeof tls_version, "%s", SSL_get_version(c->ssl));
            snprintf(tls_cipher, sizeof tls_cipher, "%s", SSL_get_cipher_name(c->ssl));
            int group = SSL_get_negotiated_group(c->ssl);
            const char *name = group > 0 ? OBJ_nid2sn(group) : NULL;
            snprintf(tls_group, sizeof tls_group, "%s", name ? name : "?");
        }
        return 1;
    }
    switch (tls_outcome(c, r)) {
    case TLS_WANT_READ: return 0;
    case TLS_WANT_WRITE: c->read_wants_out = 1; return 0;
    default: st.handshake_failed++; return -1;
    }
}

static void hs_next_cycle(struct conn *c);

/* A TLS connection broke (already counted).  In handshake mode its slot goes
 * on with a new connection; otherwise it is dead, as on the plain path.
 * Never inlined: gcc did not inline it before the open loop existed, and
 * would now, in pump() too, moving the plain path's code about. */
static __attribute__((noinline)) void tls_fail(struct conn *c) {
    if (cfg.handshakes) hs_next_cycle(c);
    else kill_conn(c);
}

/* Message bytes [from, from + n) into out, contiguous: a header write and a
 * body write would become two records, and two reads for the server. */
static void copy_message(const struct conn *c, size_t from, size_t n, unsigned char *out) {
    size_t k = 0;
    if (from < HDR_LEN) {
        k = n < HDR_LEN - from ? n : HDR_LEN - from;
        memcpy(out, c->hdr + from, k);
    }
    memcpy(out + k, c->body + from + k, n - k);
}

static void tls_send_some(struct conn *c) {
    c->write_wants_out = 0;
    while (c->sent < cfg.size) {
        size_t n = cfg.size - c->sent;
        if (n > sizeof tls_out) n = sizeof tls_out;
        /* Rebuilt from (sent, n), which a WANT_WRITE leaves unchanged: the
         * retry offers OpenSSL exactly the bytes it was offered before. */
        copy_message(c, c->sent, n, tls_out);
        int r = SSL_write(c->ssl, tls_out, (int)n);
        if (r > 0) {
            c->sent += (size_t)r;
            continue;
        }
        switch (tls_outcome(c, r)) {
        case TLS_WANT_WRITE: c->write_wants_out = 1; return;
        case TLS_WANT_READ: return; /* EPOLLIN is watched, and every event retries an unfinished send */
        default: st.resets++; tls_fail(c); return;
        }
    }
}

static void tls_start_request(struct conn *c) {
    c->seq++;
    build_message(c);
    c->sent = 0;
    c->got = 0;
    c->state = C_BUSY;
    if (!cfg.handshakes) c->t_start = now_ns(); /* handshake mode times the cycle from connect() */
    tls_send_some(c);
}

/* Returns 1 when the connection's request completed during this call.  Any
 * decrypted byte outside a request in flight is a mismatch, as on the plain path. */
static int tls_recv_some(struct conn *c) {
    c->read_wants_out = 0;
    for (;;) {
        size_t want = cfg.size - c->got;
        if (want == 0) want = 1; /* nothing is expected: any byte now is extra */
        if (want > SCRATCH_SIZE) want = SCRATCH_SIZE;
        int n = SSL_read(c->ssl, scratch, (int)want);
        if (n > 0) {
            if (c->state != C_BUSY || !matches(c, scratch, (size_t)n)) {
                st.mismatches++;
                tls_fail(c);
                return 0;
            }
            c->got += (size_t)n;
            if (c->got == cfg.size) {
                /* Extra bytes OpenSSL has already decrypted sit in its buffer,
                 * where epoll would never report them: check now. */
                if (SSL_pending(c->ssl) > 0) {
                    st.mismatches++;
                    tls_fail(c);
                    return 0;
                }
                count_echo(c);
                return 1;
            }
            continue;
        }
        switch (tls_outcome(c, n)) {
        case TLS_WANT_READ: return 0;
        case TLS_WANT_WRITE: c->read_wants_out = 1; return 0;
        default: st.resets++; tls_fail(c); return 0; /* closed or reset with the echo incomplete */
        }
    }
}

/* Handshake mode, after the echo: send close_notify, then read until the
 * server has closed too (its close_notify, or EOF).  1 when the connection
 * ended cleanly, 0 when waiting, -1 when it failed (counted). */
static int tls_close_step(struct conn *c) {
    c->read_wants_out = 0;
    if (!c->close_sent) {
        int r = SSL_shutdown(c->ssl);
        if (r == 1) return 1; /* the server's close_notify had already arrived */
        if (r < 0) {
            switch (tls_outcome(c, r)) {
            case TLS_WANT_WRITE: c->read_wants_out = 1; return 0;
            case TLS_WANT_READ: return 0;
            default: st.resets++; return -1;
            }
        }
        c->close_sent = 1;
    }
    for (;;) {
        int n = SSL_read(c->ssl, scratch, SCRATCH_SIZE);
        if (n > 0) { /* bytes after the whole echo */
            st.mismatches++;
            return -1;
        }
        switch (tls_outcome(c, n)) {
        case TLS_WANT_READ: return 0;
        case TLS_WANT_WRITE: c->read_wants_out = 1; return 0;
        case TLS_CLOSED: return 1;
        default: st.resets++; return -1;
        }
    }
}

/* The error of a non-blocking connect() that epoll reported as finished. */
static int connect_error(const struct conn *c, uint32_t ev) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err == 0 && (ev & (EPOLLERR | EPOLLHUP))) err = ECONNRESET;
    return err;
}

/* Handshake mode: begin a slot's next cycle (the clock starts at connect()). */
static void hs_start(struct conn *c) {
    c->t_start = now_ns();
    start_connect(c);
}

/* Handshake mode: this slot's connection is over, cleanly or not; the next
 * one starts at once, unless the window has closed. */
static void hs_next_cycle(struct conn *c) {
    close_socket(c);
    c->state = C_PENDING;
    c->retry_at = 0;
    if (!hs_stopping) hs_start(c);
}

/* One epoll event of a TLS connection, whatever its state. */
static void tls_event(struct conn *c, uint32_t ev, int closed_loop) {
    switch (c->state) {
    case C_CONNECTING: { /* handshake mode only: the connect phase handles its own */
        int err = connect_error(c, ev);
        if (err) {
            schedule_retry(c, err);
            return;
        }
        c->retries = 0;
        st.tcp_connects++;
        tls_begin(c);
    }
        /* fall through - the ClientHello goes out now */
    case C_HANDSHAKE: {
        int r = tls_handshake(c);
        if (r < 0) { tls_fail(c); return; }
        if (r > 0) tls_start_request(c);
        break;
    }
    case C_BUSY:
    case C_IDLE:
    case C_DONE:
        if (c->state == C_BUSY && c->sent < cfg.size) tls_send_some(c);
        if (c->state != C_BUSY && c->state != C_IDLE && c->state != C_DONE) return; /* the send failed */
        if (!tls_recv_some(c)) break;
        if (cfg.handshakes) {
            c->state = C_CLOSING;
        } else {
            if (closed_loop) tls_start_request(c);
            else c->state = C_DONE;
            break;
        }
        /* fall through - handshake mode closes right after its one echo */
    case C_CLOSING: {
        int r = tls_close_step(c);
        if (r != 0) { hs_next_cycle(c); return; }
        break;
    }
    default:
        return;
    }
    tls_update_interest(c);
}

/* Connections whose cycle or request is unfinished, for the drain after the window. */
static int in_flight_count(void) {
    int n = 0;
    for (int i = 0; i < cfg.conns; i++) {
        enum conn_state s = conns[i].state;
        n += s == C_BUSY || (cfg.handshakes && (s == C_CONNECTING || s == C_HANDSHAKE || s == C_CLOSING));
    }
    return n;
}

/* Before exit: close_notify on every TLS connection still open, so that
 * servers see an orderly TLS close rather than a bare EOF. */
static void tls_goodbye(void) {
    for (int i = 0; i < cfg.conns; i++) {
        if (conns[i].ssl && SSL_is_init_finished(conns[i].ssl)) {
            SSL_shutdown(conns[i].ssl);
            ERR_clear_error();
        }
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
            if (c->state == C_IDLE && cfg.tls) {
                tls_recv_some(c); /* the server's session tickets (ignored), or a stray byte (a mismatch) */
                continue;
            }
            if (c->state == C_CONNECTING) {
                int err = connect_error(c, events[i].events);
                if (err) {
                    in_flight--;
                    schedule_retry(c, err);
                    continue;
                }
                st.tcp_connects++;
                if (!cfg.tls) {
                    in_flight--;
                    c->state = C_IDLE;
                    set_interest(c, 0);
                    connected++;
                    continue;
                }
                tls_begin(c); /* still in flight until its handshake is done */
            }
            if (c->state != C_HANDSHAKE) continue;
            int r = tls_handshake(c);
            if (r == 0) {
                tls_update_interest(c);
                continue;
            }
            in_flight--;
            if (r < 0) {
                kill_conn(c);
                continue;
            }
            c->state = C_IDLE;
            set_interest(c, 0);
            connected++;
        }
    }
    /* Whatever is still unconnected (or mid-handshake) at the deadline has failed. */
    for (int i = 0; i < cfg.conns; i++) {
        struct conn *c = &conns[i];
        if (c->state == C_PENDING || c->state == C_CONNECTING || c->state == C_HANDSHAKE) {
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
        if (cfg.tls) {
            tls_event(c, ev, closed_loop);
            continue;
        }
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
    hs_stopping = 1; /* handshake mode: finish the cycles under way, begin none */
    while (in_flight_count() > 0 && now_ns() < deadline) pump(20, 0);
}

/* Start a request on an idle connection, over TLS or not. */
static void begin_request(struct conn *c) {
    if (cfg.tls) tls_start_request(c);
    else start_request(c);
}

/* Handshake mode: start the cycles of slots whose connect is due for a retry.
 * Returns 1 when some slot still waits for its retry time. */
static int hs_restart_due(uint64_t now) {
    int waiting = 0;
    for (int i = 0; i < cfg.conns; i++) {
        struct conn *c = &conns[i];
        if (c->state != C_PENDING) continue;
        if (c->retry_at <= now) hs_start(c);
        else waiting = 1;
    }
    return waiting;
}

static double run_closed_loop(double *cpu_used, double *window_s) {
    for (int i = 0; i < cfg.conns; i++) {
        if (cfg.handshakes) hs_start(&conns[i]);
        else if (conns[i].state == C_IDLE) begin_request(&conns[i]);
    }

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
        if (cfg.handshakes && hs_restart_due(t) && timeout_ms > 5) timeout_ms = 5;
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

/* ------------------------------------------------------------ open loop */
/*
 * --rate R (see the top of this file).  The intended times of all requests
 * form one sequence, slot k at start + k/R, slot k being request k / N of
 * connection k % N; a cursor walks it.  A connection whose slot comes while
 * its previous echo is still out is skipped by the cursor, and sends as soon
 * as that echo is back.  c->seq counts the requests a connection has started,
 * so it is also the index of its next one.
 */
#define LATE_NS 1000000ull /* sent more than this after its intended time: late */
#define SPIN_NS 1000000ull /* block in epoll_wait until this close to a due time, then spin */

static uint64_t open_start_ns;
static double open_period_ns; /* 1e9 / R: between consecutive slots */
static uint64_t next_slot;    /* the cursor */

static uint64_t slot_ns(uint64_t k) {
    return open_start_ns + (uint64_t)((double)k * open_period_ns);
}

/* The intended send time of a connection's next request. */
static uint64_t due_ns(const struct conn *c) {
    return slot_ns((uint64_t)c->seq * (uint64_t)cfg.conns + (uint64_t)c->id);
}

/* Send a connection's next request, intended at `due` (<= now): as
 * start_request, but its latency runs from `due`. */
static void open_send(struct conn *c, uint64_t due, uint64_t now) {
    if (now >= window_start_ns && now < window_end_ns) {
        st.sent++;
        if (now - due > LATE_NS) st.sent_late++;
    }
    c->seq++;
    build_message(c);
    c->sent = 0;
    c->got = 0;
    c->state = C_BUSY;
    c->t_start = due;
    send_some(c);
}

/* Send every request whose slot has come, on the connections that are idle. */
static void open_send_due(void) {
    uint64_t now = now_ns();
    while (slot_ns(next_slot) <= now) {
        struct conn *c = &conns[next_slot % (uint64_t)cfg.conns];
        if (c->state == C_IDLE) {
            uint64_t due = due_ns(c);
            if (due <= now) open_send(c, due, now);
        }
        next_slot++;
    }
}

/* After a turn of pump(), which leaves a connection whose echo came back
 * C_DONE: make the `done` such connections idle until their next slot, or
 * send at once if that slot has passed.  The open loop reuses the closed
 * loop's pump as it is (and so leaves its machine code as it was) at the
 * price of this scan, which stops at the last connection done: nothing at
 * 100 connections, some microseconds per echo at 10,000. */
static void open_collect(uint64_t done) {
    for (int i = 0; i < cfg.conns && done > 0; i++) {
        struct conn *c = &conns[i];
        if (c->state != C_DONE) continue;
        done--;
        c->state = C_IDLE;
        uint64_t due = due_ns(c), now = now_ns();
        if (due <= now) open_send(c, due, now); /* its slot went by while the echo was out */
    }
}

static void run_open_loop(double *cpu_used, double *window_s) {
    uint64_t t0 = now_ns();
    open_start_ns = t0;
    open_period_ns = 1e9 / cfg.rate;
    next_slot = 0;
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
        open_send_due();
        /* Block until SPIN_NS before the next slot or window edge, if that
         * leaves a whole millisecond; otherwise only poll (the spin). */
        uint64_t wake = slot_ns(next_slot);
        uint64_t edge = in_window ? window_end_ns : window_start_ns;
        if (edge < wake) wake = edge;
        t = now_ns();
        int timeout_ms = 0;
        if (wake > t + SPIN_NS) {
            uint64_t ms = (wake - t - SPIN_NS) / 1000000ull;
            timeout_ms = ms > 100 ? 100 : (int)ms;
        }
        uint64_t before = st.total_requests;
        pump(timeout_ms, 0);
        if (st.total_requests != before) open_collect(st.total_requests - before);
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
                begin_request(&conns[next]);
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
            "          [--connect-batch N] [--idle [--hold S]] [--tls [--handshakes]]\n"
            "          [--rate REQUESTS_PER_S]\n",
            argv0);
    exit(2);
}

static void parse_args(int argc, char **argv) {
    cfg = (struct config){
        .host = "127.0.0.1", .port = 0, .conns = 100, .size = 1024,
        .warmup = 1.0, .duration = 4.0, .connect_timeout = 30.0,
        .connect_batch = 256, .idle = 0, .hold = 30.0, .tls = 0, .handshakes = 0, .rate = 0,
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
        {"tls", no_argument, 0, 'T'},
        {"handshakes", no_argument, 0, 'S'},
        {"rate", required_argument, 0, 'r'},
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
        case 'T': cfg.tls = 1; break;
        case 'S': cfg.handshakes = 1; break;
        case 'r':
            cfg.rate = atof(optarg);
            if (!(cfg.rate > 0)) usage(argv[0]); /* 0, negative, not a number */
            break;
        default: usage(argv[0]);
        }
    }
    /* Upper bounds keep every run finite whatever the caller passes. */
    if (cfg.port <= 0 || cfg.port > 65535 || cfg.conns <= 0 || cfg.size == 0 ||
        cfg.warmup < 0 || cfg.duration <= 0 || cfg.duration > 3600 || cfg.warmup > 600 ||
        cfg.connect_timeout <= 0 || cfg.connect_timeout > 600 || cfg.hold < 0 || cfg.hold > 3600 ||
        cfg.connect_batch <= 0 || (cfg.handshakes && (!cfg.tls || cfg.idle)) ||
        cfg.rate > 1e8 || (cfg.rate > 0 && (cfg.tls || cfg.idle)))
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
    if (cfg.tls) tls_init();
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
    /* Handshake mode connects inside its cycles, not beforehand. */
    int connected = cfg.handshakes ? 0 : connect_phase();
    double connect_s = (now_ns() - tc) / 1e9;
    printf("{\"event\": \"connected\", \"conns_connected\": %d, \"connect_s\": %.3f, \"t\": %.6f}\n",
           connected, connect_s, now_ns() / 1e9);
    fflush(stdout);

    double cpu_used = 0, window_s = 0;
    int idle_ready = -1;
    if (cfg.idle) {
        idle_ready = run_idle();
    } else if (connected > 0 || cfg.handshakes) {
        if (cfg.rate > 0) run_open_loop(&cpu_used, &window_s);
        else run_closed_loop(&cpu_used, &window_s);
    } else {
        emit_event("measure_start");
        emit_event("measure_end");
    }

    if (cfg.tls) tls_goodbye();
    int open_at_end = 0;
    for (int i = 0; i < cfg.conns; i++) open_at_end += conns[i].fd >= 0;
    uint64_t errors = st.connect_failed + st.mismatches + st.resets + st.handshake_failed;
    double rps = window_s > 0 ? st.requests / window_s : 0.0;
    double mib = rps * (double)cfg.size / (1024.0 * 1024.0);
    /* In handshake mode a request is a whole connection (connect, handshake, one echo, close). */
    char hs_rate[32] = "null";
    if (cfg.handshakes) snprintf(hs_rate, sizeof hs_rate, "%.2f", rps);
    /* Open loop: the rate asked; requests_per_s is the rate achieved. */
    char rate_asked[32] = "null";
    if (cfg.rate > 0) snprintf(rate_asked, sizeof rate_asked, "%.2f", cfg.rate);
    printf("{\"event\": \"result\", \"mode\": \"%s\", \"conns\": %d, \"size\": %zu, "
           "\"conns_connected\": %d, \"conns_open_at_end\": %d, \"connect_s\": %.3f, "
           "\"connect_retries\": %llu, \"idle_ready\": %d, "
           "\"warmup_s\": %.3f, \"window_s\": %.6f, \"requests\": %llu, \"total_requests\": %llu, "
           "\"requests_per_s\": %.2f, \"mib_per_s\": %.3f, "
           "\"lat_mean_us\": %.2f, \"lat_p50_us\": %.2f, \"lat_p90_us\": %.2f, \"lat_p99_us\": %.2f, "
           "\"lat_p999_us\": %.2f, \"lat_max_us\": %.2f, "
           "\"errors\": %llu, \"connect_failed\": %llu, \"mismatches\": %llu, \"resets\": %llu, "
           "\"tls\": %s, \"tls_version\": \"%s\", \"tls_cipher\": \"%s\", \"tls_group\": \"%s\", "
           "\"handshake_failed\": %llu, \"sessions_reused\": %llu, \"tcp_connects\": %llu, "
           "\"handshakes_per_s\": %s, \"rate_asked\": %s, \"requests_sent\": %llu, \"sent_late\": %llu, "
           "\"cpu_s\": %.4f, \"cpu_frac\": %.4f}\n",
           cfg.idle ? "idle" : cfg.handshakes ? "handshakes" : cfg.rate > 0 ? "open_loop" : "closed_loop",
           cfg.conns, cfg.size, connected, open_at_end, connect_s,
           (unsigned long long)st.connect_retries, idle_ready,
           cfg.warmup, window_s, (unsigned long long)st.requests,
           (unsigned long long)st.total_requests, rps, mib,
           st.requests ? st.lat_sum_ns / 1e3 / st.requests : 0.0,
           hist_percentile(st.requests, 50.0) / 1e3, hist_percentile(st.requests, 90.0) / 1e3,
           hist_percentile(st.requests, 99.0) / 1e3, hist_percentile(st.requests, 99.9) / 1e3,
           st.lat_max_ns / 1e3, (unsigned long long)errors,
           (unsigned long long)st.connect_failed, (unsigned long long)st.mismatches,
           (unsigned long long)st.resets, cfg.tls ? "true" : "false", tls_version, tls_cipher, tls_group,
           (unsigned long long)st.handshake_failed, (unsigned long long)st.sessions_reused,
           (unsigned long long)st.tcp_connects, hs_rate, rate_asked, (unsigned long long)st.sent,
           (unsigned long long)st.sent_late, cpu_used, window_s > 0 ? cpu_used / window_s : 0.0);
    fflush(stdout);
    return 0;
}
