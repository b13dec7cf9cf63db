# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: random concurrent reads through the curl driver's block cache.
#
# A raw image is tiled with regions of seeded random lengths (1 byte to
# 5 MiB) and byte patterns, written with qemu-io write -P (some regions
# are left as zeroes), and its size is not a multiple of 512 nor of any
# block size nor of the driver's 4 KiB granule.  qemu-io then issues
# batches of concurrent aio_read -P at seeded random places, each
# followed by aio_flush: reads inside a region, reads across block
# boundaries, reads ending at the last byte of the file, of 1 byte to
# several blocks, so that every read's content is checked.
#
# The server log must show well-formed fetches (assertFetchRanges: each
# GET answered with 206, starting and ending on a 4 KiB granule or at
# the end of the file, at most 4 MiB long), over no more connections
# than allowed, that hold every byte read.  With the default options
# the cache holds the whole image: no byte is fetched twice.  With a
# small cache (4 blocks of 64 KiB, or a single block of 4 KiB) blocks
# are evicted and bytes fetched again while reads wait for room, which
# the server log confirms; yet no more bytes are fetched than each
# read's own granules, once, and what readahead and the warm-up at open
# fetched (as the driver traces it, curl_cache_event), which is at most
# the warm-up and one readahead top-up per read.  With readahead=0
# (explicit, or because the cache has a single block) the GETs are
# exactly the granules that hold the bytes read, each GET within one
# read's granules, and no read's granule is fetched twice for it.
# read -v dumps of random spots, and of the end of the image where the
# raw node reads zeroes past the end of the remote file, are compared
# with the local bytes.
#
# qemu-img bench runs thousands of reads at depth 32 over the standard
# raw image, with a step that visits its slots in a scrambled order,
# with the default options, with the small cache, and with 4 KiB blocks
# and no readahead.  bench does not check data; it must complete without
# a failed request, and the server log is checked as above: well-formed
# fetches holding every byte read, none twice with the default options,
# within what the reads and readahead may fetch with the small cache,
# exactly the granules read without readahead.
"""Random concurrent reads: qemu-io aio_read -P and qemu-img bench."""

from __future__ import annotations

import collections
import random
import re
import unittest
from pathlib import Path
from typing import ClassVar, Iterable, List, Optional, Sequence, Tuple

import fixtures
from e2e_case import (GRANULE, WARM_UP_FETCH, WARM_UP_FIRST_FETCH, E2ETestCase,
                      granule_range,
                      merge_ranges, overlapping_ranges)
from fixtures import (CmdResult, ImageSet, KiB, MiB, Nginx, PatternRegion,
                      TestImage)

#: Not a multiple of 512: the last block of any size is short
PATTERN_IMAGE_SIZE = 24 * MiB + 3 * 4 * KiB + 1000
#: The raw node rounds the image up to whole 512-byte sectors
ROUNDED_SIZE = -(-PATTERN_IMAGE_SIZE // 512) * 512
SEED = 20260417

#: Reads in flight at once (per batch), and batches per qemu-io run
BATCH = 64
BATCHES = 6

DEFAULT_BLOCKSIZE = 64 * KiB
SMALL_CACHE = 'file.blocksize=64k,file.blockcount=4'
DEFAULT_CONNECTIONS = 16
#: The readahead of SMALL_CACHE: (blockcount - 1) * blocksize
SMALL_CACHE_READAHEAD = 3 * 64 * KiB
#: Most bytes the warm-up at open asks for, with the default connections:
#: 512 KiB, then connections - 1 fetches of 64 KiB
WARM_UP_BYTES = WARM_UP_FIRST_FETCH + 15 * WARM_UP_FETCH

Ranges = List[Tuple[int, int]]


def span_bytes(ranges: Iterable[Tuple[int, int]]) -> int:
    """How many bytes the inclusive @ranges hold, counted with repeats."""
    return sum(last + 1 - first for first, last in ranges)


def make_regions(size: int, rng: random.Random) -> List[PatternRegion]:
    """Tile @size bytes with regions of random lengths and patterns.

    About one region in six has pattern 0 (it is not written).
    """
    regions = []
    pos = 0
    while pos < size:
        low, high = rng.choices(((1, 64), (64, 8 * KiB), (8 * KiB, 300 * KiB),
                                 (300 * KiB, 5 * MiB)),
                                weights=(3, 3, 3, 1))[0]
        length = min(rng.randrange(low, high), size - pos)
        pattern = 0 if rng.random() < 1 / 6 else rng.randrange(1, 256)
        regions.append(PatternRegion(pos, length, pattern))
        pos += length
    return regions


class RandomReads:
    """Seeded random reads over pattern regions, for one block size."""

    def __init__(self, regions: List[PatternRegion], blocksize: int,
                 seed: int) -> None:
        self.regions = regions
        self.blocksize = blocksize
        self.rng = random.Random(seed)
        self.size = regions[-1].end

    def length(self, room: int) -> int:
        """A read length of 1 byte to 4 blocks, at most @room."""
        low, high = self.rng.choice(((1, 1), (1, 512), (512, self.blocksize),
                                     (self.blocksize, 4 * self.blocksize)))
        return max(1, min(self.rng.randrange(low, high + 1), room))

    def region_at(self, pos: int) -> PatternRegion:
        """The region holding byte @pos."""
        return next(r for r in self.regions if r.offset <= pos < r.end)

    def inside(self) -> PatternRegion:
        """A read inside a random region."""
        region = self.rng.choice(self.regions)
        length = self.length(region.length)
        start = region.offset + self.rng.randrange(region.length - length + 1)
        return PatternRegion(start, length, region.pattern)

    def straddle(self) -> Optional[PatternRegion]:
        """A read across a random block boundary, inside one region.

        None if the boundary happens to be where a region starts.
        """
        boundary = self.blocksize * self.rng.randrange(
            1, -(-self.size // self.blocksize))
        region = self.region_at(boundary)
        if region.offset == boundary:
            return None
        before = self.rng.randrange(1, min(boundary - region.offset,
                                           2 * self.blocksize) + 1)
        after = self.rng.randrange(1, min(region.end - boundary,
                                          2 * self.blocksize) + 1)
        return PatternRegion(boundary - before, before + after,
                             region.pattern)

    def at_end(self) -> PatternRegion:
        """A read that ends with the last byte of the image."""
        region = self.regions[-1]
        length = self.length(region.length)
        return PatternRegion(self.size - length, length, region.pattern)

    def make(self, count: int) -> List[PatternRegion]:
        """@count reads: half inside regions, 40 % across block
        boundaries, 10 % ending at the end of the image."""
        reads: List[PatternRegion] = []
        while len(reads) < count:
            pick = self.rng.random()
            read = (self.inside() if pick < 0.5 else
                    self.straddle() if pick < 0.9 else self.at_end())
            if read is not None:
                reads.append(read)
        return reads


class DriverRandomTest(E2ETestCase):
    """Concurrent random reads with pattern checks, and qemu-img bench."""

    images: ClassVar[ImageSet]
    image: ClassVar[TestImage]
    regions: ClassVar[List[PatternRegion]]
    nginx: ClassVar[Nginx]
    trace: Path

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = fixtures.shared_images()
        directory = cls.class_tmp / 'www'
        directory.mkdir()
        cls.regions = make_regions(PATTERN_IMAGE_SIZE, random.Random(SEED))
        cls.image = fixtures.make_pattern_image(
            directory / 'pattern.raw', PATTERN_IMAGE_SIZE,
            [r for r in cls.regions if r.pattern])
        (directory / cls.images.raw.name).symlink_to(cls.images.raw.path)
        cls.nginx = cls.start_server(Nginx(directory, cls.ca_dir))

    def setUp(self) -> None:
        super().setUp()
        self.nginx.reset_log()
        self.trace = self.tmp / 'trace.log'

    # -- helpers

    def spec(self, image: TestImage, options: str = '',
             scheme: str = 'https') -> str:
        """--image-opts for @image with extra file @options."""
        return (f'driver=raw,file.driver={scheme},'
                f'file.url={self.nginx.url(image.name, scheme)}'
                f'{"," + options if options else ""}')

    def fetched_ranges(self, image: TestImage,
                       connections: int = DEFAULT_CONNECTIONS) -> Ranges:
        """The byte ranges of @image that nginx was asked for, in order.

        Asserts that they are well-formed fetches (assertFetchRanges),
        that each was answered with 206 (499: the driver cancelled it at
        close before the answer came), and that they came over at most
        @connections connections.
        """
        gets = [e for e in self.nginx.settled_log()
                if e['method'] == 'GET' and e['uri'] == '/' + image.name]
        ranges = [fixtures.parse_byte_range(e['range']) for e in gets]
        self.assertFetchRanges(ranges, image.path.stat().st_size,
                               msg=image.name)
        self.assertEqual([e for e in gets if e['status'] not in (206, 499)],
                         [], 'GETs not answered with 206')
        used = {e['connection'] for e in gets}
        self.assertLessEqual(len(used), connections,
                             f'GETs came over {len(used)} connections')
        return ranges

    def assertHoldReads(self, ranges: Ranges,
                        reads: Sequence[Tuple[int, int]], size: int) -> None:
        """Assert that @ranges together hold every byte of the file (of
        @size bytes) that @reads ((offset, length) each) read."""
        held = merge_ranges(ranges)
        missed = [(offset, length) for offset, length in reads
                  if offset < size and not any(
                      first <= offset and min(offset + length, size) - 1 <=
                      last for first, last in held)]
        self.assertEqual(missed, [], 'reads whose bytes were not all '
                         'fetched')

    def assertOnlyGranulesRead(self, ranges: Ranges,
                               reads: Sequence[Tuple[int, int]],
                               size: int) -> None:
        """Without readahead: assert that @ranges together are exactly the
        granules that hold the bytes of @reads (of a file of @size
        bytes), that each lies within the granules of one read, and
        that they hold no more bytes than the reads' granules, counted
        once per read (no read fetched one of its granules twice)."""
        extents = sorted({granule_range(offset, length, size)
                          for offset, length in reads if offset < size})
        self.assertEqual(merge_ranges(ranges), merge_ranges(extents),
                         'not the granules of the reads')
        stray = [r for r in ranges
                 if not any(first <= r[0] and r[1] <= last
                            for first, last in extents)]
        self.assertEqual(stray, [], 'GETs not within the granules of one '
                         'read')
        in_reads = sum(last + 1 - first for first, last in
                       (granule_range(offset, length, size)
                        for offset, length in reads if offset < size))
        self.assertLessEqual(span_bytes(ranges), in_reads,
                             'more bytes fetched than the reads\' granules')

    def trace_args(self) -> List[str]:
        """The qemu-img or qemu-io options that trace the cache's events
        to this test's trace file (see traced_readahead())."""
        return ['--trace', f'enable=curl_cache_event,file={self.trace}']

    def traced_readahead(self) -> Ranges:
        """The fetches that readahead (and the warm-up at open) started,
        as traced with trace_args(): inclusive image byte ranges."""
        text = self.trace.read_text(encoding='utf-8', errors='replace')
        self.assertIn('curl_cache_event', text, 'nothing traced')
        return [(int(m.group(1), 16), int(m.group(1), 16) +
                 int(m.group(2), 16) - 1) for m in re.finditer(
                     r'curl_cache_event .*? readahead offset 0x([0-9a-f]+) '
                     r'bytes 0x([0-9a-f]+)', text)]

    def assertFetchedAtMost(self, ranges: Ranges,
                            reads: Sequence[Tuple[int, int]], size: int,
                            readahead: int) -> None:
        """Assert that @ranges hold no more bytes than @reads fetch for
        themselves (each read its own granules, once) and readahead
        fetched, as the driver traced it (run with trace_args()); and
        that readahead fetched no more than the warm-up at open and one
        top-up of @readahead (rounded out to granules) per read."""
        own = sum(last + 1 - first for first, last in
                  (granule_range(offset, length, size)
                   for offset, length in reads if offset < size))
        ahead = span_bytes(self.traced_readahead())
        self.assertLessEqual(ahead, len(reads) * (readahead + 2 * GRANULE) +
                             WARM_UP_BYTES, f'readahead fetched more than '
                             f'{len(reads)} reads with readahead='
                             f'{readahead} may')
        self.assertLessEqual(span_bytes(ranges), own + ahead,
                             f'more bytes fetched than the {own} bytes of '
                             f'the reads\' granules and the {ahead} bytes '
                             'that readahead fetched')

    def run_aio_reads(self, reads: List[PatternRegion],
                      spec: str) -> CmdResult:
        """aio_read -P every read, in batches of BATCH, each batch
        followed by aio_flush, in one qemu-io process; check them all."""
        args: List[str] = ['-r']
        for i in range(0, len(reads), BATCH):
            for read in reads[i:i + BATCH]:
                args += ['-c', f'aio_read -P 0x{read.pattern:02x} '
                         f'{read.offset} {read.length}']
            args += ['-c', 'aio_flush']
        result = self.qemu_io(*self.trace_args(), *args, '--image-opts',
                              spec)
        self.assertSucceeded(result)
        self.assertNoPatternFailure(result.output, f'with {spec}')
        for bad in ('failed', 'error'):
            self.assertNotIn(bad, result.output.lower())
        done = collections.Counter(
            (int(m.group(2)), int(m.group(1))) for m in re.finditer(
                r'^read (\d+)/\1 bytes at offset (\d+)$', result.stdout,
                re.MULTILINE))
        expected = collections.Counter((r.offset, r.length) for r in reads)
        self.assertEqual(done, expected, 'reads missing or extra in the '
                         f'output\n{result.stdout[-3000:]}')
        return result

    def check_random_reads(self, blocksize: int, options: str, seed: int,
                           connections: int = DEFAULT_CONNECTIONS
                           ) -> Tuple[Ranges, List[Tuple[int, int]]]:
        """Random aio_read -P of the pattern image, reads sized and placed
        for @blocksize; check that the GETs were well-formed fetches, over
        at most @connections connections, that hold every byte read.
        Return the ranges fetched and the reads ((offset, length)
        each)."""
        reads = RandomReads(self.regions, blocksize, seed).make(
            BATCH * BATCHES)
        self.assertTrue(any(r.offset // blocksize !=
                            (r.end - 1) // blocksize for r in reads))
        self.assertTrue(any(r.end == PATTERN_IMAGE_SIZE for r in reads))
        self.run_aio_reads(reads, self.spec(self.image, options))
        ranges = self.fetched_ranges(self.image, connections)
        spans = [(r.offset, r.length) for r in reads]
        self.assertHoldReads(ranges, spans, PATTERN_IMAGE_SIZE)
        return ranges, spans

    # -- qemu-io aio_read

    def test_aio_reads_default_options(self) -> None:
        """Default options: 2 MiB blocks, the whole image fits the cache
        (56 MiB), so that no byte is fetched twice (and so at most the
        whole file)."""
        ranges, _ = self.check_random_reads(DEFAULT_BLOCKSIZE, '', SEED + 1)
        self.assertEqual(overlapping_ranges(ranges), [],
                         'bytes fetched twice')
        self.assertLessEqual(span_bytes(ranges), PATTERN_IMAGE_SIZE)

    def test_aio_reads_small_cache(self) -> None:
        """4 blocks of 64 KiB with the default readahead (3 blocks):
        blocks are evicted and bytes fetched again under concurrency,
        but no more than the reads, their readahead and the warm-up may
        fetch."""
        ranges, reads = self.check_random_reads(64 * KiB, SMALL_CACHE,
                                                SEED + 2)
        self.assertTrue(overlapping_ranges(ranges), 'no byte was fetched '
                        'twice: the cache did not evict anything')
        self.assertFetchedAtMost(ranges, reads, PATTERN_IMAGE_SIZE,
                                 SMALL_CACHE_READAHEAD)

    def test_aio_reads_one_block_cache(self) -> None:
        """A cache of one 4 KiB block (so no readahead, and no warm-up)
        and 4 connections: the reads in flight take turns for the one
        block, so that bytes are fetched again, but only the granules
        read are."""
        ranges, reads = self.check_random_reads(
            4 * KiB, 'file.blocksize=4k,file.blockcount=1,'
            'file.connections=4', SEED + 5, connections=4)
        self.assertTrue(overlapping_ranges(ranges),
                        'no byte was fetched twice')
        self.assertOnlyGranulesRead(ranges, reads, PATTERN_IMAGE_SIZE)

    def test_aio_reads_4k_blocks_two_connections_http(self) -> None:
        """4 KiB blocks, 16 of them, two connections, no readahead, over
        plain http: exactly the granules read are fetched, over two
        connections at most."""
        options = ('file.blocksize=4k,file.blockcount=16,'
                   'file.connections=2,file.readahead=0')
        reads = RandomReads(self.regions, 4 * KiB, SEED + 3).make(
            BATCH * BATCHES)
        self.run_aio_reads(reads, self.spec(self.image, options, 'http'))
        ranges = self.fetched_ranges(self.image, connections=2)
        self.assertOnlyGranulesRead(ranges,
                                    [(r.offset, r.length) for r in reads],
                                    PATTERN_IMAGE_SIZE)

    def test_aio_read_wrong_pattern_is_detected(self) -> None:
        """Control: aio_read -P reports a wrong pattern, so the checks
        above mean something."""
        region = max(self.regions, key=lambda r: r.length)
        result = self.qemu_io(
            '-r', '-c', f'aio_read -P 0x{region.pattern ^ 0xff:02x} '
            f'{region.offset} {region.length}', '-c', 'aio_flush',
            '--image-opts', self.spec(self.image))
        self.assertIn('Pattern verification failed', result.output)

    # -- qemu-io read -v

    def test_hexdumps_of_random_spots(self) -> None:
        """read -v of random spots, of the last bytes of the image and of
        the zeroes the raw node reads after them, equal the local file
        (and zeroes); the fetches hold the bytes of the spots, and no
        more than the reads may fetch."""
        rng = random.Random(SEED + 4)
        spots: List[Tuple[int, int]] = []
        for i in range(6):
            # One spot per 4 MiB stretch: they cannot overlap
            length = rng.randrange(1, 300)
            spots.append((i * 4 * MiB + rng.randrange(4 * MiB - 300),
                          length))
        spots.append((PATTERN_IMAGE_SIZE - 100, ROUNDED_SIZE -
                      PATTERN_IMAGE_SIZE + 100))
        args: List[str] = ['-r']
        for offset, length in spots:
            args += ['-c', f'read -v {offset} {length}']
        result = self.qemu_io(*self.trace_args(), *args, '--image-opts',
                              self.spec(self.image, SMALL_CACHE))
        self.assertSucceeded(result)
        dump = fixtures.parse_hexdump(result.stdout)
        for offset, length in spots:
            missing = [o for o in range(offset, offset + length)
                       if o not in dump]
            self.assertEqual(missing, [], f'not in the dump\n'
                             f'{result.stdout}')
            got = bytes(dump[o] for o in range(offset, offset + length))
            expected = fixtures.read_bytes(self.image.path, offset, length)
            expected += bytes(length - len(expected))
            self.assertEqual(got.hex(), expected.hex(),
                             f'at {offset}, {length} bytes')
        ranges = self.fetched_ranges(self.image)
        self.assertHoldReads(ranges, spots, PATTERN_IMAGE_SIZE)
        self.assertFetchedAtMost(ranges, spots, PATTERN_IMAGE_SIZE,
                                 SMALL_CACHE_READAHEAD)

    # -- qemu-img bench

    def check_bench(self, options: str, bufsize: int, step: int,
                    count: int, connections: int = DEFAULT_CONNECTIONS
                    ) -> Tuple[Ranges, List[Tuple[int, int]]]:
        """qemu-img bench -d 32 of the standard raw image: no failed
        request, and well-formed fetches, over at most @connections
        connections, that hold every byte read.  Return the ranges
        fetched and the reads ((offset, length))."""
        image = self.images.raw
        # Reads never reach past the end: all offsets are multiples of
        # the read size, which divides the image size
        self.assertEqual(image.size % bufsize, 0)
        self.assertEqual(step % bufsize, 0)
        result = self.qemu_img(*self.trace_args(), 'bench', '--image-opts',
                               '-d', '32', '-c', str(count), '-s',
                               str(bufsize), '-S', str(step), '-o',
                               str(7 * bufsize), self.spec(image, options))
        self.assertSucceeded(result)
        self.assertIn(f'Sending {count} read requests, {bufsize} bytes '
                      f'each, 32 in parallel', result.stdout)
        self.assertRegex(result.stdout, r'Run completed in [0-9.]+ seconds')
        self.assertNotIn('Failed request', result.output)
        slots = image.size // bufsize
        reads = [((7 + i * (step // bufsize)) % slots * bufsize, bufsize)
                 for i in range(count)]
        ranges = self.fetched_ranges(image, connections)
        self.assertHoldReads(ranges, reads, image.size)
        return ranges, reads

    def test_bench_default_options(self) -> None:
        """4 KiB reads, scrambled over the whole image, default options:
        every byte of the image is fetched, none twice (the cache holds
        the whole image)."""
        # 1237 is prime to the 12288 slots: every slot is visited once
        ranges, _ = self.check_bench('', 4 * KiB, 1237 * 4 * KiB, 12288)
        size = self.images.raw.size
        self.assertFetchRanges(ranges, size, cover=(0, size), once=True)

    def test_bench_small_cache(self) -> None:
        """48 KiB reads (most cross a 64 KiB block boundary), scrambled,
        with a cache of 4 blocks of 64 KiB and the default readahead:
        every byte is fetched, and no more than the reads, their
        readahead and the warm-up may fetch."""
        # 301 is prime to the 1024 slots
        ranges, reads = self.check_bench(SMALL_CACHE, 48 * KiB,
                                         301 * 48 * KiB, 1024)
        size = self.images.raw.size
        self.assertFetchRanges(ranges, size, cover=(0, size))
        self.assertFetchedAtMost(ranges, reads, size, SMALL_CACHE_READAHEAD)

    def test_bench_small_cache_no_readahead_4k_blocks(self) -> None:
        """12 KiB reads over 4 KiB blocks, a cache of 8 blocks and 4
        connections, no readahead: exactly the granules read are
        fetched."""
        # 12 KiB divides 48 MiB; 1001 is prime to the 4096 slots
        ranges, reads = self.check_bench(
            'file.blocksize=4k,file.blockcount=8,file.connections=4,'
            'file.readahead=0', 12 * KiB, 1001 * 12 * KiB, 2048,
            connections=4)
        self.assertOnlyGranulesRead(ranges, reads, self.images.raw.size)


if __name__ == '__main__':
    unittest.main()
