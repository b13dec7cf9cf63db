/*
 * Cache of aligned blocks of a remote image
 *
 * Copyright (C) 2026 The QEMU curl series authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Serves reads from aligned blocks kept in LRU order, so that a driver for a
 * high-latency transport fetches each block once, whatever the size and order
 * of the reads.  See include/block/range-cache.h for the interface.
 */

#include "qemu/osdep.h"
#include "qemu/host-utils.h"
#include "qemu/lockable.h"
#include "qemu/memalign.h"
#include "block/range-cache.h"

static void range_cache_event(RangeCache *rc, RangeCacheEvent event,
                              uint64_t index, uint64_t arg)
{
    if (rc->ops->event) {
        rc->ops->event(rc->opaque, event, index, arg);
    }
}

void range_cache_init(RangeCache *rc, uint64_t length, uint64_t offset,
                      uint64_t block_size, unsigned capacity,
                      const RangeCacheOps *ops, void *opaque,
                      QemuMutex *lock)
{
    assert(is_power_of_2(block_size));
    assert(block_size >= RANGE_CACHE_MIN_BLOCK_SIZE &&
           block_size <= RANGE_CACHE_MAX_BLOCK_SIZE);
    assert(capacity >= 1);
    assert(ops->fetch);

    *rc = (RangeCache) {
        .length = length,
        .offset = offset,
        .block_size = block_size,
        .block_bits = ctz64(block_size),
        .capacity = capacity,
        .ops = ops,
        .opaque = opaque,
        .lock = lock,
        .blocks = g_hash_table_new(g_int64_hash, g_int64_equal),
    };
    QTAILQ_INIT(&rc->streamed);
    QTAILQ_INIT(&rc->lru);
    QTAILQ_INIT(&rc->unread);
    qemu_co_queue_init(&rc->room_waiters);
}

static void range_cache_free_block(RangeCache *rc, RangeCacheBlock *blk)
{
    if (blk->data) {
        rc->nb_blocks--;
        qemu_vfree(blk->data);
    }
    g_free(blk);
}

void range_cache_destroy(RangeCache *rc)
{
    GHashTableIter iter;
    RangeCacheBlock *blk;

    g_hash_table_iter_init(&iter, rc->blocks);
    while (g_hash_table_iter_next(&iter, NULL, (void **)&blk)) {
        assert(blk->state == RANGE_CACHE_READY && blk->refs == 0);
        if (blk->prefetched) {
            rc->stats.prefetch_unused++;
        }
        range_cache_free_block(rc, blk);
    }
    assert(rc->nb_blocks == 0);
    g_hash_table_destroy(rc->blocks);
    rc->blocks = NULL;
    QTAILQ_INIT(&rc->streamed);
    QTAILQ_INIT(&rc->lru);
    QTAILQ_INIT(&rc->unread);
}

void range_cache_set_readahead(RangeCache *rc, unsigned blocks)
{
    assert(blocks < rc->capacity);
    rc->readahead = blocks;
    memset(rc->streams, 0, sizeof(rc->streams));
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

void range_cache_remote_range(const RangeCache *rc, const RangeCacheBlock *blk,
                              uint64_t *first, uint64_t *last)
{
    *first = rc->offset + blk->start;
    *last = *first + blk->len - 1;
}

static bool range_cache_has_room_locked(RangeCache *rc)
{
    return rc->nb_blocks < rc->capacity || !QTAILQ_EMPTY(&rc->streamed) ||
           !QTAILQ_EMPTY(&rc->lru) || !QTAILQ_EMPTY(&rc->unread);
}

/*
 * Room for one block: wake one read that waits for it.  Waking them all
 * would make those that find no room again wait again, forever, when this
 * runs outside coroutine context (qemu_co_enter_all() loops until the queue
 * is empty).  A woken read that leaves room wakes the next one.
 */
static void range_cache_room_made_locked(RangeCache *rc)
{
    qemu_co_enter_next(&rc->room_waiters, rc->lock);
}

/* The eviction list of a block */
static RangeCacheBlockList *range_cache_list_of(RangeCache *rc,
                                                RangeCacheBlock *blk)
{
    if (blk->prefetched || blk->ahead) {
        return &rc->unread;
    }
    return blk->streamed ? &rc->streamed : &rc->lru;
}

/*
 * Readahead found @blk cached: a stream is about to read it, so keep it
 * as long as a block readahead fetched.  (Say a format driver read its
 * metadata there first: evicting it now would fetch it again soon.)
 */
static void range_cache_keep_ahead_locked(RangeCache *rc,
                                          RangeCacheBlock *blk)
{
    if (blk->refs > 0 || blk->state != RANGE_CACHE_READY ||
        blk->prefetched || blk->ahead) {
        return;     /* being read or fetched, or kept already */
    }
    QTAILQ_REMOVE(range_cache_list_of(rc, blk), blk, lru_next);
    blk->ahead = true;
    QTAILQ_INSERT_TAIL(&rc->unread, blk, lru_next);
}

/* A block nobody uses may be evicted: it goes to the most recent end. */
static void range_cache_make_evictable_locked(RangeCache *rc,
                                              RangeCacheBlock *blk)
{
    assert(blk->refs == 0 && blk->state == RANGE_CACHE_READY);
    QTAILQ_INSERT_TAIL(range_cache_list_of(rc, blk), blk, lru_next);
    range_cache_room_made_locked(rc);
}

/* Take a reference to the block with @index, if it is cached. */
static RangeCacheBlock *range_cache_lookup_locked(RangeCache *rc,
                                                  uint64_t index)
{
    RangeCacheBlock *blk = g_hash_table_lookup(rc->blocks, &index);

    if (!blk) {
        return NULL;
    }
    if (blk->state == RANGE_CACHE_READY) {
        if (blk->refs == 0) {
            QTAILQ_REMOVE(range_cache_list_of(rc, blk), blk, lru_next);
        }
        rc->stats.hits++;
        range_cache_event(rc, RANGE_CACHE_HIT, index, 0);
    } else {
        rc->stats.waits++;
        range_cache_event(rc, RANGE_CACHE_WAIT, index, 0);
    }
    blk->refs++;
    blk->prefetched = false;
    blk->ahead = false;
    return blk;
}

static void range_cache_unref_locked(RangeCache *rc, RangeCacheBlock *blk)
{
    assert(blk->refs > 0);
    if (--blk->refs > 0) {
        return;
    }
    if (blk->state == RANGE_CACHE_FAILED) {
        range_cache_free_block(rc, blk);
        range_cache_room_made_locked(rc);
    } else if (blk->state == RANGE_CACHE_READY) {
        range_cache_make_evictable_locked(rc, blk);
    }
}

/*
 * Find room for one more block: a new buffer while under capacity, else the
 * least recently used block of the first eviction list that has one (see
 * RangeCache).  A block that readahead fetched and nobody read yet is only
 * evicted for a read: readahead must not push out what it fetched before.
 * Returns NULL when there is no such block.
 */
static RangeCacheBlock *range_cache_take_room_locked(RangeCache *rc,
                                                     bool prefetch)
{
    RangeCacheBlock *blk;
    uint8_t *data;

    if (rc->nb_blocks < rc->capacity) {
        data = qemu_try_memalign(qemu_real_host_page_size(), rc->block_size);
        if (data) {
            rc->nb_blocks++;
            blk = g_new0(RangeCacheBlock, 1);
            blk->data = data;
            return blk;
        }
        /* Out of memory: make do with the blocks we have */
    }

    blk = QTAILQ_FIRST(&rc->streamed) ?: QTAILQ_FIRST(&rc->lru);
    if (!blk && !prefetch) {
        blk = QTAILQ_FIRST(&rc->unread);
    }
    if (!blk) {
        return NULL;
    }
    QTAILQ_REMOVE(range_cache_list_of(rc, blk), blk, lru_next);
    g_hash_table_remove(rc->blocks, &blk->index);
    rc->stats.evictions++;
    if (blk->prefetched) {
        rc->stats.prefetch_unused++;
    }
    range_cache_event(rc, blk->prefetched ? RANGE_CACHE_EVICT_UNUSED :
                      RANGE_CACHE_EVICT, blk->index, 0);
    data = blk->data;
    memset(blk, 0, sizeof(*blk));
    blk->data = data;
    return blk;
}

/*
 * Add the block with @index, which is not cached, and start fetching it.
 * A read holds a reference to it; readahead does not.
 */
static RangeCacheBlock *range_cache_insert_locked(RangeCache *rc,
                                                  uint64_t index,
                                                  bool prefetch)
{
    RangeCacheBlock *blk = range_cache_take_room_locked(rc, prefetch);

    if (!blk) {
        return NULL;
    }
    blk->index = index;
    range_cache_block_extent(rc, index, &blk->start, &blk->len);
    blk->state = RANGE_CACHE_FETCHING;
    blk->refs = prefetch ? 0 : 1;
    blk->prefetched = prefetch;
    qemu_co_queue_init(&blk->waiters);
    g_hash_table_insert(rc->blocks, &blk->index, blk);

    if (prefetch) {
        rc->stats.prefetches++;
    } else {
        rc->stats.misses++;
        range_cache_event(rc, RANGE_CACHE_MISS, index, 0);
    }
    rc->ops->fetch(rc->opaque, blk);
    return blk;
}

/*
 * Take references to the blocks holding the bytes from @pos to @end, in
 * order, fetching those that are missing, until the cache has no room left.
 * Returns how many are in @held.
 */
static unsigned range_cache_acquire_locked(RangeCache *rc, uint64_t pos,
                                           uint64_t end,
                                           RangeCacheBlock **held)
{
    uint64_t index = range_cache_block_index(rc, pos);
    uint64_t last = range_cache_block_index(rc, end - 1);
    unsigned n = 0;

    for (; index <= last; index++) {
        RangeCacheBlock *blk = range_cache_lookup_locked(rc, index);

        if (!blk) {
            blk = range_cache_insert_locked(rc, index, false);
            if (!blk) {
                break;
            }
        }
        held[n++] = blk;
    }
    return n;
}

/*
 * Which stream a read of the bytes from @pos to @end belongs to: one that
 * it makes longer (*@longer is then true), starting in the stream's last
 * block or the one after it, or one that it falls behind.  Concurrent
 * readers of a stream (qemu-img convert runs several) arrive a little out
 * of order; a read behind the end of a stream neither continues nor breaks
 * it.  Returns NULL for a read elsewhere, after making it the start of a
 * new stream, and for a read behind a stream of one read (a random read,
 * read again).
 */
static RangeCacheStream *range_cache_find_stream_locked(RangeCache *rc,
                                                        uint64_t pos,
                                                        uint64_t end,
                                                        bool *longer)
{
    uint64_t first = range_cache_block_index(rc, pos);
    RangeCacheStream *st, *oldest = NULL, *behind = NULL;

    *longer = false;
    for (st = rc->streams; st < rc->streams + RANGE_CACHE_STREAMS; st++) {
        uint64_t last = range_cache_block_index(rc, st->end - 1);

        if (st->reads && first <= last + 1 && first + rc->readahead >= last) {
            if (end > st->end) {
                st->end = end;
                st->reads++;
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
    if (behind) {
        return behind->reads > 1 ? behind : NULL;
    }
    *oldest = (RangeCacheStream) {
        .end = end,
        .reads = 1,
        .used = ++rc->stream_clock,
    };
    return NULL;
}

/*
 * Called once for every read, of the bytes from @pos to @end.  From the
 * second read of a stream on, a read that makes the stream longer makes
 * sure the blocks after it are cached or being fetched, as far as there is
 * room: random reads fetch nothing ahead.  Returns whether the read is part
 * of a stream of two reads or more.
 */
static bool range_cache_note_read_locked(RangeCache *rc, uint64_t pos,
                                         uint64_t end)
{
    bool longer;
    RangeCacheStream *st = range_cache_find_stream_locked(rc, pos, end,
                                                          &longer);
    uint64_t index, last, first = 0;
    unsigned started = 0;

    if (!st || st->reads < 2) {
        return false;
    }
    if (!longer || !rc->readahead) {
        return true;
    }

    index = range_cache_block_index(rc, st->end - 1) + 1;
    last = MIN(index + rc->readahead, range_cache_nb_image_blocks(rc)) - 1;
    for (; index <= last; index++) {
        RangeCacheBlock *blk = g_hash_table_lookup(rc->blocks, &index);

        if (blk) {
            range_cache_keep_ahead_locked(rc, blk);
            continue;
        }
        if (!range_cache_insert_locked(rc, index, true)) {
            break;
        }
        if (!started++) {
            first = index;
        }
    }
    if (started) {
        range_cache_event(rc, RANGE_CACHE_READAHEAD, first, started);
    }
    return true;
}

/*
 * Copy the part of @blk between @pos and @end to @qiov at @qiov_offset once
 * its fetch is over.  Returns the number of bytes copied, or the fetch's
 * error.
 */
static int64_t coroutine_fn
range_cache_co_copy_locked(RangeCache *rc, RangeCacheBlock *blk,
                           uint64_t pos, uint64_t end,
                           QEMUIOVector *qiov, size_t qiov_offset)
{
    uint64_t n = MIN(end, blk->start + blk->len) - pos;

    while (blk->state == RANGE_CACHE_FETCHING) {
        qemu_co_queue_wait(&blk->waiters, rc->lock);
    }
    if (blk->state == RANGE_CACHE_FAILED) {
        return blk->ret;
    }

    /* The data of a ready block does not change while we hold it */
    qemu_mutex_unlock(rc->lock);
    qemu_iovec_from_buf(qiov, qiov_offset, blk->data + (pos - blk->start), n);
    qemu_mutex_lock(rc->lock);

    rc->stats.bytes_served += n;
    return n;
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
        unsigned i;

        if (n == 0) {
            /* We hold nothing, so we keep nobody else from going on */
            range_cache_event(rc, RANGE_CACHE_NO_ROOM,
                              range_cache_block_index(rc, pos), 0);
            qemu_co_queue_wait(&rc->room_waiters, rc->lock);
            continue;
        }
        if (range_cache_has_room_locked(rc)) {
            qemu_co_queue_next(&rc->room_waiters);
        }
        if (first_batch) {
            streaming = range_cache_note_read_locked(rc, offset, end);
            first_batch = false;
        }

        for (i = 0; i < n; i++) {
            if (ret == 0) {
                int64_t copied = range_cache_co_copy_locked(
                    rc, held[i], pos, end, qiov, qiov_offset + (pos - offset));

                if (copied < 0) {
                    ret = copied;
                } else {
                    pos += copied;
                }
            }
            held[i]->streamed = streaming;
            range_cache_unref_locked(rc, held[i]);
        }
    }
    qemu_mutex_unlock(rc->lock);
    return ret;
}

void range_cache_complete_locked(RangeCache *rc, RangeCacheBlock *blk,
                                 int ret)
{
    assert(blk->state == RANGE_CACHE_FETCHING);
    if (ret < 0) {
        blk->state = RANGE_CACHE_FAILED;
        blk->ret = ret;
        g_hash_table_remove(rc->blocks, &blk->index);
        rc->stats.failures++;
        if (blk->prefetched) {
            rc->stats.prefetch_unused++;
        }
    } else {
        blk->state = RANGE_CACHE_READY;
    }

    /* Woken readers may drop what would otherwise be the last reference */
    blk->refs++;
    qemu_co_enter_all(&blk->waiters, rc->lock);
    range_cache_unref_locked(rc, blk);
}
