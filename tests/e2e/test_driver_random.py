# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: random concurrent reads through the curl driver's block cache.
#
# A raw image is tiled with regions of seeded random lengths (1 byte to
# 5 MiB) and byte patterns, written with qemu-io write -P (some regions
# are left as zeroes), and its size is not a multiple of 512 nor of any
# block size.  qemu-io then issues batches of concurrent aio_read -P at
# seeded random places, each followed by aio_flush: reads inside a
# region, reads across block boundaries, reads ending at the last byte
# of the file, of 1 byte to several blocks, so that every read's content
# is checked.  With a small cache (4 blocks of 64 KiB, or a single
# block of 4 KiB) blocks are evicted and fetched again while reads wait
# for room, which the server log confirms.  read -v dumps of random spots, and of the end of the
# image where the raw node reads zeroes past the end of the remote file,
# are compared with the local bytes.
#
# qemu-img bench runs thousands of reads at depth 32 over the standard
# raw image, with a step that visits its slots in a scrambled order,
# with the default options and with the small cache.  bench does not
# check data; it must complete without a failed request, and the server
# must only have been asked for whole blocks.
"""Random concurrent reads: qemu-io aio_read -P and qemu-img bench."""

from __future__ import annotations

import collections
import random
import re
import unittest
from typing import ClassVar, List, Optional, Set, Tuple

import fixtures
from e2e_case import E2ETestCase
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

DEFAULT_BLOCKSIZE = 2 * MiB
SMALL_CACHE = 'file.blocksize=64k,file.blockcount=4'


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

    # -- helpers

    def spec(self, image: TestImage, options: str = '',
             scheme: str = 'https') -> str:
        """--image-opts for @image with extra file @options."""
        return (f'driver=raw,file.driver={scheme},'
                f'file.url={self.nginx.url(image.name, scheme)}'
                f'{"," + options if options else ""}')

    def block_gets(self, blocksize: int) -> List[int]:
        """The blocks that nginx was asked for, in order; asserts that
        each GET was one whole block, answered with 206."""
        gets = [e for e in self.nginx.settled_log() if e['method'] == 'GET']
        self.assertTrue(gets, 'no GET logged')
        self.assertEqual({e['status'] for e in gets}, {206})
        blocks = []
        for entry in gets:
            first, last = fixtures.parse_byte_range(entry['range'])
            size = self.nginx.root.joinpath(entry['uri'][1:]).stat().st_size
            self.assertEqual((first % blocksize,
                              last - first + 1),
                             (0, min(blocksize, size - first)),
                             f'not a whole {blocksize}-byte block: '
                             f'{entry["range"]}')
            blocks.append(first // blocksize)
        return blocks

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
        result = self.qemu_io(*args, '--image-opts', spec)
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

    def check_random_reads(self, blocksize: int, options: str,
                           seed: int) -> List[int]:
        """Random aio_read -P of the pattern image; return the blocks
        fetched."""
        reads = RandomReads(self.regions, blocksize, seed).make(
            BATCH * BATCHES)
        self.assertTrue(any(r.offset // blocksize !=
                            (r.end - 1) // blocksize for r in reads))
        self.assertTrue(any(r.end == PATTERN_IMAGE_SIZE for r in reads))
        self.run_aio_reads(reads, self.spec(self.image, options))
        blocks = self.block_gets(blocksize)
        needed = {b for r in reads
                  for b in range(r.offset // blocksize,
                                 (r.end - 1) // blocksize + 1)}
        self.assertLessEqual(needed, set(blocks),
                             'a block that was read was never fetched')
        return blocks

    # -- qemu-io aio_read

    def test_aio_reads_default_options(self) -> None:
        """Default options: 2 MiB blocks, everything fits the cache, so
        that each block is fetched once."""
        blocks = self.check_random_reads(DEFAULT_BLOCKSIZE, '', SEED + 1)
        self.assertEqual(len(blocks), len(set(blocks)),
                         f'a block was fetched twice: {blocks}')

    def test_aio_reads_small_cache(self) -> None:
        """4 blocks of 64 KiB with the default readahead (3 blocks):
        blocks are evicted and fetched again under concurrency."""
        blocks = self.check_random_reads(64 * KiB, SMALL_CACHE, SEED + 2)
        refetched = [b for b, n in collections.Counter(blocks).items()
                     if n > 1]
        self.assertTrue(refetched, 'no block was fetched twice: the cache '
                        'did not evict anything')

    def test_aio_reads_one_block_cache(self) -> None:
        """A cache of one 4 KiB block (so no readahead) and 4
        connections: the reads in flight take turns for the one block."""
        blocks = self.check_random_reads(
            4 * KiB, 'file.blocksize=4k,file.blockcount=1,'
            'file.connections=4', SEED + 5)
        self.assertGreater(len(blocks), len(set(blocks)),
                           'no block was fetched twice')

    def test_aio_reads_4k_blocks_two_connections_http(self) -> None:
        """4 KiB blocks, 16 of them, two connections, no readahead, over
        plain http."""
        options = ('file.blocksize=4k,file.blockcount=16,'
                   'file.connections=2,file.readahead=0')
        reads = RandomReads(self.regions, 4 * KiB, SEED + 3).make(
            BATCH * BATCHES)
        self.run_aio_reads(reads, self.spec(self.image, options, 'http'))
        self.block_gets(4 * KiB)
        connections = {e['connection'] for e in self.nginx.access_log()
                       if e['method'] == 'GET'}
        self.assertLessEqual(len(connections), 2)

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
        (and zeroes)."""
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
        result = self.qemu_io(*args, '--image-opts',
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

    # -- qemu-img bench

    def check_bench(self, options: str, bufsize: int, step: int,
                    count: int, blocksize: int) -> None:
        """qemu-img bench -d 32 of the standard raw image."""
        image = self.images.raw
        # Reads never reach past the end: all offsets are multiples of
        # the read size, which divides the image size
        self.assertEqual(image.size % bufsize, 0)
        self.assertEqual(step % bufsize, 0)
        result = self.qemu_img('bench', '--image-opts', '-d', '32', '-c',
                               str(count), '-s', str(bufsize), '-S',
                               str(step), '-o', str(7 * bufsize),
                               self.spec(image, options))
        self.assertSucceeded(result)
        self.assertIn(f'Sending {count} read requests, {bufsize} bytes '
                      f'each, 32 in parallel', result.stdout)
        self.assertRegex(result.stdout, r'Run completed in [0-9.]+ seconds')
        self.assertNotIn('Failed request', result.output)
        slots = image.size // bufsize
        touched: Set[int] = set()
        for i in range(count):
            start = (7 + i * (step // bufsize)) % slots * bufsize
            touched.update(range(start // blocksize,
                                 (start + bufsize - 1) // blocksize + 1))
        blocks = self.block_gets(blocksize)
        self.assertLessEqual(touched, set(blocks))

    def test_bench_default_options(self) -> None:
        """4 KiB reads, scrambled over the whole image, default options."""
        # 1237 is prime to the 12288 slots: every slot is visited once
        self.check_bench('', 4 * KiB, 1237 * 4 * KiB, 12288,
                         DEFAULT_BLOCKSIZE)

    def test_bench_small_cache(self) -> None:
        """48 KiB reads (most cross a 64 KiB block boundary), scrambled,
        with a cache of 4 blocks of 64 KiB and the default readahead."""
        # 301 is prime to the 1024 slots
        self.check_bench(SMALL_CACHE, 48 * KiB, 301 * 48 * KiB, 1024,
                         64 * KiB)

    def test_bench_small_cache_no_readahead_4k_blocks(self) -> None:
        """12 KiB reads over 4 KiB blocks, a cache of 8 blocks and 4
        connections, no readahead."""
        # 12 KiB divides 48 MiB; 1001 is prime to the 4096 slots
        self.check_bench('file.blocksize=4k,file.blockcount=8,'
                         'file.connections=4,file.readahead=0',
                         12 * KiB, 1001 * 12 * KiB, 2048, 4 * KiB)


if __name__ == '__main__':
    unittest.main()
