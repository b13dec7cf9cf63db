/*
 * QEMU block driver for images read over HTTP, HTTPS, FTP and FTPS
 *
 * Copyright (C) 2026 The QEMU curl series authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Reads are served from a cache of aligned blocks (block/range-cache.c),
 * which decides what to fetch: the bytes a read misses, and more ahead of a
 * sequential stream.  Each fetch is one range request; up to 'connections'
 * run at once over reused connections, through a libcurl multi handle that
 * the node's AioContext drives.  A read completes as soon as its own bytes
 * have arrived.
 */

#include "qemu/osdep.h"
#include <curl/curl.h>
#include "qapi/error.h"
#include "qapi/qmp/qerror.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/host-utils.h"
#include "qemu/lockable.h"
#include "qemu/module.h"
#include "qemu/option.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "block/block-io.h"
#include "block/block_int.h"
#include "block/range-cache.h"
#include "crypto/secret.h"
#include "crypto/tlscredsx509.h"
#include "qobject/qdict.h"
#include "trace.h"

/* What the libcurl we build against has */
#if LIBCURL_VERSION_NUM >= 0x075500     /* 7.85.0 */
#define HAVE_CURLOPT_PROTOCOLS_STR
#endif
#if LIBCURL_VERSION_NUM >= 0x073700     /* 7.55.0 */
#define HAVE_CURLINFO_CONTENT_LENGTH_DOWNLOAD_T
#endif
#if LIBCURL_VERSION_NUM >= 0x071e00     /* 7.30.0 */
#define HAVE_CURLMOPT_MAX_HOST_CONNECTIONS
#endif
#if LIBCURL_VERSION_NUM >= 0x073900     /* 7.57.0 */
#define HAVE_CURL_LOCK_DATA_CONNECT
#endif
#if LIBCURL_VERSION_NUM >= 0x073b00     /* 7.59.0 */
#define HAVE_CURLINFO_FILETIME_T
#endif

#define CURL_OPT_URL                    "url"
#define CURL_OPT_OFFSET                 "offset"
#define CURL_OPT_BLOCKSIZE              "blocksize"
#define CURL_OPT_BLOCKCOUNT             "blockcount"
#define CURL_OPT_CONNECTIONS            "connections"
#define CURL_OPT_READAHEAD              "readahead"
#define CURL_OPT_X_READAHEAD_WINDOW     "x-readahead-window"
#define CURL_OPT_SSLVERIFY              "sslverify"
#define CURL_OPT_TIMEOUT                "timeout"
#define CURL_OPT_COOKIE                 "cookie"
#define CURL_OPT_COOKIE_SECRET          "cookie-secret"
#define CURL_OPT_USERNAME               "username"
#define CURL_OPT_PASSWORD_SECRET        "password-secret"
#define CURL_OPT_PROXY_USERNAME         "proxy-username"
#define CURL_OPT_PROXY_PASSWORD_SECRET  "proxy-password-secret"
#define CURL_OPT_HEADER_SECRET          "header-secret"
#define CURL_OPT_RETRIES                "retries"
#define CURL_OPT_TLS_CREDS              "tls-creds"
#define CURL_OPT_TLS                    "tls"
#define CURL_OPT_HTTP_VERSION           "http-version"

/*
 * Defaults.  Sixteen transfers in flight keep a 40 ms, 125 MB/s link busy;
 * the cache then holds what is in flight, what is being read and some of
 * what was read, within 64 MiB for the node.  What goes on the wire does
 * not depend on the block size, but a block is what the cache keeps or
 * drops: 896 blocks of 64 KiB (a qcow2 cluster) keep that many places of a
 * randomly read image, where 28 of 2 MiB kept too few for a guest's
 * working set, and sequential reads go as fast.
 */
#define CURL_DEFAULT_BLOCKSIZE      (64 * KiB)
#define CURL_DEFAULT_CACHE          (56 * MiB)  /* blockcount * blocksize */
#define CURL_DEFAULT_CONNECTIONS    16
#define CURL_DEFAULT_READAHEAD      (48 * MiB)
#define CURL_DEFAULT_TIMEOUT        5

#define CURL_MAX_CONNECTIONS        64
#define CURL_MAX_CACHE              (1 * GiB)
#define CURL_MAX_TIMEOUT            10000

/*
 * The largest request that readahead makes; the window is split over the
 * connections (48 MiB over 15: 3.2 MiB each).  Each request costs a round
 * trip before its first byte: 2 MiB takes 0.2 s at 10 MB/s, so that a
 * 40 ms round trip costs 17% of a connection's time, and 15 connections
 * then carry 115 MB/s at most; 3.2 MiB costs 11%.  Larger requests hold
 * more of the cache while they are in flight.
 */
#define CURL_READAHEAD_FETCH        (4 * MiB)

/*
 * At open, every connection fetches a piece of the start of the image, so
 * that the connections exist (TCP and TLS handshakes done) by the time a
 * format driver has read its metadata and a stream starts, and the first
 * reads find their bytes on the way.  The first piece is larger:
 * it goes over the connection the probe left open, one round trip away,
 * while the others wait for their handshakes (three round trips), and it
 * holds the header of the image and the tables a format driver reads at
 * open, which usually follow it (qcow2's are in the first 320 KiB).
 */
#define CURL_WARM_UP_FIRST_FETCH    (512 * KiB)
#define CURL_WARM_UP_FETCH          (64 * KiB)

/*
 * A transfer that broke off (a reset connection, a short body, a 5xx, 408
 * or 429 answer) is asked for again, for what did not arrive.  'retries'
 * bounds the attempts in a row that bring nothing new (less than
 * RANGE_CACHE_GRANULE more of the fetch proven), so that a server that
 * cuts every answer short still gets a fetch through, a granule at a time
 * at worst, and one that delivers nothing fails it soon.  The first retry
 * after such an attempt waits about CURL_RETRY_DELAY_MS, each next one
 * twice as long, at most CURL_RETRY_MAX_DELAY_MS; a server that says when
 * to come back (Retry-After) is believed up to CURL_RETRY_MAX_DELAY_MS
 * too.  So a fetch of N granules ends after N * ('retries' + 1) +
 * 'retries' attempts at most, and waits at most 'retries' * 10 seconds
 * after each attempt that moved it forward.  The default is that of
 * nbdkit's retry filter and of aria2c: five.
 */
#define CURL_DEFAULT_RETRIES        5
#define CURL_MAX_RETRIES            16
#define CURL_RETRY_DELAY_MS         100
#define CURL_RETRY_MAX_DELAY_MS     10000

#define CURL_MAX_REDIRECTS          16

/*
 * The look at the remote file at open (HEAD, its redirects, and the GET of
 * the first byte that replaces a HEAD the server refuses) blocks the
 * caller, the main loop of a VM for blockdev-add: it has this long in all,
 * whatever 'timeout' is.
 */
#define CURL_PROBE_TIMEOUT_S        30

/*
 * The longest ETag or Last-Modified that an answer is checked by.  RFC
 * 9110 sets no limit; object stores send about 40 characters.  A longer
 * one is not trusted: an answer that carries it cannot prove anything.
 */
#define CURL_MAX_VALIDATOR          1024

/* How much of a validator an error message shows, to stay readable */
#define CURL_VALIDATOR_SHOWN        64

/* How often the transfers are checked for progress, when 'timeout' is set */
#define CURL_WATCHDOG_MS            500


#ifdef HAVE_CURLOPT_PROTOCOLS_STR
#define CURL_PROTOCOLS              "HTTP,HTTPS,FTP,FTPS"
#else
#define CURL_PROTOCOLS              (CURLPROTO_HTTP | CURLPROTO_HTTPS | \
                                     CURLPROTO_FTP | CURLPROTO_FTPS)
#endif

typedef struct BDRVCURLState BDRVCURLState;
typedef QTAILQ_HEAD(, RangeCacheFetch) CURLFetchQueue;

/* An ETag or a Last-Modified of an answer */
typedef struct CURLValidator {
    bool seen;                  /* the answer has the header */
    bool bad;                   /* empty, too long, or sent twice unlike */
    char value[CURL_MAX_VALIDATOR + 1];
} CURLValidator;

/*
 * What the headers of an HTTP answer said; FTP has none of these.  Every
 * number is as curl_parse_number() read it: digits only, at most
 * BDRV_MAX_LENGTH.  A header that is sent twice with different values, or
 * cannot be parsed, makes its field invalid, never a guess.
 */
typedef struct CURLHeaders {
    bool http;                  /* an HTTP status line was seen */
    long status;                /* and the status it gave */
    bool malformed;             /* a line folded, or with no colon */
    bool accept_ranges;         /* Accept-Ranges: bytes */
    bool range_seen;            /* Content-Range was sent */
    bool has_range;             /* as bytes FIRST-LAST/TOTAL, valid */
    bool has_total;             /* as bytes * / TOTAL, valid (a 416) */
    uint64_t range_first;
    uint64_t range_last;
    uint64_t range_total;
    bool length_seen;           /* Content-Length was sent */
    bool length_bad;            /* and is not one valid number */
    uint64_t length;
    bool coded;                 /* Transfer-Encoding: the body is framed */
    CURLValidator etag;
    CURLValidator last_modified;
    char content_encoding[32];  /* empty if none */
    int64_t retry_after_ms;     /* Retry-After, or -1 */
} CURLHeaders;

/* What proves that an answer comes from the file opened */
typedef enum CURLPin {
    CURL_PIN_SIZE,              /* nothing but its size: no validator */
    CURL_PIN_ETAG,              /* its strong ETag */
    CURL_PIN_LAST_MODIFIED,     /* its Last-Modified date */
    CURL_PIN_MDTM,              /* FTP: its modification time */
} CURLPin;

/*
 * One easy handle, and the fetch it runs.  Only used in the AioContext,
 * with BDRVCURLState.mutex held.
 */
typedef struct CURLTransfer {
    BDRVCURLState *s;
    CURL *easy;
    RangeCacheFetch *fetch;     /* NULL while idle */
    char *target;               /* where it is sent, if not to url */
    unsigned hops;              /* redirects followed to get there */
    bool fell_back;             /* sent to url after target refused */
    uint64_t first;             /* remote byte range asked for, inclusive */
    uint64_t last;
    uint64_t received;          /* body bytes of this answer */
    uint64_t proven_before;     /* fetch->proven when it was sent */
    int64_t start_ns;
    int64_t progress_ns;        /* when the last bytes arrived */
    unsigned attempt;           /* requests in a row that brought nothing */
    int64_t retry_at_ms;        /* when to ask again, or 0 */
    bool paused;                /* held while the node is drained */
    bool checked;               /* the answer passed its checks */
    bool framed;                /* Content-Length says where each byte is */
    bool open_ended;            /* asked to the end of the file (FTP) */
    bool cut;                   /* and stopped at the end of the fetch */
    int ret;                    /* -errno when our own checks failed */
    char why[256];              /* and why */
    char range[48];             /* CURLOPT_RANGE, "FIRST-LAST" */
    CURLHeaders headers;
    char errbuf[CURL_ERROR_SIZE];
} CURLTransfer;

/* A socket libcurl asked us to watch */
typedef struct CURLSocket {
    BDRVCURLState *s;
    curl_socket_t fd;
    int what;                   /* CURL_POLL_IN, _OUT or _INOUT */
    QLIST_ENTRY(CURLSocket) next;
} CURLSocket;

struct BDRVCURLState {
    /* Set at open and constant afterwards */
    BlockDriverState *bs;       /* counts the transfers in flight */
    char *url;
    char *url_shown;            /* url without its query or password */
    uint64_t remote_offset;     /* added to every range request */
    uint64_t blocksize;
    unsigned blockcount;
    unsigned connections;       /* most transfers at once */
    uint64_t readahead;         /* bytes fetched ahead of sequential reads */
    bool sslverify;
    bool ftp_tls;               /* ftp:// with AUTH TLS ('tls') */
    bool http2;                 /* 'http-version=http2' */
    bool ftps_poll;             /* FTPS with libcurl 7.87 to 8.6 */
    char *tls_ca;               /* what 'tls-creds' trusts, or NULL */
    char *tls_crl;              /* and revokes */
    char *tls_cert;             /* the client certificate it presents */
    char *tls_key;
    char *tls_key_password;
    uint64_t timeout;           /* seconds to connect, or without progress */
    unsigned retries;           /* of a transfer that broke off */
    char *cookie;
    char *username;
    char *password;
    char *proxy_username;
    char *proxy_password;
    uint64_t remote_len;        /* length of the whole remote file */
    CURLPin pin;                /* what answers must carry besides */
    char *validator;            /* ETag or Last-Modified; If-Range */
    int64_t mtime;              /* for CURL_PIN_MDTM */
    char *extra_headers;        /* the user's, one per line, or NULL */
    struct curl_slist *origin_headers;  /* sent to url's origin */
    struct curl_slist *other_headers;   /* sent to any other */
    CURLSH *share;              /* DNS and TLS sessions of the transfers */
    CURLM *multi;               /* runs the transfers */
    CURLTransfer *transfers;    /* 'connections' of them */

    /*
     * Protects the cache (whose own lock it is), the queues, the transfers
     * and everything below.  The multi handle and the transfers' easy
     * handles are used with the lock held, in aio_context's thread but at
     * close, so that the callbacks libcurl makes (curl_sock_cb,
     * curl_timer_cb, curl_write_cb, curl_header_cb) run with it held.
     * range_cache_fetch_done_locked() and range_cache_wake_locked() drop it
     * while they wake readers.  The probe at open runs its own easy handle
     * in the main loop, before any of this is set up, without the lock.
     * Reads may come from any thread.
     */
    QemuMutex mutex;
    RangeCache cache;
    char *redirect_url;         /* where url redirected, if used directly */
    CURLFetchQueue miss_queue;  /* fetches that reads wait for */
    int64_t quiet_until_ms;     /* no new request before: Retry-After */
    CURLFetchQueue readahead_queue;
    unsigned active;            /* transfers with a fetch, held or not */
    unsigned active_readahead;  /* of which for readahead */
    unsigned warm_up_left;      /* readahead that may use any connection */
    bool quiesced;              /* drained: hold what no read waits for */
    bool error_reported;        /* stderr has a failure since a success */
    uint64_t nb_transfers;      /* statistics, traced at close */
    uint64_t nb_retries;
    uint64_t nb_reads;
    uint64_t read_wait_ns;      /* how long reads took, in all */

    /*
     * The event loop the transfers run in, NULL while detached.  Its fd
     * handlers, timers and bottom halves are set and cleared with the lock
     * held, and each of them returns at once if it finds the node detached
     * (curl_detach_aio_context() waits for those that already started).
     */
    AioContext *aio_context;
    QEMUTimer timer;            /* libcurl's timeout */
    QEMUTimer watchdog;         /* checks that transfers progress */
    QEMUTimer retry_timer;      /* asks again for what broke off */
    QEMUBH *start_bh;           /* starts, holds and resumes fetches */
    QLIST_HEAD(, CURLSocket) sockets;   /* that libcurl asked us to watch */
};

/*
 * Set an option of @easy unless an earlier one failed, saying which one
 * libcurl refused; needs ERRP_GUARD
 */
#define curl_setopt(easy, opt, val, errp)                                  \
    curl_check_setopt(*(errp) ? CURLE_OK : curl_easy_setopt(easy, opt, val), \
                      #opt, errp)

static void curl_check_setopt(CURLcode ret, const char *name, Error **errp)
{
    if (ret != CURLE_OK && !*errp) {
        error_setg(errp, "libcurl refused %s: %s", name,
                   curl_easy_strerror(ret));
    }
}

/* Likewise for the multi handle */
#define curl_multi_setopt_checked(multi, opt, val, errp)                   \
    curl_check_multi_setopt(*(errp) ? CURLM_OK :                           \
                            curl_multi_setopt(multi, opt, val), #opt, errp)

static void curl_check_multi_setopt(CURLMcode ret, const char *name,
                                    Error **errp)
{
    if (ret != CURLM_OK && !*errp) {
        error_setg(errp, "libcurl refused %s: %s", name,
                   curl_multi_strerror(ret));
    }
}

/* Likewise for the share handle */
#define curl_share_setopt_checked(share, opt, val, errp)                   \
    curl_check_share_setopt(*(errp) ? CURLSHE_OK :                         \
                            curl_share_setopt(share, opt, val), #opt, errp)

static void curl_check_share_setopt(CURLSHcode ret, const char *name,
                                    Error **errp)
{
    if (ret != CURLSHE_OK && !*errp) {
        error_setg(errp, "libcurl refused %s: %s", name,
                   curl_share_strerror(ret));
    }
}

/*
 * The header callback: parse what we need of one header line.  Redirects
 * and interim (1xx) answers bring several answers; each status line starts
 * a new one.
 */

/*
 * The value of a header, the @len bytes at @line after its colon, without
 * the whitespace around it; "" if it has a control character (a NUL byte
 * included), which no value we parse may hold
 */
static char *curl_header_value(const char *line, size_t len)
{
    size_t i;

    while (len && (line[0] == ' ' || line[0] == '\t')) {
        line++;
        len--;
    }
    while (len && g_ascii_isspace(line[len - 1])) {
        len--;
    }
    for (i = 0; i < len; i++) {
        if (g_ascii_iscntrl(line[i]) && line[i] != '\t') {
            return g_strdup("");
        }
    }
    return g_strndup(line, len);
}

/*
 * Parse the decimal number at *@p, advancing *@p past it.  A number from
 * the network: digits only (no sign, no space), and at most
 * BDRV_MAX_LENGTH, so that no sum or product of two of them overflows.
 */
static bool curl_parse_number(const char **p, uint64_t *value)
{
    const char *q = *p;
    uint64_t n = 0;

    if (!g_ascii_isdigit(*q)) {
        return false;
    }
    while (g_ascii_isdigit(*q)) {
        unsigned digit = *q++ - '0';

        if (n > (BDRV_MAX_LENGTH - digit) / 10) {
            return false;
        }
        n = n * 10 + digit;
    }
    *p = q;
    *value = n;
    return true;
}

/* Parse "bytes FIRST-LAST/TOTAL", or "bytes * /TOTAL" (in a 416) */
static void curl_parse_content_range(const char *v, CURLHeaders *h)
{
    const char *p = v + strlen("bytes ");
    uint64_t first, last, total;

    if (h->range_seen) {
        /* Twice: which one would be right? */
        h->has_range = h->has_total = false;
        return;
    }
    h->range_seen = true;
    if (g_ascii_strncasecmp(v, "bytes ", strlen("bytes "))) {
        return;
    }
    if (*p == '*') {
        p++;
        h->has_total = *p++ == '/' && curl_parse_number(&p, &total) && !*p;
        h->range_total = h->has_total ? total : 0;
        return;
    }
    if (!curl_parse_number(&p, &first) || *p++ != '-' ||
        !curl_parse_number(&p, &last) || *p++ != '/' ||
        !curl_parse_number(&p, &total) || *p ||
        first > last || last >= total) {
        return;
    }
    h->has_range = true;
    h->range_first = first;
    h->range_last = last;
    h->range_total = total;
}

static void curl_parse_content_length(const char *v, CURLHeaders *h)
{
    const char *p = v;
    uint64_t len;

    if (!curl_parse_number(&p, &len) || *p ||
        (h->length_seen && h->length != len)) {
        h->length_bad = true;
    }
    h->length_seen = true;
    h->length = len;
}

/* An ETag or a Last-Modified, kept as it is: it is compared byte for byte */
static void curl_parse_validator(const char *v, CURLValidator *val)
{
    if (!*v || strlen(v) > CURL_MAX_VALIDATOR ||
        (val->seen && strcmp(val->value, v))) {
        val->bad = true;
    } else {
        pstrcpy(val->value, sizeof(val->value), v);
    }
    val->seen = true;
}

/* Parse "HTTP/1.1 503 Slow Down" */
static long curl_parse_status(const char *line, size_t len)
{
    g_autofree char *str = g_strndup(line, len);
    const char *p = strchr(str, ' ');
    uint64_t status;

    if (!p) {
        return 0;
    }
    p++;
    if (!curl_parse_number(&p, &status) || status < 100 || status > 999) {
        return 0;
    }
    return status;
}

/* Parse Retry-After: seconds, or an HTTP date */
static int64_t curl_parse_retry_after(const char *v)
{
    const char *p = v;
    uint64_t seconds;
    time_t when;

    if (curl_parse_number(&p, &seconds) && !*p) {
        return MIN(seconds, INT64_MAX / 1000) * 1000;
    }
    when = curl_getdate(v, NULL);
    if (when == -1) {
        return -1;
    }
    return MAX(0, (int64_t)when - (int64_t)time(NULL)) * 1000;
}

/* Parse one header line of @len bytes (its CRLF included) */
static void curl_parse_header_line(CURLHeaders *h, const char *line,
                                   size_t len)
{
    const char *colon = memchr(line, ':', len);
    g_autofree char *name = NULL;
    g_autofree char *v = NULL;

    if (len >= 5 && !memcmp(line, "HTTP/", 5)) {
        *h = (CURLHeaders) {
            .http = true,
            .status = curl_parse_status(line, len),
            .retry_after_ms = -1,
        };
        return;
    }
    if (!h->http) {
        return;             /* FTP replies, which are not headers */
    }
    if (len && (line[0] == ' ' || line[0] == '\t')) {
        /*
         * A line folded onto the one before (RFC 9112 made it obsolete):
         * the value of that header would be misread
         */
        h->malformed = true;
        return;
    }
    if (!colon) {
        /* Not a header; but the empty line that ends them */
        h->malformed |= len > 2 || (len && !g_ascii_isspace(line[0]));
        return;
    }
    name = g_strndup(line, colon - line);
    v = curl_header_value(colon + 1, line + len - colon - 1);
    if (!g_ascii_strcasecmp(name, "retry-after")) {
        h->retry_after_ms = curl_parse_retry_after(v);
    } else if (!g_ascii_strcasecmp(name, "accept-ranges")) {
        h->accept_ranges = !g_ascii_strcasecmp(v, "bytes");
    } else if (!g_ascii_strcasecmp(name, "content-range")) {
        curl_parse_content_range(v, h);
    } else if (!g_ascii_strcasecmp(name, "content-length")) {
        curl_parse_content_length(v, h);
    } else if (!g_ascii_strcasecmp(name, "transfer-encoding")) {
        h->coded = true;
    } else if (!g_ascii_strcasecmp(name, "etag")) {
        curl_parse_validator(v, &h->etag);
    } else if (!g_ascii_strcasecmp(name, "last-modified")) {
        curl_parse_validator(v, &h->last_modified);
    } else if (!g_ascii_strcasecmp(name, "content-encoding")) {
        if (strlen(v) < sizeof(h->content_encoding) && *v) {
            pstrcpy(h->content_encoding, sizeof(h->content_encoding), v);
        } else {
            pstrcpy(h->content_encoding, sizeof(h->content_encoding), "?");
        }
    }
}

/*
 * CURLOPT_HEADERFUNCTION.  libcurl passes one line at a time, but for the
 * headers it kept while the transfer was paused, which come as one
 */
static size_t curl_header_cb(char *buf, size_t size, size_t nmemb,
                             void *opaque)
{
    size_t len = size * nmemb;
    size_t pos = 0;

    while (pos < len) {
        const char *eol = memchr(buf + pos, '\n', len - pos);
        size_t n = eol ? eol - (buf + pos) + 1 : len - pos;

        curl_parse_header_line(opaque, buf + pos, n);
        pos += n;
    }
    return len;
}

/*
 * libcurl (7.87 and later, with OpenSSL) parses its CA certificates once
 * per multi handle and keeps them for the next connections, but not when
 * a CA directory is set.  Debian's libcurl sets one by default, next to the
 * bundle that update-ca-certificates makes of the same certificates, and
 * then each new connection parses the whole bundle again: 40 to 70 ms of
 * CPU before its handshake, sixteen times over at open.  Where libcurl has
 * both defaults, trust the bundle alone.
 */
static bool curl_trust_bundle_only(void)
{
#if LIBCURL_VERSION_NUM >= 0x075700
    const curl_version_info_data *info = curl_version_info(CURLVERSION_NOW);

    return info->age >= CURLVERSION_NINTH && info->cainfo && info->capath;
#else
    return false;
#endif
}

/* Whether @a and @b have the same scheme, host and port */
static bool curl_same_origin(const char *a, const char *b)
{
    g_autoptr(GUri) ua = g_uri_parse(a, G_URI_FLAGS_NONE, NULL);
    g_autoptr(GUri) ub = g_uri_parse(b, G_URI_FLAGS_NONE, NULL);

    return ua && ub &&
           !g_ascii_strcasecmp(g_uri_get_scheme(ua), g_uri_get_scheme(ub)) &&
           !g_ascii_strcasecmp(g_uri_get_host(ua) ?: "",
                               g_uri_get_host(ub) ?: "") &&
           g_uri_get_port(ua) == g_uri_get_port(ub);
}

/*
 * @url as traces and error messages show it: without a password, and
 * without the query, which holds the signature of a presigned URL
 */
static char *curl_url_shown(const char *url)
{
    g_autoptr(GUri) uri = g_uri_parse(url, G_URI_FLAGS_NONE, NULL);

    if (!uri) {
        return g_strndup(url, strcspn(url, "?#@"));
    }
    return g_uri_to_string_partial(uri, G_URI_HIDE_PASSWORD |
                                   G_URI_HIDE_AUTH_PARAMS | G_URI_HIDE_QUERY |
                                   G_URI_HIDE_FRAGMENT);
}

/*
 * Send the next request of @easy to @url.  The user's credentials, cookies
 * and headers only go to the origin of the image's URL: libcurl would send
 * a cookie or a header to wherever a redirect leads.
 */
static bool curl_aim(BDRVCURLState *s, CURL *easy, const char *url,
                     Error **errp)
{
    ERRP_GUARD();
    bool origin = url == s->url || curl_same_origin(s->url, url);

    curl_setopt(easy, CURLOPT_URL, url, errp);
    curl_setopt(easy, CURLOPT_COOKIE, origin ? s->cookie : NULL, errp);
    curl_setopt(easy, CURLOPT_USERNAME, origin ? s->username : NULL, errp);
    curl_setopt(easy, CURLOPT_PASSWORD, origin ? s->password : NULL, errp);
    curl_setopt(easy, CURLOPT_HTTPHEADER,
                origin ? s->origin_headers : s->other_headers, errp);
    return !*errp;
}

/* Whether a 3xx status asks to go elsewhere (not 304 Not Modified) */
static bool curl_is_redirect(long status)
{
    return status == 301 || status == 302 || status == 303 ||
           status == 307 || status == 308;
}

/*
 * Whether to follow a redirect from @from to @to: only to http or https,
 * never from https to plain http, and not too many in a row.  Else
 * -errno, and why in @why.
 */
static int curl_may_redirect(BDRVCURLState *s, const char *from,
                             const char *to, unsigned hops, char *why,
                             size_t size)
{
    g_autofree char *shown = curl_url_shown(to);

    if (hops > CURL_MAX_REDIRECTS) {
        snprintf(why, size, "more than %d redirects in a row",
                 CURL_MAX_REDIRECTS);
        return -ELOOP;
    }
    if (g_ascii_strncasecmp(to, "https://", 8) &&
        g_ascii_strncasecmp(to, "http://", 7)) {
        snprintf(why, size, "refused to follow a redirect to %s: only http "
                 "and https are followed", shown);
        return -EPROTONOSUPPORT;
    }
    if (!g_ascii_strncasecmp(from, "https://", 8) &&
        g_ascii_strncasecmp(to, "https://", 8)) {
        snprintf(why, size, "refused to follow a redirect from https to "
                 "plain http (%s)", shown);
        return -EACCES;
    }
    trace_curl_may_redirect(s, shown, hops);
    return 0;
}

/* Options every easy handle gets: where, how, and who we are */
static bool curl_setup_easy(BDRVCURLState *s, CURL *easy, char *errbuf,
                            CURLHeaders *headers, Error **errp)
{
    ERRP_GUARD();

    curl_setopt(easy, CURLOPT_ERRORBUFFER, errbuf, errp);
    curl_setopt(easy, CURLOPT_HEADERFUNCTION, curl_header_cb, errp);
    curl_setopt(easy, CURLOPT_HEADERDATA, headers, errp);
    curl_setopt(easy, CURLOPT_NOSIGNAL, 1L, errp);
    curl_setopt(easy, CURLOPT_FAILONERROR, 1L, errp);
    /*
     * We follow redirects ourselves (curl_may_redirect()), to choose for
     * each hop what credentials go with it.
     */
    curl_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L, errp);
    /*
     * Only the four protocols the driver is for: the more obscure ones
     * have had their security problems (CVE-2013-0249).
     */
#ifdef HAVE_CURLOPT_PROTOCOLS_STR
    curl_setopt(easy, CURLOPT_PROTOCOLS_STR, CURL_PROTOCOLS, errp);
#else
    curl_setopt(easy, CURLOPT_PROTOCOLS, (long)CURL_PROTOCOLS, errp);
#endif
    /*
     * By default one transfer per connection, even where HTTP/2 is
     * offered: links cap each connection's rate (CDNs do, per flow), and
     * libcurl multiplexes every transfer over one of them.  Converting a
     * 1 GiB qcow2 took 11.25 times longer over HTTP/2 with a 40 ms link
     * of 10 MB/s per connection, 1.02 times with 150 ms and 25 MB/s
     * shared, and no measurably longer on loopback
     * (tests/bench/results/http2.md).  With 'http-version=http2',
     * https negotiates HTTP/2 in the TLS handshake (HTTP/1.1 if the server
     * does not offer it), and http speaks it from the start, as RFC 9113
     * has it for cleartext; a new transfer waits for a connection that can
     * take another stream rather than opening one.
     */
    if (s->http2) {
        curl_setopt(easy, CURLOPT_HTTP_VERSION,
                    g_str_has_prefix(s->url, "https://") ?
                    (long)CURL_HTTP_VERSION_2TLS :
                    (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE, errp);
        curl_setopt(easy, CURLOPT_PIPEWAIT, 1L, errp);
    } else {
        curl_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1,
                    errp);
    }
    if (s->ftp_tls) {
        curl_setopt(easy, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL, errp);
    }
    curl_setopt(easy, CURLOPT_SSL_VERIFYPEER, (long)s->sslverify, errp);
    curl_setopt(easy, CURLOPT_SSL_VERIFYHOST, s->sslverify ? 2L : 0L, errp);
    if (s->tls_ca) {
        /* Exactly what the tls-creds object trusts */
        curl_setopt(easy, CURLOPT_CAINFO, s->tls_ca, errp);
        curl_setopt(easy, CURLOPT_CAPATH, (char *)NULL, errp);
        if (s->tls_crl) {
            curl_setopt(easy, CURLOPT_CRLFILE, s->tls_crl, errp);
        }
        if (s->tls_cert) {
            curl_setopt(easy, CURLOPT_SSLCERT, s->tls_cert, errp);
            curl_setopt(easy, CURLOPT_SSLKEY, s->tls_key, errp);
        }
        if (s->tls_key_password) {
            curl_setopt(easy, CURLOPT_KEYPASSWD, s->tls_key_password, errp);
        }
    } else if (s->sslverify && curl_trust_bundle_only()) {
        curl_setopt(easy, CURLOPT_CAPATH, (char *)NULL, errp);
    }
    /*
     * 'timeout' bounds connecting and any stall of a transfer, not its
     * length: a large fetch on a slow link may take longer, and that is
     * fine while bytes arrive.
     */
    curl_setopt(easy, CURLOPT_CONNECTTIMEOUT, (long)s->timeout, errp);
    curl_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, s->timeout ? 1L : 0L, errp);
    curl_setopt(easy, CURLOPT_LOW_SPEED_TIME, (long)s->timeout, errp);
    curl_setopt(easy, CURLOPT_SHARE, s->share, errp);
    if (s->proxy_username) {
        curl_setopt(easy, CURLOPT_PROXYUSERNAME, s->proxy_username, errp);
    }
    if (s->proxy_password) {
        curl_setopt(easy, CURLOPT_PROXYPASSWORD, s->proxy_password, errp);
    }
    return curl_aim(s, easy, s->url, errp);
}

/*
 * Errors
 */

/* The errno of an HTTP error status, for the guest and the caller */
static int curl_status_errno(long status)
{
    switch (status) {
    case 401:
    case 403:
    case 407:
        return -EACCES;
    case 404:
    case 410:
        return -ENOENT;
    case 416:
        return -ESTALE;     /* the file shrank under us */
    default:
        return -EIO;
    }
}

/*
 * Whether an HTTP error status says something of the file itself (it is
 * not there, or not for us), rather than of the request
 */
static bool curl_status_is_final(long status)
{
    return status == 401 || status == 404 || status == 407 || status == 410;
}

/* The errno of a libcurl failure */
static int curl_errno(CURLcode code, long status)
{
    switch (code) {
    case CURLE_OK:
        return 0;
    case CURLE_HTTP_RETURNED_ERROR:
        return curl_status_errno(status);
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return -EHOSTUNREACH;
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_LOGIN_DENIED:
    case CURLE_REMOTE_ACCESS_DENIED:
    case CURLE_PEER_FAILED_VERIFICATION:
        return -EACCES;
    case CURLE_REMOTE_FILE_NOT_FOUND:
        return -ENOENT;
    case CURLE_TOO_MANY_REDIRECTS:
        return -ELOOP;
    case CURLE_UNSUPPORTED_PROTOCOL:
        return -EPROTONOSUPPORT;
    case CURLE_URL_MALFORMAT:
        return -EINVAL;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_RANGE_ERROR:
    case CURLE_WEIRD_SERVER_REPLY:
        return -EPROTO;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return -ECONNRESET;
    default:
        return -EIO;
    }
}

/*
 * The proxy that libcurl takes from the environment for @url, as messages
 * show it (without its password), or NULL
 */
static char *curl_proxy_shown(const char *url)
{
    const char *scheme = g_uri_peek_scheme(url);
    g_autofree char *lower = NULL;
    g_autofree char *upper = NULL;
    g_autofree char *full = NULL;
    const char *value = NULL;

    if (!scheme) {
        return NULL;
    }
    lower = g_strdup_printf("%s_proxy", scheme);
    upper = g_ascii_strup(lower, -1);
    /* (libcurl ignores HTTP_PROXY, which a CGI request could set) */
    value = g_getenv(lower);
    if (!value && strcmp(scheme, "http")) {
        value = g_getenv(upper);
    }
    value = value ?: g_getenv("all_proxy") ?: g_getenv("ALL_PROXY");
    if (!value || !*value) {
        return NULL;
    }
    full = strstr(value, "://") ? g_strdup(value)
                                : g_strdup_printf("http://%s", value);
    return curl_url_shown(full);
}

/*
 * -errno for a transfer of @easy to @url that failed with @code, and why
 * in @why, with libcurl's own words.  A proxy that refuses to open a
 * tunnel (to an https server) leaves no HTTP status: its answer to
 * CONNECT is elsewhere.  Only a proxy answers 407.
 */
static int curl_failure(BDRVCURLState *s, CURL *easy, const char *url,
                        CURLcode code, long status, const char *errbuf,
                        char *why, size_t size)
{
    const char *text = *errbuf ? errbuf : curl_easy_strerror(code);
    g_autofree char *proxy = NULL;
    long proxy_status = 0;

    /*
     * Should CURL_FTPS_POLL_MS not be enough: the transfer timed out, and
     * libcurl read the late answer to SIZE as one to EPSV.
     */
    if (s->ftps_poll && code == CURLE_FTP_WEIRD_PASV_REPLY) {
        snprintf(why, size, "the FTPS transfer stalled: libcurl %s stops "
                 "watching the control connection while the data "
                 "connection waits for TLS; libcurl 8.7 and later do not "
                 "(%s)", curl_version_info(CURLVERSION_NOW)->version, text);
        return -EIO;                /* (asking again stalls again) */
    }

    curl_easy_getinfo(easy, CURLINFO_HTTP_CONNECTCODE, &proxy_status);
    if (proxy_status >= 300 ||
        (code == CURLE_HTTP_RETURNED_ERROR && status == 407)) {
        proxy = curl_proxy_shown(url);
        snprintf(why, size, "the proxy%s%s answered HTTP %ld%s (%s)",
                 proxy ? " " : "", proxy ?: "",
                 proxy_status >= 300 ? proxy_status : status,
                 proxy_status >= 300 ? " to CONNECT" : "", text);
        return curl_status_errno(proxy_status >= 300 ? proxy_status
                                                     : status);
    }
    if (code == CURLE_HTTP_RETURNED_ERROR) {
        snprintf(why, size, "the server answered HTTP %ld (%s)", status,
                 text);
    } else {
        snprintf(why, size, "%s", text);
    }
    return curl_errno(code, status);
}

/* Fail @t with @ret, for the reason the format says */
static bool G_GNUC_PRINTF(3, 4)
curl_transfer_fail(CURLTransfer *t, int ret, const char *fmt, ...)
{
    va_list ap;

    t->ret = ret;
    va_start(ap, fmt);
    vsnprintf(t->why, sizeof(t->why), fmt, ap);
    va_end(ap);
    return false;
}

/*
 * The event loop: libcurl tells us what to watch, the event loop tells
 * libcurl what happened, the readers whose bytes arrived are woken, and
 * every finished transfer is handled.  Every handler returns at once if
 * the node left its AioContext while the handler waited for the lock.
 */

static void curl_start_transfers_locked(BDRVCURLState *s);
static void curl_poll_soon_locked(BDRVCURLState *s);
static void curl_transfer_done_locked(CURLTransfer *t, CURLcode result);
static void curl_quiesce_locked(BDRVCURLState *s);

static void curl_multi_do(BDRVCURLState *s, curl_socket_t fd, int events)
{
    CURLMsg *msg;
    int running, left;

    QEMU_LOCK_GUARD(&s->mutex);
    if (!s->aio_context) {
        return;
    }
    curl_multi_socket_action(s->multi, fd, events, &running);
    if (s->ftps_poll) {
        /* Let every transfer read what it does not ask us to watch */
        curl_multi_perform(s->multi, &running);
    }
    range_cache_wake_locked(&s->cache);
    while ((msg = curl_multi_info_read(s->multi, &left))) {
        CURLTransfer *t;

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        curl_transfer_done_locked(t, msg->data.result);
    }
    if (s->quiesced) {
        /* The reads just woken may need no more of their fetches */
        curl_quiesce_locked(s);
    }
    curl_start_transfers_locked(s);
    if (s->ftps_poll && s->active) {
        curl_poll_soon_locked(s);
    }
}

static void curl_sock_read_cb(void *opaque)
{
    CURLSocket *sock = opaque;

    curl_multi_do(sock->s, sock->fd, CURL_CSELECT_IN);
}

static void curl_sock_write_cb(void *opaque)
{
    CURLSocket *sock = opaque;

    curl_multi_do(sock->s, sock->fd, CURL_CSELECT_OUT);
}

static void curl_timer_expired(void *opaque)
{
    curl_multi_do(opaque, CURL_SOCKET_TIMEOUT, 0);
}

/* Watch @sock in aio_context for what libcurl asked, or not at all */
static void curl_watch_socket_locked(BDRVCURLState *s, CURLSocket *sock,
                                     bool watch)
{
    bool in = watch && (sock->what & CURL_POLL_IN);
    bool out = watch && (sock->what & CURL_POLL_OUT);

    if (s->aio_context) {
        aio_set_fd_handler(s->aio_context, sock->fd,
                           in ? curl_sock_read_cb : NULL,
                           out ? curl_sock_write_cb : NULL, NULL, NULL, sock);
    }
}

/* Arm @timer of aio_context to fire at @when_ms, unless we are detached */
static void curl_timer_mod_locked(BDRVCURLState *s, QEMUTimer *timer,
                                  int64_t when_ms)
{
    if (s->aio_context) {
        timer_mod(timer, when_ms);
    }
}

/*
 * CURLMOPT_SOCKETFUNCTION; called with the lock held.  Detached, the
 * sockets are only recorded: curl_attach_aio_context() watches them.
 */
static int curl_sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp,
                        void *socketp)
{
    BDRVCURLState *s = userp;
    CURLSocket *sock = socketp;

    trace_curl_sock_cb(s, what, fd);
    if (what == CURL_POLL_REMOVE) {
        if (sock) {
            curl_watch_socket_locked(s, sock, false);
            QLIST_REMOVE(sock, next);
            g_free(sock);
        }
        return 0;
    }
    if (!sock) {
        sock = g_new0(CURLSocket, 1);
        sock->s = s;
        sock->fd = fd;
        QLIST_INSERT_HEAD(&s->sockets, sock, next);
        curl_multi_assign(s->multi, fd, sock);
    }
    sock->what = what;
    curl_watch_socket_locked(s, sock, true);
    return 0;
}

/*
 * From 7.87.0 to 8.6.0, libcurl's multi-socket interface stops watching
 * the control connection while an FTPS data connection waits for TLS
 * (curl issue 12901), and a server that starts that handshake only after
 * RETR (vsftpd) waits for a RETR that never comes: the transfer stalls
 * until it times out.  With such a libcurl, every transfer of an FTPS node
 * is also run every CURL_FTPS_POLL_MS while any is active, which reads the
 * control connection's answers that nothing watches.
 */
#define CURL_FTPS_POLL_MS   10

static void curl_poll_soon_locked(BDRVCURLState *s)
{
    int64_t when_ms = qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                      CURL_FTPS_POLL_MS;

    if (!timer_pending(&s->timer) ||
        timer_expire_time_ns(&s->timer) > when_ms * SCALE_MS) {
        curl_timer_mod_locked(s, &s->timer, when_ms);
    }
}

/* CURLMOPT_TIMERFUNCTION; called with the lock held */
static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    BDRVCURLState *s = userp;

    trace_curl_timer_cb(s, timeout_ms);
    if (timeout_ms < 0) {
        timer_del(&s->timer);
    } else {
        curl_timer_mod_locked(s, &s->timer,
                              qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                              timeout_ms);
    }
    if (s->ftps_poll && s->active) {
        curl_poll_soon_locked(s);
    }
    return 0;
}

/*
 * Transfers
 */

/* The Content-Length of the answer as libcurl has it, or -1 if none */
static int64_t curl_content_length(CURL *easy)
{
#ifdef HAVE_CURLINFO_CONTENT_LENGTH_DOWNLOAD_T
    curl_off_t len = -1;

    curl_easy_getinfo(easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
#else
    double len = -1;

    curl_easy_getinfo(easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD, &len);
#endif
    return len < 0 ? -1 : len;
}

/* The modification time of an FTP file (MDTM), or -1 if unknown */
static int64_t curl_filetime(CURL *easy)
{
#ifdef HAVE_CURLINFO_FILETIME_T
    curl_off_t mtime = -1;

    curl_easy_getinfo(easy, CURLINFO_FILETIME_T, &mtime);
#else
    long mtime = -1;

    curl_easy_getinfo(easy, CURLINFO_FILETIME, &mtime);
#endif
    return mtime;
}

/*
 * Whether an answer comes from the file pinned at open: it carries the
 * validator that the file had then, byte for byte.  Whatever the status: a
 * cache in front of the server may ignore If-Range and send a range of a
 * newer file.  An answer that lacks the validator proves nothing, and is
 * refused like one that has another.
 */
static bool curl_transfer_check_pin(CURLTransfer *t)
{
    BDRVCURLState *s = t->s;
    CURLValidator *v;
    const char *name;

    switch (s->pin) {
    case CURL_PIN_SIZE:
        return true;
    case CURL_PIN_MDTM:
        if (curl_filetime(t->easy) != s->mtime) {
            return curl_transfer_fail(t, -ESTALE, "the remote file changed "
                                      "since it was opened (its "
                                      "modification time is not the same)");
        }
        return true;
    case CURL_PIN_ETAG:
        v = &t->headers.etag;
        name = "ETag";
        break;
    default:
        v = &t->headers.last_modified;
        name = "Last-Modified";
        break;
    }
    if (!v->seen) {
        return curl_transfer_fail(t, -EPROTO, "the answer has no %s, so it "
                                  "cannot be checked against the file "
                                  "opened (%s %.*s)", name, name,
                                  CURL_VALIDATOR_SHOWN, s->validator);
    }
    if (v->bad) {
        return curl_transfer_fail(t, -ESTALE, "the remote file changed "
                                  "since it was opened (an invalid or "
                                  "overlong %s, not %.*s)", name,
                                  CURL_VALIDATOR_SHOWN, s->validator);
    }
    if (strcmp(v->value, s->validator)) {
        return curl_transfer_fail(t, -ESTALE, "the remote file changed "
                                  "since it was opened (%s %.*s, not %.*s)",
                                  name, CURL_VALIDATOR_SHOWN, v->value,
                                  CURL_VALIDATOR_SHOWN, s->validator);
    }
    return true;
}

/*
 * An FTP transfer asks for the rest of the file from t->first: libcurl
 * checks the file's size (SIZE) first, and says how much is left
 */
static bool curl_transfer_check_ftp(CURLTransfer *t)
{
    BDRVCURLState *s = t->s;
    int64_t left = curl_content_length(t->easy);

    if (left >= 0 && left != s->remote_len - t->first) {
        return curl_transfer_fail(t, -ESTALE, "the remote file changed: it "
                                  "has %" PRIu64 " bytes, not %" PRIu64,
                                  t->first + left, s->remote_len);
    }
    t->framed = true;       /* the data connection carries bytes in order */
    return curl_transfer_check_pin(t);
}

/*
 * Check an HTTP answer before its first byte is stored: the status, the
 * range and the length it announces, against what was asked and what the
 * file was at open.  Its bytes are proven as they come only if a
 * Content-Length frames them; else (chunked, or ended by the connection's
 * close) only once the answer is over and complete.
 */
static bool curl_transfer_check_answer(CURLTransfer *t)
{
    BDRVCURLState *s = t->s;
    CURLHeaders *h = &t->headers;
    uint64_t expected;
    long status = 0;

    if (!h->http) {
        return curl_transfer_check_ftp(t);
    }
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    if (h->malformed) {
        return curl_transfer_fail(t, -EPROTO, "the server sent a malformed "
                                  "header line (folded, or without a "
                                  "colon)");
    }
    if (!curl_transfer_check_pin(t)) {
        return false;
    }
    if (h->content_encoding[0] &&
        g_ascii_strcasecmp(h->content_encoding, "identity")) {
        /* We never ask for it; its bytes are not the file's */
        return curl_transfer_fail(t, -EPROTO, "the server sent the bytes "
                                  "encoded (Content-Encoding: %s)",
                                  h->content_encoding);
    }
    if (status == 206 && h->has_range) {
        if (h->range_total != s->remote_len) {
            return curl_transfer_fail(t, -ESTALE, "the remote file "
                                      "changed: it has %" PRIu64 " bytes, "
                                      "not %" PRIu64, h->range_total,
                                      s->remote_len);
        }
        if (h->range_first != t->first || h->range_last != t->last) {
            return curl_transfer_fail(t, -EPROTO, "the server sent bytes %"
                                      PRIu64 "-%" PRIu64 " for a request "
                                      "of bytes %" PRIu64 "-%" PRIu64,
                                      h->range_first, h->range_last,
                                      t->first, t->last);
        }
        expected = t->last - t->first + 1;
    } else if (status == 200 && t->first == 0 &&
               t->last == s->remote_len - 1) {
        expected = s->remote_len;       /* the whole file, as asked */
    } else {
        return curl_transfer_fail(t, -EPROTO, "the server answered a range "
                                  "request with HTTP %ld%s", status,
                                  status == 206 ?
                                  " but no valid Content-Range" : "");
    }
    if (h->length_bad) {
        return curl_transfer_fail(t, -EPROTO, "the server sent an invalid "
                                  "Content-Length");
    }
    if (h->length_seen && h->length != expected) {
        return curl_transfer_fail(t, -EPROTO, "the server announced %"
                                  PRIu64 " bytes for a range of %" PRIu64,
                                  h->length, expected);
    }
    t->framed = h->length_seen && !h->coded;
    return true;
}

/* CURLOPT_WRITEFUNCTION; called with the lock held */
static size_t curl_write_cb(char *ptr, size_t size, size_t nmemb,
                            void *opaque)
{
    CURLTransfer *t = opaque;
    BDRVCURLState *s = t->s;
    RangeCacheFetch *f = t->fetch;
    size_t len = size * nmemb;
    size_t n = len;

    if (curl_is_redirect(t->headers.status)) {
        return len;         /* the body of a redirect: followed when done */
    }
    if (!t->checked && !curl_transfer_check_answer(t)) {
        return 0;
    }
    t->checked = true;
    if (t->open_ended) {
        /* A read or readahead may have made the fetch longer since */
        n = MIN(len, f->end - f->pos);
        t->last = s->remote_offset + f->end - 1;
        t->cut = n < len;
    }
    if (!range_cache_fetch_store_locked(&s->cache, f, ptr, n)) {
        curl_transfer_fail(t, -EPROTO, "the server sent more than the %"
                           PRIu64 " bytes asked for", t->last - t->first + 1);
        return 0;
    }
    if (n) {
        t->received += n;
        t->progress_ns = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);
    }
    if (t->framed) {
        range_cache_fetch_prove_locked(&s->cache, f);
    }
    if (t->cut) {
        /* Over, even if a read would now make it longer */
        range_cache_fetch_seal_locked(&s->cache, f);
        return 0;
    }
    return len;
}

static bool curl_transfer_init(BDRVCURLState *s, CURLTransfer *t,
                               Error **errp)
{
    ERRP_GUARD();

    t->s = s;
    t->easy = curl_easy_init();
    if (!t->easy) {
        error_setg(errp, "libcurl could not create a transfer");
        return false;
    }
    curl_setup_easy(s, t->easy, t->errbuf, &t->headers, errp);
    curl_setopt(t->easy, CURLOPT_PRIVATE, t, errp);
    curl_setopt(t->easy, CURLOPT_WRITEFUNCTION, curl_write_cb, errp);
    curl_setopt(t->easy, CURLOPT_WRITEDATA, t, errp);
    if (s->pin == CURL_PIN_MDTM) {
        curl_setopt(t->easy, CURLOPT_FILETIME, 1L, errp);
    }
    return !*errp;
}

/*
 * Give @t the fetch to run.  A transfer counts as a request in flight of
 * the node while it has a request out, so that a drain waits for it: not
 * while it waits to ask again (curl_transfer_park_locked()), nor while a
 * drain holds it (curl_quiesce_locked()).
 */
static void curl_transfer_bind_locked(CURLTransfer *t,
                                      RangeCacheFetch *fetch)
{
    BDRVCURLState *s = t->s;

    t->fetch = fetch;
    t->attempt = 0;
    t->fell_back = false;
    t->hops = 0;
    t->target = g_strdup(s->redirect_url);
    s->active++;
    s->active_readahead += fetch->readahead;
    bdrv_inc_in_flight(s->bs);
}

/* Whether @t counts as a request in flight (curl_transfer_bind_locked()) */
static bool curl_transfer_in_flight(CURLTransfer *t)
{
    return t->fetch && !t->retry_at_ms && !t->paused;
}

/* ftp:// or ftps:// */
static bool curl_is_ftp(BDRVCURLState *s)
{
    return g_str_has_prefix(s->url, "ftp");
}

/* Ask for what t->fetch still needs; 0, or -errno and why in t->why */
static int curl_transfer_submit_locked(CURLTransfer *t)
{
    BDRVCURLState *s = t->s;
    Error *local_err = NULL;
    Error **errp = &local_err;
    CURLMcode mcode;

    if (t->retry_at_ms) {
        t->retry_at_ms = 0;
        bdrv_inc_in_flight(s->bs);      /* parked no more */
    }
    t->proven_before = t->fetch->proven;
    range_cache_fetch_remote_range(&s->cache, t->fetch, &t->first, &t->last);
    /*
     * An FTP transfer cannot be told where to end: the server sends the
     * rest of the file until the data connection closes.  Ask to the end
     * and cut the transfer where its fetch ends by then: reads and
     * readahead extend a fetch in flight rather than start one after it
     * (range_cache_set_fetches_extend()), so that a stream costs one
     * transfer, and what the server sent in vain once.
     */
    t->open_ended = curl_is_ftp(s);
    t->cut = false;
    if (t->open_ended) {
        snprintf(t->range, sizeof(t->range), "%" PRIu64 "-", t->first);
    } else {
        snprintf(t->range, sizeof(t->range), "%" PRIu64 "-%" PRIu64,
                 t->first, t->last);
    }
    t->received = 0;
    t->checked = false;
    t->framed = false;
    t->ret = 0;
    t->why[0] = '\0';
    t->errbuf[0] = '\0';
    t->headers = (CURLHeaders) { 0 };
    t->start_ns = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);
    t->progress_ns = t->start_ns;

    curl_aim(s, t->easy, t->target ?: s->url, errp);
    curl_setopt(t->easy, CURLOPT_RANGE, t->range, errp);
    curl_setopt(t->easy, CURLOPT_FRESH_CONNECT,
                (long)(t->attempt > 0 && curl_is_ftp(s)), errp);
    if (local_err) {
        snprintf(t->why, sizeof(t->why), "%s", error_get_pretty(local_err));
        error_free(local_err);
        return -EIO;
    }
    mcode = curl_multi_add_handle(s->multi, t->easy);
    if (mcode != CURLM_OK) {
        snprintf(t->why, sizeof(t->why), "%s", curl_multi_strerror(mcode));
        return -EIO;
    }
    trace_curl_transfer_submit_locked(s, t->first, t->last,
                                      t->fetch->readahead, t->attempt,
                                      s->active);
    if (s->timeout && !timer_pending(&s->watchdog)) {
        curl_timer_mod_locked(s, &s->watchdog,
                              qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                              CURL_WATCHDOG_MS);
    }
    return 0;
}

/*
 * Tell the user about the first failure that a read sees; the guest only
 * sees an errno.  A readahead fetch that no read waits for fails quietly
 * (the trace has it): a read of its bytes fetches them again.
 */
static void curl_report_failure_locked(BDRVCURLState *s, CURLTransfer *t,
                                       int ret)
{
    if (!range_cache_fetch_wanted(t->fetch)) {
        return;
    }
    if (!s->error_reported) {
        s->error_reported = true;
        error_report("curl: %s: reading bytes %" PRIu64 "-%" PRIu64
                     " failed: %s (%s)", s->url_shown, t->first, t->last,
                     t->why, strerror(-ret));
    }
}

/*
 * End @t's fetch with @ret, and let @t take another.  Drops the lock while
 * readers run (range_cache_fetch_done_locked()).
 */
static void curl_transfer_finish_locked(CURLTransfer *t, int ret)
{
    BDRVCURLState *s = t->s;
    RangeCacheFetch *fetch = t->fetch;
    bool in_flight = curl_transfer_in_flight(t);

    if (ret == 0) {
        s->error_reported = false;      /* report the next outage too */
    } else if (ret != -ECANCELED) {
        curl_report_failure_locked(s, t, ret);
    }
    s->active--;
    s->active_readahead -= fetch->readahead;
    t->fetch = NULL;
    t->retry_at_ms = 0;
    t->paused = false;
    g_free(t->target);
    t->target = NULL;
    range_cache_fetch_done_locked(&s->cache, fetch, ret);
    if (in_flight) {
        bdrv_dec_in_flight(s->bs);
    }
}

/* Whether asking again may help */
static bool curl_transfer_retryable(bool ftp, CURLcode code, long status,
                                    int ret)
{
    if (code == CURLE_HTTP_RETURNED_ERROR) {
        /* Server errors, a request timeout, and too many requests */
        return status >= 500 || status == 408 || status == 429;
    }
    /*
     * FTP (where @status is the server's last reply): 4yz replies are
     * transient failures (RFC 959), and a refused REST can be the reply
     * to an earlier command, read out of turn on a reused connection.
     * The next try opens a new connection.
     */
    if (ftp && (code == CURLE_FTP_COULDNT_USE_REST ||
                (status >= 400 && status < 500))) {
        return true;
    }
    /*
     * A reset or refused connection, a stall, and an answer that was not
     * what we asked for (a proxy in the way may have garbled it): the next
     * answer is checked as well.  Not a file that changed (-ESTALE).
     */
    return ret == -ECONNRESET || ret == -ETIMEDOUT || ret == -ECONNREFUSED ||
           ret == -EPROTO;
}

/*
 * 0 if all that was asked for arrived, and is proven now that the answer
 * ended as its framing says; else -errno and why in t->why
 */
static int curl_transfer_result_locked(CURLTransfer *t, CURLcode result,
                                       long status)
{
    RangeCacheFetch *fetch = t->fetch;

    if (t->ret < 0) {
        return t->ret;                  /* our checks stopped it */
    }
    if (t->cut && result == CURLE_WRITE_ERROR) {
        result = CURLE_OK;              /* we stopped it where it ends */
    }
    if (result != CURLE_OK) {
        return curl_failure(t->s, t->easy, t->target ?: t->s->url, result,
                            status, t->errbuf, t->why, sizeof(t->why));
    }
    if (fetch->pos != fetch->end) {
        curl_transfer_fail(t, -ECONNRESET, "the transfer ended after %"
                           PRIu64 " of %" PRIu64 " bytes", t->received,
                           t->last - t->first + 1);
        return t->ret;
    }
    range_cache_fetch_prove_locked(&t->s->cache, fetch);
    return 0;
}

/*
 * Where url redirected may have expired (a presigned object store URL, say):
 * ask url again, which redirects anew.  Only once per fetch, so that a
 * redirect that keeps expiring is an error.  Each transfer knows where it
 * was sent: the others sent to the same place fall back on their own.
 */
static bool curl_transfer_fall_back_locked(CURLTransfer *t, long status)
{
    BDRVCURLState *s = t->s;

    if (!t->target || t->fell_back) {
        return false;
    }
    trace_curl_transfer_fall_back_locked(s, t->first, t->last, status);
    if (s->redirect_url && !strcmp(s->redirect_url, t->target)) {
        g_free(s->redirect_url);
        s->redirect_url = NULL;
    }
    g_free(t->target);
    t->target = NULL;
    t->hops = 0;
    t->fell_back = true;
    return true;
}

/* How long the server asked us to wait with @t's answer, or -1 */
static int64_t curl_retry_after_ms(CURLTransfer *t)
{
    return t->headers.http && t->headers.retry_after_ms >= 0 ?
           MIN(t->headers.retry_after_ms, CURL_RETRY_MAX_DELAY_MS) : -1;
}

/*
 * How long to wait before retry number @attempt: what the server asked for,
 * or twice as long as before, from CURL_RETRY_DELAY_MS on; each between
 * half and all of it at random, so that transfers that failed together do
 * not come back together
 */
static int64_t curl_retry_delay_ms(CURLTransfer *t, unsigned attempt)
{
    int64_t delay = curl_retry_after_ms(t);

    if (delay >= 0) {
        return delay;
    }
    delay = MIN((int64_t)CURL_RETRY_DELAY_MS << MIN(attempt - 1, 16),
                CURL_RETRY_MAX_DELAY_MS);
    return delay / 2 + g_random_int_range(0, delay / 2 + 1);
}

/*
 * @t waits until @when_ms to ask again.  Nothing of it is in flight, so
 * that a drain need not wait for its backoff: while the node is drained,
 * it asks again only if a read waits for it (curl_may_retry_locked()).
 */
static void curl_transfer_park_locked(CURLTransfer *t, int64_t when_ms)
{
    t->retry_at_ms = when_ms;
    bdrv_dec_in_flight(t->s->bs);
}

/* Whether parked @t may ask again once its time has come */
static bool curl_may_retry_locked(CURLTransfer *t)
{
    return t->fetch && t->retry_at_ms &&
           (!t->s->quiesced || range_cache_fetch_wanted(t->fetch));
}

/*
 * Whether to ask again for what @t did not prove, and park it until then.
 * Only the attempts in a row that moved the fetch less than a granule
 * count against 'retries'.
 */
static bool curl_transfer_again_locked(CURLTransfer *t, CURLcode result,
                                       long status, int ret)
{
    BDRVCURLState *s = t->s;
    int64_t delay_ms;

    if (result == CURLE_HTTP_RETURNED_ERROR && status >= 400 &&
        status < 500 && status != 408 && status != 429) {
        return curl_transfer_fall_back_locked(t, status);
    }
    if (t->fetch->proven >= t->proven_before + RANGE_CACHE_GRANULE) {
        t->attempt = 0;
    }
    if (t->attempt >= s->retries ||
        !curl_transfer_retryable(curl_is_ftp(s), result, status, ret)) {
        return false;
    }
    t->attempt++;
    s->nb_retries++;
    delay_ms = curl_retry_delay_ms(t, t->attempt);
    curl_transfer_park_locked(t, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                              delay_ms);
    trace_curl_transfer_again_locked(s, t->first, t->last, t->attempt,
                                     delay_ms, ret, t->why);
    return true;
}

/*
 * Whether the server asked us to wait (Retry-After with a 429 or a 503):
 * not only what it refused, but any new request waits too, unless the
 * node is drained (a drain cuts backoff short, see curl_quiesce_locked())
 */
static bool curl_quiet_locked(BDRVCURLState *s)
{
    return !s->quiesced &&
           s->quiet_until_ms > qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
}

/* Run the retry timer for the first transfer that may ask again */
static void curl_arm_retry_timer_locked(BDRVCURLState *s)
{
    int64_t first = INT64_MAX;
    unsigned i;

    for (i = 0; i < s->connections; i++) {
        if (curl_may_retry_locked(&s->transfers[i])) {
            first = MIN(first, s->transfers[i].retry_at_ms);
        }
    }
    if (curl_quiet_locked(s) && (!QTAILQ_EMPTY(&s->miss_queue) ||
                                 !QTAILQ_EMPTY(&s->readahead_queue))) {
        first = MIN(first, s->quiet_until_ms);
    }
    if (first == INT64_MAX) {
        timer_del(&s->retry_timer);
    } else {
        curl_timer_mod_locked(s, &s->retry_timer, first);
    }
}

/*
 * Follow a redirect that @t got: set its target to where it leads, or fail
 * it and say why.  Credentials go along only where curl_aim() allows.
 */
static bool curl_transfer_follow_locked(CURLTransfer *t)
{
    BDRVCURLState *s = t->s;
    char *where = NULL;
    int ret;

    curl_easy_getinfo(t->easy, CURLINFO_REDIRECT_URL, &where);
    if (!where) {
        return curl_transfer_fail(t, -EPROTO, "the server answered HTTP "
                                  "%ld with no Location", t->headers.status);
    }
    ret = curl_may_redirect(s, t->target ?: s->url, where, ++t->hops,
                            t->why, sizeof(t->why));
    if (ret < 0) {
        t->ret = ret;
        return false;
    }
    g_free(t->target);
    t->target = g_strdup(where);
    return true;
}

static void curl_transfer_done_locked(CURLTransfer *t, CURLcode result)
{
    BDRVCURLState *s = t->s;
    RangeCacheFetch *fetch = t->fetch;
    long status = 0, new_conns = 0;
    int ret;

    if (t->paused) {
        /* It ended before the pause took: it is in flight until handled */
        t->paused = false;
        bdrv_inc_in_flight(s->bs);
    }
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &new_conns);
    curl_multi_remove_handle(s->multi, t->easy);
    if (result == CURLE_OK && t->headers.http && curl_is_redirect(status) &&
        t->ret == 0) {
        ret = curl_transfer_follow_locked(t) ? curl_transfer_submit_locked(t)
                                             : t->ret;
        if (ret == 0) {
            return;
        }
    } else {
        ret = curl_transfer_result_locked(t, result, status);
    }

    s->nb_transfers++;
    trace_curl_transfer_done_locked(s, t->first, t->last, t->received,
                                    (qemu_clock_get_ns(QEMU_CLOCK_REALTIME) -
                                     t->start_ns) / SCALE_US,
                                    new_conns, ret, t->why);
    if (ret == 0 && t->hops && g_strcmp0(t->target, s->redirect_url)) {
        /* url redirected elsewhere since open: go there directly */
        g_free(s->redirect_url);
        s->redirect_url = g_strdup(t->target);
    }
    if (ret < 0) {
        /* What the answer could not prove is asked for again, or lost */
        range_cache_fetch_discard_locked(&s->cache, fetch);
    }
    if (ret < 0 && curl_retry_after_ms(t) >= 0) {
        s->quiet_until_ms = MAX(s->quiet_until_ms,
                                qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                                curl_retry_after_ms(t));
    }
    if (ret < 0 && fetch->proven == fetch->end) {
        /* It failed after its last byte (a stall, an FTP reply): no loss */
        range_cache_fetch_seal_locked(&s->cache, fetch);
        ret = 0;
    }
    if (ret < 0) {
        if (curl_transfer_again_locked(t, result, status, ret)) {
            if (t->retry_at_ms) {
                curl_arm_retry_timer_locked(s);
                return;
            }
            ret = curl_transfer_submit_locked(t);
            if (ret == 0) {
                return;
            }
        }
    }
    curl_transfer_finish_locked(t, ret);
}

/*
 * Readahead may use every connection but one, which stays free for a read
 * that misses the cache: otherwise that read (the metadata a format driver
 * looks up, say) waits for a readahead transfer to end.  The warm-up at
 * open is the exception: a connection kept free would be a cold one, and
 * a read that missed would pay its three round trips of handshakes, when
 * the first warm-up fetch leaves a ready connection one round trip later.
 * A drained node starts no readahead.
 */
static bool curl_may_read_ahead_locked(BDRVCURLState *s)
{
    return !s->quiesced &&
           (s->warm_up_left ||
            s->active_readahead < MAX(1, s->connections - 1));
}

static void curl_enqueue_locked(CURLFetchQueue *queue, RangeCacheFetch *fetch,
                                bool first)
{
    if (first) {
        QTAILQ_INSERT_HEAD(queue, fetch, queue_next);
    } else {
        QTAILQ_INSERT_TAIL(queue, fetch, queue_next);
    }
    fetch->queue = queue;
}

static void curl_unqueue_locked(RangeCacheFetch *fetch)
{
    CURLFetchQueue *queue = fetch->queue;

    QTAILQ_REMOVE(queue, fetch, queue_next);
    fetch->queue = NULL;
}

/* The next fetch to start, if one may start now; any queued one if @all */
static RangeCacheFetch *curl_dequeue_locked(BDRVCURLState *s, bool all)
{
    RangeCacheFetch *fetch = QTAILQ_FIRST(&s->miss_queue);

    if (!fetch && (all || curl_may_read_ahead_locked(s))) {
        fetch = QTAILQ_FIRST(&s->readahead_queue);
        if (fetch && s->warm_up_left) {
            s->warm_up_left--;
        }
    }
    if (fetch) {
        curl_unqueue_locked(fetch);
    }
    return fetch;
}

/* Start queued fetches, those that reads wait for first, while we may */
static void curl_start_transfers_locked(BDRVCURLState *s)
{
    RangeCacheFetch *fetch;

    if (curl_quiet_locked(s)) {
        curl_arm_retry_timer_locked(s);
        return;
    }
    while (s->active < s->connections &&
           (fetch = curl_dequeue_locked(s, false))) {
        CURLTransfer *t = s->transfers;
        int ret;

        while (t->fetch) {
            t++;
        }
        curl_transfer_bind_locked(t, fetch);
        ret = curl_transfer_submit_locked(t);
        if (ret < 0) {
            curl_transfer_finish_locked(t, ret);
        }
    }
}

/*
 * Hold @t while the node is drained: libcurl reads nothing more of its
 * answer, which waits in the connection, and it is not in flight
 */
static void curl_transfer_pause_locked(CURLTransfer *t)
{
    if (curl_easy_pause(t->easy, CURLPAUSE_RECV) == CURLE_OK) {
        trace_curl_transfer_pause_locked(t->s, t->first, t->last,
                                         t->received);
        t->paused = true;
        bdrv_dec_in_flight(t->s->bs);
    }
}

/*
 * Let @t go on.  What libcurl kept of its answer may reach curl_write_cb()
 * before this returns, and libcurl arms its timer to go on with the rest.
 */
static void curl_transfer_resume_locked(CURLTransfer *t)
{
    trace_curl_transfer_resume_locked(t->s, t->first, t->last, t->received);
    t->paused = false;
    t->progress_ns = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);
    bdrv_inc_in_flight(t->s->bs);
    curl_easy_pause(t->easy, CURLPAUSE_CONT);
}

/*
 * Drained: hold what no read waits for, so that the node is quiet but
 * loses nothing.  Transfers are paused, readahead not started yet stays
 * queued, and a transfer that waits to ask again waits on.  What a read
 * waits for goes on, at once even if it waited to ask again.
 *
 * What is held keeps its room in the cache and its connection.  While a
 * read of the drained node waits for either, paused transfers go on (they
 * are held again once it need not), those waiting to ask again end, and,
 * for room, readahead not started yet is dropped: a read that wants their
 * bytes later fetches them again.
 */
static void curl_quiesce_locked(BDRVCURLState *s)
{
    int64_t now_ms = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
    bool room_wanted = range_cache_room_wanted_locked(&s->cache);
    bool held_wanted = room_wanted || (!QTAILQ_EMPTY(&s->miss_queue) &&
                                       s->active >= s->connections);
    RangeCacheFetch *fetch;
    unsigned i;

    for (i = 0; i < s->connections; i++) {
        CURLTransfer *t = &s->transfers[i];
        bool wanted = t->fetch && range_cache_fetch_wanted(t->fetch);

        if (!t->fetch) {
            continue;
        }
        if (t->paused && (wanted || held_wanted)) {
            curl_transfer_resume_locked(t);
        } else if (t->retry_at_ms && wanted) {
            t->retry_at_ms = now_ms;
        } else if (t->retry_at_ms && held_wanted) {
            trace_curl_quiesce_locked(s, t->first, t->last, t->received);
            curl_transfer_finish_locked(t, -ECANCELED);
        } else if (!t->paused && !t->retry_at_ms && !wanted &&
                   !held_wanted) {
            curl_transfer_pause_locked(t);
        }
    }
    while (room_wanted && (fetch = QTAILQ_FIRST(&s->readahead_queue))) {
        curl_unqueue_locked(fetch);
        range_cache_fetch_done_locked(&s->cache, fetch, -ECANCELED);
    }
    curl_arm_retry_timer_locked(s);
}

/* Out of a drain: let go what it held */
static void curl_unquiesce_locked(BDRVCURLState *s)
{
    unsigned i;

    for (i = 0; i < s->connections; i++) {
        if (s->transfers[i].paused) {
            curl_transfer_resume_locked(&s->transfers[i]);
        }
    }
    curl_arm_retry_timer_locked(s);
}

/*
 * A transfer that gets no data for 'timeout' seconds fails (and is asked
 * for again, like any broken transfer).  libcurl's own low-speed limit
 * averages over several seconds, so it would notice a stall that follows a
 * burst of data late.
 */
static void curl_watchdog_expired(void *opaque)
{
    BDRVCURLState *s = opaque;
    int64_t now = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);
    unsigned i;

    QEMU_LOCK_GUARD(&s->mutex);
    if (!s->aio_context) {
        return;
    }
    for (i = 0; i < s->connections; i++) {
        CURLTransfer *t = &s->transfers[i];

        if (curl_transfer_in_flight(t) &&
            now - t->progress_ns > s->timeout * NANOSECONDS_PER_SECOND) {
            curl_transfer_fail(t, -ETIMEDOUT, "no data for %" PRIu64
                               " seconds", s->timeout);
            curl_transfer_done_locked(t, CURLE_OPERATION_TIMEDOUT);
        }
    }
    curl_start_transfers_locked(s);
    if (s->active) {
        curl_timer_mod_locked(s, &s->watchdog,
                              qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                              CURL_WATCHDOG_MS);
    }
}

/* Ask again for what the transfers whose time has come did not get */
static void curl_retry_expired(void *opaque)
{
    BDRVCURLState *s = opaque;
    int64_t now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
    unsigned i;

    QEMU_LOCK_GUARD(&s->mutex);
    if (!s->aio_context) {
        return;
    }
    for (i = 0; i < s->connections; i++) {
        CURLTransfer *t = &s->transfers[i];
        int ret;

        if (!curl_may_retry_locked(t) || t->retry_at_ms > now) {
            continue;
        }
        ret = curl_transfer_submit_locked(t);
        if (ret < 0) {
            curl_transfer_finish_locked(t, ret);
        }
    }
    curl_arm_retry_timer_locked(s);
    curl_start_transfers_locked(s);
}

/*
 * Start queued fetches in aio_context, and hold or let go what a drain
 * holds
 */
static void curl_start_bh(void *opaque)
{
    BDRVCURLState *s = opaque;

    QEMU_LOCK_GUARD(&s->mutex);
    if (!s->aio_context) {
        return;
    }
    if (s->quiesced) {
        curl_quiesce_locked(s);
    } else {
        curl_unquiesce_locked(s);
    }
    curl_start_transfers_locked(s);
}

/* RangeCacheOps.fetch: called with the lock held, in any thread */
static void curl_cache_fetch(void *opaque, RangeCacheFetch *fetch)
{
    BDRVCURLState *s = opaque;

    curl_enqueue_locked(fetch->readahead ? &s->readahead_queue :
                        &s->miss_queue, fetch, false);
    /* libcurl runs in the node's AioContext only; attach kicks it */
    if (s->start_bh) {
        qemu_bh_schedule(s->start_bh);
    }
}

/*
 * RangeCacheOps.wait: called with the lock held, in any thread.  A read
 * that waits for readahead not started yet would wait behind readahead
 * that nobody waits for (or for ever on a drained node): it goes first.
 * While the warm-up is queued, it is the warm-up that the read waits for.
 * On a drained node, what the read waits for goes on if it was held
 * (curl_quiesce_locked()).
 */
static void curl_cache_wait(void *opaque, RangeCacheFetch *fetch)
{
    BDRVCURLState *s = opaque;

    if (fetch->queue == &s->readahead_queue) {
        curl_unqueue_locked(fetch);
        if (s->warm_up_left) {
            s->warm_up_left--;
        }
        curl_enqueue_locked(&s->miss_queue, fetch, true);
    } else if (!s->quiesced) {
        return;
    }
    if (s->start_bh) {
        qemu_bh_schedule(s->start_bh);
    }
}

/*
 * RangeCacheOps.no_room: called with the lock held, in any thread.  A
 * drained node holds what no read waits for, and the room it takes in the
 * cache: a read that waits for room must have it.
 */
static void curl_cache_no_room(void *opaque)
{
    BDRVCURLState *s = opaque;

    if (s->quiesced && s->start_bh) {
        qemu_bh_schedule(s->start_bh);
    }
}

static void curl_cache_event(void *opaque, RangeCacheEvent event,
                             uint64_t offset, uint64_t bytes)
{
    static const char *const names[] = {
        [RANGE_CACHE_HIT] = "hit",
        [RANGE_CACHE_WAIT] = "wait",
        [RANGE_CACHE_MISS] = "miss",
        [RANGE_CACHE_NO_ROOM] = "no room",
        [RANGE_CACHE_EVICT] = "evict",
        [RANGE_CACHE_EVICT_UNREAD] = "evict unread",
        [RANGE_CACHE_READAHEAD] = "readahead",
    };

    trace_curl_cache_event(opaque, names[event], offset, bytes);
}

static const RangeCacheOps curl_cache_ops = {
    .fetch = curl_cache_fetch,
    .wait = curl_cache_wait,
    .no_room = curl_cache_no_room,
    .event = curl_cache_event,
};

/*
 * Drain: the block layer waits for the requests it counts, and for each
 * transfer in flight (curl_transfer_bind_locked()), until
 * curl_quiesce_locked() has held in the node's AioContext those that no
 * read waits for.  Called in the main loop.
 */
static void curl_drain_begin(BlockDriverState *bs)
{
    BDRVCURLState *s = bs->opaque;

    QEMU_LOCK_GUARD(&s->mutex);
    trace_curl_drain_begin(s, s->active);
    s->quiesced = true;
    if (s->start_bh) {
        qemu_bh_schedule(s->start_bh);
    }
}

static void curl_drain_end(BlockDriverState *bs)
{
    BDRVCURLState *s = bs->opaque;

    QEMU_LOCK_GUARD(&s->mutex);
    s->quiesced = false;
    if (s->start_bh) {
        qemu_bh_schedule(s->start_bh);
    }
}

/*
 * AioContext: the sockets, timers and bottom halves of the multi handle
 * live in one.  The node is drained while it moves: no transfer runs, but
 * libcurl may keep connections, and readahead may be queued.
 */
static void curl_attach_aio_context(BlockDriverState *bs,
                                    AioContext *new_context)
{
    BDRVCURLState *s = bs->opaque;
    CURLSocket *sock;

    QEMU_LOCK_GUARD(&s->mutex);
    s->aio_context = new_context;
    aio_timer_init(new_context, &s->timer, QEMU_CLOCK_REALTIME, SCALE_MS,
                   curl_timer_expired, s);
    aio_timer_init(new_context, &s->watchdog, QEMU_CLOCK_REALTIME, SCALE_MS,
                   curl_watchdog_expired, s);
    aio_timer_init(new_context, &s->retry_timer, QEMU_CLOCK_REALTIME,
                   SCALE_MS, curl_retry_expired, s);
    s->start_bh = aio_bh_new(new_context, curl_start_bh, s);
    QLIST_FOREACH(sock, &s->sockets, next) {
        curl_watch_socket_locked(s, sock, true);
    }
    /* What libcurl's timer would have done while we were away */
    timer_mod(&s->timer, qemu_clock_get_ms(QEMU_CLOCK_REALTIME));
    if (s->active && s->timeout) {
        timer_mod(&s->watchdog, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                  CURL_WATCHDOG_MS);
    }
    curl_arm_retry_timer_locked(s);
    qemu_bh_schedule(s->start_bh);
}

static void curl_nop_bh(void *opaque)
{
}

static void curl_detach_aio_context(BlockDriverState *bs)
{
    BDRVCURLState *s = bs->opaque;
    AioContext *old_context;
    CURLSocket *sock;

    WITH_QEMU_LOCK_GUARD(&s->mutex) {
        QLIST_FOREACH(sock, &s->sockets, next) {
            curl_watch_socket_locked(s, sock, false);
        }
        timer_del(&s->timer);
        timer_del(&s->watchdog);
        timer_del(&s->retry_timer);
        qemu_bh_delete(s->start_bh);
        s->start_bh = NULL;
        old_context = s->aio_context;
        s->aio_context = NULL;
    }
    /*
     * A handler that the old context's thread started before we took the
     * lock may still wait for it: it returns as soon as it has it, but it
     * uses @s until then.  A bottom half there runs after it.
     */
    if (old_context != qemu_get_current_aio_context()) {
        aio_wait_bh_oneshot(old_context, curl_nop_bh, NULL);
    }
}

/*
 * Opening: options, then a look at the remote file
 */

static QemuOptsList runtime_opts = {
    .name = "curl",
    .head = QTAILQ_HEAD_INITIALIZER(runtime_opts.head),
    .desc = {
        {
            .name = CURL_OPT_URL,
            .type = QEMU_OPT_STRING,
            .help = "URL of the image",
        },
        {
            .name = CURL_OPT_OFFSET,
            .type = QEMU_OPT_SIZE,
            .help = "Where the image starts in the remote file "
                    "(default: 0)",
        },
        {
            .name = CURL_OPT_BLOCKSIZE,
            .type = QEMU_OPT_SIZE,
            .help = "Size of the blocks of the cache, a power of two "
                    "from 4k to 64M (default: 64k)",
        },
        {
            .name = CURL_OPT_BLOCKCOUNT,
            .type = QEMU_OPT_NUMBER,
            .help = "Number of blocks cached, up to 1G in all "
                    "(default: as many as fit in 56M, at least 2)",
        },
        {
            .name = CURL_OPT_CONNECTIONS,
            .type = QEMU_OPT_NUMBER,
            .help = "Most transfers at once, 1 to 64 (default: 16)",
        },
        {
            .name = CURL_OPT_READAHEAD,
            .type = QEMU_OPT_SIZE,
            .help = "The least to fetch ahead of sequential reads, 0 for "
                    "no readahead; at most what the cache holds besides "
                    "one block (default: 48M, or less to fit the cache)",
        },
        {
            .name = CURL_OPT_X_READAHEAD_WINDOW,
            .type = QEMU_OPT_SIZE,
            .help = "Unstable: how far to fetch ahead of sequential reads "
                    "exactly, for tests and tuning",
        },
        {
            .name = CURL_OPT_SSLVERIFY,
            .type = QEMU_OPT_BOOL,
            .help = "Verify the server's TLS certificate (default: on)",
        },
        {
            .name = CURL_OPT_TIMEOUT,
            .type = QEMU_OPT_NUMBER,
            .help = "Seconds to connect, or to wait for data, before giving "
                    "up; 0 for no limit; opening takes 30 at most "
                    "(default: 5)",
        },
        {
            .name = CURL_OPT_COOKIE,
            .type = QEMU_OPT_STRING,
            .help = "Cookie or list of cookies to send with each request",
        },
        {
            .name = CURL_OPT_COOKIE_SECRET,
            .type = QEMU_OPT_STRING,
            .help = "ID of a secret with the cookies to send",
        },
        {
            .name = CURL_OPT_USERNAME,
            .type = QEMU_OPT_STRING,
            .help = "User name for authentication",
        },
        {
            .name = CURL_OPT_PASSWORD_SECRET,
            .type = QEMU_OPT_STRING,
            .help = "ID of a secret with the password for authentication",
        },
        {
            .name = CURL_OPT_PROXY_USERNAME,
            .type = QEMU_OPT_STRING,
            .help = "User name for proxy authentication",
        },
        {
            .name = CURL_OPT_PROXY_PASSWORD_SECRET,
            .type = QEMU_OPT_STRING,
            .help = "ID of a secret with the password for the proxy",
        },
        {
            .name = CURL_OPT_HEADER_SECRET,
            .type = QEMU_OPT_STRING,
            .help = "ID of a secret with request headers to send, one per "
                    "line, to the origin of the URL only",
        },
        {
            .name = CURL_OPT_TLS_CREDS,
            .type = QEMU_OPT_STRING,
            .help = "ID of a tls-creds-x509 object (endpoint=client) whose CA "
                    "is trusted and whose client certificate is presented",
        },
        {
            .name = CURL_OPT_TLS,
            .type = QEMU_OPT_BOOL,
            .help = "ftp only: protect the connections with TLS (AUTH TLS, "
                    "explicit FTPS) (default: off, on with tls-creds)",
        },
        {
            .name = CURL_OPT_HTTP_VERSION,
            .type = QEMU_OPT_STRING,
            .help = "http and https: http1 (one transfer per connection) or "
                    "http2 (streams over one connection) (default: http1)",
        },
        {
            .name = CURL_OPT_RETRIES,
            .type = QEMU_OPT_NUMBER,
            .help = "How often in a row to ask again for a transfer that "
                    "broke off, if it brings less than 4k each time, 0 to "
                    "16 (default: 5)",
        },
        { /* end of list */ }
    },
};

/* A secret's value, if @secret_opt names one */
static bool curl_get_secret(QemuOpts *opts, const char *secret_opt,
                            char **value, Error **errp)
{
    const char *id = qemu_opt_get(opts, secret_opt);

    *value = NULL;
    if (id) {
        *value = qcrypto_secret_lookup_as_utf8(id, errp);
        return *value != NULL;
    }
    return true;
}

/*
 * Refuse the value of option @name: "@rule, not VALUE", with the value as
 * the user gave it.  Over QMP a negative number for an unsigned option
 * arrives wrapped around; it is shown as the negative number it was.
 */
static bool G_GNUC_PRINTF(4, 5)
curl_bad_value(QemuOpts *opts, const char *name, Error **errp,
               const char *rule, ...)
{
    const char *value = qemu_opt_get(opts, name);
    g_autofree char *text = NULL;
    uint64_t n;
    va_list ap;

    va_start(ap, rule);
    text = g_strdup_vprintf(rule, ap);
    va_end(ap);
    if (value && !qemu_strtou64(value, NULL, 10, &n) && n > INT64_MAX) {
        error_setg(errp, "%s, not %" PRId64, text, (int64_t)n);
    } else {
        error_setg(errp, "%s, not %s", text, value);
    }
    return false;
}

/* How big the blocks and the cache are, and how we fetch */
static bool curl_parse_cache_options(BDRVCURLState *s, QemuOpts *opts,
                                     Error **errp)
{
    uint64_t blockcount, connections, room, readahead;
    const char *name;

    s->blocksize = qemu_opt_get_size(opts, CURL_OPT_BLOCKSIZE,
                                     CURL_DEFAULT_BLOCKSIZE);
    if (!is_power_of_2(s->blocksize) ||
        s->blocksize < RANGE_CACHE_MIN_BLOCK_SIZE ||
        s->blocksize > RANGE_CACHE_MAX_BLOCK_SIZE) {
        return curl_bad_value(opts, CURL_OPT_BLOCKSIZE, errp,
                              "blocksize must be a power of two between "
                              "4 KiB and 64 MiB");
    }

    /* By default, the cache has the same size whatever the block size */
    blockcount = qemu_opt_get_number(opts, CURL_OPT_BLOCKCOUNT,
                                     MAX(2, CURL_DEFAULT_CACHE / s->blocksize));
    if (blockcount < 1 || blockcount > CURL_MAX_CACHE / s->blocksize) {
        return curl_bad_value(opts, CURL_OPT_BLOCKCOUNT, errp,
                              "blockcount must be between 1 and %" PRIu64
                              " with a blocksize of %" PRIu64 " (the cache "
                              "may take at most 1 GiB)",
                              CURL_MAX_CACHE / s->blocksize, s->blocksize);
    }
    s->blockcount = blockcount;

    connections = qemu_opt_get_number(opts, CURL_OPT_CONNECTIONS,
                                      CURL_DEFAULT_CONNECTIONS);
    if (connections < 1 || connections > CURL_MAX_CONNECTIONS) {
        return curl_bad_value(opts, CURL_OPT_CONNECTIONS, errp,
                              "connections must be between 1 and %d",
                              CURL_MAX_CONNECTIONS);
    }
    s->connections = connections;

    /*
     * The window of readahead.  The driver of QEMU 10.0 and before added
     * 'readahead' bytes to each request (256 KiB by default), and
     * management tools pass what worked there: libvirt's documentation
     * has 64 KiB, virt-v2v passed 64 MiB.  Here it is the least the
     * window may be, so that no value makes reads slower than the
     * default; 0 still turns readahead off.  'x-readahead-window' sets
     * the window itself, for tests and tuning.  Readahead must leave room
     * for a block that a read needs: more than the cache holds is not an
     * error, it is what the cache holds.
     */
    room = (s->blockcount - 1) * s->blocksize;
    s->readahead = MIN(CURL_DEFAULT_READAHEAD, room);
    name = NULL;
    if (qemu_opt_get(opts, CURL_OPT_X_READAHEAD_WINDOW)) {
        if (qemu_opt_get(opts, CURL_OPT_READAHEAD)) {
            error_setg(errp, "'%s' and '%s' cannot be used together",
                       CURL_OPT_READAHEAD, CURL_OPT_X_READAHEAD_WINDOW);
            return false;
        }
        name = CURL_OPT_X_READAHEAD_WINDOW;
        s->readahead = qemu_opt_get_size(opts, name, 0);
    } else if (qemu_opt_get(opts, CURL_OPT_READAHEAD)) {
        name = CURL_OPT_READAHEAD;
        readahead = qemu_opt_get_size(opts, name, 0);
        s->readahead = readahead ? MAX(readahead, s->readahead) : 0;
    }
    if (s->readahead > room) {
        warn_report("curl: %s=%s is more than the cache holds besides the "
                    "block being read; using (blockcount - 1) * blocksize "
                    "= %" PRIu64 " bytes", name, qemu_opt_get(opts, name),
                    room);
        s->readahead = room;
    }

    /* (a negative number given over QMP reaches us as a huge one) */
    s->remote_offset = qemu_opt_get_size(opts, CURL_OPT_OFFSET, 0);
    if (s->remote_offset > INT64_MAX) {
        return curl_bad_value(opts, CURL_OPT_OFFSET, errp,
                              "offset must be between 0 and %" PRId64,
                              INT64_MAX);
    }
    return true;
}

/* @dir/@name if it exists; an error if it does not and is @required */
static bool curl_tls_file(const char *id, const char *dir, const char *name,
                          bool required, char **path, Error **errp)
{
    *path = g_build_filename(dir, name, NULL);
    if (access(*path, R_OK) == 0) {
        return true;
    }
    if (required || errno != ENOENT) {
        error_setg_errno(errp, errno, "%s '%s': cannot read %s",
                         CURL_OPT_TLS_CREDS, id, *path);
        return false;
    }
    g_free(*path);
    *path = NULL;
    return true;
}

/*
 * FTP over TLS as servers offer it today, "explicit" FTPS (RFC 4217): the
 * client asks for TLS with AUTH TLS on the FTP port, for the control and
 * the data connections, and gives up if the server does not offer it.
 * 'tls' asks for it, and so does 'tls-creds', which turns TLS on for NBD
 * too.  ftps:// is the older "implicit" kind, TLS from the first byte.
 */
static bool curl_parse_ftp_tls(BDRVCURLState *s, QemuOpts *opts,
                               Error **errp)
{
    const curl_version_info_data *info = curl_version_info(CURLVERSION_NOW);
    bool ftp = g_str_has_prefix(s->url, "ftp://");
    bool creds = qemu_opt_get(opts, CURL_OPT_TLS_CREDS) != NULL;

    if (qemu_opt_get(opts, CURL_OPT_TLS) && !ftp) {
        error_setg(errp, "'%s' is for ftp only: https and ftps always use "
                   "TLS", CURL_OPT_TLS);
        return false;
    }
    s->ftp_tls = ftp && qemu_opt_get_bool(opts, CURL_OPT_TLS, creds);
    if (ftp && creds && !s->ftp_tls) {
        error_setg(errp, "'%s' and '%s=off' cannot be used together",
                   CURL_OPT_TLS_CREDS, CURL_OPT_TLS);
        return false;
    }
    /* (see CURL_FTPS_POLL_MS) */
    s->ftps_poll = (s->ftp_tls || g_str_has_prefix(s->url, "ftps://")) &&
                   info->version_num >= 0x075700 &&
                   info->version_num < 0x080700;
    return true;
}

/*
 * HTTP/1.1 runs one transfer per connection, HTTP/2 multiplexes them over
 * one; which is faster depends on the link (see curl_setup_easy()).
 */
static bool curl_parse_http_version(BDRVCURLState *s, QemuOpts *opts,
                                    Error **errp)
{
    const char *value = qemu_opt_get(opts, CURL_OPT_HTTP_VERSION);
    const curl_version_info_data *info = curl_version_info(CURLVERSION_NOW);

    if (!value) {
        return true;
    }
    if (!g_str_has_prefix(s->url, "http://") &&
        !g_str_has_prefix(s->url, "https://")) {
        error_setg(errp, "'%s' is for http and https only",
                   CURL_OPT_HTTP_VERSION);
        return false;
    }
    /* (BlockdevCurlHttpVersion's values, for -drive as for blockdev-add) */
    if (strcmp(value, "http1") && strcmp(value, "http2")) {
        return curl_bad_value(opts, CURL_OPT_HTTP_VERSION, errp,
                              "http-version must be http1 or http2");
    }
    s->http2 = !strcmp(value, "http2");
    if (s->http2 && !(info->features & CURL_VERSION_HTTP2)) {
        error_setg(errp, "%s=http2: libcurl %s was built without HTTP/2",
                   CURL_OPT_HTTP_VERSION, info->version);
        return false;
    }
    /* Fixed in 8.0.0: curl's pull request 10643 */
    if (s->http2 && g_str_has_prefix(s->url, "http://") &&
        info->version_num < 0x080000) {
        error_setg(errp, "%s=http2 over http:// needs libcurl 8.0 or later: "
                   "libcurl %s fails the second request of a connection "
                   "that starts in HTTP/2", CURL_OPT_HTTP_VERSION,
                   info->version);
        return false;
    }
    return true;
}

/*
 * TLS as NBD and migration do it: a tls-creds-x509 object for a client
 * endpoint, with its directory of ca-cert.pem, and client-cert.pem and
 * client-key.pem if the server asks who we are
 */
static bool curl_parse_tls_creds(BDRVCURLState *s, QemuOpts *opts,
                                 Error **errp)
{
    ERRP_GUARD();
    const char *id = qemu_opt_get(opts, CURL_OPT_TLS_CREDS);
    g_autofree char *dir = NULL;
    g_autofree char *password_id = NULL;
    Object *obj;

    if (!id) {
        return true;
    }
    if (g_str_has_prefix(s->url, "http://")) {
        error_setg(errp, "'%s' is for https, ftps and ftp only",
                   CURL_OPT_TLS_CREDS);
        return false;
    }
    if (!s->sslverify) {
        error_setg(errp, "'%s' and '%s=off' cannot be used together",
                   CURL_OPT_TLS_CREDS, CURL_OPT_SSLVERIFY);
        return false;
    }
    obj = object_resolve_path_component(object_get_objects_root(), id);
    if (!obj) {
        error_setg(errp, "%s: no object with id '%s'", CURL_OPT_TLS_CREDS,
                   id);
        return false;
    }
    if (!object_dynamic_cast(obj, TYPE_QCRYPTO_TLS_CREDS_X509)) {
        error_setg(errp, "%s: object '%s' is not a %s", CURL_OPT_TLS_CREDS,
                   id, TYPE_QCRYPTO_TLS_CREDS_X509);
        return false;
    }
    if (!qcrypto_tls_creds_check_endpoint(QCRYPTO_TLS_CREDS(obj),
                                          QCRYPTO_TLS_CREDS_ENDPOINT_CLIENT,
                                          errp)) {
        error_prepend(errp, "%s: object '%s': ", CURL_OPT_TLS_CREDS, id);
        return false;
    }
    if (!object_property_get_bool(obj, "verify-peer", &error_abort)) {
        error_setg(errp, "%s: object '%s' has verify-peer=off, but the "
                   "driver always verifies the server", CURL_OPT_TLS_CREDS,
                   id);
        return false;
    }
    dir = object_property_get_str(obj, "dir", &error_abort);
    if (!dir || !*dir) {
        error_setg(errp, "%s: object '%s' has no dir", CURL_OPT_TLS_CREDS,
                   id);
        return false;
    }
    if (!curl_tls_file(id, dir, QCRYPTO_TLS_CREDS_X509_CA_CERT, true,
                       &s->tls_ca, errp) ||
        !curl_tls_file(id, dir, QCRYPTO_TLS_CREDS_X509_CA_CRL, false,
                       &s->tls_crl, errp) ||
        !curl_tls_file(id, dir, QCRYPTO_TLS_CREDS_X509_CLIENT_CERT, false,
                       &s->tls_cert, errp) ||
        !curl_tls_file(id, dir, QCRYPTO_TLS_CREDS_X509_CLIENT_KEY,
                       s->tls_cert != NULL, &s->tls_key, errp)) {
        return false;
    }
    password_id = object_property_get_str(obj, "passwordid", &error_abort);
    /* (an unset string property reads as "") */
    if (password_id && *password_id && s->tls_key) {
        s->tls_key_password = qcrypto_secret_lookup_as_utf8(password_id,
                                                            errp);
        return s->tls_key_password != NULL;
    }
    return true;
}

/* Whether @name is an HTTP field name (RFC 9110, token) */
static bool curl_is_field_name(const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (!g_ascii_isalnum(name[i]) && !strchr("!#$%&'*+-.^_`|~", name[i])) {
            return false;
        }
    }
    return len > 0;
}

/*
 * The headers of 'header-secret', one "Name: value" per line, go with every
 * request to the origin of the URL.  Error messages name a line, never what
 * it says.  Those that the driver sets itself cannot be replaced.
 */
static bool curl_parse_extra_headers(BDRVCURLState *s, Error **errp)
{
    static const char *const reserved[] = { "Range", "If-Range", "Host" };
    g_auto(GStrv) lines = NULL;
    unsigned i, j;

    if (!s->extra_headers) {
        return true;
    }
    lines = g_strsplit(s->extra_headers, "\n", -1);
    for (i = 0; lines[i]; i++) {
        char *line = g_strstrip(lines[i]);
        const char *colon = strchr(line, ':');
        const char *c;

        if (!*line) {
            continue;
        }
        if (!colon || !curl_is_field_name(line, colon - line)) {
            error_setg(errp, "%s: line %u is not a header 'Name: value'",
                       CURL_OPT_HEADER_SECRET, i + 1);
            return false;
        }
        for (c = colon; *c; c++) {
            if ((g_ascii_iscntrl(*c) && *c != '\t')) {
                error_setg(errp, "%s: line %u has a control character",
                           CURL_OPT_HEADER_SECRET, i + 1);
                return false;
            }
        }
        for (j = 0; j < ARRAY_SIZE(reserved); j++) {
            if (colon - line == strlen(reserved[j]) &&
                !g_ascii_strncasecmp(line, reserved[j], colon - line)) {
                error_setg(errp, "%s: line %u sets %s, which the driver "
                           "sets itself", CURL_OPT_HEADER_SECRET, i + 1,
                           reserved[j]);
                return false;
            }
        }
        s->origin_headers = curl_slist_append(s->origin_headers, line);
    }
    return true;
}

static bool curl_parse_options(BlockDriverState *bs, BDRVCURLState *s,
                               QDict *options, Error **errp)
{
    QemuOpts *opts = qemu_opts_create(&runtime_opts, NULL, 0, &error_abort);
    const char *url, *cookie, *rest;
    bool ok = false;

    if (!qemu_opts_absorb_qdict(opts, options, errp) ||
        !curl_parse_cache_options(s, opts, errp)) {
        goto out;
    }

    url = qemu_opt_get(opts, CURL_OPT_URL);
    if (!url) {
        error_setg(errp, QERR_MISSING_PARAMETER, CURL_OPT_URL);
        goto out;
    }
    if (!strstart(url, bs->drv->protocol_name, &rest) ||
        !strstart(rest, "://", NULL)) {
        g_autofree char *shown = curl_url_shown(url);

        error_setg(errp, "%s curl driver cannot handle the URL '%s' (does "
                   "not start with '%s://')", bs->drv->protocol_name, shown,
                   bs->drv->protocol_name);
        goto out;
    }
    s->url = g_strdup(url);
    s->url_shown = curl_url_shown(url);

    s->timeout = qemu_opt_get_number(opts, CURL_OPT_TIMEOUT,
                                     CURL_DEFAULT_TIMEOUT);
    if (s->timeout > CURL_MAX_TIMEOUT) {
        curl_bad_value(opts, CURL_OPT_TIMEOUT, errp,
                       "timeout must be between 0 and %d seconds",
                       CURL_MAX_TIMEOUT);
        goto out;
    }
    s->retries = qemu_opt_get_number(opts, CURL_OPT_RETRIES,
                                     CURL_DEFAULT_RETRIES);
    if (s->retries > CURL_MAX_RETRIES) {
        curl_bad_value(opts, CURL_OPT_RETRIES, errp,
                       "retries must be between 0 and %d", CURL_MAX_RETRIES);
        goto out;
    }
    s->sslverify = qemu_opt_get_bool(opts, CURL_OPT_SSLVERIFY, true);
    if (!curl_parse_ftp_tls(s, opts, errp) ||
        !curl_parse_tls_creds(s, opts, errp) ||
        !curl_parse_http_version(s, opts, errp)) {
        goto out;
    }

    cookie = qemu_opt_get(opts, CURL_OPT_COOKIE);
    if (cookie && qemu_opt_get(opts, CURL_OPT_COOKIE_SECRET)) {
        error_setg(errp, "'%s' and '%s' cannot be used together",
                   CURL_OPT_COOKIE, CURL_OPT_COOKIE_SECRET);
        goto out;
    }
    if (cookie) {
        s->cookie = g_strdup(cookie);
    } else if (!curl_get_secret(opts, CURL_OPT_COOKIE_SECRET, &s->cookie,
                                errp)) {
        goto out;
    }
    s->username = g_strdup(qemu_opt_get(opts, CURL_OPT_USERNAME));
    s->proxy_username = g_strdup(qemu_opt_get(opts, CURL_OPT_PROXY_USERNAME));
    if (!curl_get_secret(opts, CURL_OPT_PASSWORD_SECRET, &s->password,
                         errp) ||
        !curl_get_secret(opts, CURL_OPT_PROXY_PASSWORD_SECRET,
                         &s->proxy_password, errp) ||
        !curl_get_secret(opts, CURL_OPT_HEADER_SECRET, &s->extra_headers,
                         errp) ||
        !curl_parse_extra_headers(s, errp)) {
        goto out;
    }
    ok = true;
out:
    qemu_opts_del(opts);
    return ok;
}

/*
 * A file that changes under us must not mix old and new blocks.  Pin it by
 * the strongest validator it has at open: every answer that carries bytes
 * must carry the same (curl_transfer_check_pin()), and transfers send a
 * strong ETag as If-Range, so that a server that knows of a change
 * answers with all of the new file rather than a range of it.  Not a
 * date: Apache answers a range request whose If-Range is a date with the
 * whole file until the file is a minute old (it cannot tell two versions
 * of the same second apart), and an answer with another date is refused
 * anyway.  A weak ETag says that two
 * versions mean the same, not that they hold the same bytes (RFC 9110),
 * and If-Range may not carry it: it pins nothing.  Over FTP, the
 * modification time (MDTM) pins the file, if the server tells it.  A file
 * with none of these is pinned by its size only.  An answer whose headers
 * cannot be read, or whose validator cannot be used (overlong, empty, sent
 * twice unlike), pins nothing: opening fails rather than check nothing.
 */
static bool curl_pin(BDRVCURLState *s, CURL *easy, CURLHeaders *h,
                     Error **errp)
{
    static const char *const names[] = {
        [CURL_PIN_SIZE] = "its size only",
        [CURL_PIN_ETAG] = "ETag",
        [CURL_PIN_LAST_MODIFIED] = "Last-Modified",
        [CURL_PIN_MDTM] = "MDTM",
    };
    g_autofree char *if_range = NULL;

    if (h->malformed) {
        error_setg(errp, "the server sent a malformed header line (folded, "
                   "or without a colon)");
        return false;
    }
    if (h->etag.bad || (h->last_modified.bad &&
                        (!h->etag.seen ||
                         g_str_has_prefix(h->etag.value, "W/")))) {
        error_setg(errp, "the server sent an empty, overlong (more than %d "
                   "characters) or repeated %s, which cannot tell whether "
                   "the file changes", CURL_MAX_VALIDATOR,
                   h->etag.bad ? "ETag" : "Last-Modified");
        return false;
    }
    if (!h->http) {
        s->mtime = curl_filetime(easy);
        s->pin = s->mtime >= 0 ? CURL_PIN_MDTM : CURL_PIN_SIZE;
    } else if (h->etag.seen && !g_str_has_prefix(h->etag.value, "W/")) {
        s->pin = CURL_PIN_ETAG;
        s->validator = g_strdup(h->etag.value);
    } else if (h->last_modified.seen) {
        s->pin = CURL_PIN_LAST_MODIFIED;
        s->validator = g_strdup(h->last_modified.value);
    } else {
        s->pin = CURL_PIN_SIZE;
    }
    trace_curl_pin(s, names[s->pin], s->validator ?: "", s->mtime);
    if (s->pin == CURL_PIN_ETAG) {
        if_range = g_strdup_printf("If-Range: %s", s->validator);
        s->origin_headers = curl_slist_append(s->origin_headers, if_range);
        s->other_headers = curl_slist_append(s->other_headers, if_range);
    }
    return true;
}

/* What a look at the remote file found */
typedef struct CURLProbe {
    CURLHeaders headers;
    bool range_get;             /* asking for the first byte */
    bool stopped;               /* by us, when more than it came */
    char *where;                /* where url redirected, or NULL */
    unsigned hops;              /* in so many redirects */
    uint64_t body;              /* body bytes the server sent */
    long status;
    CURLcode code;
    int64_t deadline_ms;        /* when opening gives up */
    char errbuf[CURL_ERROR_SIZE];
} CURLProbe;

static size_t curl_probe_write_cb(char *ptr, size_t size, size_t nmemb,
                                  void *opaque)
{
    CURLProbe *p = opaque;

    /*
     * For FTP, libcurl passes what SIZE and MDTM said as text, through this
     * callback too: ignore it.  A range request asks for one byte: a
     * server sending more ignores ranges, so stop it.
     */
    if (curl_is_redirect(p->headers.status)) {
        return size * nmemb;
    }
    p->body += size * nmemb;
    p->stopped = p->range_get && p->body > 1;
    return p->stopped ? 0 : size * nmemb;
}

/*
 * Run the request set up on @easy, following redirects, within what is
 * left of CURL_PROBE_TIMEOUT_S; 0, or -errno and why in @errp
 */
static int curl_probe_perform(BDRVCURLState *s, CURL *easy, CURLProbe *p,
                              const char *what, Error **errp)
{
    char why[CURL_ERROR_SIZE + 64];
    char *where;
    int64_t left_ms;
    int ret;

    for (;;) {
        p->body = 0;
        p->stopped = false;
        p->errbuf[0] = '\0';
        p->status = 0;
        left_ms = p->deadline_ms - qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
        if (left_ms <= 0 ||
            curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)left_ms)) {
            p->code = CURLE_OPERATION_TIMEDOUT;
        } else {
            p->code = curl_easy_perform(easy);
        }
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &p->status);
        trace_curl_probe_perform(s, what, p->code, p->status,
                                 p->headers.accept_ranges);
        if (p->code == CURLE_OPERATION_TIMEDOUT &&
            qemu_clock_get_ms(QEMU_CLOCK_REALTIME) >= p->deadline_ms) {
            error_setg(errp, "no answer to %s within the %d seconds that "
                       "opening may take", what, CURL_PROBE_TIMEOUT_S);
            return -ETIMEDOUT;
        }
        /* (over HTTP/2, a stop by us may be a CURLE_HTTP2 error) */
        if (p->code != CURLE_OK && !p->stopped) {
            ret = curl_failure(s, easy, p->where ?: s->url, p->code,
                               p->status, p->errbuf, why, sizeof(why));
            error_setg(errp, "%s", why);
            return ret;
        }
        if (!p->headers.http || !curl_is_redirect(p->status)) {
            return 0;    /* (FTP replies have 3yz codes of their own) */
        }

        where = NULL;
        curl_easy_getinfo(easy, CURLINFO_REDIRECT_URL, &where);
        if (!where) {
            error_setg(errp, "the server answered HTTP %ld with no Location",
                       p->status);
            return -EPROTO;
        }
        ret = curl_may_redirect(s, p->where ?: s->url, where, ++p->hops,
                                why, sizeof(why));
        if (ret < 0) {
            error_setg(errp, "%s", why);
            return ret;
        }
        where = g_strdup(where);
        g_free(p->where);
        p->where = where;
        if (!curl_aim(s, easy, p->where, errp)) {
            return -EIO;
        }
    }
}

/*
 * An HTTP server that refuses HEAD (as presigned object store URLs do) or
 * does not advertise byte ranges is asked for the first byte of the file.
 */
static int curl_probe_range(BDRVCURLState *s, CURL *easy, CURLProbe *p,
                            Error **errp)
{
    ERRP_GUARD();
    CURLHeaders *h = &p->headers;
    Error *local_err = NULL;
    int ret;

    curl_setopt(easy, CURLOPT_NOBODY, 0L, errp);
    curl_setopt(easy, CURLOPT_HTTPGET, 1L, errp);
    curl_setopt(easy, CURLOPT_RANGE, "0-0", errp);
    if (*errp) {
        return -EIO;
    }
    p->range_get = true;
    ret = curl_probe_perform(s, easy, p, "GET bytes 0-0", &local_err);
    if (ret < 0 && p->status == 416 && h->has_total && h->range_total == 0) {
        /* An empty file has no first byte */
        error_free(local_err);
        s->remote_len = 0;
        return 0;
    }
    if (ret < 0) {
        error_propagate(errp, local_err);
        return ret;
    }
    if (p->status != 206 || !h->has_range || h->range_first != 0 ||
        h->range_last != 0 || p->body != 1 || h->length_bad ||
        (h->length_seen && h->length != 1)) {
        error_setg(errp, "the server does not support byte ranges: it "
                   "answered a request for the first byte with HTTP %ld%s",
                   p->status, p->status == 206 ?
                   " and no valid Content-Range" : "");
        return -ENOTSUP;
    }
    s->remote_len = h->range_total;
    return 0;
}

/* The length of the file as a HEAD (or FTP's SIZE) says, or -1 */
static int64_t curl_probe_length(CURL *easy, CURLProbe *p)
{
    CURLHeaders *h = &p->headers;
    int64_t len;

    if (h->http) {
        return p->status == 200 && h->length_seen && !h->length_bad ?
               h->length : -1;
    }
    len = curl_content_length(easy);
    return len <= BDRV_MAX_LENGTH ? len : -1;
}

/*
 * A server that speaks only HTTP/2 drops a connection that starts in
 * HTTP/1.1, with no answer or with frames where one was due: if a HEAD
 * in HTTP/2 gets an answer, the error says that rather than what HTTP/1.1
 * got.
 */
static void curl_probe_http2_only(BDRVCURLState *s, CURL *easy,
                                  CURLProbe *p, Error **errp)
{
    const char *url = p->where ?: s->url;
    bool https = g_str_has_prefix(url, "https://");
    int64_t left_ms = p->deadline_ms -
                      qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
    long version = 0;
    CURLcode code;

    if (s->http2 || (!https && !g_str_has_prefix(url, "http://")) ||
        left_ms <= 0 ||
        (p->code != CURLE_GOT_NOTHING && p->code != CURLE_RECV_ERROR &&
         p->code != CURLE_WEIRD_SERVER_REPLY &&
         p->code != CURLE_UNSUPPORTED_PROTOCOL &&
         p->code != CURLE_SSL_CONNECT_ERROR)) {
        return;
    }
    if (curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, https ?
                         (long)CURL_HTTP_VERSION_2TLS :
                         (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE) ||
        curl_easy_setopt(easy, CURLOPT_NOBODY, 1L) ||
        curl_easy_setopt(easy, CURLOPT_RANGE, NULL) ||
        curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)left_ms)) {
        return;
    }
    p->range_get = false;
    code = curl_easy_perform(easy);
    curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version);
    trace_curl_probe_perform(s, "HEAD in HTTP/2", code, 0, false);
    if ((code == CURLE_OK || code == CURLE_HTTP_RETURNED_ERROR) &&
        version == CURL_HTTP_VERSION_2_0) {
        g_autofree char *why = g_strdup(error_get_pretty(*errp));

        error_free(*errp);
        *errp = NULL;
        error_setg(errp, "the server speaks only HTTP/2: it answered "
                   "HTTP/1.1 with '%s'; use %s=http2", why,
                   CURL_OPT_HTTP_VERSION);
    }
}

/* What the remote file's length is, and that we can read ranges of it */
static int curl_probe(BDRVCURLState *s, Error **errp)
{
    ERRP_GUARD();
    g_autofree CURLProbe *p = g_new0(CURLProbe, 1);
    CURLHeaders *h = &p->headers;
    CURL *easy = curl_easy_init();
    Error *head_err = NULL;
    int64_t len;
    int ret;

    if (!easy) {
        error_setg(errp, "libcurl could not create a transfer");
        return -ENOMEM;
    }
    p->deadline_ms = qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                     CURL_PROBE_TIMEOUT_S * 1000;
    curl_setup_easy(s, easy, p->errbuf, h, errp);
    curl_setopt(easy, CURLOPT_WRITEFUNCTION, curl_probe_write_cb, errp);
    curl_setopt(easy, CURLOPT_WRITEDATA, p, errp);
    curl_setopt(easy, CURLOPT_NOBODY, 1L, errp);
    curl_setopt(easy, CURLOPT_FILETIME, (long)curl_is_ftp(s), errp);
    if (*errp) {
        ret = -EIO;
        goto out;
    }

    ret = curl_probe_perform(s, easy, p, "HEAD", &head_err);
    len = curl_probe_length(easy, p);
    if (ret < 0 && h->http && !curl_status_is_final(p->status) &&
        !curl_is_redirect(p->status) && ret != -ETIMEDOUT) {
        /* HEAD refused: GET will tell */
        error_free(head_err);
        ret = curl_probe_range(s, easy, p, errp);
    } else if (ret < 0) {
        error_propagate(errp, head_err);
    } else if (h->http && (!h->accept_ranges || len < 0) && len != 0) {
        /* Ranges not advertised, or no length: a range GET tells */
        ret = curl_probe_range(s, easy, p, errp);
    } else if (len < 0) {
        error_setg(errp, "the server did not report the file size");
        ret = -EIO;
    } else {
        s->remote_len = len;
    }
    if (ret < 0) {
        curl_probe_http2_only(s, easy, p, errp);
        goto out;
    }

    /* Transfers go straight to where url led, saving a round trip each */
    s->redirect_url = g_steal_pointer(&p->where);
    if (!curl_pin(s, easy, h, errp)) {
        ret = -EPROTO;
    }
out:
    g_free(p->where);
    curl_easy_cleanup(easy);
    return ret;
}

/* The libcurl state shared by all transfers of the node */
static bool curl_init_share(BDRVCURLState *s, Error **errp)
{
    ERRP_GUARD();

    /*
     * Transfers resume TLS sessions, reuse DNS answers and, but for FTP,
     * the connection the probe opened: the first fetch at open then costs
     * one round trip, not the three of a new TLS connection.  (An FTP
     * transfer that took over the probe's control connection got no data
     * from the e2e tests' FTP server until it timed out; FTP does not warm
     * up anyway.)  The handles that use the share run in one thread at a time
     * (the probe is over before the transfers start), so it needs no lock
     * callbacks.
     */
    s->share = curl_share_init();
    if (!s->share) {
        error_setg(errp, "libcurl could not create a share handle");
        return false;
    }
    curl_share_setopt_checked(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS,
                              errp);
    curl_share_setopt_checked(s->share, CURLSHOPT_SHARE,
                              CURL_LOCK_DATA_SSL_SESSION, errp);
#ifdef HAVE_CURL_LOCK_DATA_CONNECT
    if (!curl_is_ftp(s)) {
        curl_share_setopt_checked(s->share, CURLSHOPT_SHARE,
                                  CURL_LOCK_DATA_CONNECT, errp);
    }
#endif
    return !*errp;
}

/* The multi handle that runs the transfers, and the transfers */
static bool curl_init_multi(BDRVCURLState *s, Error **errp)
{
    ERRP_GUARD();
    unsigned i;

    s->multi = curl_multi_init();
    if (!s->multi) {
        error_setg(errp, "libcurl could not create a multi handle");
        return false;
    }
    curl_multi_setopt_checked(s->multi, CURLMOPT_SOCKETFUNCTION,
                              curl_sock_cb, errp);
    curl_multi_setopt_checked(s->multi, CURLMOPT_SOCKETDATA, s, errp);
    curl_multi_setopt_checked(s->multi, CURLMOPT_TIMERFUNCTION,
                              curl_timer_cb, errp);
    curl_multi_setopt_checked(s->multi, CURLMOPT_TIMERDATA, s, errp);
    curl_multi_setopt_checked(s->multi, CURLMOPT_MAXCONNECTS,
                              (long)s->connections, errp);
#ifdef HAVE_CURLMOPT_MAX_HOST_CONNECTIONS
    curl_multi_setopt_checked(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                              (long)s->connections, errp);
    curl_multi_setopt_checked(s->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                              (long)s->connections, errp);
#endif
    if (*errp) {
        return false;
    }

    s->transfers = g_new0(CURLTransfer, s->connections);
    for (i = 0; i < s->connections; i++) {
        if (!curl_transfer_init(s, &s->transfers[i], errp)) {
            return false;
        }
    }
    return true;
}

static void curl_free_state(BDRVCURLState *s)
{
    unsigned i;

    for (i = 0; s->transfers && i < s->connections; i++) {
        if (s->transfers[i].easy) {
            curl_easy_cleanup(s->transfers[i].easy);
        }
        g_free(s->transfers[i].target);
    }
    g_free(s->transfers);
    if (s->multi) {
        curl_multi_cleanup(s->multi);
    }
    curl_slist_free_all(s->origin_headers);
    curl_slist_free_all(s->other_headers);
    if (s->share) {
        curl_share_cleanup(s->share);
    }
    g_free(s->validator);
    g_free(s->redirect_url);
    g_free(s->url);
    g_free(s->url_shown);
    g_free(s->tls_ca);
    g_free(s->tls_crl);
    g_free(s->tls_cert);
    g_free(s->tls_key);
    g_free(s->tls_key_password);
    g_free(s->extra_headers);
    g_free(s->cookie);
    g_free(s->username);
    g_free(s->password);
    g_free(s->proxy_username);
    g_free(s->proxy_password);
}

static bool curl_global_init_once(Error **errp)
{
    static bool initialized;
    CURLcode code;

    if (!initialized) {
        code = curl_global_init(CURL_GLOBAL_ALL);
        if (code != CURLE_OK) {
            error_setg(errp, "libcurl initialization failed: %s",
                       curl_easy_strerror(code));
            return false;
        }
        initialized = true;
    }
    return true;
}

/*
 * Readahead splits its window over the connections it may use, so that they
 * all carry some of it, in requests of CURL_READAHEAD_FETCH at most
 */
static uint64_t curl_readahead_fetch_size(BDRVCURLState *s)
{
    uint64_t size = s->readahead / MAX(1, s->connections - 1);

    size = MIN(size, CURL_READAHEAD_FETCH);
    return MAX(ROUND_UP(size, RANGE_CACHE_GRANULE), RANGE_CACHE_GRANULE);
}

static int curl_init_cache(BDRVCURLState *s, Error **errp)
{
    int ret;

    ret = range_cache_init(&s->cache, s->remote_len - s->remote_offset,
                           s->remote_offset, s->blocksize, s->blockcount,
                           &curl_cache_ops, s, &s->mutex);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "could not reserve %" PRIu64 " bytes "
                         "for the cache", s->blocksize * s->blockcount);
        return ret;
    }
    range_cache_set_readahead(&s->cache, s->readahead,
                              curl_readahead_fetch_size(s));
    range_cache_set_fetches_extend(&s->cache, curl_is_ftp(s));
    return 0;
}

/*
 * Open every connection in parallel now, each fetching a piece of the start
 * of the image: what the first reads of a format driver need is then on
 * the way, and the connections are ready when readahead wants them.  Not
 * for FTP, where every transfer opens a connection anyway, and not when
 * the user turned readahead off.
 */
static void curl_warm_up(BDRVCURLState *s)
{
    RangeCacheFetch *fetch;

    if (!s->readahead || curl_is_ftp(s)) {
        return;
    }
    /* Queued first, so it takes the connection that is ready */
    range_cache_read_ahead(&s->cache, 0, CURL_WARM_UP_FIRST_FETCH,
                           CURL_WARM_UP_FIRST_FETCH);
    range_cache_read_ahead(&s->cache, CURL_WARM_UP_FIRST_FETCH,
                           (s->connections - 1) * CURL_WARM_UP_FETCH,
                           CURL_WARM_UP_FETCH);
    WITH_QEMU_LOCK_GUARD(&s->mutex) {
        /* No read yet: what is queued is the warm-up, if the cache had room */
        QTAILQ_FOREACH(fetch, &s->readahead_queue, queue_next) {
            s->warm_up_left++;
        }
    }
}

static int curl_open(BlockDriverState *bs, QDict *options, int flags,
                     Error **errp)
{
    BDRVCURLState *s = bs->opaque;
    int ret;

    bdrv_graph_rdlock_main_loop();
    ret = bdrv_apply_auto_read_only(bs, "curl driver does not support writes",
                                    errp);
    bdrv_graph_rdunlock_main_loop();
    if (ret < 0) {
        return ret;
    }
    if (!curl_global_init_once(errp)) {
        return -EIO;
    }

    qemu_mutex_init(&s->mutex);
    s->bs = bs;
    QTAILQ_INIT(&s->miss_queue);
    QTAILQ_INIT(&s->readahead_queue);
    QLIST_INIT(&s->sockets);
    if (!curl_parse_options(bs, s, options, errp)) {
        ret = -EINVAL;
        goto fail;
    }
    if (!curl_init_share(s, errp)) {
        ret = -EIO;
        goto fail;
    }
    ret = curl_probe(s, errp);
    if (ret < 0) {
        goto fail;
    }
    if (s->remote_offset && s->remote_offset >= s->remote_len) {
        error_setg(errp, "offset %" PRIu64 " is at or past the end of the "
                   "remote file, which has %" PRIu64 " bytes",
                   s->remote_offset, s->remote_len);
        ret = -EINVAL;
        goto fail;
    }
    if (!curl_init_multi(s, errp)) {
        ret = -EIO;
        goto fail;
    }
    ret = curl_init_cache(s, errp);
    if (ret < 0) {
        goto fail;
    }
    curl_attach_aio_context(bs, bdrv_get_aio_context(bs));
    trace_curl_open(s, s->url_shown, s->cache.length, s->remote_offset,
                    s->blocksize, s->blockcount, s->connections,
                    s->readahead);
    curl_warm_up(s);
    return 0;

fail:
    curl_free_state(s);
    qemu_mutex_destroy(&s->mutex);
    return ret;
}

static void curl_close_cache(BDRVCURLState *s)
{
    RangeCacheStats *st = &s->cache.stats;

    trace_curl_close_cache(s, st->hits, st->misses, st->waits,
                           st->readaheads, st->readahead_unread,
                           st->evictions);
}

static void curl_close(BlockDriverState *bs)
{
    BDRVCURLState *s = bs->opaque;
    RangeCacheStats *st = &s->cache.stats;
    RangeCacheFetch *fetch;
    unsigned i;

    /* Nothing of ours runs in the event loop any more */
    curl_detach_aio_context(bs);

    /*
     * Drained: no transfer is in flight, but readahead may be held.  The
     * callbacks of the multi handle close its connections.
     */
    WITH_QEMU_LOCK_GUARD(&s->mutex) {
        for (i = 0; i < s->connections; i++) {
            CURLTransfer *t = &s->transfers[i];

            if (t->fetch) {
                if (!t->retry_at_ms) {
                    curl_multi_remove_handle(s->multi, t->easy);
                }
                curl_transfer_finish_locked(t, -ECANCELED);
            }
        }
        while ((fetch = curl_dequeue_locked(s, true))) {
            range_cache_fetch_done_locked(&s->cache, fetch, -ECANCELED);
        }
        curl_multi_cleanup(s->multi);
        s->multi = NULL;
    }
    range_cache_destroy(&s->cache);
    trace_curl_close(s, s->nb_transfers, st->bytes_fetched, st->bytes_served,
                     s->nb_retries, st->failures, s->nb_reads,
                     s->read_wait_ns / SCALE_US);
    curl_close_cache(s);
    curl_free_state(s);
    qemu_mutex_destroy(&s->mutex);
}

static int coroutine_fn curl_co_preadv(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, QEMUIOVector *qiov,
                                       BdrvRequestFlags flags)
{
    BDRVCURLState *s = bs->opaque;
    int64_t start = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);
    int64_t duration;
    int ret;

    trace_curl_co_preadv(s, offset, bytes);
    ret = range_cache_co_read(&s->cache, offset, bytes, qiov, 0);
    duration = qemu_clock_get_ns(QEMU_CLOCK_REALTIME) - start;
    trace_curl_co_preadv_done(s, offset, bytes, ret, duration / SCALE_US);
    WITH_QEMU_LOCK_GUARD(&s->mutex) {
        s->nb_reads++;
        s->read_wait_ns += duration;
    }
    return ret;
}

static int64_t coroutine_fn curl_co_getlength(BlockDriverState *bs)
{
    BDRVCURLState *s = bs->opaque;

    return s->cache.length;
}

static void curl_parse_filename(const char *filename, QDict *options,
                                Error **errp)
{
    qdict_put_str(options, CURL_OPT_URL, filename);
}

static void curl_refresh_filename(BlockDriverState *bs)
{
    BDRVCURLState *s = bs->opaque;

    /*
     * The URL alone names the image unless options change what it reads or
     * how we may access it.  The cache options do neither.
     */
    if (!s->sslverify || s->remote_offset || s->cookie || s->username ||
        s->password || s->proxy_username || s->proxy_password ||
        s->extra_headers || s->tls_ca) {
        return;
    }
    pstrcpy(bs->exact_filename, sizeof(bs->exact_filename), s->url);
}

static const char *const curl_strong_runtime_opts[] = {
    CURL_OPT_URL,
    CURL_OPT_OFFSET,
    CURL_OPT_SSLVERIFY,
    CURL_OPT_COOKIE,
    CURL_OPT_COOKIE_SECRET,
    CURL_OPT_USERNAME,
    CURL_OPT_PASSWORD_SECRET,
    CURL_OPT_PROXY_USERNAME,
    CURL_OPT_PROXY_PASSWORD_SECRET,
    CURL_OPT_HEADER_SECRET,
    CURL_OPT_TLS_CREDS,

    NULL
};

/* Everything but the names, which module_block.py reads from each struct */
#define CURL_DRIVER_FIELDS                                          \
    .instance_size              = sizeof(BDRVCURLState),            \
    .bdrv_parse_filename        = curl_parse_filename,              \
    .bdrv_open                  = curl_open,                        \
    .bdrv_close                 = curl_close,                       \
    .bdrv_co_getlength          = curl_co_getlength,                \
    .bdrv_co_preadv             = curl_co_preadv,                   \
    .bdrv_detach_aio_context    = curl_detach_aio_context,          \
    .bdrv_attach_aio_context    = curl_attach_aio_context,          \
    .bdrv_drain_begin           = curl_drain_begin,                 \
    .bdrv_drain_end             = curl_drain_end,                   \
    .bdrv_refresh_filename      = curl_refresh_filename,            \
    .strong_runtime_opts        = curl_strong_runtime_opts

static BlockDriver bdrv_http = {
    .format_name                = "http",
    .protocol_name              = "http",
    CURL_DRIVER_FIELDS,
};

static BlockDriver bdrv_https = {
    .format_name                = "https",
    .protocol_name              = "https",
    CURL_DRIVER_FIELDS,
};

static BlockDriver bdrv_ftp = {
    .format_name                = "ftp",
    .protocol_name              = "ftp",
    CURL_DRIVER_FIELDS,
};

static BlockDriver bdrv_ftps = {
    .format_name                = "ftps",
    .protocol_name              = "ftps",
    CURL_DRIVER_FIELDS,
};

static void curl_block_init(void)
{
    bdrv_register(&bdrv_http);
    bdrv_register(&bdrv_https);
    bdrv_register(&bdrv_ftp);
    bdrv_register(&bdrv_ftps);
}

block_init(curl_block_init);
