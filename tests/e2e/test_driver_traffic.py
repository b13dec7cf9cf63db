# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: what the curl driver puts on the wire, from the servers' logs.
#
# * A sequential qemu-img convert of a file of S bytes (the raw and the
#   compressed qcow2 standard images) asks nginx and the range server
#   for at most 1.02 * S body bytes in total.  The same conversions with
#   the stock driver are measured in the same test and printed next to
#   them ("traffic: ..." lines), for information only.
# * Two reads of one block fetch it once; a read across two blocks
#   fetches exactly those two (readahead=0), once each, each a whole
#   block.
# * Readahead: many small sequential reads make the driver fetch the
#   blocks that follow, up to the readahead distance, and no byte twice.
#   Small reads at random places (none continuing an earlier one) fetch
#   only the blocks read; uniformly random small reads never fetch a
#   block twice (how much they fetch ahead is printed).
# * connections: a big convert with connections=4 uses at most 4
#   connections for its GETs (the size probe at open has its own), with
#   connections=16 more than 4.
# * ftp:// convert of raw and qcow2 images with blocksize=64k and
#   connections=4, byte for byte, one RETR per block.
"""Requests and bytes on the wire: convert, block reads, readahead,
connections, FTP."""

from __future__ import annotations

import collections
import random
import re
import time
import unittest
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Set, Tuple

import fixtures
from e2e_case import E2ETestCase
from fixtures import (Binaries, FtpServer, ImageSet, KiB, MiB, Nginx,
                      RangeServer, TestImage)

#: Most body bytes a sequential convert may fetch, relative to the file
MAX_CONVERT_RATIO = 1.02

#: A sparse image much larger than the default readahead distance
SPARSE_SIZE = 2 * 1024 * MiB
SPARSE_NAME = 'sparse.raw'


class DriverTrafficTest(E2ETestCase):
    """Requests and bytes that nginx, the range server and the FTP
    server see."""

    images: ClassVar[ImageSet]
    nginx: ClassVar[Nginx]
    range_server: ClassVar[RangeServer]
    new_img: ClassVar[Path]
    stock_img: ClassVar[Path]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = fixtures.shared_images()
        directory = cls.class_tmp / 'www'
        directory.mkdir()
        for image in cls.images.all():
            (directory / image.name).symlink_to(image.path)
        with open(directory / SPARSE_NAME, 'wb') as sparse:
            sparse.truncate(SPARSE_SIZE)
        cls.nginx = cls.start_server(Nginx(directory, cls.ca_dir))
        cls.range_server = cls.start_range_server(directory)
        # Whatever the suite runs with, compare the two drivers
        cls.new_img = Binaries.from_env(stock=False).qemu_img
        cls.stock_img = Binaries.from_env(stock=True).qemu_img
        assert cls.stock_img.is_file(), f'{cls.stock_img} is missing'

    def setUp(self) -> None:
        super().setUp()
        self.nginx.reset_log()
        self.range_server.reset()

    # -- helpers

    def nginx_gets(self, name: str) -> List[Dict[str, Any]]:
        """The GETs of @name in the (settled) nginx log."""
        return [e for e in self.nginx.settled_log()
                if e['method'] == 'GET' and e['uri'] == '/' + name]

    def nginx_blocks(self, name: str, blocksize: int) -> List[int]:
        """The blocks of @name that nginx was asked for, in order.

        Asserts that each GET asked for one whole block.
        """
        size = self.nginx.root.joinpath(name).stat().st_size
        blocks = []
        for entry in self.nginx_gets(name):
            first, last = fixtures.parse_byte_range(entry['range'])
            self.assertEqual((first % blocksize, last + 1),
                             (0, min(first + blocksize, size)),
                             f'not one whole block: {entry["range"]}')
            blocks.append(first // blocksize)
        return blocks

    def qemu_io_reads(self, name: str, options: str,
                      reads: List[Tuple[int, int]],
                      linger_ms: int = 0) -> None:
        """qemu-io read OFFSET LENGTH for each of @reads, in one process,
        over http with the file @options.

        With @linger_ms, qemu-io then waits that long (running its event
        loop) before it closes the image, so that readahead started by
        the last reads reaches the server.
        """
        args: List[str] = ['-r']
        for offset, length in reads:
            args += ['-c', f'read -q {offset} {length}']
        if linger_ms:
            args += ['-c', f'sleep {linger_ms}']
        result = self.qemu_io(*args, '--image-opts',
                              f'driver=raw,file.driver=http,'
                              f'file.url={self.nginx.http_url(name)}'
                              f'{"," + options if options else ""}')
        self.assertSucceeded(result)
        self.assertNoPatternFailure(result.output)

    # -- sequential convert: new and stock

    def measure_convert(self, binary: Path, server: str,
                        image: TestImage) -> Tuple[int, int, bool]:
        """Convert @image from @server with @binary.

        Return the number of GETs, the body bytes sent, and whether the
        output was right.
        """
        self.nginx.reset_log()
        self.range_server.reset()
        url = (self.nginx.http_url(image.name) if server == 'nginx' else
               self.range_server.url(image.name))
        out = self.tmp / 'out.raw'
        result = fixtures.run([binary, 'convert', '-f', image.fmt, '-O',
                               'raw', url, out])
        right = (result.returncode == 0 and
                 fixtures.sha256_file(out) == self.images.raw.sha256)
        if server == 'nginx':
            gets = self.nginx_gets(image.name)
            sent = sum(e['body_bytes_sent'] for e in gets)
            count = len(gets)
        else:
            gets = [e for e in self.range_server.stats()['log']
                    if e['method'] == 'GET']
            sent = sum(e['bytes_sent'] for e in gets)
            count = len(gets)
        out.unlink(missing_ok=True)
        if binary == self.new_img:
            self.assertSucceeded(result, f'convert from {server}')
            self.assertTrue(right, f'wrong data from {server}')
        return count, sent, right

    def check_sequential_convert(self, image: TestImage) -> None:
        """At most 1.02 * S bytes with the new driver; print both."""
        size = image.path.stat().st_size
        lines = []
        for server in ('nginx', 'range server'):
            numbers = {}
            for flavour, binary in (('new', self.new_img),
                                    ('stock', self.stock_img)):
                numbers[flavour] = self.measure_convert(binary, server, image)
            for flavour, (count, sent, right) in numbers.items():
                lines.append(f'traffic: {image.name} (S = {size} bytes) '
                             f'from {server}, {flavour} driver: {count} '
                             f'requests, {sent} bytes = '
                             f'{sent / size:.3f} S'
                             f'{"" if right else ", WRONG DATA"}')
            count, sent, _ = numbers['new']
            self.assertLessEqual(sent, MAX_CONVERT_RATIO * size,
                                 f'{server}: {count} requests, {sent} bytes')
            self.assertGreaterEqual(sent, size if image.fmt == 'raw' else 1)
        print('\n' + '\n'.join(lines), flush=True)

    def test_sequential_convert_raw(self) -> None:
        """Convert of the raw image: bytes asked for, new vs stock."""
        self.check_sequential_convert(self.images.raw)

    def test_sequential_convert_compressed_qcow2(self) -> None:
        """Convert of the compressed qcow2 image: new vs stock."""
        self.check_sequential_convert(self.images.qcow2c)

    # -- blocks

    def test_two_reads_of_one_block_fetch_it_once(self) -> None:
        """read 0 4k then read 100 4k, readahead=0: one GET."""
        self.qemu_io_reads(self.images.raw.name,
                           'file.blocksize=64k,file.readahead=0',
                           [(0, 4 * KiB), (100, 4 * KiB)])
        self.assertEqual([e['range'] for e in
                          self.nginx_gets(self.images.raw.name)],
                         [f'bytes=0-{64 * KiB - 1}'])

    def test_two_reads_of_one_block_with_readahead(self) -> None:
        """The same with the default readahead: the second read starts
        readahead, which does not fetch block 0 again."""
        self.qemu_io_reads(self.images.raw.name, 'file.blocksize=64k',
                           [(0, 4 * KiB), (100, 4 * KiB)])
        blocks = self.nginx_blocks(self.images.raw.name, 64 * KiB)
        self.assertEqual(blocks.count(0), 1, blocks)
        self.assertEqual(len(blocks), len(set(blocks)), blocks)

    def test_read_across_two_blocks_fetches_both_once(self) -> None:
        """A 1000-byte read across a block boundary, readahead=0: the
        two blocks, once each, whole."""
        blocksize = 64 * KiB
        self.qemu_io_reads(self.images.raw.name,
                           'file.blocksize=64k,file.readahead=0',
                           [(3 * blocksize - 500, 1000)])
        ranges = sorted(fixtures.parse_byte_range(e['range'])
                        for e in self.nginx_gets(self.images.raw.name))
        self.assertEqual(ranges, [(2 * blocksize, 3 * blocksize - 1),
                                  (3 * blocksize, 4 * blocksize - 1)])
        for first, last in ranges:
            self.assertEqual(last - first + 1, blocksize)

    # -- readahead

    def check_sequential_reads(self, options: str,
                               readahead_blocks: int) -> List[int]:
        """64 sequential reads of 16 KiB (blocks 0 to 15 of 64 KiB):
        blocks after them are fetched, up to @readahead_blocks after
        the last one read, none twice.  Return the blocks fetched."""
        self.qemu_io_reads(self.images.raw.name, options,
                           [(i * 16 * KiB, 16 * KiB) for i in range(64)],
                           linger_ms=1000)
        blocks = self.nginx_blocks(self.images.raw.name, 64 * KiB)
        twice = [b for b, n in collections.Counter(blocks).items() if n > 1]
        self.assertEqual(twice, [], 'blocks fetched more than once')
        self.assertLessEqual(set(range(16)), set(blocks))
        ahead = [b for b in blocks if b > 15]
        self.assertTrue(ahead, 'nothing was fetched ahead')
        self.assertLessEqual(max(blocks), 15 + readahead_blocks)
        return blocks

    def test_sequential_small_reads_default_readahead(self) -> None:
        """Default readahead (32 MiB: 512 blocks of 64 KiB)."""
        self.check_sequential_reads('file.blocksize=64k', 512)

    def test_sequential_small_reads_readahead_1m(self) -> None:
        """readahead=1M (16 blocks): exactly blocks 0 to 31, once each."""
        blocks = self.check_sequential_reads(
            'file.blocksize=64k,file.readahead=1M', 16)
        self.assertEqual(sorted(blocks), list(range(32)))

    def check_random_reads(self, name: str, size: int, options: str,
                           blocksize: int, seed: int) -> None:
        """40 reads of 4 KiB at random places of @name, none of them
        starting in the block where an earlier one ended or in the next
        (which would make it the continuation of a stream): only the
        blocks read are fetched, once each."""
        rng = random.Random(seed)
        reads: List[Tuple[int, int]] = []
        ends: Set[int] = set()
        while len(reads) < 40:
            offset = rng.randrange(size // (4 * KiB)) * 4 * KiB
            if offset // blocksize in ends:
                continue
            reads.append((offset, 4 * KiB))
            last = (offset + 4 * KiB - 1) // blocksize
            ends.update((last, last + 1))
        self.qemu_io_reads(name, options, reads, linger_ms=1000)
        blocks = self.nginx_blocks(name, blocksize)
        self.assertEqual(sorted(blocks),
                         sorted({offset // blocksize for offset, _ in reads}))

    def test_random_small_reads_no_readahead(self) -> None:
        """Random 4 KiB reads, 64 KiB blocks, the default readahead
        (512 blocks): nothing is fetched ahead."""
        self.check_random_reads(self.images.raw.name, self.images.raw.size,
                                'file.blocksize=64k', 64 * KiB, 20260502)

    def test_random_small_reads_no_readahead_defaults(self) -> None:
        """Random 4 KiB reads of a 2 GiB image with the default options:
        nothing is fetched ahead."""
        self.check_random_reads(SPARSE_NAME, SPARSE_SIZE, '', 2 * MiB,
                                20260504)

    def test_uniform_random_small_reads_fetch_no_block_twice(self) -> None:
        """40 uniformly random 4 KiB reads of the 48 MiB image with 64 KiB
        blocks and the default readahead: every block read is fetched,
        none twice.  Reads within the readahead distance (32 MiB) of the
        stream before them do start readahead: how much is printed."""
        rng = random.Random(20260503)
        image = self.images.raw
        blocksize = 64 * KiB
        reads = [(rng.randrange(image.size // (4 * KiB)) * 4 * KiB, 4 * KiB)
                 for _ in range(40)]
        self.qemu_io_reads(image.name, 'file.blocksize=64k', reads,
                           linger_ms=1000)
        blocks = self.nginx_blocks(image.name, blocksize)
        self.assertEqual(len(blocks), len(set(blocks)), blocks)
        read_blocks = {offset // blocksize for offset, _ in reads}
        self.assertLessEqual(read_blocks, set(blocks))
        print(f'\ntraffic: 40 random 4 KiB reads of {image.name} '
              f'(blocksize=64k): {len(read_blocks)} blocks read, '
              f'{len(blocks)} fetched', flush=True)

    # -- connections

    def convert_connections(self, connections: int) -> Tuple[int, int]:
        """Convert the raw image over http with 64 KiB blocks and
        @connections; return the numbers of connections nginx saw for
        the GETs and for all requests."""
        image = self.images.raw
        out = self.tmp / 'out.raw'
        result = self.qemu_img(
            'convert', '-O', 'raw', '--image-opts',
            f'driver=raw,file.driver=http,'
            f'file.url={self.nginx.http_url(image.name)},'
            f'file.blocksize=64k,file.connections={connections}', out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, image)
        log = self.nginx.settled_log()
        gets = [e for e in log if e['method'] == 'GET']
        self.assertEqual(len(gets), image.size // (64 * KiB))
        return (len({e['connection'] for e in gets}),
                len({e['connection'] for e in log}))

    def test_connections_4(self) -> None:
        """connections=4: at most 4 connections carry the GETs, plus the
        probe's own."""
        gets, everything = self.convert_connections(4)
        self.assertLessEqual(gets, 4)
        self.assertLessEqual(everything, 5)

    def test_connections_16(self) -> None:
        """connections=16: more than 4 connections in a big convert."""
        gets, _ = self.convert_connections(16)
        self.assertGreater(gets, 4)
        self.assertLessEqual(gets, 16)

    # -- FTP

    def check_ftp_convert(self, image: TestImage) -> None:
        """ftp:// with blocksize=64k,connections=4, byte for byte."""
        ftp = FtpServer(self.images.directory)
        ftp.start()
        self.addCleanup(ftp.stop)
        out = self.tmp / 'out.raw'
        result = self.qemu_img(
            'convert', '-O', 'raw', '--image-opts',
            f'driver={image.fmt},file.driver=ftp,'
            f'file.url={ftp.url(image.name)},file.blocksize=64k,'
            f'file.connections=4', out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, self.images.raw)
        assert ftp.dir is not None
        log_path = ftp.dir / 'ftpd.log'
        blocks = -(-image.path.stat().st_size // (64 * KiB))

        def retrs() -> List[str]:
            log = log_path.read_text(encoding='utf-8', errors='replace')
            return re.findall(r'RETR \S+ completed=\d bytes=\d+', log)

        # pyftpdlib logs a RETR once its data connection is closed
        expected = blocks if image.fmt == 'raw' else 1

        def enough() -> Optional[List[str]]:
            found = retrs()
            return found if len(found) >= expected else None

        found = fixtures.wait_for(enough, 10, 'the FTP log')
        while True:     # until the log stops growing
            time.sleep(0.3)
            if len(retrs()) == len(found):
                break
            found = retrs()
        if image.fmt == 'raw':
            self.assertEqual(len(found), blocks, 'not one RETR per block')
        else:
            self.assertLessEqual(len(found), blocks)
        sent = sum(int(r.rsplit('=', 1)[1]) for r in found)
        print(f'\ntraffic: ftp {image.name} (S = '
              f'{image.path.stat().st_size} bytes), blocksize=64k: '
              f'{len(found)} RETR, the server sent {sent} bytes = '
              f'{sent / image.path.stat().st_size:.2f} S', flush=True)

    def test_ftp_convert_raw(self) -> None:
        """ftp:// raw image, blocksize=64k, connections=4."""
        self.check_ftp_convert(self.images.raw)

    def test_ftp_convert_qcow2(self) -> None:
        """ftp:// qcow2 image, blocksize=64k, connections=4."""
        self.check_ftp_convert(self.images.qcow2)


if __name__ == '__main__':
    unittest.main()
