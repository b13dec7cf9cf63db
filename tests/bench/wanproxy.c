// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * wanproxy: a TCP relay on 127.0.0.1 that makes a local server look as if
 * it were across a WAN: one-way delay in each direction, token-bucket rate
 * caps per connection and for the whole link, and a TCP-like per-connection
 * window of bytes in flight.  It forwards bytes without looking at them
 * (HTTP, TLS, ...), in one epoll/timerfd-driven thread, for benchmarking
 * QEMU's curl block driver on a machine that has no netem qdisc.
 *
 * Build: cc -O2 -Wall -Wextra -o wanproxy wanproxy.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

typedef int64_t nsec_t;

#define NS_PER_MS   1000000LL
#define NS_PER_S    1000000000LL
#define NEVER       INT64_MAX
#define NOIDX       SIZE_MAX

#define READ_MAX    (128 * 1024)     /* largest single read */
#define PUMP_BUDGET (1024 * 1024)    /* bytes one direction reads per turn */
#define MIN_GRANT   4096             /* wait for this many tokens */
#define LINK_QUANTUM (32 * 1024)     /* link tokens one connection takes per turn */
#define BURST_MIN   (16 * 1024)      /* token bucket size: at least this ... */
#define BURST_NS    NS_PER_MS        /* ... or this long at the rate */
#define CATCHUP_NS  (50 * NS_PER_MS) /* lateness made up for when backlogged */
#define ACK_MERGE_NS 100000          /* acks this close together are merged */
#define LINE_MIN    (8u << 20)       /* default delay-line bound per direction */
#define MAX_EVENTS  256

/*
 * The model.  Each connection has two directions (client to server and
 * back).  A direction reads from its source only as fast as its token
 * buckets allow (its own, and for downloads the link's, which connections
 * share in turn), stamps what it read with "due = time read + delay" and
 * keeps it on a delay line until then; so the rate cap acts where a real
 * bottleneck serializes, and the delay after it.  With a window, bytes
 * count as in flight from when they are read until one delay after they
 * were written to the destination (the ACK's way back), and reading stops
 * while the window is full.  An EOF travels on the delay line behind the
 * data; a reset or error drops what was heading to the failed socket and
 * resets the other side once what it had sent has arrived.  A min-heap of
 * connections keyed by their next due time arms one timerfd.
 */
enum { CLIENT, SERVER };        /* sides of a connection */
enum { UP, DOWN };              /* UP: client -> server, DOWN: server -> client */
enum { K_LISTEN, K_TIMER, K_SIGNAL, K_SIDE };

struct evsrc {
    int kind;
};

/*
 * A token bucket holds at most a small burst while its flow is idle.  While
 * the flow is backlogged (waiting for tokens) it may hold more, so that
 * when this process runs late, the bytes a real link would have sent in
 * the meantime are not lost.
 */
struct bucket {
    double rate;                /* bytes/s, 0 = unlimited */
    double cap;                 /* burst, bytes */
    double backlog_cap;         /* limit while waiting */
    double tokens;
    nsec_t last;
    bool waiting;
};

struct chunk {
    struct chunk *next;
    nsec_t due;                 /* when it may be written to the destination */
    size_t len, off;
    unsigned char data[];
};

struct ack {
    nsec_t due;                 /* when the window space comes back */
    size_t n;
};

struct conn;

struct side {
    struct evsrc ev;            /* first member: epoll data points here */
    struct conn *c;
    int fd;                     /* -1 once closed */
    bool connected, readable, writable, rdhup;
};

struct dir {
    struct conn *c;
    int from, to;               /* CLIENT or SERVER */
    struct chunk *head, *tail;  /* the delay line */
    size_t line;                /* bytes read and not yet written */
    size_t inflight;            /* bytes read and not yet acknowledged */
    struct ack *acks;           /* ring of pending acknowledgements */
    size_t ack_cap, ack_head, ack_len;
    nsec_t min_ts;              /* earliest departure (handshake emulation) */
    nsec_t eof_due;             /* EOF queued behind the data, or NEVER */
    nsec_t tokens_wake;
    nsec_t wake;
    bool src_eof, done;
    bool use_link, link_turn, in_linkq;
    struct dir *lq_next, *lq_prev;
    struct bucket bucket;
};

struct conn {
    struct side s[2];
    struct dir d[2];
    nsec_t abort_at;            /* reset both sides at this time, or NEVER */
    nsec_t wake;
    size_t heap_idx;
    bool dead, pending;
    struct conn *pend_next;     /* pending list, or graveyard */
    struct conn *prev, *next;   /* all live connections */
};

static struct {
    int listen_port, target_port;
    nsec_t delay;
    double conn_rate, link_rate, up_rate;
    uint64_t window, maxline;
    bool handshake;
    const char *port_file, *stats_file;
} cfg;

static struct {
    uint64_t accepted, refused, up, down;
    unsigned active, max_active;
} stats;
static unsigned open_at_exit;

static int epfd, lfd = -1, tfd = -1, sfd = -1;
static struct evsrc ev_listen = { K_LISTEN }, ev_timer = { K_TIMER },
                    ev_signal = { K_SIGNAL };
static struct conn **heap;
static size_t heap_len, heap_cap;
static struct conn *all_conns, *pending, *graveyard;
static struct bucket link_bucket;
static struct dir *lq_head, *lq_tail;
static size_t lq_len;
static nsec_t link_wake = NEVER, listen_resume = NEVER, timer_armed = NEVER;
static unsigned char rbuf[READ_MAX];
static struct sockaddr_in target_addr;

static void conn_service(struct conn *c, nsec_t now);

static nsec_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (nsec_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static size_t min_sz(size_t a, size_t b)
{
    return a < b ? a : b;
}

static nsec_t min_ns(nsec_t a, nsec_t b)
{
    return a < b ? a : b;
}

static nsec_t max_ns(nsec_t a, nsec_t b)
{
    return a > b ? a : b;
}

static double dmax(double a, double b)
{
    return a > b ? a : b;
}

static double dmin(double a, double b)
{
    return a < b ? a : b;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);

    if (!p) {
        fprintf(stderr, "wanproxy: out of memory\n");
        exit(1);
    }
    return p;
}

/* ---- token buckets ---- */

static void bucket_init(struct bucket *b, double rate, nsec_t now)
{
    b->rate = rate;
    b->cap = rate > 0 ? dmax(BURST_MIN, rate * BURST_NS / 1e9) : 0;
    b->backlog_cap = b->cap + rate * CATCHUP_NS / 1e9;
    b->tokens = b->cap;
    b->last = now;
    b->waiting = false;
}

static void bucket_refill(struct bucket *b, nsec_t now)
{
    double cap = b->waiting ? b->backlog_cap : b->cap;

    if (now <= b->last) {
        return;
    }
    b->tokens += b->rate * (double)(now - b->last) / 1e9;
    if (b->tokens > cap) {
        b->tokens = cap;
    }
    b->last = now;
}

static void bucket_set_waiting(struct bucket *b, bool waiting, nsec_t now)
{
    if (b->waiting != waiting && b->rate > 0) {
        bucket_refill(b, now);
        b->waiting = waiting;
    }
}

static size_t bucket_avail(const struct bucket *b)
{
    return (size_t)(b->tokens + 1e-6);
}

/* When the bucket (refilled at b->last) will hold @want tokens. */
static nsec_t bucket_when(const struct bucket *b, size_t want)
{
    double missing = (double)want - b->tokens;

    if (missing <= 0) {
        return b->last;
    }
    return b->last + (nsec_t)(missing * 1e9 / b->rate) + 1;
}

static void bucket_take(struct bucket *b, size_t n)
{
    b->tokens -= (double)n;
    if (b->tokens < 0) {
        b->tokens = 0;
    }
}

/* ---- timer heap of connections, keyed by conn->wake ---- */

static void heap_place(size_t i, struct conn *c)
{
    heap[i] = c;
    c->heap_idx = i;
}

static void heap_up(size_t i)
{
    struct conn *c = heap[i];

    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (heap[p]->wake <= c->wake) {
            break;
        }
        heap_place(i, heap[p]);
        i = p;
    }
    heap_place(i, c);
}

static void heap_down(size_t i)
{
    struct conn *c = heap[i];

    for (;;) {
        size_t l = 2 * i + 1, m = i;
        nsec_t best = c->wake;
        if (l < heap_len && heap[l]->wake < best) {
            m = l;
            best = heap[l]->wake;
        }
        if (l + 1 < heap_len && heap[l + 1]->wake < best) {
            m = l + 1;
        }
        if (m == i) {
            break;
        }
        heap_place(i, heap[m]);
        i = m;
    }
    heap_place(i, c);
}

static void heap_remove(struct conn *c)
{
    size_t i = c->heap_idx;
    struct conn *last;

    if (i == NOIDX) {
        return;
    }
    c->heap_idx = NOIDX;
    last = heap[--heap_len];
    if (i < heap_len) {
        heap_place(i, last);
        heap_up(i);
        heap_down(last->heap_idx);
    }
}

static void heap_set(struct conn *c, nsec_t wake)
{
    if (wake == NEVER) {
        heap_remove(c);
        c->wake = NEVER;
        return;
    }
    if (c->heap_idx == NOIDX) {
        if (heap_len == heap_cap) {
            heap_cap = heap_cap ? heap_cap * 2 : 64;
            heap = realloc(heap, heap_cap * sizeof(*heap));
            if (!heap) {
                fprintf(stderr, "wanproxy: out of memory\n");
                exit(1);
            }
        }
        c->wake = wake;
        heap_place(heap_len++, c);
        heap_up(c->heap_idx);
    } else {
        nsec_t old = c->wake;
        c->wake = wake;
        if (wake < old) {
            heap_up(c->heap_idx);
        } else {
            heap_down(c->heap_idx);
        }
    }
}

/* ---- the link queue: connections waiting, in turn, for link tokens ---- */

static void linkq_remove(struct dir *d)
{
    if (!d->in_linkq) {
        return;
    }
    if (d->lq_prev) {
        d->lq_prev->lq_next = d->lq_next;
    } else {
        lq_head = d->lq_next;
    }
    if (d->lq_next) {
        d->lq_next->lq_prev = d->lq_prev;
    } else {
        lq_tail = d->lq_prev;
    }
    d->lq_next = d->lq_prev = NULL;
    d->in_linkq = false;
    lq_len--;
}

static void linkq_settle(nsec_t now)
{
    bucket_set_waiting(&link_bucket, lq_head != NULL, now);
}

static void linkq_add(struct dir *d)
{
    if (d->in_linkq) {
        return;
    }
    d->in_linkq = true;
    d->lq_next = NULL;
    d->lq_prev = lq_tail;
    if (lq_tail) {
        lq_tail->lq_next = d;
    } else {
        lq_head = d;
    }
    lq_tail = d;
    lq_len++;
    if (link_wake == NEVER) {
        link_wake = bucket_when(&link_bucket, MIN_GRANT);
    }
}

/*
 * How many bytes @d may read under the link cap (at most @want), or 0 if it
 * must queue.  Connections take turns: while others wait, a newcomer queues.
 */
static size_t link_grant(struct dir *d, size_t want, nsec_t now)
{
    bool turn = d->link_turn;
    size_t avail;

    d->link_turn = false;
    bucket_refill(&link_bucket, now);
    if (lq_head && !turn) {
        linkq_add(d);
        return 0;
    }
    avail = bucket_avail(&link_bucket);
    if (avail < min_sz(MIN_GRANT, want)) {
        linkq_add(d);
        linkq_settle(now);
        return 0;
    }
    return min_sz(min_sz(avail, want), LINK_QUANTUM);
}

static void link_service(nsec_t now)
{
    size_t guard = lq_len * 2 + 4;

    link_wake = NEVER;
    while (lq_head && guard--) {
        struct dir *d;

        bucket_refill(&link_bucket, now);
        if (bucket_avail(&link_bucket) < MIN_GRANT) {
            break;
        }
        d = lq_head;
        linkq_remove(d);
        d->link_turn = true;
        conn_service(d->c, now);
        d->link_turn = false;
    }
    if (lq_head) {
        link_wake = max_ns(bucket_when(&link_bucket, MIN_GRANT), now);
    }
    linkq_settle(now);
}

/* ---- acknowledgements (the emulated window) ---- */

static void ack_push(struct dir *d, nsec_t due, size_t n)
{
    if (d->ack_len) {
        struct ack *t = &d->acks[(d->ack_head + d->ack_len - 1) % d->ack_cap];
        if (due - t->due < ACK_MERGE_NS) {
            t->n += n;
            return;
        }
    }
    if (d->ack_len == d->ack_cap) {
        size_t cap = d->ack_cap ? d->ack_cap * 2 : 16;
        struct ack *a = xmalloc(cap * sizeof(*a));
        for (size_t i = 0; i < d->ack_len; i++) {
            a[i] = d->acks[(d->ack_head + i) % d->ack_cap];
        }
        free(d->acks);
        d->acks = a;
        d->ack_cap = cap;
        d->ack_head = 0;
    }
    d->acks[(d->ack_head + d->ack_len) % d->ack_cap] = (struct ack){ due, n };
    d->ack_len++;
}

static void ack_expire(struct dir *d, nsec_t now)
{
    while (d->ack_len && d->acks[d->ack_head].due <= now) {
        d->inflight -= d->acks[d->ack_head].n;
        d->ack_head = (d->ack_head + 1) % d->ack_cap;
        d->ack_len--;
    }
}

/* ---- connections ---- */

static void mark_pending(struct conn *c)
{
    if (!c->pending && !c->dead) {
        c->pending = true;
        c->pend_next = pending;
        pending = c;
    }
}

static void dir_free(struct dir *d)
{
    struct chunk *ch = d->head;

    while (ch) {
        struct chunk *next = ch->next;
        free(ch);
        ch = next;
    }
    d->head = d->tail = NULL;
    d->line = 0;
    free(d->acks);
    d->acks = NULL;
    d->ack_cap = d->ack_len = d->ack_head = 0;
    d->inflight = 0;
    linkq_remove(d);
}

static void close_fd(int fd, bool reset)
{
    if (fd < 0) {
        return;
    }
    if (reset) {
        struct linger lg = { 1, 0 };
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(fd);
}

/* Close both sides (with a reset if @reset) and retire the connection. */
static void conn_close(struct conn *c, bool reset)
{
    if (c->dead) {
        return;
    }
    c->dead = true;
    for (int i = 0; i < 2; i++) {
        close_fd(c->s[i].fd, reset);
        c->s[i].fd = -1;
        dir_free(&c->d[i]);
    }
    heap_remove(c);
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        all_conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    stats.active--;
    /* Freed at the end of the loop iteration: events may still point here. */
    if (!c->pending) {
        c->pend_next = graveyard;
        graveyard = c;
    }
}

/*
 * A socket failed (reset, error).  What it had sent before keeps travelling
 * to the other side, which is reset once that has arrived; what was on the
 * way to it is lost.
 */
static void side_failed(struct conn *c, int side, nsec_t now)
{
    struct dir *from = &c->d[side == CLIENT ? UP : DOWN];
    struct dir *to = &c->d[side == CLIENT ? DOWN : UP];
    nsec_t t;

    close_fd(c->s[side].fd, true);
    c->s[side].fd = -1;
    from->src_eof = true;
    linkq_remove(from);
    dir_free(to);
    to->done = to->src_eof = true;
    t = c->s[!side].fd < 0 ? now : max_ns(now, from->min_ts) + cfg.delay;
    c->abort_at = min_ns(c->abort_at, t);
}

/* Bookkeeping for @n bytes written to the destination of @d. */
static void dir_delivered(struct dir *d, size_t n, nsec_t now)
{
    d->line -= n;
    if (d->from == CLIENT) {
        stats.up += n;
    } else {
        stats.down += n;
    }
    if (cfg.window) {
        ack_push(d, now + cfg.delay, n);
    } else {
        d->inflight -= n;
    }
}

static bool dst_ready(struct dir *d)
{
    struct side *dst = &d->c->s[d->to];

    return !d->done && dst->fd >= 0 && dst->connected && dst->writable;
}

/* Write what is due.  Returns false if the destination failed. */
static bool dir_flush(struct dir *d, nsec_t now)
{
    struct side *dst = &d->c->s[d->to];

    if (d->done || dst->fd < 0 || !dst->connected) {
        return true;
    }
    while (d->head && d->head->due <= now && dst->writable) {
        struct iovec iov[64];
        size_t total = 0, w;
        int n = 0;
        ssize_t r;

        for (struct chunk *ch = d->head; ch && ch->due <= now && n < 64;
             ch = ch->next) {
            iov[n].iov_base = ch->data + ch->off;
            iov[n].iov_len = ch->len - ch->off;
            total += iov[n++].iov_len;
        }
        r = writev(dst->fd, iov, n);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                dst->writable = false;
                break;
            }
            side_failed(d->c, d->to, now);
            return false;
        }
        w = (size_t)r;
        dir_delivered(d, w, now);
        while (w > 0) {
            struct chunk *ch = d->head;
            size_t left = ch->len - ch->off;
            if (w < left) {
                ch->off += w;
                break;
            }
            w -= left;
            d->head = ch->next;
            free(ch);
        }
        if (!d->head) {
            d->tail = NULL;
        }
        if ((size_t)r < total) {
            dst->writable = false;
        }
    }
    if (!d->head && d->eof_due <= now && !d->done) {
        shutdown(dst->fd, SHUT_WR);
        d->done = true;
    }
    return true;
}

/* Put @n bytes read at @now on the delay line, due at @due. */
static bool dir_queue(struct dir *d, const unsigned char *buf, size_t n,
                      nsec_t due, nsec_t now)
{
    size_t off = 0;
    struct chunk *ch;

    if (!d->head && due <= now && dst_ready(d)) {
        struct side *dst = &d->c->s[d->to];
        ssize_t r = write(dst->fd, buf, n);
        if (r < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                side_failed(d->c, d->to, now);
                return false;
            }
            dst->writable = false;
        } else {
            off = (size_t)r;
            dir_delivered(d, off, now);
            if (off < n) {
                dst->writable = false;
            }
        }
    }
    if (off == n) {
        return true;
    }
    ch = xmalloc(sizeof(*ch) + n - off);
    ch->next = NULL;
    ch->due = due;
    ch->len = n - off;
    ch->off = 0;
    memcpy(ch->data, buf + off, n - off);
    if (d->tail) {
        d->tail->next = ch;
    } else {
        d->head = ch;
    }
    d->tail = ch;
    return true;
}

enum rd {
    RD_IDLE,        /* nothing to read now; an event will tell */
    RD_DATA,        /* read some */
    RD_ROOM,        /* window or delay line full */
    RD_TOKENS,      /* own rate cap: wait until d->tokens_wake */
    RD_LINK,        /* queued for the link */
    RD_AGAIN,       /* try again soon */
    RD_FAIL,        /* a socket failed */
};

static enum rd dir_read(struct dir *d, nsec_t now, size_t *got)
{
    struct side *src = &d->c->s[d->from];
    size_t allow = READ_MAX;
    nsec_t ts;
    ssize_t r;

    *got = 0;
    if (d->src_eof || d->done || src->fd < 0 || !src->connected ||
        !src->readable) {
        return RD_IDLE;
    }
    if (cfg.window) {
        if (d->inflight >= cfg.window) {
            return RD_ROOM;
        }
        allow = min_sz(allow, cfg.window - d->inflight);
    }
    if (d->line >= cfg.maxline) {
        return RD_ROOM;
    }
    allow = min_sz(allow, cfg.maxline - d->line);
    if (d->bucket.rate > 0) {
        size_t avail;
        bucket_refill(&d->bucket, now);
        avail = bucket_avail(&d->bucket);
        if (avail < min_sz(MIN_GRANT, allow)) {
            d->tokens_wake = bucket_when(&d->bucket, min_sz(MIN_GRANT, allow));
            return RD_TOKENS;
        }
        allow = min_sz(allow, avail);
    }
    if (d->use_link) {
        allow = link_grant(d, allow, now);
        if (!allow) {
            return RD_LINK;
        }
    }
    r = read(src->fd, rbuf, allow);
    if (r < 0) {
        if (errno == EINTR) {
            return RD_AGAIN;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            src->readable = false;
            return RD_IDLE;
        }
        side_failed(d->c, d->from, now);
        return RD_FAIL;
    }
    ts = max_ns(now, d->min_ts);
    if (r == 0) {
        src->readable = false;
        d->src_eof = true;
        d->eof_due = ts + cfg.delay;
        return RD_IDLE;
    }
    if ((size_t)r < allow && !src->rdhup) {
        src->readable = false;  /* a short read drained the socket */
        if (d->from == SERVER) {
            /*
             * Acknowledge now what the server sent: over loopback (MSS
             * 64 KiB) a server that writes a response in two pieces
             * without TCP_NODELAY would otherwise stall 40 ms in Nagle's
             * algorithm waiting for our delayed ACK, which no real link
             * would do.
             */
            int one = 1;
            setsockopt(src->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
        }
    }
    if (d->bucket.rate > 0) {
        bucket_take(&d->bucket, (size_t)r);
    }
    if (d->use_link) {
        bucket_take(&link_bucket, (size_t)r);
    }
    d->line += (size_t)r;
    d->inflight += (size_t)r;
    *got = (size_t)r;
    return dir_queue(d, rbuf, (size_t)r, ts + cfg.delay, now) ? RD_DATA
                                                              : RD_FAIL;
}

/* Move data along one direction and work out when it next needs us. */
static void dir_pump(struct dir *d, nsec_t now)
{
    struct side *dst = &d->c->s[d->to];
    size_t budget = PUMP_BUDGET, got;
    enum rd r = RD_IDLE;
    nsec_t w = NEVER;

    ack_expire(d, now);
    for (;;) {
        if (!dir_flush(d, now)) {
            r = RD_FAIL;
            break;
        }
        r = dir_read(d, now, &got);
        if (r != RD_DATA) {
            break;
        }
        if (got >= budget) {
            r = RD_AGAIN;
            dir_flush(d, now);
            break;
        }
        budget -= got;
    }
    if (d->c->dead) {
        return;
    }
    if (!d->done && dst->fd >= 0 && dst->connected) {
        if (d->head) {
            if (dst->writable) {
                w = d->head->due;       /* else EPOLLOUT will tell */
            }
        } else {
            w = d->eof_due;
        }
    }
    bucket_set_waiting(&d->bucket, r == RD_TOKENS, now);
    switch (r) {
    case RD_ROOM:
        if (d->ack_len) {
            w = min_ns(w, d->acks[d->ack_head].due);
        }
        break;
    case RD_TOKENS:
        w = min_ns(w, d->tokens_wake);
        break;
    case RD_AGAIN:
        w = now;
        break;
    default:
        break;
    }
    d->wake = w;
}

static void conn_service(struct conn *c, nsec_t now)
{
    if (c->dead) {
        return;
    }
    for (int i = 0; i < 2 && !c->dead; i++) {
        dir_pump(&c->d[i], now);
    }
    if (c->dead) {
        return;
    }
    if (c->d[UP].done && c->d[DOWN].done) {
        conn_close(c, false);
    } else if (c->abort_at <= now) {
        conn_close(c, true);
    } else {
        heap_set(c, min_ns(min_ns(c->d[UP].wake, c->d[DOWN].wake),
                           c->abort_at));
    }
}

static void set_nodelay(int fd)
{
    int one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static bool conn_new(int cfd, nsec_t now)
{
    struct conn *c;
    int ufd;
    bool connected = true;

    set_nodelay(cfd);
    ufd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ufd < 0) {
        int err = errno;
        close_fd(cfd, true);
        errno = err;
        return false;
    }
    set_nodelay(ufd);
    if (connect(ufd, (struct sockaddr *)&target_addr,
                sizeof(target_addr)) < 0) {
        if (errno != EINPROGRESS) {
            close(ufd);
            close_fd(cfd, true);
            stats.accepted++;
            stats.refused++;
            return true;
        }
        connected = false;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        close(ufd);
        close_fd(cfd, true);
        return true;
    }
    c->heap_idx = NOIDX;
    c->wake = NEVER;
    c->abort_at = NEVER;
    for (int i = 0; i < 2; i++) {
        struct side *s = &c->s[i];
        struct dir *d = &c->d[i];
        struct epoll_event ev = {
            .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
            .data.ptr = &s->ev,
        };

        s->ev.kind = K_SIDE;
        s->c = c;
        s->fd = i == CLIENT ? cfd : ufd;
        s->connected = i == CLIENT ? true : connected;
        epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev);

        d->c = c;
        d->from = i == UP ? CLIENT : SERVER;
        d->to = !d->from;
        d->eof_due = NEVER;
        d->wake = NEVER;
        /*
         * The kernel completed the client's handshake at once; a real one
         * costs a round trip before the client can send (and a bit more
         * before a server could), so the first bytes leave no earlier.
         */
        d->min_ts = now;
        if (cfg.handshake) {
            d->min_ts += (i == UP ? 2 : 3) * cfg.delay;
        }
        bucket_init(&d->bucket, i == UP ? cfg.up_rate : cfg.conn_rate, now);
        d->use_link = i == DOWN && cfg.link_rate > 0;
    }
    c->next = all_conns;
    if (all_conns) {
        all_conns->prev = c;
    }
    all_conns = c;
    stats.accepted++;
    if (++stats.active > stats.max_active) {
        stats.max_active = stats.active;
    }
    return true;
}

static void accept_all(nsec_t now)
{
    for (;;) {
        int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                /* Out of descriptors: stop listening for a moment. */
                struct epoll_event ev = { .events = 0, .data.ptr = &ev_listen };
                fprintf(stderr, "wanproxy: accept: %s; pausing\n",
                        strerror(errno));
                epoll_ctl(epfd, EPOLL_CTL_MOD, lfd, &ev);
                listen_resume = now + 100 * NS_PER_MS;
            }
            return;
        }
        if (!conn_new(cfd, now)) {
            fprintf(stderr, "wanproxy: socket: %s\n", strerror(errno));
        }
    }
}

static void side_event(struct side *s, uint32_t events)
{
    struct conn *c = s->c;
    int idx = s == &c->s[CLIENT] ? CLIENT : SERVER;

    if (c->dead || s->fd < 0) {
        return;
    }
    if (!s->connected) {
        int err = 0;
        socklen_t len = sizeof(err);

        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
            return;
        }
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            /* The target refused: drop the client. */
            stats.refused++;
            conn_close(c, true);
            return;
        }
        s->connected = true;
    } else if (events & EPOLLERR) {
        int err = 0;
        socklen_t len = sizeof(err);

        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            side_failed(c, idx, now_ns());
            mark_pending(c);
            return;
        }
    }
    if (events & (EPOLLRDHUP | EPOLLHUP)) {
        s->rdhup = true;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        s->readable = true;
    }
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
        s->writable = true;
    }
    mark_pending(c);
}

static void timer_arm(nsec_t when)
{
    struct itimerspec its = { 0 };

    if (when == timer_armed) {
        return;
    }
    if (when != NEVER) {
        its.it_value.tv_sec = when / NS_PER_S;
        its.it_value.tv_nsec = when % NS_PER_S;
    }
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
    timer_armed = when;
}

/* ---- statistics, options, setup ---- */

static void write_stats(void)
{
    char line[256];

    snprintf(line, sizeof(line),
             "{\"connections\": %llu, \"refused\": %llu, \"bytes_up\": %llu, "
             "\"bytes_down\": %llu, \"max_concurrent\": %u, "
             "\"open_at_exit\": %u}\n",
             (unsigned long long)stats.accepted,
             (unsigned long long)stats.refused,
             (unsigned long long)stats.up, (unsigned long long)stats.down,
             stats.max_active, open_at_exit);
    fputs(line, stderr);
    if (cfg.stats_file) {
        FILE *f = fopen(cfg.stats_file, "w");
        if (!f || fputs(line, f) == EOF || fclose(f) == EOF) {
            fprintf(stderr, "wanproxy: cannot write %s: %s\n",
                    cfg.stats_file, strerror(errno));
        }
    }
}

static void usage(FILE *f)
{
    fprintf(f,
"Usage: wanproxy --listen PORT --target PORT [options]\n"
"Relay 127.0.0.1:LISTEN to 127.0.0.1:TARGET through an emulated WAN link.\n"
"\n"
"  --listen PORT          port to listen on; 0 picks a free one\n"
"  --target PORT          port of the real server\n"
"  --preset S1|S2|S3      S1: delay 20 ms, conn-rate 10M, link-rate 125M\n"
"                         S2: delay 75 ms, link-rate 25M\n"
"                         S3: no limits (plain relay)\n"
"                         options given explicitly override the preset\n"
"  --delay-ms D           one-way delay in each direction (RTT = 2 D) [0]\n"
"  --conn-rate RATE       per-connection cap, server to client, bytes/s [0]\n"
"  --up-rate RATE         per-connection cap, client to server, bytes/s [0]\n"
"  --link-rate RATE       cap on all connections together, server to client\n"
"  --window BYTES         per-connection bytes in flight in each direction,\n"
"                         acknowledged one delay after delivery [0]\n"
"  --buffer BYTES         most bytes held on one direction's delay line\n"
"                         [8Mi, or 2 delays' worth at the rate if more]\n"
"  --no-handshake         don't charge a round trip for connection setup\n"
"  --port-file FILE       write the listening port to FILE\n"
"  --stats-file FILE      on SIGTERM/SIGINT, write a JSON summary to FILE\n"
"\n"
"Amounts take k, M, G (10^3, 10^6, 10^9) or Ki, Mi, Gi (2^10, 2^20, 2^30);\n"
"a rate of 0 means unlimited.\n");
}

static void __attribute__((format(printf, 1, 2), noreturn))
usage_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "wanproxy: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'wanproxy --help'.\n");
    exit(2);
}

static double parse_amount(const char *opt, const char *s, double max)
{
    char *end;
    double v, mul = 1;

    errno = 0;
    v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0) {
        goto bad;
    }
    if (*end) {
        switch (*end++) {
        case 'k': case 'K': mul = 1e3; break;
        case 'M': mul = 1e6; break;
        case 'G': mul = 1e9; break;
        default: goto bad;
        }
        if (*end == 'i') {
            mul = mul == 1e3 ? 1024.0 : mul == 1e6 ? 1048576.0 : 1073741824.0;
            end++;
        }
        if (*end) {
            goto bad;
        }
    }
    v *= mul;
    if (v > max) {
        usage_error("%s: value '%s' is too large", opt, s);
    }
    return v;
bad:
    usage_error("%s: invalid value '%s' (expected a number, optionally "
                "followed by k, M, G, Ki, Mi or Gi)", opt, s);
}

static int parse_port(const char *opt, const char *s, bool zero_ok)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < (zero_ok ? 0 : 1) || v > 65535) {
        usage_error("%s: invalid port '%s' (expected %d-65535)", opt, s,
                    zero_ok ? 0 : 1);
    }
    return (int)v;
}

static void parse_options(int argc, char **argv)
{
    enum {
        O_LISTEN = 256, O_TARGET, O_DELAY, O_CONN, O_LINK, O_WINDOW, O_UP,
        O_BUFFER, O_PORTFILE, O_STATS, O_PRESET, O_NOHS, O_HELP,
    };
    static const struct option opts[] = {
        { "listen", required_argument, NULL, O_LISTEN },
        { "target", required_argument, NULL, O_TARGET },
        { "delay-ms", required_argument, NULL, O_DELAY },
        { "conn-rate", required_argument, NULL, O_CONN },
        { "link-rate", required_argument, NULL, O_LINK },
        { "window", required_argument, NULL, O_WINDOW },
        { "up-rate", required_argument, NULL, O_UP },
        { "buffer", required_argument, NULL, O_BUFFER },
        { "port-file", required_argument, NULL, O_PORTFILE },
        { "stats-file", required_argument, NULL, O_STATS },
        { "preset", required_argument, NULL, O_PRESET },
        { "no-handshake", no_argument, NULL, O_NOHS },
        { "help", no_argument, NULL, O_HELP },
        { NULL, 0, NULL, 0 },
    };
    /* Explicit values, NAN where not given, so they override a preset. */
    double delay = NAN, conn = NAN, link = NAN, up = NAN, window = NAN,
           buffer = NAN;
    int opt;

    cfg.listen_port = cfg.target_port = -1;
    cfg.handshake = true;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case O_LISTEN:
            cfg.listen_port = parse_port("--listen", optarg, true);
            break;
        case O_TARGET:
            cfg.target_port = parse_port("--target", optarg, false);
            break;
        case O_DELAY: {
            char *end;
            errno = 0;
            delay = strtod(optarg, &end);
            if (end == optarg || *end || errno || !isfinite(delay) ||
                delay < 0 || delay > 600000) {
                usage_error("--delay-ms: invalid value '%s' (expected "
                            "milliseconds, 0-600000)", optarg);
            }
            break;
        }
        case O_CONN:
            conn = parse_amount("--conn-rate", optarg, 1e13);
            break;
        case O_LINK:
            link = parse_amount("--link-rate", optarg, 1e13);
            break;
        case O_UP:
            up = parse_amount("--up-rate", optarg, 1e13);
            break;
        case O_WINDOW:
            window = parse_amount("--window", optarg, 1ULL << 40);
            break;
        case O_BUFFER:
            buffer = parse_amount("--buffer", optarg, 1ULL << 40);
            if (buffer < 1) {
                usage_error("--buffer: value '%s' must be at least 1", optarg);
            }
            break;
        case O_PORTFILE:
            cfg.port_file = optarg;
            break;
        case O_STATS:
            cfg.stats_file = optarg;
            break;
        case O_PRESET:
            if (!strcmp(optarg, "S1") || !strcmp(optarg, "s1")) {
                cfg.delay = 20 * NS_PER_MS;
                cfg.conn_rate = 10e6;
                cfg.link_rate = 125e6;
            } else if (!strcmp(optarg, "S2") || !strcmp(optarg, "s2")) {
                cfg.delay = 75 * NS_PER_MS;
                cfg.conn_rate = 0;
                cfg.link_rate = 25e6;
            } else if (!strcmp(optarg, "S3") || !strcmp(optarg, "s3")) {
                cfg.delay = 0;
                cfg.conn_rate = cfg.link_rate = 0;
            } else {
                usage_error("--preset: unknown preset '%s' (expected S1, "
                            "S2 or S3)", optarg);
            }
            break;
        case O_NOHS:
            cfg.handshake = false;
            break;
        case O_HELP:
        case 'h':
            usage(stdout);
            exit(0);
        default:
            fprintf(stderr, "Try 'wanproxy --help'.\n");
            exit(2);
        }
    }
    if (optind < argc) {
        usage_error("unexpected argument '%s'", argv[optind]);
    }
    if (cfg.listen_port < 0) {
        usage_error("--listen PORT is required");
    }
    if (cfg.target_port < 0) {
        usage_error("--target PORT is required");
    }
    if (!isnan(delay)) {
        cfg.delay = (nsec_t)(delay * NS_PER_MS + 0.5);
    }
    if (!isnan(conn)) {
        cfg.conn_rate = conn;
    }
    if (!isnan(link)) {
        cfg.link_rate = link;
    }
    if (!isnan(up)) {
        cfg.up_rate = up;
    }
    if (!isnan(window)) {
        cfg.window = (uint64_t)window;
    }
    if (!isnan(buffer)) {
        cfg.maxline = (uint64_t)buffer;
    } else {
        /* Enough for the line to hold two delays' worth at the top rate. */
        double rate = dmax(cfg.up_rate, cfg.conn_rate > 0 && cfg.link_rate > 0
                           ? dmin(cfg.conn_rate, cfg.link_rate)
                           : dmax(cfg.conn_rate, cfg.link_rate));
        double need = 2 * rate * (double)cfg.delay / 1e9;
        cfg.maxline = (uint64_t)dmin(dmax(LINE_MIN, need), 1ULL << 30);
    }
}

static void fmt_rate(char *buf, size_t len, double rate)
{
    if (rate > 0) {
        snprintf(buf, len, "%.6g MB/s", rate / 1e6);
    } else {
        snprintf(buf, len, "unlimited");
    }
}

static int setup(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t salen = sizeof(sa);
    struct epoll_event ev = { .events = EPOLLIN };
    struct rlimit rl;
    sigset_t mask;
    int one = 1;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);

    target_addr.sin_family = AF_INET;
    target_addr.sin_port = htons((uint16_t)cfg.target_port);
    target_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (epfd < 0 || tfd < 0 || sfd < 0 || lfd < 0) {
        fprintf(stderr, "wanproxy: setup: %s\n", strerror(errno));
        return -1;
    }
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sa.sin_port = htons((uint16_t)cfg.listen_port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(lfd, 1024) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &salen) < 0) {
        fprintf(stderr, "wanproxy: cannot listen on 127.0.0.1:%d: %s\n",
                cfg.listen_port, strerror(errno));
        return -1;
    }
    cfg.listen_port = ntohs(sa.sin_port);
    ev.data.ptr = &ev_listen;
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.ptr = &ev_timer;
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.ptr = &ev_signal;
    epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);

    if (cfg.port_file) {
        size_t n = strlen(cfg.port_file) + 8;
        char *tmp = xmalloc(n);
        FILE *f;
        bool ok;

        snprintf(tmp, n, "%s.tmp", cfg.port_file);
        f = fopen(tmp, "w");
        ok = f && fprintf(f, "%d\n", cfg.listen_port) > 0;
        ok = f && fclose(f) == 0 && ok;
        ok = ok && rename(tmp, cfg.port_file) == 0;
        if (!ok) {
            fprintf(stderr, "wanproxy: cannot write %s: %s\n",
                    cfg.port_file, strerror(errno));
            free(tmp);
            return -1;
        }
        free(tmp);
    }
    {
        char conn[32], link[32], up[32];

        fmt_rate(conn, sizeof(conn), cfg.conn_rate);
        fmt_rate(link, sizeof(link), cfg.link_rate);
        fmt_rate(up, sizeof(up), cfg.up_rate);
        fprintf(stderr,
                "wanproxy: 127.0.0.1:%d -> 127.0.0.1:%d, delay %.3f ms "
                "each way, conn-rate %s, link-rate %s, up-rate %s, "
                "window %llu, buffer %llu, handshake %s\n",
                cfg.listen_port, cfg.target_port,
                (double)cfg.delay / NS_PER_MS, conn, link, up,
                (unsigned long long)cfg.window,
                (unsigned long long)cfg.maxline,
                cfg.handshake ? "on" : "off");
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct epoll_event evs[MAX_EVENTS];
    bool stop = false;

    parse_options(argc, argv);
    if (setup() < 0) {
        return 1;
    }
    bucket_init(&link_bucket, cfg.link_rate, now_ns());

    while (!stop) {
        nsec_t now = now_ns(), next = heap_len ? heap[0]->wake : NEVER;
        int n, timeout = -1;

        next = min_ns(min_ns(next, link_wake), listen_resume);
        if (next <= now) {
            timeout = 0;
        } else {
            timer_arm(next);
        }
        n = epoll_wait(epfd, evs, MAX_EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            fprintf(stderr, "wanproxy: epoll_wait: %s\n", strerror(errno));
            break;
        }
        now = now_ns();
        for (int i = 0; i < n; i++) {
            struct evsrc *src = evs[i].data.ptr;

            switch (src->kind) {
            case K_LISTEN:
                accept_all(now);
                break;
            case K_TIMER: {
                uint64_t ticks;
                if (read(tfd, &ticks, sizeof(ticks)) > 0) {
                    timer_armed = NEVER;
                }
                break;
            }
            case K_SIGNAL: {
                struct signalfd_siginfo si;
                if (read(sfd, &si, sizeof(si)) > 0) {
                    stop = true;
                }
                break;
            }
            default:
                side_event((struct side *)src, evs[i].events);
                break;
            }
        }
        if (stop) {
            break;
        }
        if (listen_resume <= now) {
            struct epoll_event ev = { .events = EPOLLIN,
                                      .data.ptr = &ev_listen };
            listen_resume = NEVER;
            epoll_ctl(epfd, EPOLL_CTL_MOD, lfd, &ev);
        }
        while (heap_len && heap[0]->wake <= now) {
            struct conn *c = heap[0];
            heap_remove(c);
            mark_pending(c);
        }
        while (pending) {
            struct conn *c = pending;
            pending = c->pend_next;
            c->pending = false;
            if (c->dead) {
                c->pend_next = graveyard;
                graveyard = c;
            } else {
                conn_service(c, now);
            }
        }
        if (link_wake <= now) {
            link_service(now);
        }
        linkq_settle(now);
        while (graveyard) {
            struct conn *c = graveyard;
            graveyard = c->pend_next;
            free(c);
        }
    }

    open_at_exit = stats.active;
    while (all_conns) {
        conn_close(all_conns, false);
    }
    /* conn_close put them on one list or the other. */
    while (pending) {
        struct conn *c = pending;
        pending = c->pend_next;
        free(c);
    }
    while (graveyard) {
        struct conn *c = graveyard;
        graveyard = c->pend_next;
        free(c);
    }
    free(heap);
    write_stats();
    close(lfd);
    close(tfd);
    close(sfd);
    close(epfd);
    return 0;
}
