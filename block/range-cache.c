/*
 * Cache of aligned blocks of a remote image
 *
 * Copyright (C) 2026 The QEMU curl series authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Serves reads from aligned blocks kept in LRU order, so that a driver for a
 * high-latency transport fetches each byte once, whatever the size and order
 * of the reads, and a read waits only for the bytes it needs.  See
 * include/block/range-cache.h for the interface.
 */

#include "qemu/osdep.h"
#include "qemu/bitmap.h"
#include "qemu/host-utils.h"
#include "block/aio.h"
#include "block/range-cache.h"

#define GRANULE_BITS                12
QEMU_BUILD_BUG_ON(RANGE_CACHE_GRANULE != 1 << GRANULE_BITS);
QEMU_BUILD_BUG_ON(RANGE_CACHE_MIN_BLOCK_SIZE < RANGE_CACHE_GRANULE);

/*
 * The bytes a read misses are fetched in pieces of at most this size: the
 * pieces of a large read then travel over several connections at once,
 * which brings its last byte sooner than one long transfer would.
 */
#define RANGE_CACHE_MISS_FETCH      (512 * KiB)

/*
 * Readahead of a new stream fetches this much at first (or twice the read
 * that made it a stream, if more), then twice as much with every read that
 * continues the stream, up to RangeCache.readahead.  Two reads in a row by
 * chance cost little; a real stream reaches the whole window soon.
 */
#define RANGE_CACHE_FIRST_WINDOW    (256 * KiB)

/*
 * A read that starts at most this far after a stream's end (or twice its
 * own length, if more) continues the stream: concurrent readers of a stream
 * (qemu-img convert runs eight) arrive a little out of order.
 */
#define RANGE_CACHE_STREAM_GAP      (256 * KiB)

/*
 * The smallest fetch that readahead splits the end of the image into (see
 * range_cache_readahead_size()).
 */
#define RANGE_CACHE_TAIL_FETCH      (256 * KiB)

static void range_cache_event(RangeCache *rc, RangeCacheEvent event,
                              uint64_t offset, uint64_t bytes)
{
    if (rc->ops->event) {
        rc->ops->event(rc->opaque, event, offset, bytes);
    }
}

/* @pos rounded up to a granule, or to the end of the image */
static uint64_t range_cache_granule_ceil(const RangeCache *rc, uint64_t pos)
{
    return MIN(ROUND_UP(pos, RANGE_CACHE_GRANULE), rc->length);
}

/* The granule of @b that holds the image byte at @pos */
static unsigned range_cache_granule_of(const RangeCacheBlock *b, uint64_t pos)
{
    return (pos - b->start) >> GRANULE_BITS;
}

static uint64_t range_cache_block_end(const RangeCacheBlock *b)
{
    return b->start + b->len;
}

int range_cache_init(RangeCache *rc, uint64_t length, uint64_t remote_offset,
                     uint64_t block_size, unsigned capacity,
                     const RangeCacheOps *ops, void *opaque, QemuMutex *lock)
{
    size_t words;
    unsigned i;

    assert(is_power_of_2(block_size));
    assert(block_size >= RANGE_CACHE_MIN_BLOCK_SIZE &&
           block_size <= RANGE_CACHE_MAX_BLOCK_SIZE);
    assert(capacity >= 1);
    assert(ops->fetch);

    *rc = (RangeCache) {
        .length = length,
        .remote_offset = remote_offset,
        .block_size = block_size,
        .block_bits = ctz64(block_size),
        .granules = block_size >> GRANULE_BITS,
        .capacity = capacity,
        .ops = ops,
        .opaque = opaque,
        .lock = lock,
    };

    /*
     * Blocks come and go while the image is read, at a high rate; from the
     * heap, the memory of freed blocks would stay with the process after
     * close (glibc keeps it).  One mapping for all of them is used only as
     * far as it is touched, and goes back to the system at once.
     */
    rc->arena = qemu_anon_ram_alloc((size_t)capacity * block_size, NULL,
                                    false, false);
    if (!rc->arena) {
        return -ENOMEM;
    }
    words = BITS_TO_LONGS(rc->granules);
    rc->slots = g_new0(RangeCacheBlock, capacity);
    rc->bitmaps = g_new0(unsigned long, 2 * words * capacity);
    QTAILQ_INIT(&rc->free);
    for (i = 0; i < capacity; i++) {
        RangeCacheBlock *b = &rc->slots[i];

        b->data = rc->arena + (size_t)i * block_size;
        b->valid = rc->bitmaps + 2 * words * i;
        b->pending = b->valid + words;
        QTAILQ_INSERT_TAIL(&rc->free, b, next);
    }
    for (i = 0; i < RANGE_CACHE_LIST__MAX; i++) {
        QTAILQ_INIT(&rc->lists[i]);
    }
    rc->blocks = g_hash_table_new(g_int64_hash, g_int64_equal);
    qemu_co_queue_init(&rc->room_waiters);
    QTAILQ_INIT(&rc->fetches);
    QTAILQ_INIT(&rc->wake);
    return 0;
}

void range_cache_destroy(RangeCache *rc)
{
    GHashTableIter iter;
    RangeCacheBlock *b;

    assert(QTAILQ_EMPTY(&rc->fetches) && QTAILQ_EMPTY(&rc->wake));
    g_hash_table_iter_init(&iter, rc->blocks);
    while (g_hash_table_iter_next(&iter, NULL, (void **)&b)) {
        assert(b->refs == 0);
        if (b->unread) {
            rc->stats.readahead_unread++;
        }
    }
    g_hash_table_destroy(rc->blocks);
    rc->blocks = NULL;
    g_free(rc->bitmaps);
    rc->bitmaps = NULL;
    g_free(rc->slots);
    rc->slots = NULL;
    qemu_anon_ram_free(rc->arena, (size_t)rc->capacity * rc->block_size);
    rc->arena = NULL;
}

void range_cache_set_readahead(RangeCache *rc, uint64_t bytes,
                               uint64_t fetch_size)
{
    assert(bytes <= (rc->capacity - 1) * rc->block_size);
    assert(fetch_size >= RANGE_CACHE_GRANULE &&
           QEMU_IS_ALIGNED(fetch_size, RANGE_CACHE_GRANULE));
    rc->readahead = bytes;
    rc->readahead_fetch = fetch_size;
    memset(rc->streams, 0, sizeof(rc->streams));
}

void range_cache_set_fetches_extend(RangeCache *rc, bool extend)
{
    rc->fetches_extend = extend;
}

uint64_t range_cache_nb_image_blocks(const RangeCache *rc)
{
    return DIV_ROUND_UP(rc->length, rc->block_size);
}

void range_cache_block_extent(const RangeCache *rc, uint64_t index,
                              uint64_t *start, uint64_t *len)
{
    assert(index < range_cache_nb_image_blocks(rc));
    *start = index << rc->block_bits;
    *len = MIN(rc->block_size, rc->length - *start);
}

void range_cache_fetch_remote_range(const RangeCache *rc,
                                    const RangeCacheFetch *fetch,
                                    uint64_t *first, uint64_t *last)
{
    assert(fetch->pos < fetch->end);
    *first = rc->remote_offset + fetch->pos;
    *last = rc->remote_offset + fetch->end - 1;
}

static RangeCacheBlock *range_cache_lookup_locked(RangeCache *rc,
                                                  uint64_t index)
{
    return g_hash_table_lookup(rc->blocks, &index);
}

RangeCacheList range_cache_block_list(RangeCache *rc, uint64_t index)
{
    RangeCacheBlock *b;

    QEMU_LOCK_GUARD(rc->lock);
    b = range_cache_lookup_locked(rc, index);
    return b ? b->list : RANGE_CACHE_LIST_NONE;
}

/*
 * Eviction lists
 */

static void range_cache_list_remove_locked(RangeCache *rc,
                                           RangeCacheBlock *b)
{
    if (b->list != RANGE_CACHE_LIST_NONE) {
        QTAILQ_REMOVE(&rc->lists[b->list], b, next);
        b->list = RANGE_CACHE_LIST_NONE;
    }
}

/* A block nobody uses may be evicted: it goes to the most recent end */
static void range_cache_list_add_locked(RangeCache *rc, RangeCacheBlock *b,
                                        RangeCacheList list)
{
    assert(b->refs == 0 && b->list == RANGE_CACHE_LIST_NONE);
    b->list = list;
    QTAILQ_INSERT_TAIL(&rc->lists[list], b, next);
}

bool range_cache_room_wanted_locked(RangeCache *rc)
{
    return !qemu_co_queue_empty(&rc->room_waiters);
}

static bool range_cache_has_room_locked(RangeCache *rc)
{
    return !QTAILQ_EMPTY(&rc->free) ||
           !QTAILQ_EMPTY(&rc->lists[RANGE_CACHE_LIST_STREAMED]) ||
           !QTAILQ_EMPTY(&rc->lists[RANGE_CACHE_LIST_LRU]) ||
           !QTAILQ_EMPTY(&rc->lists[RANGE_CACHE_LIST_UNREAD]);
}

/*
 * Room for one block: wake one read that waits for it.  Waking them all
 * would make those that find no room again wait again, forever, when this
 * runs outside coroutine context (qemu_co_enter_all() loops until the queue
 * is empty).  A woken read that leaves room wakes the next one.  Drops the
 * lock outside coroutine context.
 */
static void range_cache_room_made_locked(RangeCache *rc)
{
    qemu_co_enter_next(&rc->room_waiters, rc->lock);
}

static void range_cache_evict_locked(RangeCache *rc, RangeCacheBlock *b)
{
    assert(b->refs == 0);
    range_cache_list_remove_locked(rc, b);
    g_hash_table_remove(rc->blocks, &b->index);
    rc->stats.evictions++;
    if (b->unread) {
        rc->stats.readahead_unread++;
    }
    range_cache_event(rc, b->unread ? RANGE_CACHE_EVICT_UNREAD :
                      RANGE_CACHE_EVICT, b->start, b->len);
    bitmap_zero(b->valid, rc->granules);
    b->nb_valid = 0;
}

/*
 * Find room for one more block: a free slot, else the least recently used
 * block of the first eviction list that has one (see RangeCache).  Blocks
 * that readahead fetched and nobody read yet are only evicted for a read:
 * readahead must not push out what it fetched before.  Returns NULL when
 * there is no such block.
 */
static RangeCacheBlock *range_cache_take_room_locked(RangeCache *rc,
                                                     bool readahead)
{
    RangeCacheBlock *b = QTAILQ_FIRST(&rc->free);

    if (b) {
        QTAILQ_REMOVE(&rc->free, b, next);
        return b;
    }
    b = QTAILQ_FIRST(&rc->lists[RANGE_CACHE_LIST_STREAMED]) ?:
        QTAILQ_FIRST(&rc->lists[RANGE_CACHE_LIST_LRU]);
    if (!b && !readahead) {
        b = QTAILQ_FIRST(&rc->lists[RANGE_CACHE_LIST_UNREAD]);
    }
    if (b) {
        range_cache_evict_locked(rc, b);
    }
    return b;
}

/*
 * A reference to the block with @index, cached or new (empty).  Returns
 * NULL if there is no room for it.
 */
static RangeCacheBlock *range_cache_get_block_locked(RangeCache *rc,
                                                     uint64_t index,
                                                     bool readahead)
{
    RangeCacheBlock *b = range_cache_lookup_locked(rc, index);

    if (b) {
        range_cache_list_remove_locked(rc, b);
        b->refs++;
        return b;
    }
    b = range_cache_take_room_locked(rc, readahead);
    if (!b) {
        return NULL;
    }
    b->index = index;
    range_cache_block_extent(rc, index, &b->start, &b->len);
    b->refs = 1;
    b->unread = false;
    b->streamed = false;
    g_hash_table_insert(rc->blocks, &b->index, b);
    return b;
}

/*
 * Drop a reference to @b.  An unused block that holds no valid byte is
 * freed at once; one that does goes to its eviction list: unread if
 * readahead fetched it and no read went past it since, else by how it was
 * last read.  May drop the lock (see range_cache_room_made_locked()).
 */
static void range_cache_put_block_locked(RangeCache *rc, RangeCacheBlock *b)
{
    assert(b->refs > 0);
    if (--b->refs > 0) {
        return;
    }
    if (b->nb_valid == 0) {
        g_hash_table_remove(rc->blocks, &b->index);
        b->unread = false;
        QTAILQ_INSERT_HEAD(&rc->free, b, next);
    } else if (b->unread) {
        range_cache_list_add_locked(rc, b, RANGE_CACHE_LIST_UNREAD);
    } else {
        range_cache_list_add_locked(rc, b, b->streamed ?
                                    RANGE_CACHE_LIST_STREAMED :
                                    RANGE_CACHE_LIST_LRU);
    }
    range_cache_room_made_locked(rc);
}

/*
 * Readahead found @b cached: a stream is about to read it, so keep it as
 * long as a block readahead fetched.  (Say a format driver read its
 * metadata there first: evicting it now would fetch it again soon.)
 */
static void range_cache_keep_ahead_locked(RangeCache *rc, RangeCacheBlock *b)
{
    b->unread = true;
    if (b->refs == 0 && b->list != RANGE_CACHE_LIST_UNREAD) {
        range_cache_list_remove_locked(rc, b);
        range_cache_list_add_locked(rc, b, RANGE_CACHE_LIST_UNREAD);
    }
}

/*
 * A read of a stream started at @pos, past @from, where what the stream had
 * read ended: the blocks that end between the two were skipped, in part or
 * whole (a format driver need not read every byte of its file), so they are
 * no longer kept as unread.  Otherwise they would keep their room until a
 * read that misses takes it, and readahead would find less and less room.
 * The stream has passed them: they are the first to go.
 */
static void range_cache_pass_locked(RangeCache *rc, uint64_t from,
                                    uint64_t pos)
{
    uint64_t index = range_cache_block_index(rc, from);

    for (; ((index + 1) << rc->block_bits) <= pos; index++) {
        RangeCacheBlock *b = range_cache_lookup_locked(rc, index);

        if (!b || !b->unread) {
            continue;
        }
        b->unread = false;
        b->streamed = true;
        if (b->refs == 0) {
            range_cache_list_remove_locked(rc, b);
            range_cache_list_add_locked(rc, b, RANGE_CACHE_LIST_STREAMED);
        }
    }
}

/*
 * Granules
 */

/* Whether the granule at image offset @pos is neither valid nor pending */
static bool range_cache_missing_locked(RangeCache *rc, uint64_t pos)
{
    RangeCacheBlock *b = range_cache_lookup_locked(
        rc, range_cache_block_index(rc, pos));
    unsigned g;

    if (!b) {
        return true;
    }
    g = range_cache_granule_of(b, pos);
    return !test_bit(g, b->valid) && !test_bit(g, b->pending);
}

/* The first byte from @pos to @end (granule aligned) that is missing */
static uint64_t range_cache_next_missing_locked(RangeCache *rc, uint64_t pos,
                                                uint64_t end)
{
    while (pos < end && !range_cache_missing_locked(rc, pos)) {
        pos += RANGE_CACHE_GRANULE;
    }
    return MIN(pos, end);
}

/* Where the run of missing granules from @pos ends, at @limit at most */
static uint64_t range_cache_missing_end_locked(RangeCache *rc, uint64_t pos,
                                               uint64_t limit)
{
    while (pos < limit && range_cache_missing_locked(rc, pos)) {
        pos += RANGE_CACHE_GRANULE;
    }
    return MIN(pos, limit);
}

/* The first byte of @b from @pos to @end in no valid granule, or @end */
static uint64_t range_cache_first_invalid(const RangeCache *rc,
                                          const RangeCacheBlock *b,
                                          uint64_t pos, uint64_t end)
{
    unsigned last = range_cache_granule_of(b, end - 1);
    unsigned g = find_next_zero_bit(b->valid, last + 1,
                                    range_cache_granule_of(b, pos));

    return g > last ? end : MAX(pos, b->start +
                                ((uint64_t)g << GRANULE_BITS));
}

/*
 * Mark the granules from @from to @to (granule aligned, or the end of the
 * image) valid or, if not @valid, no longer pending
 */
static void range_cache_settle_locked(RangeCache *rc, uint64_t from,
                                      uint64_t to, bool valid)
{
    while (from < to) {
        RangeCacheBlock *b = range_cache_lookup_locked(
            rc, range_cache_block_index(rc, from));
        uint64_t end = MIN(to, range_cache_block_end(b));
        unsigned g = range_cache_granule_of(b, from);
        unsigned n = range_cache_granule_of(b, end - 1) + 1 - g;

        bitmap_clear(b->pending, g, n);
        if (valid) {
            bitmap_set(b->valid, g, n);
            b->nb_valid += n;
        }
        from = end;
    }
}

/*
 * Fetches
 */

/* Where the granules of @f are valid up to */
static uint64_t range_cache_fetch_frontier(const RangeCacheFetch *f)
{
    return f->proven == f->end ? f->end :
           QEMU_ALIGN_DOWN(f->proven, RANGE_CACHE_GRANULE);
}

/* The fetch that will write the granule at @pos, which is pending */
static RangeCacheFetch *range_cache_find_fetch_locked(RangeCache *rc,
                                                      uint64_t pos)
{
    RangeCacheFetch *f;

    QTAILQ_FOREACH(f, &rc->fetches, next) {
        if (f->start <= pos && pos < f->end) {
            return f;
        }
    }
    return NULL;
}

static void range_cache_fetch_unref_locked(RangeCacheFetch *f)
{
    assert(f->refs > 0);
    if (--f->refs == 0) {
        assert(f->done && QTAILQ_EMPTY(&f->waiters));
        g_free(f);
    }
}

/*
 * Mark the missing granules from @start to @end pending for a fetch, which
 * takes a reference to each of their blocks (but to the first one if it
 * already holds it, @held), as far as there is room.  Returns where it
 * stopped.
 */
static uint64_t range_cache_reserve_locked(RangeCache *rc, uint64_t start,
                                           uint64_t end, bool readahead,
                                           bool held)
{
    uint64_t pos = start;

    while (pos < end) {
        uint64_t index = range_cache_block_index(rc, pos);
        RangeCacheBlock *b = held ? range_cache_lookup_locked(rc, index) :
                             range_cache_get_block_locked(rc, index,
                                                          readahead);
        uint64_t stop;
        unsigned g;

        if (!b) {
            break;
        }
        held = false;
        stop = MIN(end, range_cache_block_end(b));
        g = range_cache_granule_of(b, pos);
        bitmap_set(b->pending, g, range_cache_granule_of(b, stop - 1) + 1 - g);
        b->unread |= readahead;
        pos = stop;
    }
    return pos;
}

/*
 * Start fetching the missing granules from @start to @end, as far as there
 * is room.  Returns NULL if there was no room for the first block.
 */
static RangeCacheFetch *range_cache_new_fetch_locked(RangeCache *rc,
                                                     uint64_t start,
                                                     uint64_t end,
                                                     bool readahead)
{
    RangeCacheFetch *f;
    uint64_t pos = range_cache_reserve_locked(rc, start, end, readahead,
                                              false);

    if (pos == start) {
        return NULL;
    }

    f = g_new0(RangeCacheFetch, 1);
    f->start = start;
    f->end = pos;
    f->pos = start;
    f->proven = start;
    f->readahead = readahead;
    f->refs = 1;
    QTAILQ_INIT(&f->waiters);
    QTAILQ_INSERT_TAIL(&rc->fetches, f, next);
    if (readahead) {
        rc->stats.readaheads++;
    } else {
        rc->stats.misses++;
    }
    range_cache_event(rc, readahead ? RANGE_CACHE_READAHEAD : RANGE_CACHE_MISS,
                      f->start, f->end - f->start);
    rc->ops->fetch(rc->opaque, f);
    return f;
}

/*
 * With range_cache_set_fetches_extend(), the fetch in flight that ends at
 * @pos: what would start there makes it longer instead
 */
static RangeCacheFetch *range_cache_fetch_ending_at_locked(RangeCache *rc,
                                                           uint64_t pos)
{
    RangeCacheFetch *f;

    if (!rc->fetches_extend) {
        return NULL;
    }
    QTAILQ_FOREACH(f, &rc->fetches, next) {
        if (f->end == pos && !f->sealed) {
            return f;
        }
    }
    return NULL;
}

/*
 * Make @f, which ends at @pos, go on to @end (or as far as there is room),
 * for readahead or for a read.  Returns where it ends now.
 */
static uint64_t range_cache_extend_fetch_locked(RangeCache *rc,
                                                RangeCacheFetch *f,
                                                uint64_t pos, uint64_t end,
                                                bool readahead)
{
    bool held = range_cache_block_index(rc, pos) ==
                range_cache_block_index(rc, f->end - 1);

    f->end = range_cache_reserve_locked(rc, pos, end, readahead, held);
    if (f->end > pos) {
        rc->stats.extensions++;
        range_cache_event(rc, readahead ? RANGE_CACHE_READAHEAD :
                          RANGE_CACHE_MISS, pos, f->end - pos);
    }
    return f->end;
}

/*
 * How much a readahead fetch that starts at @pos may cover, @max at most.
 * Readahead keeps about readahead / readahead_fetch fetches in flight; near
 * the end of the image, the bytes left are shared out over that many, so
 * that the connections finish together rather than the last fetches
 * running on alone while the others have nothing left to do.
 */
static uint64_t range_cache_readahead_size(const RangeCache *rc, uint64_t pos,
                                           uint64_t max)
{
    uint64_t parallel = MAX(1, rc->readahead / MAX(1, rc->readahead_fetch));
    uint64_t share = ROUND_UP((rc->length - pos) / parallel,
                              RANGE_CACHE_GRANULE);

    return MIN(max, MAX(share, RANGE_CACHE_TAIL_FETCH));
}

/*
 * Start fetches for the granules from @pos to @end that are neither valid
 * nor being fetched, each of @max bytes at most, less near the end of the
 * image if @share_tail (or extend a fetch in flight, by any length).
 * Returns where it stopped: before @end if readahead found no room.
 */
static uint64_t range_cache_fetch_missing_locked(RangeCache *rc, uint64_t pos,
                                                 uint64_t end, uint64_t max,
                                                 bool readahead,
                                                 bool share_tail)
{
    pos = QEMU_ALIGN_DOWN(pos, RANGE_CACHE_GRANULE);
    end = range_cache_granule_ceil(rc, end);
    for (;;) {
        uint64_t stop, reached;
        RangeCacheFetch *f;

        pos = range_cache_next_missing_locked(rc, pos, end);
        if (pos >= end) {
            return end;
        }
        f = range_cache_fetch_ending_at_locked(rc, pos);
        if (f) {
            stop = range_cache_missing_end_locked(rc, pos, end);
            reached = range_cache_extend_fetch_locked(rc, f, pos, stop,
                                                      readahead);
        } else {
            uint64_t size = share_tail ?
                range_cache_readahead_size(rc, pos, max) : max;

            stop = range_cache_missing_end_locked(rc, pos,
                                                  MIN(end, pos + size));
            f = range_cache_new_fetch_locked(rc, pos, stop, readahead);
            reached = f ? f->end : pos;
        }
        if (reached < stop) {
            return reached;
        }
        pos = reached;
    }
}

/* Move the waiters of @f whose bytes are valid to the wake list */
static void range_cache_fetch_ready_locked(RangeCache *rc, RangeCacheFetch *f)
{
    uint64_t frontier = range_cache_fetch_frontier(f);
    RangeCacheWaiter *w;

    while ((w = QTAILQ_FIRST(&f->waiters)) &&
           (f->done || w->until <= frontier)) {
        QTAILQ_REMOVE(&f->waiters, w, next);
        QTAILQ_INSERT_TAIL(&rc->wake, w, next);
    }
}

bool range_cache_fetch_store_locked(RangeCache *rc, RangeCacheFetch *f,
                                    const void *buf, size_t len)
{
    const uint8_t *p = buf;

    assert(!f->done);
    if (len > f->end - f->pos) {
        return false;
    }
    rc->stats.bytes_fetched += len;
    while (len) {
        RangeCacheBlock *b = range_cache_lookup_locked(
            rc, range_cache_block_index(rc, f->pos));
        size_t n = MIN(len, range_cache_block_end(b) - f->pos);

        memcpy(b->data + (f->pos - b->start), p, n);
        f->pos += n;
        p += n;
        len -= n;
    }
    return true;
}

void range_cache_fetch_prove_locked(RangeCache *rc, RangeCacheFetch *f)
{
    uint64_t from = range_cache_fetch_frontier(f);

    assert(!f->done);
    f->proven = f->pos;
    range_cache_settle_locked(rc, from, range_cache_fetch_frontier(f), true);
    range_cache_fetch_ready_locked(rc, f);
}

bool range_cache_fetch_write_locked(RangeCache *rc, RangeCacheFetch *f,
                                    const void *buf, size_t len)
{
    if (!range_cache_fetch_store_locked(rc, f, buf, len)) {
        return false;
    }
    range_cache_fetch_prove_locked(rc, f);
    return true;
}

uint64_t range_cache_fetch_discard_locked(RangeCache *rc, RangeCacheFetch *f)
{
    uint64_t discarded = f->pos - f->proven;

    assert(!f->done);
    f->pos = f->proven;
    return discarded;
}

void range_cache_fetch_seal_locked(RangeCache *rc, RangeCacheFetch *f)
{
    f->sealed = true;
}

void range_cache_wake_locked(RangeCache *rc)
{
    RangeCacheWaiter *w;

    while ((w = QTAILQ_FIRST(&rc->wake))) {
        Coroutine *co = w->co;

        /* Once awake, the read may return and take @w with it */
        QTAILQ_REMOVE(&rc->wake, w, next);
        qemu_mutex_unlock(rc->lock);
        aio_co_wake(co);
        qemu_mutex_lock(rc->lock);
    }
}

void range_cache_fetch_done_locked(RangeCache *rc, RangeCacheFetch *f,
                                   int ret)
{
    uint64_t index, last = range_cache_block_index(rc, f->end - 1);

    assert(!f->done);
    assert(ret < 0 || f->proven == f->end);
    f->pos = f->proven;
    f->sealed = true;
    f->done = true;
    f->ret = ret;
    QTAILQ_REMOVE(&rc->fetches, f, next);
    if (ret < 0) {
        rc->stats.failures++;
        range_cache_settle_locked(rc, range_cache_fetch_frontier(f), f->end,
                                  false);
    }
    range_cache_fetch_ready_locked(rc, f);

    for (index = range_cache_block_index(rc, f->start); index <= last;
         index++) {
        RangeCacheBlock *b = range_cache_lookup_locked(rc, index);

        range_cache_put_block_locked(rc, b);
    }
    range_cache_fetch_unref_locked(f);
    range_cache_wake_locked(rc);
}

/*
 * Streams and readahead
 */

/*
 * Which stream a read of the bytes from @pos to @end belongs to: one that
 * it makes longer (*@longer is then true), starting a little after the
 * stream's end at most, or one that it falls behind.  Concurrent readers of
 * a stream arrive a little out of order; a read behind the end of a stream
 * neither continues nor breaks it.  Returns NULL for a read elsewhere, or
 * behind a stream of one read (a random read), after making it the start
 * of a new stream.
 */
static RangeCacheStream *range_cache_find_stream_locked(RangeCache *rc,
                                                        uint64_t pos,
                                                        uint64_t end,
                                                        bool *longer)
{
    uint64_t gap = MAX(RANGE_CACHE_STREAM_GAP, 2 * (end - pos));
    RangeCacheStream *st, *oldest = NULL, *behind = NULL;

    *longer = false;
    for (st = rc->streams; st < rc->streams + RANGE_CACHE_STREAMS; st++) {
        uint64_t reach = MAX(gap, st->window);

        if (st->reads && pos <= st->end + gap && pos + reach >= st->end) {
            if (end > st->end) {
                if (++st->reads == 2) {
                    st->window = MIN(rc->readahead,
                                     MAX(RANGE_CACHE_FIRST_WINDOW,
                                         2 * (end - pos)));
                } else {
                    st->window = MIN(rc->readahead, 2 * st->window);
                }
                range_cache_pass_locked(rc, st->end, pos);
                st->end = end;
                st->used = ++rc->stream_clock;
                *longer = true;
                return st;
            }
            behind = st;                /* or read again */
        }
        if (!oldest || (oldest->reads && st->used < oldest->used)) {
            oldest = st;
        }
    }
    if (behind && behind->reads > 1) {
        return behind;
    }
    *oldest = (RangeCacheStream) {
        .end = end,
        .ahead = end,
        .reads = 1,
        .used = ++rc->stream_clock,
    };
    return NULL;
}

/*
 * Make sure that the bytes from @pos to @end are cached or being fetched,
 * as far as readahead may take room, in fetches of @max bytes at most (the
 * end of the image shared out if @share_tail).  Returns how far it got.
 */
static uint64_t range_cache_read_ahead_locked(RangeCache *rc, uint64_t pos,
                                              uint64_t end, uint64_t max,
                                              bool share_tail)
{
    uint64_t index, last;

    if (pos >= end) {
        return pos;
    }
    last = range_cache_block_index(rc, end - 1);
    for (index = range_cache_block_index(rc, pos); index <= last; index++) {
        RangeCacheBlock *b = range_cache_lookup_locked(rc, index);

        if (b) {
            range_cache_keep_ahead_locked(rc, b);
        }
    }
    return range_cache_fetch_missing_locked(rc, pos, end, max, true,
                                            share_tail);
}

/*
 * Called once for every read, of the bytes from @pos to @end.  From the
 * second read of a stream on, a read that makes the stream longer tops up
 * what is fetched ahead of it when at least a fetch's worth (or half the
 * window, while the window grows) is missing, or the rest of the image.
 * Once the window holds two fetches or more, it tops up in whole fetches
 * and leaves the rest for the next read: every request costs the transport
 * a round trip before its first byte, and a remainder of a few blocks
 * would cost as much as a whole fetch.  (Not where fetches extend: there a
 * remainder costs nothing.)  Random reads fetch nothing ahead.  Returns
 * whether the read is part of a stream of two reads or more.
 */
static bool range_cache_note_read_locked(RangeCache *rc, uint64_t pos,
                                         uint64_t end)
{
    bool longer;
    RangeCacheStream *st = range_cache_find_stream_locked(rc, pos, end,
                                                          &longer);
    uint64_t from, to, unit;

    if (!st || st->reads < 2) {
        return false;
    }
    if (!longer || !rc->readahead) {
        return true;
    }
    from = MAX(st->ahead, st->end);
    to = MIN(st->end + st->window, rc->length);
    unit = MIN(rc->readahead_fetch, st->window / 2);
    if (to <= from || (to < rc->length && to - from < unit)) {
        return true;
    }
    if (to < rc->length && unit == rc->readahead_fetch &&
        !rc->fetches_extend) {
        to = from + QEMU_ALIGN_DOWN(to - from, unit);
    }
    st->ahead = range_cache_read_ahead_locked(rc, from, to,
                                              rc->readahead_fetch, true);
    return true;
}

void range_cache_read_ahead(RangeCache *rc, uint64_t offset, uint64_t bytes,
                            uint64_t fetch_size)
{
    QEMU_LOCK_GUARD(rc->lock);
    range_cache_read_ahead_locked(rc, MIN(offset, rc->length),
                                  MIN(offset + bytes, rc->length),
                                  fetch_size, false);
}

/*
 * Reads
 */

/*
 * Take references to the blocks holding the bytes from @pos to @end, in
 * order, until the cache has no room left.  Returns how many are in @held.
 */
static unsigned range_cache_acquire_locked(RangeCache *rc, uint64_t pos,
                                           uint64_t end,
                                           RangeCacheBlock **held)
{
    uint64_t index = range_cache_block_index(rc, pos);
    uint64_t last = range_cache_block_index(rc, end - 1);
    unsigned n = 0;

    for (; index <= last; index++) {
        RangeCacheBlock *b = range_cache_get_block_locked(rc, index, false);

        if (!b) {
            break;
        }
        held[n++] = b;
    }
    return n;
}

/* Wait until @f has reached @until, or is done */
static void coroutine_fn range_cache_co_wait_locked(RangeCache *rc,
                                                    RangeCacheFetch *f,
                                                    uint64_t until)
{
    RangeCacheWaiter w = {
        .co = qemu_coroutine_self(),
        .until = until,
    };
    RangeCacheWaiter *later;

    QTAILQ_FOREACH(later, &f->waiters, next) {
        if (later->until > until) {
            break;
        }
    }
    if (later) {
        QTAILQ_INSERT_BEFORE(later, &w, next);
    } else {
        QTAILQ_INSERT_TAIL(&f->waiters, &w, next);
    }
    f->refs++;
    rc->stats.waits++;
    range_cache_event(rc, RANGE_CACHE_WAIT, f->proven, until - f->proven);
    if (rc->ops->wait) {
        rc->ops->wait(rc->opaque, f);
    }

    qemu_mutex_unlock(rc->lock);
    qemu_coroutine_yield();
    qemu_mutex_lock(rc->lock);
}

/*
 * Wait until the bytes of @b from @pos to @end are valid.  Bytes that
 * nobody fetches any more (their fetch failed, for another read) are
 * fetched again.  Returns 0, or the error of the fetch of a byte that did
 * not arrive.
 */
static int coroutine_fn
range_cache_co_wait_bytes_locked(RangeCache *rc, RangeCacheBlock *b,
                                 uint64_t pos, uint64_t end)
{
    uint64_t hole;

    while ((hole = range_cache_first_invalid(rc, b, pos, end)) < end) {
        RangeCacheFetch *f = range_cache_find_fetch_locked(rc, hole);
        uint64_t until, stop;
        int ret;

        if (!f) {
            range_cache_fetch_missing_locked(rc, hole, end,
                                             RANGE_CACHE_MISS_FETCH, false,
                                             false);
            f = range_cache_find_fetch_locked(rc, hole);
            assert(f);
        }
        until = MIN(f->end, range_cache_granule_ceil(rc, end));
        range_cache_co_wait_locked(rc, f, until);
        ret = f->done ? f->ret : 0;
        range_cache_fetch_unref_locked(f);
        stop = MIN(until, end);
        if (ret < 0 && range_cache_first_invalid(rc, b, hole, stop) < stop) {
            return ret;     /* some of the bytes we waited for are lost */
        }
        pos = hole;
    }
    return 0;
}

int coroutine_fn range_cache_co_read(RangeCache *rc, uint64_t offset,
                                     uint64_t bytes, QEMUIOVector *qiov,
                                     size_t qiov_offset)
{
    uint64_t end = MIN(offset + bytes, rc->length);
    uint64_t pos = offset;
    g_autofree RangeCacheBlock **held = NULL;
    bool first_batch = true;
    bool streaming = false;
    int ret = 0;

    if (offset + bytes > end) {
        uint64_t tail = offset >= end ? 0 : end - offset;

        qemu_iovec_memset(qiov, qiov_offset + tail, 0, bytes - tail);
    }
    if (offset >= end) {
        return 0;
    }
    held = g_new(RangeCacheBlock *,
                 MIN(rc->capacity, range_cache_block_index(rc, end - 1) -
                     range_cache_block_index(rc, offset) + 1));

    qemu_mutex_lock(rc->lock);
    while (pos < end && ret == 0) {
        unsigned n = range_cache_acquire_locked(rc, pos, end, held);
        uint64_t batch_end;
        unsigned i;

        if (n == 0) {
            /* We hold nothing, so we keep nobody else from going on */
            range_cache_event(rc, RANGE_CACHE_NO_ROOM, pos, end - pos);
            if (rc->ops->no_room) {
                rc->ops->no_room(rc->opaque);
            }
            qemu_co_queue_wait(&rc->room_waiters, rc->lock);
            continue;
        }
        if (range_cache_has_room_locked(rc)) {
            qemu_co_queue_next(&rc->room_waiters);
        }

        /* Everything this batch misses goes out at once */
        batch_end = MIN(end, range_cache_block_end(held[n - 1]));
        range_cache_fetch_missing_locked(rc, pos, batch_end,
                                         RANGE_CACHE_MISS_FETCH, false, false);
        if (first_batch) {
            streaming = range_cache_note_read_locked(rc, offset, end);
            first_batch = false;
        }

        for (i = 0; i < n; i++) {
            RangeCacheBlock *b = held[i];
            uint64_t stop = MIN(end, range_cache_block_end(b));

            if (ret == 0) {
                if (range_cache_first_invalid(rc, b, pos, stop) == stop) {
                    rc->stats.hits++;
                    range_cache_event(rc, RANGE_CACHE_HIT, pos, stop - pos);
                }
                ret = range_cache_co_wait_bytes_locked(rc, b, pos, stop);
            }
            if (ret == 0) {
                /* Valid bytes do not change while we hold the block */
                qemu_mutex_unlock(rc->lock);
                qemu_iovec_from_buf(qiov, qiov_offset + (pos - offset),
                                    b->data + (pos - b->start), stop - pos);
                qemu_mutex_lock(rc->lock);
                rc->stats.bytes_served += stop - pos;
                if (stop == range_cache_block_end(b)) {
                    b->unread = false;  /* the read went past it */
                }
                pos = stop;
            }
            b->streamed = streaming;
            range_cache_put_block_locked(rc, b);
        }
    }
    qemu_mutex_unlock(rc->lock);
    return ret;
}
