/*
 * Cache of aligned blocks of a remote image
 *
 * Copyright (C) 2026 The QEMU curl series authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A protocol driver that reads an image over a high-latency transport (the
 * curl driver, over HTTP or FTP) fetches it in aligned blocks of a fixed size
 * and keeps the most recently used ones in memory.  This is the part that
 * does no I/O: the block and byte range arithmetic, the LRU cache, readers
 * waiting for a block that is being fetched, and readahead decisions.  The
 * driver provides the lock and fetches the blocks.
 */

#ifndef BLOCK_RANGE_CACHE_H
#define BLOCK_RANGE_CACHE_H

#include "qemu/coroutine.h"
#include "qemu/iov.h"
#include "qemu/queue.h"
#include "qemu/thread.h"
#include "qemu/units.h"

/* The smallest and largest block sizes that range_cache_init() accepts */
#define RANGE_CACHE_MIN_BLOCK_SIZE  (4 * KiB)
#define RANGE_CACHE_MAX_BLOCK_SIZE  (64 * MiB)

typedef enum RangeCacheBlockState {
    RANGE_CACHE_FETCHING,   /* being fetched; readers wait for it */
    RANGE_CACHE_READY,      /* data is valid */
    RANGE_CACHE_FAILED,     /* fetch failed; out of the cache, never served */
} RangeCacheBlockState;

typedef struct RangeCacheBlock {
    uint64_t index;             /* block number: image offset / block size */
    uint64_t start;             /* image offset of the first byte */
    uint64_t len;               /* bytes in the block; the last may be short */
    RangeCacheBlockState state;
    int ret;                    /* -errno once a fetch failed, else 0 */
    uint8_t *data;              /* room for a whole block */
    unsigned refs;              /* readers using it; never evicted while > 0 */
    bool prefetched;            /* fetched by readahead and not read since */
    bool ahead;                 /* readahead found it cached; not read since */
    bool streamed;              /* last read by a sequential stream */
    CoQueue waiters;            /* readers waiting for the fetch to end */

    /* Free for the fetcher while the block is being fetched */
    void *opaque;
    QSIMPLEQ_ENTRY(RangeCacheBlock) fetch_next;

    /* In one of RangeCache's eviction lists while ready and unreferenced */
    QTAILQ_ENTRY(RangeCacheBlock) lru_next;
} RangeCacheBlock;

typedef QTAILQ_HEAD(, RangeCacheBlock) RangeCacheBlockList;

/* What the cache did, reported to RangeCacheOps.event */
typedef enum RangeCacheEvent {
    RANGE_CACHE_HIT,            /* a read found the block ready */
    RANGE_CACHE_WAIT,           /* a read found the block being fetched */
    RANGE_CACHE_MISS,           /* a read needs the block: fetch started */
    RANGE_CACHE_NO_ROOM,        /* a read waits: every block is in use */
    RANGE_CACHE_EVICT,          /* the block was dropped to make room */
    RANGE_CACHE_EVICT_UNUSED,   /* likewise, but readahead fetched it unread */
    RANGE_CACHE_READAHEAD,      /* readahead: arg blocks from this one on */
} RangeCacheEvent;

typedef struct RangeCacheOps {
    /*
     * Start fetching @blk, which is in state RANGE_CACHE_FETCHING, and call
     * range_cache_complete() when done.  Called with the cache's lock held;
     * must not call back into the cache.  Mandatory.
     */
    void (*fetch)(void *opaque, RangeCacheBlock *blk);

    /* Report what the cache did, for tracing.  Lock held.  Optional. */
    void (*event)(void *opaque, RangeCacheEvent event, uint64_t index,
                  uint64_t arg);
} RangeCacheOps;

typedef struct RangeCacheStats {
    uint64_t hits;              /* blocks a read found ready */
    uint64_t waits;             /* blocks a read found being fetched */
    uint64_t misses;            /* blocks fetched for a read */
    uint64_t prefetches;        /* blocks fetched by readahead */
    uint64_t prefetch_unused;   /* of those, dropped before any read */
    uint64_t evictions;         /* blocks dropped to make room */
    uint64_t failures;          /* fetches that failed */
    uint64_t bytes_served;      /* bytes copied out to readers */
} RangeCacheStats;

/*
 * Sequential reads that readahead follows.  Two are tracked, so that a read
 * elsewhere now and then (metadata of a format driver, say) does not make
 * readahead lose the main stream.
 */
#define RANGE_CACHE_STREAMS 2

typedef struct RangeCacheStream {
    uint64_t end;               /* image offset after its furthest read */
    unsigned reads;             /* reads that made it longer; 0: unused */
    unsigned used;              /* stream_clock when last made longer */
} RangeCacheStream;

typedef struct RangeCache {
    /* Set at init, constant afterwards */
    uint64_t length;            /* image length */
    uint64_t offset;            /* where the image starts in the remote file */
    uint64_t block_size;        /* a power of two */
    unsigned block_bits;        /* log2(block_size) */
    unsigned capacity;          /* most blocks held at once */
    const RangeCacheOps *ops;
    void *opaque;               /* for ops */

    /* The caller's lock, which protects everything below */
    QemuMutex *lock;

    GHashTable *blocks;         /* index -> fetching or ready block */
    unsigned nb_blocks;         /* blocks holding a buffer, failed ones too */
    /*
     * Evictable blocks, least recently used first, in the order they go:
     * those that a sequential stream read through (it will not come back
     * to them), those read otherwise (a format driver's metadata, which it
     * may read again), and those that readahead fetched, or would have
     * fetched had they not been cached, and nobody read since (they are
     * about to be read).
     */
    RangeCacheBlockList streamed;
    RangeCacheBlockList lru;
    RangeCacheBlockList unread;
    CoQueue room_waiters;       /* reads waiting for a block to be evictable */

    /* Readahead */
    unsigned readahead;         /* blocks to fetch ahead of a stream; 0: off */
    RangeCacheStream streams[RANGE_CACHE_STREAMS];
    unsigned stream_clock;      /* for the least recently used stream */

    RangeCacheStats stats;
} RangeCache;

/**
 * range_cache_init:
 * @rc: the cache
 * @length: length of the image in bytes
 * @offset: offset of the image's first byte in the remote file
 * @block_size: a power of two between RANGE_CACHE_MIN_BLOCK_SIZE and
 *     RANGE_CACHE_MAX_BLOCK_SIZE
 * @capacity: most blocks to hold at once, at least 1
 * @ops: how to fetch blocks
 * @opaque: passed to @ops
 * @lock: the caller's lock, taken by range_cache_co_read() and expected held
 *     by the functions whose name ends in _locked
 *
 * Blocks are aligned to @block_size from the image's first byte, so that the
 * block with index i covers the remote bytes from @offset + i * @block_size.
 * The last block is short when @length is not a multiple of @block_size.
 * Readahead starts disabled.
 */
void range_cache_init(RangeCache *rc, uint64_t length, uint64_t offset,
                      uint64_t block_size, unsigned capacity,
                      const RangeCacheOps *ops, void *opaque,
                      QemuMutex *lock);

/**
 * range_cache_destroy:
 * @rc: the cache
 *
 * Frees every block.  No block may be referenced or being fetched.  Blocks
 * that readahead fetched and nobody read are counted in the statistics, which
 * remain readable.
 */
void range_cache_destroy(RangeCache *rc);

/**
 * range_cache_set_readahead:
 * @rc: the cache
 * @blocks: how many blocks to fetch ahead of sequential reads; 0 disables
 *     readahead.  Must be less than the capacity, so that reads always
 *     find room.
 */
void range_cache_set_readahead(RangeCache *rc, unsigned blocks);

/**
 * range_cache_nb_image_blocks:
 * @rc: the cache
 *
 * Returns: the number of blocks the image is made of
 */
uint64_t range_cache_nb_image_blocks(const RangeCache *rc);

/**
 * range_cache_block_index:
 * @rc: the cache
 * @pos: an image offset
 *
 * Returns: the index of the block holding the byte at @pos
 */
static inline uint64_t range_cache_block_index(const RangeCache *rc,
                                               uint64_t pos)
{
    return pos >> rc->block_bits;
}

/**
 * range_cache_block_extent:
 * @rc: the cache
 * @index: a block index, less than range_cache_nb_image_blocks()
 * @start: set to the image offset of the block's first byte
 * @len: set to the number of bytes in the block
 */
void range_cache_block_extent(const RangeCache *rc, uint64_t index,
                              uint64_t *start, uint64_t *len);

/**
 * range_cache_remote_range:
 * @rc: the cache
 * @blk: a block
 * @first: set to the remote offset of the block's first byte
 * @last: set to the remote offset of the block's last byte (inclusive, as
 *     in an HTTP Range header)
 */
void range_cache_remote_range(const RangeCache *rc, const RangeCacheBlock *blk,
                              uint64_t *first, uint64_t *last);

/**
 * range_cache_co_read:
 * @rc: the cache
 * @offset: image offset of the read
 * @bytes: length of the read
 * @qiov: where the data goes
 * @qiov_offset: offset in @qiov
 *
 * Serves a read from the blocks it covers, fetching the missing ones
 * together and waiting for those already being fetched.  A read larger than
 * the cache is served in pieces.  Bytes past the end of the image read as
 * zeroes.  Takes @rc's lock.
 *
 * Returns: 0 on success, else the error of the first block that failed.
 */
int coroutine_fn range_cache_co_read(RangeCache *rc, uint64_t offset,
                                     uint64_t bytes, QEMUIOVector *qiov,
                                     size_t qiov_offset);

/**
 * range_cache_complete_locked:
 * @rc: the cache
 * @blk: a block being fetched
 * @ret: 0 if all of its range was fetched into @blk->data, else -errno
 *
 * Ends the fetch of @blk and wakes its readers.  A failed block leaves the
 * cache at once, so that it is never served and the next read fetches it
 * again.  Drops @rc's lock while it wakes coroutines; @blk may be freed
 * before it returns.
 */
void range_cache_complete_locked(RangeCache *rc, RangeCacheBlock *blk,
                                 int ret);

#endif /* BLOCK_RANGE_CACHE_H */
