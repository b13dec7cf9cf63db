/*
 * Unit tests for the cache of aligned blocks of a remote image
 *
 * Copyright (C) 2026 The QEMU curl series authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A fake fetcher stands in for the transport: it queues the blocks the cache
 * asks for, and each test decides when and how they complete.  Readers are
 * coroutines, so that waiting for a block or for room really yields.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/main-loop.h"
#include "block/range-cache.h"
#include "iothread.h"

#define BS  (4 * KiB)

typedef struct TestCache {
    RangeCache rc;
    QemuMutex lock;
    uint8_t *image;             /* the remote file */
    uint64_t remote_len;
    GQueue pending;             /* blocks the cache asked to fetch */
    unsigned fetches;
    GString *events;            /* "h0 m1 e1 ..." */
} TestCache;

typedef struct TestRead {
    TestCache *tc;
    uint64_t offset;
    uint64_t bytes;
    uint8_t *buf;
    int ret;
    bool done;
} TestRead;

static void test_fetch(void *opaque, RangeCacheBlock *blk)
{
    TestCache *tc = opaque;

    g_queue_push_tail(&tc->pending, blk);
    tc->fetches++;
}

static void test_event(void *opaque, RangeCacheEvent event, uint64_t index,
                       uint64_t arg)
{
    static const char code[] = {
        [RANGE_CACHE_HIT] = 'h',
        [RANGE_CACHE_WAIT] = 'w',
        [RANGE_CACHE_MISS] = 'm',
        [RANGE_CACHE_NO_ROOM] = 'n',
        [RANGE_CACHE_EVICT] = 'e',
        [RANGE_CACHE_EVICT_UNUSED] = 'u',
        [RANGE_CACHE_READAHEAD] = 'r',
    };
    TestCache *tc = opaque;

    g_string_append_printf(tc->events, "%c%" PRIu64 " ", code[event], index);
}

static const RangeCacheOps test_ops = {
    .fetch = test_fetch,
    .event = test_event,
};

static TestCache *test_cache_new(uint64_t remote_len, uint64_t offset,
                                 unsigned capacity)
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
    tc->events = g_string_new(NULL);
    range_cache_init(&tc->rc, remote_len - offset, offset, BS, capacity,
                     &test_ops, tc, &tc->lock);
    return tc;
}

static void test_cache_free(TestCache *tc)
{
    g_assert(g_queue_is_empty(&tc->pending));
    range_cache_destroy(&tc->rc);
    g_string_free(tc->events, true);
    g_free(tc->image);
    qemu_mutex_destroy(&tc->lock);
    g_free(tc);
}

/* Take the events logged so far */
static char *test_events(TestCache *tc)
{
    char *s = g_strdup(g_strchomp(tc->events->str));

    g_string_truncate(tc->events, 0);
    return s;
}

/* Complete the fetch of @blk with @ret, copying the remote bytes */
static void test_complete_block(TestCache *tc, RangeCacheBlock *blk, int ret)
{
    uint64_t first, last;

    g_assert_cmpint(blk->state, ==, RANGE_CACHE_FETCHING);
    range_cache_remote_range(&tc->rc, blk, &first, &last);
    g_assert_cmpuint(last, <, tc->remote_len);
    if (ret == 0) {
        memcpy(blk->data, tc->image + first, last - first + 1);
    }
    qemu_mutex_lock(&tc->lock);
    range_cache_complete_locked(&tc->rc, blk, ret);
    qemu_mutex_unlock(&tc->lock);
}

/* Complete pending fetch number @n with @ret */
static void test_complete_nth(TestCache *tc, unsigned n, int ret)
{
    RangeCacheBlock *blk;

    qemu_mutex_lock(&tc->lock);
    blk = g_queue_pop_nth(&tc->pending, n);
    qemu_mutex_unlock(&tc->lock);
    g_assert(blk);
    test_complete_block(tc, blk, ret);
}

/* Complete the oldest pending fetch */
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
        uint8_t want = pos < len ? tc->image[tc->rc.offset + pos] : 0;

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

/* A read that completes once every fetch it causes has completed */
static void test_read_sync(TestCache *tc, uint64_t offset, uint64_t bytes)
{
    TestRead *r = test_read_start(tc, offset, bytes);

    test_complete_all(tc);
    test_read_check(r);
    test_read_free(r);
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

/* The remote range of a block: offset applied, last byte inclusive */
static void test_remote_range(void)
{
    TestCache *tc = test_cache_new(10000, 0, 4);
    RangeCacheBlock blk = { 0 };
    uint64_t first, last;

    range_cache_block_extent(&tc->rc, 0, &blk.start, &blk.len);
    range_cache_remote_range(&tc->rc, &blk, &first, &last);
    g_assert_cmpuint(first, ==, 0);
    g_assert_cmpuint(last, ==, BS - 1);
    test_cache_free(tc);

    /* An offset that is not a multiple of the block size */
    tc = test_cache_new(1000 + 10000, 1000, 4);
    g_assert_cmpuint(tc->rc.length, ==, 10000);
    g_assert_cmpuint(range_cache_nb_image_blocks(&tc->rc), ==, 3);
    range_cache_block_extent(&tc->rc, 1, &blk.start, &blk.len);
    range_cache_remote_range(&tc->rc, &blk, &first, &last);
    g_assert_cmpuint(first, ==, 1000 + BS);
    g_assert_cmpuint(last, ==, 1000 + 2 * BS - 1);
    range_cache_block_extent(&tc->rc, 2, &blk.start, &blk.len);
    range_cache_remote_range(&tc->rc, &blk, &first, &last);
    g_assert_cmpuint(first, ==, 1000 + 2 * BS);
    g_assert_cmpuint(last, ==, 1000 + 10000 - 1);
    g_assert_cmpuint(last - first + 1, ==, blk.len);
    test_cache_free(tc);
}

/* Reads are served from blocks, each fetched once while it stays cached */
static void test_read_fetches_once(void)
{
    TestCache *tc = test_cache_new(1000 + 10 * BS + 123, 1000, 16);
    g_autofree char *ev1 = NULL;
    g_autofree char *ev2 = NULL;

    /* Three blocks, unaligned at both ends, fetched together */
    test_read_sync(tc, 10, 3 * BS - 20);
    g_assert_cmpuint(tc->fetches, ==, 3);
    ev1 = test_events(tc);
    g_assert_cmpstr(ev1, ==, "m0 m1 m2");

    /* Then served from the cache */
    test_read_sync(tc, 0, 3 * BS);
    test_read_sync(tc, 5, 1);
    g_assert_cmpuint(tc->fetches, ==, 3);
    ev2 = test_events(tc);
    g_assert_cmpstr(ev2, ==, "h0 h1 h2 h0");

    /* The short last block, and a read straddling the end of the image */
    test_read_sync(tc, 10 * BS - 7, 200);
    test_read_sync(tc, 10 * BS + 100, 23);
    g_assert_cmpuint(tc->fetches, ==, 5);
    g_assert_cmpuint(tc->rc.stats.bytes_served, ==,
                     (3 * BS - 20) + 3 * BS + 1 + 130 + 23);
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

/* The least recently used block goes first, whenever it was fetched */
static void test_lru_order(void)
{
    TestCache *tc = test_cache_new(16 * BS, 0, 3);
    g_autofree char *ev1 = NULL;
    g_autofree char *ev2 = NULL;

    test_read_sync(tc, 0 * BS, 1);
    test_read_sync(tc, 1 * BS, 1);
    test_read_sync(tc, 2 * BS, 1);
    test_read_sync(tc, 0 * BS, 1);
    g_free(test_events(tc));

    /* Block 1 is the least recently used now */
    test_read_sync(tc, 3 * BS, 1);
    ev1 = test_events(tc);
    g_assert_cmpstr(ev1, ==, "e1 m3");

    test_read_sync(tc, 0 * BS, 1);
    test_read_sync(tc, 1 * BS, 1);
    ev2 = test_events(tc);
    g_assert_cmpstr(ev2, ==, "h0 e2 m1");
    g_assert_cmpuint(tc->rc.stats.evictions, ==, 2);
    g_assert_cmpuint(tc->fetches, ==, 5);
    test_cache_free(tc);
}

/*
 * A sequential stream evicts the blocks it read through before others: a
 * block read elsewhere (a format driver's metadata) is still there when the
 * stream reaches it.
 */
static void test_lru_streamed_first(void)
{
    TestCache *tc = test_cache_new(64 * BS, 0, 4);
    g_autofree char *ev = NULL;
    uint64_t i;

    test_read_sync(tc, 50 * BS + 10, 100);
    for (i = 0; i <= 50; i++) {
        test_read_sync(tc, i * BS, BS);
    }
    g_assert_cmpuint(tc->fetches, ==, 51);
    ev = test_events(tc);
    g_assert_nonnull(strstr(ev, "m49 h50"));
    test_cache_free(tc);
}

/* Read a little of @n blocks ten blocks apart, from block @first: no stream */
static void test_read_far_apart(TestCache *tc, uint64_t first, unsigned n)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        test_read_sync(tc, (first + 10 * i) * BS, 100);
    }
}

/*
 * A block that readahead finds cached is kept like one that it fetched:
 * after blocks read through by the stream and blocks read otherwise.
 */
static void test_readahead_keeps_cached(void)
{
    TestCache *tc = test_cache_new(64 * BS, 0, 7);
    uint64_t five = 5;
    RangeCacheBlock *blk;
    g_autofree char *ev1 = NULL;
    g_autofree char *ev2 = NULL;
    g_autofree char *ev3 = NULL;

    range_cache_set_readahead(&tc->rc, 4);
    test_read_sync(tc, 0, BS);                  /* a stream starts */
    test_read_sync(tc, 5 * BS + 10, 100);       /* metadata, say */
    test_read_sync(tc, BS, BS);                 /* readahead of 2..5 */
    ev1 = test_events(tc);
    g_assert_cmpstr(ev1, ==, "m0 m5 m1 r2");
    blk = g_hash_table_lookup(tc->rc.blocks, &five);
    g_assert_true(blk && blk->ahead);

    /* Random reads evict block 1 (streamed), then 0 and 20 (read) */
    test_read_far_apart(tc, 20, 4);
    ev2 = test_events(tc);
    g_assert_cmpstr(ev2, ==, "m20 e1 m30 e0 m40 e20 m50");

    test_read_sync(tc, 5 * BS, BS);
    ev3 = test_events(tc);
    g_assert_cmpstr(ev3, ==, "h5");
    g_assert_cmpuint(tc->rc.stats.prefetch_unused, ==, 0);
    test_cache_free(tc);
}

/*
 * Readers of a stream arrive out of order: a read behind the stream's end
 * is still part of the stream, and its block is evicted before others.
 */
static void test_lru_streamed_out_of_order(void)
{
    TestCache *tc = test_cache_new(64 * BS, 0, 6);
    g_autofree char *ev1 = NULL;
    g_autofree char *ev2 = NULL;

    test_read_sync(tc, 10 * BS, 100);           /* metadata, say */
    test_read_sync(tc, 0, BS);
    test_read_sync(tc, BS, BS);
    test_read_sync(tc, 2 * BS + BS / 2, BS / 2);
    test_read_sync(tc, 2 * BS, BS / 2);         /* behind */
    test_read_sync(tc, 3 * BS, BS);
    ev1 = test_events(tc);
    g_assert_cmpstr(ev1, ==, "m10 m0 m1 m2 h2 m3");

    test_read_far_apart(tc, 20, 4);
    test_read_sync(tc, 10 * BS, 100);
    ev2 = test_events(tc);
    g_assert_cmpstr(ev2, ==, "m20 e1 m30 e2 m40 e3 m50 h10");
    test_cache_free(tc);
}

/* Readers of a block being fetched wait for that one fetch */
static void test_waiters(void)
{
    TestCache *tc = test_cache_new(8 * BS, 0, 4);
    TestRead *a = test_read_start(tc, 100, 200);
    TestRead *b = test_read_start(tc, 1000, BS);
    TestRead *c = test_read_start(tc, 50, 10);
    g_autofree char *ev = test_events(tc);

    g_assert_cmpstr(ev, ==, "m0 w0 m1 w0");
    g_assert_false(a->done || b->done || c->done);
    g_assert_cmpuint(tc->fetches, ==, 2);

    /* Block 0 lets a and c finish; b still waits for block 1 */
    test_complete_one(tc, 0);
    test_read_check(a);
    test_read_check(c);
    g_assert_false(b->done);
    test_complete_one(tc, 0);
    test_read_check(b);
    g_assert_cmpuint(tc->rc.stats.waits, ==, 2);

    test_read_free(a);
    test_read_free(b);
    test_read_free(c);
    test_cache_free(tc);
}

/* A failed block is never served: its readers fail, the next read refetches */
static void test_failed_block(void)
{
    TestCache *tc = test_cache_new(8 * BS, 0, 4);
    TestRead *a = test_read_start(tc, 0, 2 * BS);
    TestRead *b = test_read_start(tc, 10, 10);
    TestRead *c = test_read_start(tc, BS, 10);

    g_assert_cmpuint(tc->fetches, ==, 2);
    test_complete_one(tc, -EIO);        /* block 0 */
    g_assert_true(a->done && b->done);
    g_assert_cmpint(a->ret, ==, -EIO);
    g_assert_cmpint(b->ret, ==, -EIO);
    g_assert_false(c->done);
    test_complete_one(tc, 0);           /* block 1 */
    test_read_check(c);
    g_assert_cmpuint(tc->rc.stats.failures, ==, 1);

    /* Block 0 is fetched again, block 1 is still cached */
    test_read_sync(tc, 0, 2 * BS);
    g_assert_cmpuint(tc->fetches, ==, 3);

    test_read_free(a);
    test_read_free(b);
    test_read_free(c);
    test_cache_free(tc);
}

/* A read larger than the whole cache is served in pieces */
static void test_read_larger_than_cache(void)
{
    TestCache *tc = test_cache_new(64 * BS, 0, 1);
    TestRead *r = test_read_start(tc, 10, 40 * BS);
    unsigned rounds = 0;

    while (!r->done) {
        /* Never more than the one block the cache has room for */
        g_assert_cmpuint(g_queue_get_length(&tc->pending), ==, 1);
        test_complete_one(tc, 0);
        rounds++;
    }
    test_read_check(r);
    g_assert_cmpuint(rounds, ==, 41);
    g_assert_cmpuint(tc->fetches, ==, 41);
    test_read_free(r);

    /* Same with room for a few blocks: they are fetched a few at a time */
    test_cache_free(tc);
    tc = test_cache_new(64 * BS, 0, 3);
    r = test_read_start(tc, 0, 64 * BS);
    g_assert_cmpuint(g_queue_get_length(&tc->pending), ==, 3);
    test_complete_all(tc);
    test_read_check(r);
    g_assert_cmpuint(tc->fetches, ==, 64);
    test_read_free(r);
    test_cache_free(tc);
}

/* A read that finds every block in use waits for one to be released */
static void test_wait_for_room(void)
{
    TestCache *tc = test_cache_new(8 * BS, 0, 1);
    TestRead *a = test_read_start(tc, 0, 10);
    TestRead *b = test_read_start(tc, 3 * BS, 10);
    g_autofree char *ev = test_events(tc);

    g_assert_cmpstr(ev, ==, "m0 n3");
    g_assert_cmpuint(tc->fetches, ==, 1);
    test_complete_one(tc, 0);
    test_read_check(a);
    /* Releasing block 0 let b evict it */
    g_assert_false(b->done);
    g_assert_cmpuint(tc->fetches, ==, 2);
    test_complete_one(tc, 0);
    test_read_check(b);

    test_read_free(a);
    test_read_free(b);
    test_cache_free(tc);
}

/* Many concurrent readers on a tiny cache all finish */
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
        test_read_check(r[i]);
        test_read_free(r[i]);
    }
    test_cache_free(tc);
}

/*
 * Concurrent reads of every size on caches of every small size, with fetches
 * that complete in any order and sometimes fail: each read finishes, with the
 * right bytes or with the error of a block it needed.
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

                range_cache_set_readahead(&tc->rc, readahead);
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
                    unsigned n = g_queue_get_length(&tc->pending);
                    bool fail = g_rand_int_range(rand, 0, 10) == 0;

                    test_complete_nth(tc, g_rand_int_range(rand, 0, n),
                                      fail ? -EIO : 0);
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

/* Sequential reads fetch ahead; each prefetched block is fetched once */
static void test_readahead_sequential(void)
{
    TestCache *tc = test_cache_new(64 * BS, 0, 8);
    g_autofree char *ev1 = NULL;
    g_autofree char *ev2 = NULL;
    g_autofree char *ev3 = NULL;
    uint64_t pos;

    range_cache_set_readahead(&tc->rc, 3);
    test_read_sync(tc, 0, 1000);
    test_read_sync(tc, 1000, BS);
    ev1 = test_events(tc);
    /* The second read of the stream starts readahead of blocks 2..4 */
    g_assert_cmpstr(ev1, ==, "m0 h0 m1 r2");
    g_assert_cmpuint(tc->rc.stats.prefetches, ==, 3);

    test_read_sync(tc, 1000 + BS, BS);
    ev2 = test_events(tc);
    g_assert_cmpstr(ev2, ==, "h1 h2 r5");
    g_assert_cmpuint(tc->rc.stats.prefetches, ==, 4);

    /* The rest of the image: every block fetched exactly once */
    for (pos = 1000 + 2 * BS; pos < 64 * BS; pos += BS) {
        test_read_sync(tc, pos, MIN(BS, 64 * BS - pos));
    }
    g_assert_cmpuint(tc->fetches, ==, 64);
    g_assert_cmpuint(tc->rc.stats.misses, ==, 2);
    g_assert_cmpuint(tc->rc.stats.prefetches, ==, 62);
    g_assert_cmpuint(tc->rc.stats.prefetch_unused, ==, 0);
    ev3 = test_events(tc);
    g_assert_null(strstr(ev3, "m"));
    test_cache_free(tc);
}

/*
 * Random reads do not start readahead, even near each other (within the
 * readahead distance, but not in the next block) or when a block is read
 * twice.
 */
static void test_readahead_random(void)
{
    TestCache *tc = test_cache_new(256 * BS, 0, 8);
    static const unsigned blocks[] = {
        17, 200, 3, 90, 150, 40, 250, 8, 11, 6, 6, 13, 13, 100, 103, 99,
    };
    unsigned i;

    range_cache_set_readahead(&tc->rc, 4);
    for (i = 0; i < ARRAY_SIZE(blocks); i++) {
        test_read_sync(tc, blocks[i] * BS + 5, 100);
    }
    g_assert_cmpuint(tc->rc.stats.prefetches, ==, 0);
    g_assert_cmpuint(tc->fetches, ==, 14);
    test_cache_free(tc);
}

/* Small reads that advance within a block are a stream too */
static void test_readahead_small_reads(void)
{
    TestCache *tc = test_cache_new(64 * BS, 0, 8);
    g_autofree char *ev = NULL;

    range_cache_set_readahead(&tc->rc, 2);
    test_read_sync(tc, 100, 300);
    test_read_sync(tc, 100, 300);       /* read again: not a stream */
    test_read_sync(tc, 50, 100);        /* behind: neither */
    g_assert_cmpuint(tc->rc.stats.prefetches, ==, 0);
    test_read_sync(tc, 400, 300);       /* advances: prefetch 1 and 2 */
    ev = test_events(tc);
    g_assert_cmpstr(ev, ==, "m0 h0 h0 h0 r1");
    test_cache_free(tc);
}

/* A read elsewhere now and then does not stop readahead of a stream */
static void test_readahead_two_streams(void)
{
    TestCache *tc = test_cache_new(256 * BS, 0, 16);
    g_autofree char *ev = NULL;

    range_cache_set_readahead(&tc->rc, 2);
    test_read_sync(tc, 0, BS);
    test_read_sync(tc, BS, BS);         /* prefetches 2 and 3 */
    test_read_sync(tc, 200 * BS, 10);   /* elsewhere */
    test_read_sync(tc, 2 * BS, BS);     /* prefetches 4 */
    test_read_sync(tc, 150 * BS, 10);   /* elsewhere again */
    test_read_sync(tc, 3 * BS, BS);     /* prefetches 5 */
    ev = test_events(tc);
    g_assert_cmpstr(ev, ==, "m0 m1 r2 m200 h2 r4 m150 h3 r5");
    test_cache_free(tc);
}

/* Prefetched blocks stay until read; blocks already read go first */
static void test_readahead_kept(void)
{
    TestCache *tc = test_cache_new(256 * BS, 0, 4);
    g_autofree char *ev = NULL;

    range_cache_set_readahead(&tc->rc, 2);
    test_read_sync(tc, 0, 10);
    test_read_sync(tc, 10, 10);         /* prefetches blocks 1 and 2 */
    test_read_sync(tc, 0, 10);          /* block 0 is the most recent now */
    test_read_sync(tc, 50 * BS, 10);
    test_read_sync(tc, 60 * BS, 10);
    test_read_sync(tc, 70 * BS, 10);
    ev = test_events(tc);
    g_assert_cmpstr(ev, ==, "m0 h0 r1 h0 m50 e0 m60 e50 m70");
    g_assert_cmpuint(tc->rc.stats.prefetch_unused, ==, 0);

    /* Readahead does not evict its own unread blocks either */
    test_read_sync(tc, 20, 10);         /* another stream: blocks 1, 2 */
    g_assert_cmpuint(tc->rc.stats.prefetch_unused, ==, 0);
    test_cache_free(tc);
}

/* Prefetched blocks dropped before any read are counted as unused */
static void test_readahead_unused(void)
{
    TestCache *tc = test_cache_new(256 * BS, 0, 3);
    g_autofree char *ev = NULL;
    TestRead *a, *b;

    range_cache_set_readahead(&tc->rc, 2);
    test_read_sync(tc, 0, 10);
    test_read_sync(tc, 10, 10);           /* prefetches blocks 1 and 2 */
    g_assert_cmpuint(tc->rc.stats.prefetches, ==, 2);

    /*
     * A read elsewhere evicts block 0; while it waits for its block, a
     * second one finds only unread prefetched blocks and evicts one.
     */
    a = test_read_start(tc, 100 * BS, 10);
    b = test_read_start(tc, 200 * BS, 10);
    test_complete_all(tc);
    test_read_check(a);
    test_read_check(b);
    test_read_free(a);
    test_read_free(b);
    ev = test_events(tc);
    g_assert_cmpstr(ev, ==, "m0 h0 r1 e0 m100 u1 m200");
    g_assert_cmpuint(tc->rc.stats.prefetch_unused, ==, 1);
    test_cache_free(tc);

    /* A failed prefetch is unused too, and fetched again when read */
    tc = test_cache_new(16 * BS, 0, 4);
    range_cache_set_readahead(&tc->rc, 1);
    test_read_sync(tc, 0, 10);
    a = test_read_start(tc, 10, 10);    /* a hit that prefetches block 1 */
    test_read_check(a);
    test_read_free(a);
    test_complete_one(tc, -EIO);
    g_assert_cmpuint(tc->rc.stats.prefetch_unused, ==, 1);
    test_read_sync(tc, BS, 10);
    g_assert_cmpuint(tc->rc.stats.misses, ==, 2);
    g_assert_cmpuint(tc->rc.stats.failures, ==, 1);
    test_cache_free(tc);
}

typedef struct TestThreadReader {
    TestCache *tc;
    unsigned seed;
    unsigned reads;
    unsigned failed;            /* reads that got the error of a block */
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
 * iothreads share the cache while this thread completes the fetches in any
 * order, a few with an error.  Every read ends with the right bytes or an
 * error, never other bytes.
 */
static void test_threads(void)
{
    TestCache *tc = test_cache_new(40 * BS + 5, 0, 6);
    IOThread *io[2] = { iothread_new(), iothread_new() };
    TestThreadReader t[6];
    GRand *rand = g_rand_new_with_seed(7);
    unsigned done = 0, failed = 0, i;

    range_cache_set_readahead(&tc->rc, 2);
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
        RangeCacheBlock *blk = NULL;

        qemu_mutex_lock(&tc->lock);
        if (!g_queue_is_empty(&tc->pending)) {
            blk = g_queue_pop_nth(&tc->pending, g_rand_int_range(
                                  rand, 0, g_queue_get_length(&tc->pending)));
        }
        qemu_mutex_unlock(&tc->lock);
        if (blk) {
            test_complete_block(tc, blk,
                                g_rand_int_range(rand, 0, 20) ? 0 : -EIO);
        } else {
            g_usleep(20);
        }
    }

    for (i = 0; i < ARRAY_SIZE(t); i++) {
        g_assert_cmpuint(t[i].wrong, ==, 0);
        failed += t[i].failed;
    }
    /* Some reads met a failed block, most did not */
    g_assert_cmpuint(failed, >, 0);
    g_assert_cmpuint(failed, <, ARRAY_SIZE(t) * 300 / 2);
    g_assert_cmpuint(tc->rc.stats.waits, >, 0);
    g_assert_cmpuint(tc->rc.stats.hits, >, 0);
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
    g_test_add_func("/range-cache/read/fetches-once", test_read_fetches_once);
    g_test_add_func("/range-cache/read/past-end", test_read_past_end);
    g_test_add_func("/range-cache/read/larger-than-cache",
                    test_read_larger_than_cache);
    g_test_add_func("/range-cache/lru-order", test_lru_order);
    g_test_add_func("/range-cache/lru-streamed-first",
                    test_lru_streamed_first);
    g_test_add_func("/range-cache/lru-streamed-out-of-order",
                    test_lru_streamed_out_of_order);
    g_test_add_func("/range-cache/readahead/keeps-cached",
                    test_readahead_keeps_cached);
    g_test_add_func("/range-cache/waiters", test_waiters);
    g_test_add_func("/range-cache/failed-block", test_failed_block);
    g_test_add_func("/range-cache/wait-for-room", test_wait_for_room);
    g_test_add_func("/range-cache/no-deadlock", test_no_deadlock);
    g_test_add_func("/range-cache/stress", test_stress);
    g_test_add_func("/range-cache/threads", test_threads);
    g_test_add_func("/range-cache/readahead/sequential",
                    test_readahead_sequential);
    g_test_add_func("/range-cache/readahead/random", test_readahead_random);
    g_test_add_func("/range-cache/readahead/small-reads",
                    test_readahead_small_reads);
    g_test_add_func("/range-cache/readahead/two-streams",
                    test_readahead_two_streams);
    g_test_add_func("/range-cache/readahead/kept", test_readahead_kept);
    g_test_add_func("/range-cache/readahead/unused", test_readahead_unused);
    return g_test_run();
}
