/*
 * Cache of aligned blocks of a remote image
 *
 * Copyright (C) 2026 The QEMU curl series authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A protocol driver that reads an image over a high-latency transport (the
 * curl driver, over HTTP or FTP) keeps what it fetched in aligned blocks of
 * a fixed size, the most recently used ones in memory.  This is the part
 * that does no I/O: the block and byte range arithmetic, the LRU cache,
 * which bytes to fetch for a read and ahead of a sequential stream, and
 * readers waiting for the bytes they need.  The driver provides the lock
 * and runs the fetches.
 *
 * What goes on the wire is decided apart from the block size: a fetch is a
 * run of granules (RANGE_CACHE_GRANULE bytes) that may span blocks, and the
 * granules of a block become readable one by one as a fetch writes them.  A
 * read waits for its own bytes only, not for the rest of a block.
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

/*
 * Which bytes of a block are valid is known at this granularity, and
 * fetches start and end on it (but for the end of the image).  Drivers
 * see requests aligned to 512 bytes at worst; a granule of 4 KiB keeps
 * what a read fetches close to what it asked for.
 */
#define RANGE_CACHE_GRANULE         (4 * KiB)

/* Which eviction list a block is on */
typedef enum RangeCacheList {
    RANGE_CACHE_LIST_NONE,      /* none: in use, or not cached */
    RANGE_CACHE_LIST_STREAMED,  /* last read by a sequential stream */
    RANGE_CACHE_LIST_LRU,       /* last read otherwise */
    RANGE_CACHE_LIST_UNREAD,    /* readahead fetched or kept it: unread */
    RANGE_CACHE_LIST__MAX,
} RangeCacheList;

typedef struct RangeCacheBlock {
    uint64_t index;             /* block number: image offset / block size */
    uint64_t start;             /* image offset of the first byte */
    uint64_t len;               /* bytes in the block; the last may be short */
    uint8_t *data;              /* room for a whole block */
    unsigned long *valid;       /* granules that arrived intact */
    unsigned long *pending;     /* granules that a fetch will write */
    unsigned nb_valid;          /* bits set in @valid */
    unsigned refs;              /* readers and fetches using it */
    RangeCacheList list;        /* where it is while unused */
    bool unread;                /* readahead fetched it; nobody read it */
    bool streamed;              /* last read by a sequential stream */
    QTAILQ_ENTRY(RangeCacheBlock) next;     /* in @list, or the free list */
} RangeCacheBlock;

typedef QTAILQ_HEAD(, RangeCacheBlock) RangeCacheBlockList;

/* A read waiting for a fetch to reach some offset */
typedef struct RangeCacheWaiter {
    Coroutine *co;
    uint64_t until;             /* image offset the fetch must reach */
    QTAILQ_ENTRY(RangeCacheWaiter) next;
} RangeCacheWaiter;

typedef QTAILQ_HEAD(, RangeCacheWaiter) RangeCacheWaiterList;

/*
 * A run of bytes to fetch, from @start to @end, maybe across blocks.  The
 * bytes arrive in order: those before @pos have been stored, and those
 * before @proven are valid.  A transport proves bytes once it knows they
 * are the ones asked for: as they arrive when the answer's framing says
 * where each byte belongs, only at the end of the answer otherwise.  The
 * blocks it covers are held until it is done.
 */
typedef struct RangeCacheFetch {
    uint64_t start;             /* image offset of the first byte */
    /*
     * Image offset after the last byte; it may move further while the
     * fetch is in flight and not @sealed (range_cache_set_fetches_extend())
     */
    uint64_t end;
    uint64_t pos;               /* image offset of the next byte to arrive */
    uint64_t proven;            /* bytes before it are valid; <= @pos */
    bool readahead;             /* started by readahead, not by a read */
    bool sealed;                /* @end no longer moves */
    bool done;                  /* range_cache_fetch_done_locked() ran */
    int ret;                    /* once done: 0, or -errno */
    unsigned refs;              /* its fetcher until done, and its waiters */
    RangeCacheWaiterList waiters;   /* by @until, lowest first */
    QTAILQ_ENTRY(RangeCacheFetch) next;     /* in RangeCache.fetches */

    /* Free for the fetcher, while it queues the fetch */
    QTAILQ_ENTRY(RangeCacheFetch) queue_next;
    void *queue;                /* the queue it is on, or NULL */
} RangeCacheFetch;

/* What the cache did, reported to RangeCacheOps.event */
typedef enum RangeCacheEvent {
    RANGE_CACHE_HIT,            /* a read found its bytes in a block */
    RANGE_CACHE_WAIT,           /* a read waits for a fetch in flight */
    RANGE_CACHE_MISS,           /* a read started a fetch */
    RANGE_CACHE_NO_ROOM,        /* a read waits: every block is in use */
    RANGE_CACHE_EVICT,          /* a block was dropped to make room */
    RANGE_CACHE_EVICT_UNREAD,   /* likewise, but nobody read it */
    RANGE_CACHE_READAHEAD,      /* readahead started a fetch */
} RangeCacheEvent;

typedef struct RangeCacheOps {
    /*
     * Start @fetch: write its bytes with range_cache_fetch_write_locked()
     * as they arrive, and end it with range_cache_fetch_done_locked().
     * Called with the cache's lock held; must not call back into the
     * cache.  Mandatory.
     */
    void (*fetch)(void *opaque, RangeCacheFetch *fetch);

    /*
     * A read starts waiting for @fetch: a fetcher that queues fetches
     * should not leave this one behind others that nobody waits for.
     * Called with the cache's lock held, in coroutine context; must not
     * call back into the cache.  Optional.
     */
    void (*wait)(void *opaque, RangeCacheFetch *fetch);

    /*
     * A read waits for room in the cache, which every block holds: a
     * fetcher that holds fetches back (queued, or paused) should end
     * those that no read waits for.  Called with the cache's lock held,
     * in coroutine context; must not call back into the cache.  Optional.
     */
    void (*no_room)(void *opaque);

    /*
     * Report what the cache did, for tracing: the image bytes from @offset
     * on, @bytes of them.  Lock held.  Optional.
     */
    void (*event)(void *opaque, RangeCacheEvent event, uint64_t offset,
                  uint64_t bytes);
} RangeCacheOps;

typedef struct RangeCacheStats {
    uint64_t hits;              /* parts of reads found in the cache */
    uint64_t waits;             /* times a read waited for a fetch */
    uint64_t misses;            /* fetches started for reads */
    uint64_t readaheads;        /* fetches started by readahead */
    uint64_t extensions;        /* times a fetch in flight was made longer */
    uint64_t readahead_unread;  /* blocks readahead filled, dropped unread */
    uint64_t evictions;         /* blocks dropped to make room */
    uint64_t failures;          /* fetches that failed */
    uint64_t bytes_fetched;     /* bytes that fetches wrote */
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
    uint64_t ahead;             /* readahead has fetched up to here */
    uint64_t window;            /* how far ahead of @end to fetch */
    unsigned reads;             /* reads that made it longer; 0: unused */
    unsigned used;              /* stream_clock when last made longer */
} RangeCacheStream;

typedef struct RangeCache {
    /* Set at init, constant afterwards */
    uint64_t length;            /* image length */
    uint64_t remote_offset;     /* where the image starts in the remote file */
    uint64_t block_size;        /* a power of two */
    unsigned block_bits;        /* log2(block_size) */
    unsigned granules;          /* granules in a block */
    unsigned capacity;          /* most blocks held at once */
    uint8_t *arena;             /* the data of every block */
    RangeCacheBlock *slots;     /* capacity of them */
    unsigned long *bitmaps;     /* their valid and pending bitmaps */
    const RangeCacheOps *ops;
    void *opaque;               /* for ops */

    /* The caller's lock, which protects everything below */
    QemuMutex *lock;

    GHashTable *blocks;         /* index -> block, for blocks in use */
    RangeCacheBlockList free;   /* slots holding no block */
    /*
     * Evictable blocks, least recently used first, in the order they go:
     * those that a sequential stream read through (it will not come back
     * to them), those read otherwise (a format driver's metadata, which it
     * may read again), and those that readahead fetched, or would have
     * fetched had they not been cached, and nobody read since (they are
     * about to be read).
     */
    RangeCacheBlockList lists[RANGE_CACHE_LIST__MAX];
    CoQueue room_waiters;       /* reads waiting for a block to be evictable */

    QTAILQ_HEAD(, RangeCacheFetch) fetches;     /* not done yet */
    RangeCacheWaiterList wake;  /* their bytes arrived: to be woken */

    /* Readahead */
    uint64_t readahead;         /* bytes to fetch ahead of a stream; 0: off */
    uint64_t readahead_fetch;   /* largest fetch readahead starts */
    bool fetches_extend;        /* fetches in flight are made longer */
    RangeCacheStream streams[RANGE_CACHE_STREAMS];
    unsigned stream_clock;      /* for the least recently used stream */

    RangeCacheStats stats;
} RangeCache;

/**
 * range_cache_init:
 * @rc: the cache
 * @length: length of the image in bytes
 * @remote_offset: offset of the image's first byte in the remote file
 * @block_size: a power of two between RANGE_CACHE_MIN_BLOCK_SIZE and
 *     RANGE_CACHE_MAX_BLOCK_SIZE
 * @capacity: most blocks to hold at once, at least 1
 * @ops: how to fetch bytes
 * @opaque: passed to @ops
 * @lock: the caller's lock, taken by the functions whose name does not end
 *     in _locked and expected held by the others
 *
 * Blocks are aligned to @block_size from the image's first byte, so that the
 * block with index i covers the remote bytes from @remote_offset + i *
 * @block_size.  The last block is short when @length is not a multiple of
 * @block_size.  The memory for all blocks is reserved at once, and only
 * used as blocks fill.  Readahead starts disabled.
 *
 * Returns: 0, or -ENOMEM if the memory could not be reserved.
 */
int range_cache_init(RangeCache *rc, uint64_t length, uint64_t remote_offset,
                     uint64_t block_size, unsigned capacity,
                     const RangeCacheOps *ops, void *opaque, QemuMutex *lock);

/**
 * range_cache_destroy:
 * @rc: the cache
 *
 * Frees every block and gives their memory back to the system.  No read may
 * be in progress and every fetch must be done.  The statistics remain
 * readable.
 */
void range_cache_destroy(RangeCache *rc);

/**
 * range_cache_set_readahead:
 * @rc: the cache
 * @bytes: how far to fetch ahead of sequential reads; 0 disables readahead.
 *     At most (capacity - 1) blocks, so that reads always find room.
 * @fetch_size: the largest fetch that readahead starts, a multiple of
 *     RANGE_CACHE_GRANULE
 *
 * Readahead of a stream starts small and doubles with every read that
 * continues the stream, up to @bytes.  Near the end of the image, the bytes
 * left are split over @bytes / @fetch_size fetches (256 KiB at least), so
 * that the fetches in flight end at about the same time.
 */
void range_cache_set_readahead(RangeCache *rc, uint64_t bytes,
                               uint64_t fetch_size);

/**
 * range_cache_set_fetches_extend:
 * @rc: the cache
 * @extend: whether fetches in flight are made longer
 *
 * For a transport that cannot say where a transfer ends (an FTP transfer
 * runs to the end of the file, unless it is cut): a fetch that readahead
 * or a read would start right where a fetch in flight ends extends that
 * fetch instead, by any length, so that a stream of reads costs one
 * transfer.  The fetcher must then stop a fetch only at its end as it is
 * when the bytes arrive.  Off by default.
 */
void range_cache_set_fetches_extend(RangeCache *rc, bool extend);

/**
 * range_cache_read_ahead:
 * @rc: the cache
 * @offset: image offset
 * @bytes: how many bytes
 * @fetch_size: the largest fetch to start, a multiple of RANGE_CACHE_GRANULE
 *
 * Start fetching what is not cached of the bytes from @offset, as far as
 * readahead may take room, in fetches of @fetch_size at most (unlike a
 * stream's readahead, near the end of the image too); a driver calls this
 * at open to have its connections ready for the first reads.  The blocks
 * are kept like readahead's.  Takes @rc's lock.
 */
void range_cache_read_ahead(RangeCache *rc, uint64_t offset, uint64_t bytes,
                            uint64_t fetch_size);

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
 * range_cache_block_list:
 * @rc: the cache
 * @index: a block index
 *
 * Returns: the eviction list the block with @index is on; LIST_NONE when it
 * is in use or not cached.  Takes @rc's lock.
 */
RangeCacheList range_cache_block_list(RangeCache *rc, uint64_t index);

/**
 * range_cache_fetch_remote_range:
 * @rc: the cache
 * @fetch: a fetch that is not done
 * @first: set to the remote offset of the next byte to arrive
 * @last: set to the remote offset of the fetch's last byte (inclusive, as
 *     in an HTTP Range header)
 */
void range_cache_fetch_remote_range(const RangeCache *rc,
                                    const RangeCacheFetch *fetch,
                                    uint64_t *first, uint64_t *last);

/**
 * range_cache_co_read:
 * @rc: the cache
 * @offset: image offset of the read
 * @bytes: length of the read
 * @qiov: where the data goes
 * @qiov_offset: offset in @qiov
 *
 * Serves a read from the blocks it covers, starting fetches for the bytes
 * that are neither cached nor being fetched, all at once, and waiting for
 * each of its bytes only until it has arrived.  A read larger than the
 * cache is served in pieces.  Bytes past the end of the image read as
 * zeroes.  Takes @rc's lock.
 *
 * Returns: 0 on success, else the error of a fetch of its bytes that failed
 */
int coroutine_fn range_cache_co_read(RangeCache *rc, uint64_t offset,
                                     uint64_t bytes, QEMUIOVector *qiov,
                                     size_t qiov_offset);

/**
 * range_cache_fetch_store_locked:
 * @rc: the cache
 * @fetch: a fetch that is not done
 * @buf: the bytes that arrived next, from @fetch->pos on
 * @len: how many
 *
 * Stores the bytes and advances @fetch->pos, without making them valid:
 * nobody reads them until range_cache_fetch_prove_locked(), and
 * range_cache_fetch_discard_locked() or a failure forgets them.  Never
 * drops the lock.
 *
 * Returns: false, storing nothing, if @len is more than the fetch has left
 */
bool range_cache_fetch_store_locked(RangeCache *rc, RangeCacheFetch *fetch,
                                    const void *buf, size_t len);

/**
 * range_cache_fetch_prove_locked:
 * @rc: the cache
 * @fetch: a fetch that is not done
 *
 * The bytes of @fetch stored so far are the right ones: the granules they
 * complete become valid, and the reads waiting for them are woken by the
 * next range_cache_wake_locked().  Never drops the lock.
 */
void range_cache_fetch_prove_locked(RangeCache *rc, RangeCacheFetch *fetch);

/**
 * range_cache_fetch_write_locked:
 * @rc: the cache
 * @fetch: a fetch that is not done
 * @buf: the bytes that arrived next, from @fetch->pos on
 * @len: how many
 *
 * range_cache_fetch_store_locked(), then range_cache_fetch_prove_locked():
 * for bytes that are known to be right as they arrive.
 *
 * Returns: false, storing nothing, if @len is more than the fetch has left
 */
bool range_cache_fetch_write_locked(RangeCache *rc, RangeCacheFetch *fetch,
                                    const void *buf, size_t len);

/**
 * range_cache_fetch_discard_locked:
 * @rc: the cache
 * @fetch: a fetch that is not done
 *
 * Forgets the bytes stored since the last range_cache_fetch_prove_locked():
 * the next ones to arrive are those from @fetch->proven on, so that a
 * transfer that failed can be asked again for what it did not prove.
 *
 * Returns: how many bytes were forgotten
 */
uint64_t range_cache_fetch_discard_locked(RangeCache *rc,
                                          RangeCacheFetch *fetch);

/**
 * range_cache_fetch_seal_locked:
 * @rc: the cache
 * @fetch: a fetch that is not done
 *
 * The end of @fetch no longer moves: with range_cache_set_fetches_extend(),
 * a fetch whose transfer was stopped at its end must not be made longer
 * by a read that comes before it is reported done.
 */
void range_cache_fetch_seal_locked(RangeCache *rc, RangeCacheFetch *fetch);

/**
 * range_cache_room_wanted_locked:
 * @rc: the cache
 *
 * Returns: whether a read waits for room in the cache (see
 * RangeCacheOps.no_room)
 */
bool range_cache_room_wanted_locked(RangeCache *rc);

/**
 * range_cache_fetch_wanted:
 * @fetch: a fetch
 *
 * Returns: whether a read waits for @fetch.  Lock held.
 */
static inline bool range_cache_fetch_wanted(const RangeCacheFetch *fetch)
{
    return !QTAILQ_EMPTY(&fetch->waiters);
}

/**
 * range_cache_wake_locked:
 * @rc: the cache
 *
 * Wakes the reads whose bytes arrived.  Drops @rc's lock while it does, if
 * there is any.  Call it outside coroutine context, after writing bytes.
 */
void range_cache_wake_locked(RangeCache *rc);

/**
 * range_cache_fetch_done_locked:
 * @rc: the cache
 * @fetch: a fetch that is not done
 * @ret: 0 if all of its bytes were written, else -errno
 *
 * Ends @fetch and wakes its waiters.  Success needs every byte of @fetch
 * stored and proven.  On failure, its bytes that were not proven are
 * neither valid nor being fetched any more: the reads waiting for them
 * fail with @ret, and the next read of them fetches them again.  Drops
 * @rc's lock while it wakes coroutines; @fetch may be freed before it
 * returns.
 */
void range_cache_fetch_done_locked(RangeCache *rc, RangeCacheFetch *fetch,
                                   int ret);

#endif /* BLOCK_RANGE_CACHE_H */
