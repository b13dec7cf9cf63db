/*
 * Unit tests for the cache of aligned blocks of a remote image
 *
 * Copyright (C) 2026 The QEMU curl series authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A fake fetcher stands in for the transport: it queues the fetches the
 * cache starts, and each test decides when their bytes arrive, how many at
 * a time, and how they end.  Readers are coroutines, so that waiting for
 * bytes or for room really yields.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/main-loop.h"
#include "block/range-cache.h"
#include "iothread.h"

#define G   RANGE_CACHE_GRANULE
#define BS  (4 * G)             /* the block size of most tests */

typedef struct TestCache {
    RangeCache rc;
    QemuMutex lock;
    uint8_t *image;             /* the remote file */
    uint64_t remote_len;
    GQueue pending;             /* fetches the cache started */
    unsigned fetches;
    GQueue waited;              /* each fetch a read started waiting for */
    unsigned no_room;           /* reads that waited for room */
    unsigned finished;          /* reads that finished */
    GString *events;            /* "m0:4096 h0:100 ..." */
} TestCache;

typedef struct TestRead {
    TestCache *tc;
    uint64_t offset;
    uint64_t bytes;
    uint8_t *buf;
    int ret;
    bool done;
    unsigned order;             /* 1 for the first read to finish, ... */
} TestRead;

static void test_fetch(void *opaque, RangeCacheFetch *fetch)
{
    TestCache *tc = opaque;

    g_queue_push_tail(&tc->pending, fetch);
    tc->fetches++;
}

static void test_wait(void *opaque, RangeCacheFetch *fetch)
{
    TestCache *tc = opaque;

    g_queue_push_tail(&tc->waited, fetch);
}

static void test_no_room(void *opaque)
{
    TestCache *tc = opaque;

    tc->no_room++;
}

static void test_event(void *opaque, RangeCacheEvent event, uint64_t offset,
                       uint64_t bytes)
{
    static const char code[] = {
        [RANGE_CACHE_HIT] = 'h',
        [RANGE_CACHE_WAIT] = 'w',
        [RANGE_CACHE_MISS] = 'm',
        [RANGE_CACHE_NO_ROOM] = 'n',
        [RANGE_CACHE_EVICT] = 'e',
        [RANGE_CACHE_EVICT_UNREAD] = 'u',
        [RANGE_CACHE_READAHEAD] = 'r',
    };
    TestCache *tc = opaque;

    g_string_append_printf(tc->events, "%c%" PRIu64 ":%" PRIu64 " ",
                           code[event], offset, bytes);
}

static const RangeCacheOps test_ops = {
    .fetch = test_fetch,
    .wait = test_wait,
    .no_room = test_no_room,
    .event = test_event,
};

static TestCache *test_cache_new_bs(uint64_t remote_len,
                                    uint64_t remote_offset,
                                    uint64_t block_size, unsigned capacity)
{
    TestCache *tc = g_new0(TestCache, 1);
    uint64_t i;

    qemu_mutex_init(&tc->lock);
    tc->remote_len = remote_len;
    tc->image = g_malloc(remote_len);
    for (i = 0; i < remote_len; i++) {
        tc->image[i] = i * 7 + (i >> 12);
    }
    g_queue_init(&tc->pending);
    g_queue_init(&tc->waited);
    tc->events = g_string_new(NULL);
    g_assert_cmpint(range_cache_init(&tc->rc, remote_len - remote_offset,
                                     remote_offset, block_size, capacity,
                                     &test_ops, tc, &tc->lock), ==, 0);
    range_cache_set_readahead(&tc->rc, 0, G);
    return tc;
}

static TestCache *test_cache_new(uint64_t remote_len, uint64_t remote_offset,
                                 unsigned capacity)
{
    return test_cache_new_bs(remote_len, remote_offset, BS, capacity);
}

/* Free @tc; its cache's last statistics go to @stats unless it is NULL */
static void test_cache_free_stats(TestCache *tc, RangeCacheStats *stats)
{
    g_assert(g_queue_is_empty(&tc->pending));
    g_queue_clear(&tc->waited);
    range_cache_destroy(&tc->rc);
    if (stats) {
        *stats = tc->rc.stats;
    }
    g_string_free(tc->events, true);
    g_free(tc->image);
    qemu_mutex_destroy(&tc->lock);
    g_free(tc);
}

static void test_cache_free(TestCache *tc)
{
    test_cache_free_stats(tc, NULL);
}

/* Take the events logged so far */
static char *test_events(TestCache *tc)
{
    char *s = g_strdup(g_strchomp(tc->events->str));

    g_string_truncate(tc->events, 0);
    return s;
}

/* Forget the events logged so far */
static void test_drop_events(TestCache *tc)
{
    g_string_truncate(tc->events, 0);
}

#define assert_events(tc, want) do {                \
    g_autofree char *ev_ = test_events(tc);         \
    g_assert_cmpstr(ev_, ==, want);                 \
} while (0)

/* Pending fetch number @n, oldest first */
static RangeCacheFetch *test_nth(TestCache *tc, unsigned n)
{
    RangeCacheFetch *f = g_queue_peek_nth(&tc->pending, n);

    g_assert(f);
    return f;
}

/* The next @n bytes of @f arrive (fewer if it has fewer left) */
static void test_write(TestCache *tc, RangeCacheFetch *f, uint64_t n)
{
    uint64_t first, last;

    qemu_mutex_lock(&tc->lock);
    range_cache_fetch_remote_range(&tc->rc, f, &first, &last);
    g_assert_cmpuint(last, <, tc->remote_len);
    n = MIN(n, last - first + 1);
    g_assert_true(range_cache_fetch_write_locked(&tc->rc, f,
                                                 tc->image + first, n));
    range_cache_wake_locked(&tc->rc);
    qemu_mutex_unlock(&tc->lock);
}

/*
 * End pending fetch number @n: with all of its bytes, arriving in pieces
 * that do not fall on granules, or with @ret
 */
static void test_complete_nth(TestCache *tc, unsigned n, int ret)
{
    RangeCacheFetch *f = test_nth(tc, n);

    g_queue_pop_nth(&tc->pending, n);
    while (ret == 0 && f->pos < f->end) {
        test_write(tc, f, 3000);
    }
    qemu_mutex_lock(&tc->lock);
    range_cache_fetch_done_locked(&tc->rc, f, ret);
    qemu_mutex_unlock(&tc->lock);
}

static void test_complete_one(TestCache *tc, int ret)
{
    test_complete_nth(tc, 0, ret);
}

/* Complete fetches, including those that completions start, until none */
static void test_complete_all(TestCache *tc)
{
    while (!g_queue_is_empty(&tc->pending)) {
        test_complete_one(tc, 0);
    }
}

static void coroutine_fn test_read_entry(void *opaque)
{
    TestRead *r = opaque;
    QEMUIOVector qiov;

    qemu_iovec_init_buf(&qiov, r->buf, r->bytes);
    r->ret = range_cache_co_read(&r->tc->rc, r->offset, r->bytes, &qiov, 0);
    r->done = true;
    r->order = ++r->tc->finished;
}

/* Start a read; it runs until it has to wait */
static TestRead *test_read_start(TestCache *tc, uint64_t offset,
                                 uint64_t bytes)
{
    TestRead *r = g_new0(TestRead, 1);

    r->tc = tc;
    r->offset = offset;
    r->bytes = bytes;
    r->buf = g_malloc(bytes);
    memset(r->buf, 0xa5, bytes);
    qemu_coroutine_enter(qemu_coroutine_create(test_read_entry, r));
    return r;
}

/* Check that a finished read succeeded with the remote file's bytes */
static void test_read_check(TestRead *r)
{
    TestCache *tc = r->tc;
    uint64_t len = tc->rc.length;
    uint64_t i;

    g_assert_true(r->done);
    g_assert_cmpint(r->ret, ==, 0);
    for (i = 0; i < r->bytes; i++) {
        uint64_t pos = r->offset + i;
        uint8_t want = pos < len ? tc->image[tc->rc.remote_offset + pos] : 0;

        if (r->buf[i] != want) {
            g_error("byte %" PRIu64 " of the read at %" PRIu64 ": 0x%x, "
                    "expected 0x%x", i, r->offset, r->buf[i], want);
        }
    }
}

static void test_read_free(TestRead *r)
{
    g_free(r->buf);
    g_free(r);
}

/* Check a finished read and free it */
static void test_read_end(TestRead *r)
{
    test_read_check(r);
    test_read_free(r);
}

/* A read that completes once every fetch it causes has completed */
static void test_read_sync(TestCache *tc, uint64_t offset, uint64_t bytes)
{
    TestRead *r = test_read_start(tc, offset, bytes);

    test_complete_all(tc);
    test_read_end(r);
}

static void test_geometry(void)
{
    TestCache *tc = test_cache_new(3 * BS, 0, 4);
    uint64_t start, len;

    g_assert_cmpuint(range_cache_nb_image_blocks(&tc->rc), ==, 3);
    g_assert_cmpuint(range_cache_block_index(&tc->rc, 0), ==, 0);
    g_assert_cmpuint(range_cache_block_index(&tc->rc, BS - 1), ==, 0);
    g_assert_cmpuint(range_cache_block_index(&tc->rc, BS), ==, 1);
    range_cache_block_extent(&tc->rc, 2, &start, &len);
    g_assert_cmpuint(start, ==, 2 * BS);
    g_assert_cmpuint(len, ==, BS);
    test_cache_free(tc);

    /* Shorter than one block */
    tc = test_cache_new(100, 0, 4);
    g_assert_cmpuint(range_cache_nb_image_blocks(&tc->rc), ==, 1);
    range_cache_block_extent(&tc->rc, 0, &start, &len);
    g_assert_cmpuint(start, ==, 0);
    g_assert_cmpuint(len, ==, 100);
    test_cache_free(tc);

    /* The last block is short */
    tc = test_cache_new(2 * BS + 1, 0, 4);
    g_assert_cmpuint(range_cache_nb_image_blocks(&tc->rc), ==, 3);
    range_cache_block_extent(&tc->rc, 2, &start, &len);
    g_assert_cmpuint(start, ==, 2 * BS);
    g_assert_cmpuint(len, ==, 1);
    test_cache_free(tc);
}

/* The remote range of a fetch: offset applied, last byte inclusive */
static void test_remote_range(void)
{
    TestCache *tc = test_cache_new(1000 + 10000, 1000, 4);
    TestRead *r;
    RangeCacheFetch *f;
    uint64_t first, last;

    g_assert_cmpuint(tc->rc.length, ==, 10000);
    r = test_read_start(tc, 9000, 500);
    f = test_nth(tc, 0);
    range_cache_fetch_remote_range(&tc->rc, f, &first, &last);
    g_assert_cmpuint(first, ==, 1000 + 2 * G);
    g_assert_cmpuint(last, ==, 1000 + 10000 - 1);

    /* What is left of it, once some bytes arrived */
    test_write(tc, f, 100);
    range_cache_fetch_remote_range(&tc->rc, f, &first, &last);
    g_assert_cmpuint(first, ==, 1000 + 2 * G + 100);
    g_assert_cmpuint(last, ==, 1000 + 10000 - 1);
    test_complete_all(tc);
    test_read_end(r);
    test_cache_free(tc);
}

/* A read fetches what it needs, rounded to granules, and only once */
static void test_read_granules(void)
{
    TestCache *tc = test_cache_new(1000 + 10 * BS + 123, 1000, 16);

    test_read_sync(tc, 5000, 100);
    assert_events(tc, "m4096:4096 w4096:4096");
    test_read_sync(tc, 4096, 4096);
    test_read_sync(tc, 6000, 1);
    assert_events(tc, "h4096:4096 h6000:1");
    g_assert_cmpuint(tc->fetches, ==, 1);

    /* The granule before, and the short one at the end of the image */
    test_read_sync(tc, 4000, 200);
    assert_events(tc, "m0:4096 w0:4096");
    test_read_sync(tc, 10 * BS - 7, 200);
    assert_events(tc, "m159744:4219 w159744:4096 h163840:123");
    g_assert_cmpuint(tc->rc.stats.bytes_served, ==,
                     100 + 4096 + 1 + 200 + 130);
    g_assert_cmpuint(tc->rc.stats.bytes_fetched, ==, 3 * G + 123);
    test_cache_free(tc);
}

/* A read across blocks is one fetch; a large one, several at once */
static void test_read_spans_blocks(void)
{
    TestCache *tc = test_cache_new_bs(4 * MiB, 0, 16 * KiB, 128);
    TestRead *r;

    test_read_sync(tc, 16 * KiB - 100, 200);
    assert_events(tc, "m12288:8192 w12288:4096 w18288:2192");

    r = test_read_start(tc, 1 * MiB, 1 * MiB + 1);
    g_assert_cmpuint(g_queue_get_length(&tc->pending), ==, 3);
    assert_events(tc, "m1048576:524288 m1572864:524288 m2097152:4096 "
                  "w1048576:16384");
    test_complete_all(tc);
    test_read_end(r);
    test_cache_free(tc);
}

/* Bytes past the end of the image read as zeroes, without fetching */
static void test_read_past_end(void)
{
    TestCache *tc = test_cache_new(BS + 10, 0, 2);

    test_read_sync(tc, BS + 20, 100);
    g_assert_cmpuint(tc->fetches, ==, 0);
    test_read_sync(tc, BS, 4 * BS);
    g_assert_cmpuint(tc->fetches, ==, 1);
    test_cache_free(tc);
}

/* A read waits for its own bytes, not for the rest of the fetch */
static void test_partial_progressive(void)
{
    TestCache *tc = test_cache_new_bs(1 * MiB, 0, 64 * KiB, 4);
    TestRead *whole, *head, *tail;
    RangeCacheFetch *f;

    whole = test_read_start(tc, 0, 64 * KiB);
    head = test_read_start(tc, 100, 1000);
    tail = test_read_start(tc, 60 * KiB, 4 * KiB);
    g_assert_cmpuint(tc->fetches, ==, 1);
    assert_events(tc, "m0:65536 w0:65536 w0:4096 w0:65536");
    f = test_nth(tc, 0);

    /* Not a whole granule yet */
    test_write(tc, f, 4000);
    g_assert_false(head->done);
    test_write(tc, f, 96);
    g_assert_true(head->done);
    test_read_end(head);
    g_assert_false(whole->done || tail->done);

    test_complete_all(tc);
    test_read_end(whole);
    test_read_end(tail);
    test_cache_free(tc);
}

/* Readers of one fetch are woken in the order their bytes arrive */
static void test_partial_order(void)
{
    TestCache *tc = test_cache_new_bs(1 * MiB, 0, 16 * KiB, 8);
    static const uint64_t offsets[] = { 60 * KiB, 8 * KiB, 30 * KiB, 0 };
    TestRead *r[ARRAY_SIZE(offsets)];
    TestRead *first = test_read_start(tc, 0, 64 * KiB);
    RangeCacheFetch *f = test_nth(tc, 0);
    unsigned i;

    for (i = 0; i < ARRAY_SIZE(offsets); i++) {
        r[i] = test_read_start(tc, offsets[i], 1 * KiB);
    }
    g_assert_cmpuint(tc->fetches, ==, 1);
    while (f->pos < f->end - 4 * KiB) {
        test_write(tc, f, 4 * KiB);
    }
    g_assert_false(first->done || r[0]->done);
    test_complete_all(tc);
    g_assert_cmpuint(r[3]->order, ==, 1);
    g_assert_cmpuint(r[1]->order, ==, 2);
    g_assert_cmpuint(r[2]->order, ==, 3);
    g_assert_cmpuint(r[0]->order, >, 3);
    for (i = 0; i < ARRAY_SIZE(offsets); i++) {
        test_read_end(r[i]);
    }
    test_read_end(first);
    test_cache_free(tc);
}

/*
 * A fetch that fails half-way: reads of what arrived complete, the others
 * fail, and what did not arrive is fetched again by the next read
 */
static void test_partial_failure(void)
{
    TestCache *tc = test_cache_new_bs(1 * MiB, 0, 64 * KiB, 4);
    TestRead *whole, *head, *tail;
    RangeCacheFetch *f;

    whole = test_read_start(tc, 0, 64 * KiB);
    head = test_read_start(tc, 0, 4 * KiB);
    tail = test_read_start(tc, 40 * KiB, 4 * KiB);
    f = test_nth(tc, 0);
    test_write(tc, f, 32 * KiB + 100);
    test_read_end(head);
    g_queue_pop_head(&tc->pending);
    qemu_mutex_lock(&tc->lock);
    range_cache_fetch_done_locked(&tc->rc, f, -EIO);
    qemu_mutex_unlock(&tc->lock);
    g_assert_true(whole->done && tail->done);
    g_assert_cmpint(whole->ret, ==, -EIO);
    g_assert_cmpint(tail->ret, ==, -EIO);
    test_read_free(whole);
    test_read_free(tail);
    g_assert_cmpuint(tc->rc.stats.failures, ==, 1);
    test_drop_events(tc);

    /* What arrived is served; the granule that arrived in part is not */
    test_read_sync(tc, 0, 32 * KiB);
    assert_events(tc, "h0:32768");
    test_read_sync(tc, 32 * KiB, 10);
    assert_events(tc, "m32768:4096 w32768:4096");
    test_read_sync(tc, 0, 64 * KiB);
    assert_events(tc, "m36864:28672 w36864:28672");
    test_cache_free(tc);
}

/* A failure is not cached: the next read asks again */
static void test_failure_not_cached(void)
{
    TestCache *tc = test_cache_new(10 * BS, 0, 4);
    TestRead *a, *b;

    a = test_read_start(tc, BS + 10, 20);
    b = test_read_start(tc, BS + 15, 20);
    test_complete_one(tc, -ENOENT);
    g_assert_true(a->done && b->done);
    g_assert_cmpint(a->ret, ==, -ENOENT);
    g_assert_cmpint(b->ret, ==, -ENOENT);
    test_read_free(a);
    test_read_free(b);
    test_read_sync(tc, BS + 10, 20);
    assert_events(tc, "m16384:4096 w16384:4096 w16384:4096 m16384:4096 "
                  "w16384:4096");
    test_cache_free(tc);
}

/* A partly valid block is evicted like any other, and fetched again */
static void test_partial_eviction(void)
{
    TestCache *tc = test_cache_new(64 * BS, 0, 2);

    /* Far enough apart not to make a stream */
    test_read_sync(tc, 0, 10);
    test_read_sync(tc, 20 * BS, 10);
    test_read_sync(tc, 40 * BS, 10);
    assert_events(tc, "m0:4096 w0:4096 m327680:4096 w327680:4096 e0:16384 "
                  "m655360:4096 w655360:4096");
    test_read_sync(tc, 0, 10);
    assert_events(tc, "e327680:16384 m0:4096 w0:4096");
    test_read_sync(tc, 40 * BS + 1, 10);
    assert_events(tc, "h655361:10");
    test_cache_free(tc);
}

/* With one block, reads still complete, in pieces and one at a time */
static void test_one_block(void)
{
    TestCache *tc = test_cache_new(8 * BS, 0, 1);
    TestRead *a, *b;

    test_read_sync(tc, BS - 100, 2 * BS + 200);
    a = test_read_start(tc, 10, 3 * BS);
    b = test_read_start(tc, 5 * BS, BS);
    test_complete_all(tc);
    test_read_end(a);
    test_read_end(b);
    test_cache_free(tc);
}

/* The least recently used block goes first, whenever it was fetched */
static void test_lru_order(void)
{
    TestCache *tc = test_cache_new(128 * BS, 0, 3);

    test_read_sync(tc, 0 * BS, 1);
    test_read_sync(tc, 20 * BS, 1);
    test_read_sync(tc, 40 * BS, 1);
    test_read_sync(tc, 0 * BS, 1);      /* block 20 is now the oldest */
    test_drop_events(tc);
    test_read_sync(tc, 60 * BS, 1);
    assert_events(tc, "e327680:16384 m983040:4096 w983040:4096");
    g_assert_cmpint(range_cache_block_list(&tc->rc, 0), ==,
                    RANGE_CACHE_LIST_LRU);
    g_assert_cmpint(range_cache_block_list(&tc->rc, 20), ==,
                    RANGE_CACHE_LIST_NONE);
    test_cache_free(tc);
}

/* Blocks a sequential stream read through go before the others */
static void test_lru_streamed_first(void)
{
    TestCache *tc = test_cache_new(64 * BS, 0, 4);

    test_read_sync(tc, 40 * BS, 10);     /* metadata, say */
    test_read_sync(tc, 0, BS);
    test_read_sync(tc, BS, BS);          /* a stream of two reads */
    g_assert_cmpint(range_cache_block_list(&tc->rc, 1), ==,
                    RANGE_CACHE_LIST_STREAMED);
    g_assert_cmpint(range_cache_block_list(&tc->rc, 40), ==,
                    RANGE_CACHE_LIST_LRU);
    test_drop_events(tc);
    test_read_sync(tc, 20 * BS, 10);
    test_read_sync(tc, 30 * BS, 10);
    assert_events(tc, "m327680:4096 w327680:4096 e16384:16384 m491520:4096 "
                  "w491520:4096");
    test_cache_free(tc);
}

/*
 * Sequential reads fetch ahead, in fetches that span blocks, starting
 * small and growing with the stream
 */
static void test_readahead_sequential(void)
{
    TestCache *tc = test_cache_new_bs(4 * MiB, 0, 16 * KiB, 128);
    uint64_t pos;

    range_cache_set_readahead(&tc->rc, 1 * MiB, 64 * KiB);
    test_read_sync(tc, 0, 4 * KiB);
    test_read_sync(tc, 4 * KiB, 4 * KiB);
    /* A window of 256 KiB after the second read */
    assert_events(tc, "m0:4096 w0:4096 m4096:4096 r8192:65536 r73728:65536 "
                  "r139264:65536 r204800:65536 w4096:4096");
    g_assert_cmpuint(range_cache_block_list(&tc->rc, 10), ==,
                     RANGE_CACHE_LIST_UNREAD);
    test_read_sync(tc, 8 * KiB, 4 * KiB);
    /* 512 KiB, in whole fetches: the last 4 KiB wait for the next read */
    assert_events(tc, "r270336:65536 r335872:65536 r401408:65536 "
                  "r466944:65536 h8192:4096");
    test_read_sync(tc, 12 * KiB, 4 * KiB);
    assert_events(tc, "r532480:65536 r598016:65536 r663552:65536 "
                  "r729088:65536 r794624:65536 r860160:65536 r925696:65536 "
                  "r991232:65536 h12288:4096");
    g_assert_cmpuint(tc->rc.stats.readaheads, ==, 4 + 4 + 8);
    /* 1 MiB at most; a few bytes more are not worth a fetch */
    test_read_sync(tc, 16 * KiB, 4 * KiB);
    assert_events(tc, "h16384:4096");
    for (pos = 20 * KiB; pos < 4 * MiB; pos += 4 * KiB) {
        test_read_sync(tc, pos, 4 * KiB);
    }
    g_assert_cmpuint(tc->rc.stats.misses, ==, 2);
    g_assert_cmpuint(tc->rc.stats.bytes_fetched, ==, 4 * MiB);
    g_assert_cmpuint(tc->rc.stats.readahead_unread, ==, 0);
    test_cache_free(tc);
}

/*
 * For a transport that cannot end a transfer where it likes, readahead and
 * reads make the fetch in flight longer instead of starting another
 */
static void test_fetches_extend(void)
{
    TestCache *tc = test_cache_new_bs(4 * MiB, 0, 16 * KiB, 128);
    RangeCacheFetch *f;
    TestRead *r;

    range_cache_set_readahead(&tc->rc, 1 * MiB, 1 * MiB);
    range_cache_set_fetches_extend(&tc->rc, true);
    test_read_sync(tc, 0, 4 * KiB);
    r = test_read_start(tc, 4 * KiB, 4 * KiB);
    /* Readahead goes on from the fetch of the read's own bytes */
    assert_events(tc, "m0:4096 w0:4096 m4096:4096 r8192:262144 w4096:4096");
    f = test_nth(tc, 0);
    g_assert_cmpuint(g_queue_get_length(&tc->pending), ==, 1);
    g_assert_cmpuint(f->end, ==, 264 * KiB);
    test_write(tc, f, 4 * KiB);
    test_read_end(r);

    /* The stream's next read doubles the window: the same fetch goes on */
    r = test_read_start(tc, 8 * KiB, 4 * KiB);
    assert_events(tc, "r270336:266240 w8192:4096");
    g_assert_true(test_nth(tc, 0) == f);
    g_assert_cmpuint(g_queue_get_length(&tc->pending), ==, 1);
    g_assert_cmpuint(f->end, ==, 524 * KiB);
    test_write(tc, f, 8 * KiB);
    test_read_end(r);

    /* A read elsewhere that misses right where it ends, too */
    r = test_read_start(tc, 524 * KiB, 100);
    assert_events(tc, "m536576:4096 w16384:524288");
    g_assert_cmpuint(g_queue_get_length(&tc->pending), ==, 1);

    /* Its end is where it stops: it brings every byte once */
    test_complete_one(tc, 0);
    test_read_end(r);
    g_assert_cmpuint(tc->fetches, ==, 2);
    g_assert_cmpuint(tc->rc.stats.readaheads, ==, 0);
    g_assert_cmpuint(tc->rc.stats.extensions, ==, 3);
    g_assert_cmpuint(tc->rc.stats.bytes_fetched, ==, 528 * KiB);
    test_cache_free(tc);
}

/*
 * A transfer that stopped a fetch where it ends seals it: a read that comes
 * before the fetch is reported done, right where it ends, starts a fetch
 * of its own instead of making the finished one longer (the driver drops
 * the lock to wake readers between the two)
 */
static void test_sealed_not_extended(void)
{
    TestCache *tc = test_cache_new_bs(4 * MiB, 0, 16 * KiB, 128);
    RangeCacheFetch *f;
    TestRead *r;

    range_cache_set_fetches_extend(&tc->rc, true);
    r = test_read_start(tc, 0, 4 * KiB);
    f = test_nth(tc, 0);
    test_write(tc, f, f->end - f->pos);
    test_read_end(r);
    qemu_mutex_lock(&tc->lock);
    range_cache_fetch_seal_locked(&tc->rc, f);
    qemu_mutex_unlock(&tc->lock);

    r = test_read_start(tc, 4 * KiB, 4 * KiB);
    g_assert_cmpuint(f->end, ==, 4 * KiB);
    g_assert_cmpuint(g_queue_get_length(&tc->pending), ==, 2);
    test_complete_all(tc);
    test_read_end(r);
    g_assert_cmpuint(tc->rc.stats.extensions, ==, 0);
    test_cache_free(tc);
}

/* Store bytes without proving them: the next @n bytes of @f, as @byte */
static void test_store(TestCache *tc, RangeCacheFetch *f, uint64_t n,
                       uint8_t byte)
{
    g_autofree uint8_t *junk = g_malloc(n);

    memset(junk, byte, n);
    qemu_mutex_lock(&tc->lock);
    g_assert_true(range_cache_fetch_store_locked(&tc->rc, f, junk, n));
    qemu_mutex_unlock(&tc->lock);
}

/*
 * Bytes that a transport stored but did not prove are never read: a read
 * waits until they are proven, and those of a failed answer are forgotten,
 * whether the fetch is asked for again or fails
 */
static void test_unproven_bytes(void)
{
    TestCache *tc = test_cache_new_bs(1 * MiB, 0, 64 * KiB, 4);
    RangeCacheFetch *f;
    TestRead *r;

    r = test_read_start(tc, 0, 16 * KiB);
    f = test_nth(tc, 0);
    g_assert_cmpuint(f->end, ==, 16 * KiB);

    /* A broken answer: its bytes are forgotten, and asked for again */
    test_store(tc, f, 12 * KiB, 0xee);
    g_assert_false(r->done);
    qemu_mutex_lock(&tc->lock);
    g_assert_cmpuint(range_cache_fetch_discard_locked(&tc->rc, f), ==,
                     12 * KiB);
    qemu_mutex_unlock(&tc->lock);
    g_assert_cmpuint(f->pos, ==, 0);

    /* A good one, proven once it is over */
    qemu_mutex_lock(&tc->lock);
    g_assert_true(range_cache_fetch_store_locked(&tc->rc, f, tc->image,
                                                 16 * KiB));
    qemu_mutex_unlock(&tc->lock);
    g_assert_false(r->done);
    qemu_mutex_lock(&tc->lock);
    range_cache_fetch_prove_locked(&tc->rc, f);
    range_cache_wake_locked(&tc->rc);
    qemu_mutex_unlock(&tc->lock);
    test_read_end(r);
    test_complete_all(tc);

    /* A fetch that fails with unproven bytes leaves none of them */
    r = test_read_start(tc, 16 * KiB, 8 * KiB);
    f = test_nth(tc, 0);
    test_store(tc, f, 8 * KiB, 0xee);
    g_queue_pop_head(&tc->pending);
    qemu_mutex_lock(&tc->lock);
    range_cache_fetch_done_locked(&tc->rc, f, -EPROTO);
    qemu_mutex_unlock(&tc->lock);
    g_assert_true(r->done);
    g_assert_cmpint(r->ret, ==, -EPROTO);
    test_read_free(r);
    test_read_sync(tc, 16 * KiB, 48 * KiB);
    g_assert_cmpuint(tc->fetches, ==, 3);
    test_cache_free(tc);
}

/*
 * A read that waits for a fetch tells the fetcher, so that it can start
 * readahead that a read now needs before readahead that nobody needs
 */
static void test_wait_hook(void)
{
    TestCache *tc = test_cache_new_bs(4 * MiB, 0, 64 * KiB, 64);
    TestRead *r;

    range_cache_set_readahead(&tc->rc, 1 * MiB, 256 * KiB);
    range_cache_read_ahead(&tc->rc, 0, 1 * MiB, 256 * KiB);
    g_assert_cmpuint(g_queue_get_length(&tc->pending), ==, 4);
    g_assert_true(g_queue_is_empty(&tc->waited));

    r = test_read_start(tc, 600 * KiB, 4 * KiB);
    g_assert_cmpuint(g_queue_get_length(&tc->waited), ==, 1);
    g_assert_true(g_queue_peek_head(&tc->waited) == test_nth(tc, 2));
    test_complete_all(tc);
    test_read_end(r);
    test_cache_free(tc);
}

/*
 * Near the end of the image, readahead shares out what is left over as
 * many fetches as it keeps in flight (4 here), 256 KiB at least, instead of
 * ending with whole fetches that the last connections carry alone
 */
static void test_readahead_tail(void)
{
    const uint64_t len = 16 * MiB;
    TestCache *tc = test_cache_new_bs(len, 0, 64 * KiB, 128);
    g_auto(GStrv) events = NULL;
    unsigned smaller = 0, i;
    uint64_t pos, last_end = 0;

    range_cache_set_readahead(&tc->rc, 4 * MiB, 1 * MiB);
    for (pos = 0; pos < len; pos += 64 * KiB) {
        test_read_sync(tc, pos, 64 * KiB);
    }
    events = g_strsplit(tc->events->str, " ", -1);
    for (i = 0; events[i]; i++) {
        uint64_t off, bytes, share;

        if (events[i][0] != 'r') {
            continue;
        }
        g_assert_cmpint(sscanf(events[i], "r%" SCNu64 ":%" SCNu64, &off,
                               &bytes), ==, 2);
        share = MAX(ROUND_UP((len - off) / 4, RANGE_CACHE_GRANULE),
                    256 * KiB);
        g_assert_cmpuint(bytes, <=, MIN(1 * MiB, share));
        if (off > len - 4 * MiB) {
            g_assert_cmpuint(bytes, <, 1 * MiB);
            smaller++;
        }
        last_end = MAX(last_end, off + bytes);
    }
    /* The last 4 MiB took more, smaller fetches than 4 of 1 MiB */
    g_assert_cmpuint(smaller, >, 4);
    g_assert_cmpuint(last_end, ==, len);
    g_assert_cmpuint(tc->rc.stats.misses, ==, 2);
    g_assert_cmpuint(tc->rc.stats.bytes_fetched, ==, len);
    test_cache_free(tc);
}

/*
 * Once its window holds two fetches, readahead asks for whole fetches
 * only: reads whose sizes do not divide the fetch size would otherwise
 * leave a remainder after each whole fetch, a request that costs a round
 * trip for a few blocks.  What is left over goes with the next whole
 * fetch, and the end of the image is shared out.
 */
static void test_readahead_whole_fetches(void)
{
    const uint64_t len = 32 * MiB;
    TestCache *tc = test_cache_new_bs(len, 0, 64 * KiB, 256);
    g_auto(GStrv) events = NULL;
    unsigned whole = 0, i;
    uint64_t pos;

    range_cache_set_readahead(&tc->rc, 4 * MiB, 1 * MiB);
    for (pos = 0; pos < len; pos += 192 * KiB) {
        test_read_sync(tc, pos, MIN(192 * KiB, len - pos));
    }
    events = g_strsplit(tc->events->str, " ", -1);
    for (i = 0; events[i]; i++) {
        uint64_t off, bytes;

        if (events[i][0] != 'r') {
            continue;
        }
        g_assert_cmpint(sscanf(events[i], "r%" SCNu64 ":%" SCNu64, &off,
                               &bytes), ==, 2);
        /* Past the first windows (which grow) and before the tail */
        if (off >= 4 * MiB && off < len - 4 * MiB) {
            g_assert_cmpuint(bytes, ==, 1 * MiB);
            whole++;
        }
    }
    g_assert_cmpuint(whole, ==, 24);
    g_assert_cmpuint(tc->rc.stats.misses, ==, 2);
    g_assert_cmpuint(tc->rc.stats.bytes_fetched, ==, len);
    test_cache_free(tc);
}

/* Random reads fetch nothing ahead */
static void test_readahead_random(void)
{
    TestCache *tc = test_cache_new_bs(64 * MiB, 0, 64 * KiB, 64);
    GRand *rand = g_rand_new_with_seed(1);
    unsigned i;

    range_cache_set_readahead(&tc->rc, 2 * MiB, 256 * KiB);
    for (i = 0; i < 100; i++) {
        test_read_sync(tc, g_rand_int_range(rand, 0, 64 * MiB - 64 * KiB),
                       64 * KiB);
    }
    /*
     * Two reads close to each other by chance look like a stream, which
     * costs the first window of readahead, 256 KiB; with this seed, once
     */
    g_assert_cmpuint(tc->rc.stats.readaheads, <=, 256 * KiB / (64 * KiB));
    g_assert_cmpuint(tc->rc.stats.bytes_fetched, <=,
                     100 * (64 + 4) * KiB + 256 * KiB);
    g_rand_free(rand);
    test_cache_free(tc);
}

/* A stream survives a read elsewhere now and then */
static void test_readahead_two_streams(void)
{
    TestCache *tc = test_cache_new(1024 * BS, 0, 32);
    uint64_t pos;

    range_cache_set_readahead(&tc->rc, 4 * BS, BS);
    for (pos = 0; pos < 64 * BS; pos += BS) {
        test_read_sync(tc, pos, BS);
        if (pos % (8 * BS) == 0) {
            /* Elsewhere, and far apart: not a stream of their own */
            test_read_sync(tc, 300 * BS + 8 * pos, 10);
        }
    }
    /* The first two reads of the stream missed; then readahead kept up */
    g_assert_cmpuint(tc->rc.stats.misses, ==, 2 + 8);
    test_cache_free(tc);
}

/*
 * Blocks that readahead passes over while they are cached are kept like
 * those it fetches: the metadata a format driver read first is not evicted
 * just before the stream reaches it
 */
static void test_readahead_keeps_cached(void)
{
    TestCache *tc = test_cache_new(256 * BS, 0, 8);

    range_cache_set_readahead(&tc->rc, 4 * BS, BS);
    test_read_sync(tc, 5 * BS, BS);      /* metadata */
    test_read_sync(tc, 0, BS);
    test_read_sync(tc, BS, BS);          /* readahead: blocks 2 to 5 */
    g_assert_cmpint(range_cache_block_list(&tc->rc, 5), ==,
                    RANGE_CACHE_LIST_UNREAD);
    test_drop_events(tc);
    /* Reads elsewhere take the free, streamed, then read blocks */
    test_read_sync(tc, 40 * BS, 10);
    test_read_sync(tc, 80 * BS, 10);
    test_read_sync(tc, 120 * BS, 10);
    test_read_sync(tc, 160 * BS, 10);
    assert_events(tc, "m655360:4096 w655360:4096 m1310720:4096 "
                  "w1310720:4096 e16384:16384 m1966080:4096 w1966080:4096 "
                  "e0:16384 m2621440:4096 w2621440:4096");
    g_assert_cmpint(range_cache_block_list(&tc->rc, 5), ==,
                    RANGE_CACHE_LIST_UNREAD);
    test_read_sync(tc, 5 * BS, BS);
    assert_events(tc, "h81920:16384");
    test_cache_free(tc);
}

/* Readahead never evicts what it fetched; unread blocks are counted */
static void test_readahead_unread(void)
{
    TestCache *tc = test_cache_new(256 * BS, 0, 4);
    g_autofree char *ev = NULL;
    RangeCacheStats stats;

    range_cache_set_readahead(&tc->rc, 2 * BS, BS);
    test_read_sync(tc, 0, BS);
    test_read_sync(tc, BS, BS);          /* readahead of blocks 2 and 3 */
    test_read_sync(tc, 2 * BS, BS);      /* and 4, instead of block 1 */
    assert_events(tc, "m0:16384 w0:16384 m16384:16384 r32768:16384 "
                  "r49152:16384 w16384:16384 e16384:16384 r65536:16384 "
                  "h32768:16384");
    g_assert_cmpuint(tc->rc.stats.readaheads, ==, 3);

    /* Reads elsewhere evict what was read, then what readahead fetched */
    test_read_sync(tc, 50 * BS, 10);
    test_read_sync(tc, 100 * BS, 10);
    test_read_sync(tc, 150 * BS, 10);
    assert_events(tc, "e32768:16384 m819200:4096 w819200:4096 "
                  "e0:16384 m1638400:4096 w1638400:4096 "
                  "e819200:16384 m2457600:4096 w2457600:4096");
    g_assert_cmpuint(tc->rc.stats.readahead_unread, ==, 0);
    /* Three blocks at once: two read ones, then an unread one */
    test_read_sync(tc, 200 * BS, 3 * BS);
    ev = test_events(tc);
    g_assert_true(g_str_has_prefix(ev, "e1638400:16384 e2457600:16384 "
                                   "u49152:16384 m3276800:49152 "));
    g_assert_cmpuint(tc->rc.stats.readahead_unread, ==, 1);
    test_cache_free_stats(tc, &stats);
    /* Block 4, in the cache until the end */
    g_assert_cmpuint(stats.readahead_unread, ==, 2);
}

/*
 * A stream that skips bytes (a format driver reads only what its clusters
 * use) leaves what it skipped behind: those blocks are evicted first, and
 * readahead keeps finding room instead of filling the cache with blocks
 * nobody will read
 */
static void test_readahead_skipped(void)
{
    TestCache *tc = test_cache_new(256 * BS, 0, 8);
    g_autofree char *ev = NULL;
    RangeCacheStats stats;
    uint64_t index;

    range_cache_set_readahead(&tc->rc, 4 * BS, BS);
    /* The first KiB of every block */
    for (index = 0; index < 64; index++) {
        test_read_sync(tc, index * BS, KiB);
    }
    g_assert_cmpint(range_cache_block_list(&tc->rc, 62), ==,
                    RANGE_CACHE_LIST_STREAMED);
    g_assert_cmpint(range_cache_block_list(&tc->rc, 64), ==,
                    RANGE_CACHE_LIST_UNREAD);
    /* Whole blocks skipped */
    test_read_sync(tc, 66 * BS, KiB);
    g_assert_cmpint(range_cache_block_list(&tc->rc, 64), ==,
                    RANGE_CACHE_LIST_STREAMED);
    g_assert_cmpint(range_cache_block_list(&tc->rc, 65), ==,
                    RANGE_CACHE_LIST_STREAMED);
    g_assert_cmpuint(tc->rc.stats.misses, ==, 2);
    ev = test_events(tc);
    g_assert_null(strchr(ev, 'u'));
    test_cache_free_stats(tc, &stats);
    /*
     * The block the last read is in, and the three whole blocks of the
     * window after it (its last KiB waits for a next read)
     */
    g_assert_cmpuint(stats.readahead_unread, ==, 4);
}

/* What a driver asks for at open goes out in fetches of the size it says */
static void test_read_ahead_at_open(void)
{
    TestCache *tc = test_cache_new_bs(60 * KiB, 0, 64 * KiB, 4);

    range_cache_read_ahead(&tc->rc, 0, 1 * MiB, 16 * KiB);
    assert_events(tc, "r0:16384 r16384:16384 r32768:16384 r49152:12288");
    test_complete_all(tc);
    test_read_sync(tc, 100, 50 * KiB);
    g_assert_cmpuint(tc->fetches, ==, 4);
    test_cache_free(tc);

    /*
     * Near the end of the image too: the end is not shared out over the
     * fetches in flight, as for a stream's readahead
     */
    tc = test_cache_new_bs(1 * MiB, 0, 64 * KiB, 16);
    range_cache_set_readahead(&tc->rc, 768 * KiB, 192 * KiB);
    range_cache_read_ahead(&tc->rc, 0, 512 * KiB, 512 * KiB);
    range_cache_read_ahead(&tc->rc, 512 * KiB, 128 * KiB, 64 * KiB);
    assert_events(tc, "r0:524288 r524288:65536 r589824:65536");
    test_complete_all(tc);
    test_cache_free(tc);
}

/* A read that finds no room waits for a block to be released */
static void test_wait_for_room(void)
{
    TestCache *tc = test_cache_new(16 * BS, 0, 1);
    TestRead *a, *b;

    a = test_read_start(tc, 0, 10);
    b = test_read_start(tc, 3 * BS, 10);
    assert_events(tc, "m0:4096 w0:4096 n49152:10");
    g_assert_cmpuint(tc->no_room, ==, 1);   /* the fetcher was told */
    g_assert_cmpuint(g_queue_get_length(&tc->pending), ==, 1);
    test_complete_one(tc, 0);
    test_read_end(a);
    g_assert_false(b->done);
    test_complete_all(tc);
    test_read_end(b);
    test_cache_free(tc);
}

/* Reads that each need more than the cache holds all finish */
static void test_no_deadlock(void)
{
    TestCache *tc = test_cache_new(32 * BS + 77, 0, 2);
    TestRead *r[12];
    unsigned i;

    for (i = 0; i < ARRAY_SIZE(r); i++) {
        r[i] = test_read_start(tc, (i * 5 % 12) * 2 * BS + i, 5 * BS);
    }
    test_complete_all(tc);
    for (i = 0; i < ARRAY_SIZE(r); i++) {
        test_read_end(r[i]);
    }
    test_cache_free(tc);
}

/*
 * Concurrent reads of every size on caches of every small size, with bytes
 * that arrive in pieces of any size and fetches that end in any order and
 * sometimes fail half-way: each read finishes, with the right bytes or
 * with the error of a fetch of its bytes.
 */
static void test_stress(void)
{
    GRand *rand = g_rand_new_with_seed(42);
    unsigned capacity, readahead, round;

    for (capacity = 1; capacity <= 4; capacity++) {
        for (readahead = 0; readahead < capacity; readahead++) {
            for (round = 0; round < 20; round++) {
                uint64_t len = g_rand_int_range(rand, 1, 12 * BS);
                TestCache *tc = test_cache_new(len + 3, 3, capacity);
                TestRead *r[16];
                unsigned i, steps = 0;

                range_cache_set_readahead(&tc->rc, readahead * BS,
                                          g_rand_int_range(rand, 1, 5) * G);
                for (i = 0; i < ARRAY_SIZE(r); i++) {
                    uint64_t off = g_rand_int_range(rand, 0, len + BS);
                    uint64_t bytes = g_rand_int_range(rand, 1, 4 * BS);

                    if (i > 0 && g_rand_boolean(rand)) {
                        /* Continue the previous read: a stream */
                        off = r[i - 1]->offset + r[i - 1]->bytes;
                    }
                    r[i] = test_read_start(tc, off, bytes);
                }
                while (!g_queue_is_empty(&tc->pending)) {
                    unsigned n = g_rand_int_range(
                        rand, 0, g_queue_get_length(&tc->pending));
                    RangeCacheFetch *f = test_nth(tc, n);

                    switch (g_rand_int_range(rand, 0, 10)) {
                    case 0:
                        test_write(tc, f, g_rand_int_range(rand, 0, 2 * G));
                        test_complete_nth(tc, n, -EIO);
                        break;
                    case 1:
                    case 2:
                    case 3:
                        test_write(tc, f, g_rand_int_range(rand, 1, 2 * G));
                        if (f->pos < f->end) {
                            break;
                        }
                        /* fall through */
                    default:
                        test_complete_nth(tc, n, 0);
                    }
                    g_assert_cmpuint(++steps, <, 10000);
                }
                for (i = 0; i < ARRAY_SIZE(r); i++) {
                    g_assert_true(r[i]->done);
                    if (r[i]->ret == 0) {
                        test_read_check(r[i]);
                    } else {
                        g_assert_cmpint(r[i]->ret, ==, -EIO);
                    }
                    test_read_free(r[i]);
                }
                test_cache_free(tc);
            }
        }
    }
    g_rand_free(rand);
}

typedef struct TestThreadReader {
    TestCache *tc;
    unsigned seed;
    unsigned reads;
    unsigned failed;            /* reads that got the error of a fetch */
    unsigned wrong;             /* reads that got wrong bytes */
    unsigned *done;             /* readers that finished; atomic */
} TestThreadReader;

/* Random reads, in the AioContext of an iothread */
static void coroutine_fn test_thread_reader(void *opaque)
{
    TestThreadReader *t = opaque;
    TestCache *tc = t->tc;
    GRand *rand = g_rand_new_with_seed(t->seed);
    g_autofree uint8_t *buf = g_malloc(4 * BS);
    unsigned i;

    for (i = 0; i < t->reads; i++) {
        uint64_t off = g_rand_int_range(rand, 0, tc->rc.length);
        uint64_t bytes = g_rand_int_range(rand, 1, 4 * BS);
        QEMUIOVector qiov;
        uint64_t j;
        int ret;

        if (i > 0 && g_rand_boolean(rand)) {
            off = (off / BS) * BS;      /* so that streams happen too */
        }
        qemu_iovec_init_buf(&qiov, buf, bytes);
        ret = range_cache_co_read(&tc->rc, off, bytes, &qiov, 0);
        if (ret == -EIO) {
            t->failed++;
            continue;
        }
        for (j = 0; j < bytes; j++) {
            uint64_t pos = off + j;
            uint8_t want = pos < tc->rc.length ? tc->image[pos] : 0;

            if (ret != 0 || buf[j] != want) {
                t->wrong++;
                break;
            }
        }
    }
    g_rand_free(rand);
    qatomic_inc(t->done);
}

/*
 * Reads come from several threads at once (multiqueue): readers in two
 * iothreads share the cache while this thread writes the fetches' bytes in
 * pieces and ends them in any order, a few with an error.  Whatever the
 * interleaving, every read ends, with the right bytes or the error.
 */
static void test_threads(void)
{
    TestCache *tc = test_cache_new(40 * BS + 5, 0, 6);
    IOThread *io[2] = { iothread_new(), iothread_new() };
    TestThreadReader t[6];
    GRand *rand = g_rand_new_with_seed(7);
    unsigned done = 0, i;

    range_cache_set_readahead(&tc->rc, 2 * BS, 2 * G);
    for (i = 0; i < ARRAY_SIZE(t); i++) {
        t[i] = (TestThreadReader) {
            .tc = tc, .seed = i, .reads = 300, .done = &done,
        };
        aio_co_enter(iothread_get_aio_context(io[i % 2]),
                     qemu_coroutine_create(test_thread_reader, &t[i]));
    }

    /* Until every reader is done, and then what readahead left */
    while (qatomic_read(&done) < ARRAY_SIZE(t) ||
           !g_queue_is_empty(&tc->pending)) {
        RangeCacheFetch *f = NULL;
        unsigned n = 0;

        qemu_mutex_lock(&tc->lock);
        if (!g_queue_is_empty(&tc->pending)) {
            n = g_rand_int_range(rand, 0, g_queue_get_length(&tc->pending));
            f = g_queue_peek_nth(&tc->pending, n);
        }
        qemu_mutex_unlock(&tc->lock);
        if (!f) {
            g_usleep(20);
        } else if (f->pos < f->end && g_rand_int_range(rand, 0, 3) == 0) {
            test_write(tc, f, g_rand_int_range(rand, 1, 2 * G));
        } else {
            qemu_mutex_lock(&tc->lock);
            g_queue_pop_nth(&tc->pending, n);
            qemu_mutex_unlock(&tc->lock);
            while (f->pos < f->end) {
                test_write(tc, f, 3000);
            }
            qemu_mutex_lock(&tc->lock);
            range_cache_fetch_done_locked(&tc->rc, f,
                g_rand_int_range(rand, 0, 20) ? 0 : -EIO);
            qemu_mutex_unlock(&tc->lock);
        }
    }

    for (i = 0; i < ARRAY_SIZE(t); i++) {
        g_assert_cmpuint(t[i].wrong, ==, 0);
    }
    iothread_join(io[0]);
    iothread_join(io[1]);
    g_rand_free(rand);
    test_cache_free(tc);
}

int main(int argc, char **argv)
{
    qemu_init_main_loop(&error_abort);
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/range-cache/geometry", test_geometry);
    g_test_add_func("/range-cache/remote-range", test_remote_range);
    g_test_add_func("/range-cache/read-granules", test_read_granules);
    g_test_add_func("/range-cache/read-spans-blocks", test_read_spans_blocks);
    g_test_add_func("/range-cache/read-past-end", test_read_past_end);
    g_test_add_func("/range-cache/partial-progressive",
                    test_partial_progressive);
    g_test_add_func("/range-cache/partial-order", test_partial_order);
    g_test_add_func("/range-cache/partial-failure", test_partial_failure);
    g_test_add_func("/range-cache/failure-not-cached",
                    test_failure_not_cached);
    g_test_add_func("/range-cache/partial-eviction", test_partial_eviction);
    g_test_add_func("/range-cache/one-block", test_one_block);
    g_test_add_func("/range-cache/lru-order", test_lru_order);
    g_test_add_func("/range-cache/lru-streamed-first",
                    test_lru_streamed_first);
    g_test_add_func("/range-cache/readahead-sequential",
                    test_readahead_sequential);
    g_test_add_func("/range-cache/fetches-extend", test_fetches_extend);
    g_test_add_func("/range-cache/sealed-not-extended",
                    test_sealed_not_extended);
    g_test_add_func("/range-cache/unproven-bytes", test_unproven_bytes);
    g_test_add_func("/range-cache/wait-hook", test_wait_hook);
    g_test_add_func("/range-cache/readahead-tail", test_readahead_tail);
    g_test_add_func("/range-cache/readahead-whole-fetches",
                    test_readahead_whole_fetches);
    g_test_add_func("/range-cache/readahead-random", test_readahead_random);
    g_test_add_func("/range-cache/readahead-two-streams",
                    test_readahead_two_streams);
    g_test_add_func("/range-cache/readahead-keeps-cached",
                    test_readahead_keeps_cached);
    g_test_add_func("/range-cache/readahead-unread", test_readahead_unread);
    g_test_add_func("/range-cache/readahead-skipped", test_readahead_skipped);
    g_test_add_func("/range-cache/read-ahead-at-open",
                    test_read_ahead_at_open);
    g_test_add_func("/range-cache/wait-for-room", test_wait_for_room);
    g_test_add_func("/range-cache/no-deadlock", test_no_deadlock);
    g_test_add_func("/range-cache/stress", test_stress);
    g_test_add_func("/range-cache/threads", test_threads);
    return g_test_run();
}
