# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: the life of https nodes in one qemu-storage-daemon.
#
# Every test runs the build's qemu-storage-daemon with a QMP monitor and
# an NBD server on a UNIX socket, adds https nodes (sslverify on, the
# default cache options) served by nginx, exports them over NBD and
# reads them, comparing every byte read with the local image:
#
# * Memory after close: 100 cycles of blockdev-add, a qemu-img compare of
#   the whole 80 MiB image through the export (more than the default
#   cache of 56 MiB holds, so every cache block is used), block-export-del
#   and blockdev-del.  The daemon's VmRSS after the last close is within
#   16 MiB of that after the first one; while the first node was open it
#   was at least 28 MiB above that, so the cache did take memory that
#   the close gave back.  The figures are printed ("lifecycle: ...").
# * Teardown under reads: 200 cycles of blockdev-add, an NBD export, a
#   client that sends four reads of up to 2 MiB, then, after 0, 1 or 2
#   of the answers (in turn), block-export-del mode=hard and at once
#   blockdev-del, which QEMU may refuse while the export still holds the
#   node: then again once the export is gone (BLOCK_EXPORT_DELETED).
#   Reads may be cut off; every answer that comes holds the right bytes,
#   the daemon lives on, ends with no node and no export, and its VmRSS
#   after the last cycle is within 16 MiB of that after the first.
# * 64 readers at once: 64 NBD connections to one export, each reading
#   its own part of the image (unaligned boundaries) one read at a time.
#   Their first reads are sent while the daemon is stopped (SIGSTOP), so
#   that it finds all 64 when it goes on (SIGCONT); the driver's trace
#   (curl_co_preadv, curl_co_preadv_done) shows 64 reads in the driver at
#   once.  Together they read every byte of the image, once, right.
#
# The NBD reads use fixtures.NbdClient, which sends a read when the test
# says so and takes the answer when it wants it.
#
# Under the sanitizers (make check-asan, QCURL_SANITIZER_LOGS set) the
# VmRSS figures are printed but not compared: ASan keeps what is freed in
# its quarantine (256 MiB) and its own allocator, so they measure ASan,
# not the driver.  Every other check holds there too; make check, which
# CI runs first, asserts the bounds on the binaries that are shipped.
"""qemu-storage-daemon: memory after close, teardown under reads, 64
readers at once on one https node."""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import unittest
from pathlib import Path
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import fixtures
from e2e_case import NginxImagesCase
from fixtures import (KiB, MiB, NbdClient, NbdDisconnected, NbdReply, Nginx,
                      StorageDaemon, TestImage)

#: Cycles of the memory test: about 40 s in all on 2 cores (62 s for the
#: whole file with stress-ng --cpu 2 beside it), so all 100 are run
MEMORY_CYCLES = 100
#: Cycles of the teardown test: about 27 s in all on 2 cores
TEARDOWN_CYCLES = 200
#: How far the daemon's VmRSS may grow from the first cycle to the last
RSS_SLACK = 16 * MiB
#: The cache of a node with the default options (896 blocks of 64 KiB)
DEFAULT_CACHE = 56 * MiB
#: An image larger than that, read whole in every cycle of the memory test
BIG_IMAGE_SIZE = 80 * MiB
#: Concurrent NBD readers on one node
READERS = 64
#: What the warm-up at open fetches from the start of the image (15
#: connections times 64 KiB); the first reads of the readers avoid it, so
#: that none of them is a cache hit that ends at once
WARM_UP_END = MiB
#: Generous deadline for one wait (an answer, a thread, an event)
WAIT_TIMEOUT = 120.0
#: Under ASan and UBSan (scripts/with-sanitizers.sh): VmRSS is ASan's
SANITIZED = bool(os.environ.get('QCURL_SANITIZER_LOGS'))


def mib(size: int) -> str:
    """@size bytes in MiB, one decimal."""
    return f'{size / MiB:.1f} MiB'


class Reader(threading.Thread):
    """Take the answers to the reads sent on @client until none is left
    or the connection is gone; then @sends, if any, go out one by one,
    each after the answer to the one before."""

    def __init__(self, client: NbdClient,
                 sends: Sequence[Tuple[int, int]] = ()) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.sends = list(sends)
        self.replies: List[NbdReply] = []
        self.ended: Optional[str] = None    # why it stopped early
        self.failure: Optional[str] = None  # anything but a clean end
        self.done = False
        self.cond = threading.Condition()

    def run(self) -> None:
        try:
            while self.client.pending:
                reply = self.client.reply()
                with self.cond:
                    self.replies.append(reply)
                    self.cond.notify_all()
                if self.sends and not self.client.pending:
                    self.client.send_read(*self.sends.pop(0))
        except NbdDisconnected as err:
            self.ended = str(err)
        except Exception as err:  # pylint: disable=broad-except
            self.failure = repr(err)
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def wait_replies(self, count: int, timeout: float) -> bool:
        """Wait until @count answers came, or the reader stopped; tell
        whether they came."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.replies) >= count or
                               self.done, timeout)
            return len(self.replies) >= count


class LifecycleTest(NginxImagesCase):
    """Many https nodes, one after the other or read at once, in one
    qemu-storage-daemon."""

    big: ClassVar[TestImage]
    big_nginx: ClassVar[Nginx]
    raw_data: ClassVar[bytes]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        directory = cls.class_tmp / 'big'
        directory.mkdir()
        cls.big = fixtures.make_test_image(directory / 'big.raw',
                                           BIG_IMAGE_SIZE, 20260111)
        cls.big_nginx = cls.start_server(Nginx(directory, cls.ca_dir))
        cls.raw_data = cls.images.raw.path.read_bytes()

    # -- helpers

    def start_daemon(self, args: Sequence[str] = ()
                     ) -> Tuple[StorageDaemon, Path]:
        """A qemu-storage-daemon with an NBD server; and its socket."""
        qsd = StorageDaemon(args)
        qsd.start()
        self.addCleanup(qsd.cleanup)
        sock = qsd.socket_path('nbd.sock')
        qsd.cmd('nbd-server-start',
                addr={'type': 'unix', 'data': {'path': str(sock)}})
        return qsd, sock

    @staticmethod
    def add_export(qsd: StorageDaemon, tag: str, url: str) -> None:
        """An https node n@tag of @url, exported as e@tag named d@tag."""
        qsd.cmd('blockdev-add', driver='https', node_name=f'n{tag}', url=url,
                sslverify=True, read_only=True)
        qsd.cmd('block-export-add', type='nbd', id=f'e{tag}',
                node_name=f'n{tag}', name=f'd{tag}', writable=False)

    @staticmethod
    def remove_export(qsd: StorageDaemon, tag: str) -> None:
        """Remove what add_export() made (no client is left)."""
        qsd.cmd('block-export-del', id=f'e{tag}', mode='hard')
        qsd.event_wait('BLOCK_EXPORT_DELETED', match={'id': f'e{tag}'})
        qsd.cmd('blockdev-del', node_name=f'n{tag}')

    def assertEmptyDaemon(self, qsd: StorageDaemon) -> None:
        """Assert that the daemon runs, with no node and no export."""
        self.assertFalse(qsd.exited(), qsd.output())
        self.assertTrue(qsd.cmd('query-version'))
        self.assertEqual(qsd.cmd('query-named-block-nodes'), [])
        self.assertEqual(qsd.cmd('query-block-exports'), [])

    def wrong_replies(self, replies: Sequence[NbdReply]) -> List[str]:
        """The successful answers among @replies whose bytes are not the
        shared raw image's."""
        return [f'{r.length} bytes at {r.offset}' for r in replies
                if not r.error and
                r.data != self.raw_data[r.offset:r.offset + r.length]]

    # -- tests

    def test_memory_after_close(self) -> None:
        """100 cycles of an https node filling its cache and closed: the
        daemon's VmRSS grows by at most 16 MiB from the first close to
        the last.

        All 100 cycles are run: about 40 s on 2 cores.
        """
        qsd, sock = self.start_daemon()
        url = self.big_nginx.https_url(self.big.name)
        closed: List[int] = []
        open_rss = 0
        for cycle in range(MEMORY_CYCLES):
            tag = str(cycle)
            self.add_export(qsd, tag, url)
            self.assertSameGuestData(fixtures.nbd_unix_uri(f'd{tag}', sock),
                                     'raw', self.big)
            if cycle == 0:
                open_rss = fixtures.vm_rss(qsd.pid)
            self.remove_export(qsd, tag)
            closed.append(fixtures.vm_rss(qsd.pid))
        self.assertEmptyDaemon(qsd)
        print(f'\nlifecycle: {MEMORY_CYCLES} cycles of a {mib(self.big.size)}'
              f' https node read whole: VmRSS {mib(open_rss)} with the '
              f'first node open, {mib(closed[0])} after the first close, '
              f'{mib(closed[-1])} after the last ({closed[-1] // KiB} - '
              f'{closed[0] // KiB} = {(closed[-1] - closed[0]) // KiB} KiB;'
              f' closed from {mib(min(closed))} to {mib(max(closed))})',
              flush=True)
        if SANITIZED:
            print('lifecycle: sanitized binaries, VmRSS not compared')
        else:
            self.assertRSSBounds(open_rss, closed)
        self.assertEqual(qsd.shutdown(), 0)

    def assertRSSBounds(self, open_rss: int, closed: List[int]) -> None:
        """The first node took memory (@open_rss) that its close gave
        back, and the VmRSS after each close (@closed) grew by at most
        RSS_SLACK."""
        self.assertGreaterEqual(open_rss - closed[0], DEFAULT_CACHE // 2,
                                'the first node did not fill its cache: '
                                'the test proves nothing')
        self.assertLessEqual(closed[-1] - closed[0], RSS_SLACK,
                             f'VmRSS after each close: {closed}')

    def test_teardown_under_reads(self) -> None:
        """200 cycles: export, reads in flight, block-export-del
        mode=hard and blockdev-del; no wrong byte, no crash, bounded
        VmRSS."""
        qsd, sock = self.start_daemon()
        image = self.images.raw
        url = self.nginx.https_url(image.name)
        rng = random.Random(20260112)
        counts = {'answered': 0, 'failed': 0, 'cut off': 0}
        refusals: Dict[str, int] = {}
        wrong: List[str] = []
        rss: List[int] = []
        for cycle in range(TEARDOWN_CYCLES):
            tag = str(cycle)
            self.add_export(qsd, tag, url)
            client = NbdClient(sock, f'd{tag}', timeout=WAIT_TIMEOUT)
            client.connect()
            self.addCleanup(client.close)
            self.assertEqual(client.size, image.size)
            for _ in range(4):
                length = rng.randrange(1, 2 * MiB)
                client.send_read(rng.randrange(image.size - length), length)
            reader = Reader(client)
            reader.start()
            wanted = cycle % 3
            self.assertTrue(reader.wait_replies(wanted, WAIT_TIMEOUT),
                            f'cycle {cycle}: {len(reader.replies)} of '
                            f'{wanted} answers before the teardown '
                            f'({reader.ended or reader.failure})')

            qsd.cmd('block-export-del', id=f'e{tag}', mode='hard')
            _, error = qsd.cmd_or_error('blockdev-del', node_name=f'n{tag}')
            qsd.event_wait('BLOCK_EXPORT_DELETED', match={'id': f'e{tag}'})
            if error is not None:
                error = error.replace(f'n{tag}', 'NODE')
                refusals[error] = refusals.get(error, 0) + 1
                qsd.cmd('blockdev-del', node_name=f'n{tag}')

            reader.join(WAIT_TIMEOUT)
            self.assertFalse(reader.is_alive(),
                             f'cycle {cycle}: the NBD client still waits')
            self.assertIsNone(reader.failure, f'cycle {cycle}')
            client.close()
            wrong += [f'cycle {cycle}: {w}'
                      for w in self.wrong_replies(reader.replies)]
            failed = sum(1 for r in reader.replies if r.error)
            counts['failed'] += failed
            counts['answered'] += len(reader.replies) - failed
            counts['cut off'] += client.pending
            self.assertEqual(len(reader.replies) + client.pending, 4)
            self.assertFalse(qsd.exited(), qsd.output())
            rss.append(fixtures.vm_rss(qsd.pid))
        self.assertEmptyDaemon(qsd)
        print(f'\nlifecycle: {TEARDOWN_CYCLES} teardowns under reads: '
              f'reads {counts}; first blockdev-del refused '
              f'{sum(refusals.values())} times {refusals}; VmRSS '
              f'{mib(rss[0])} after the first cycle, {mib(rss[-1])} after '
              f'the last (from {mib(min(rss))} to {mib(max(rss))})',
              flush=True)
        self.assertEqual(wrong, [], 'answers with wrong bytes')
        if SANITIZED:
            print('lifecycle: sanitized binaries, VmRSS not compared')
        else:
            self.assertLessEqual(rss[-1] - rss[0], RSS_SLACK,
                                 f'VmRSS after each cycle: {rss}')
        self.assertEqual(qsd.shutdown(), 0)

    @staticmethod
    def reader_parts(size: int) -> List[List[Tuple[int, int]]]:
        """The reads of each of the READERS readers: together every byte
        of an image of @size bytes, once, in reads of 64 to 384 KiB at
        unaligned places.  Reader k's part starts after WARM_UP_END at
        a cut point c_k; the last one's wraps around to the start."""
        rng = random.Random(20260113)
        stride = (size - WARM_UP_END) // READERS
        cuts = [WARM_UP_END + 4097 + k * stride + rng.randrange(4096)
                for k in range(READERS)] + [size]
        parts = []
        for k in range(READERS):
            spans = [(cuts[k], cuts[k + 1])]
            if k == READERS - 1:
                spans.append((0, cuts[0]))
            reads = []
            for start, end in spans:
                while start < end:
                    length = min(rng.randrange(64 * KiB, 384 * KiB),
                                 end - start)
                    reads.append((start, length))
                    start += length
            parts.append(reads)
        return parts

    def test_concurrent_readers(self) -> None:
        """64 NBD clients read their own parts of one https node at once:
        64 reads in the driver together, every byte right."""
        trace = self.tmp / 'trace.log'
        qsd, sock = self.start_daemon(
            ['--trace', f'enable=curl_co_preadv*,file={trace}'])
        image = self.images.raw
        self.add_export(qsd, '0', self.nginx.https_url(image.name))
        parts = self.reader_parts(image.size)
        clients = []
        for _ in parts:
            client = NbdClient(sock, 'd0', timeout=WAIT_TIMEOUT)
            self.addCleanup(client.close)
            client.connect()
            clients.append(client)

        # The daemon finds the 64 first reads together when it goes on
        pid = qsd.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            fixtures.wait_for(lambda: self.process_state(pid) == 'T',
                              WAIT_TIMEOUT, 'the daemon to stop')
            for client, reads in zip(clients, parts):
                client.send_read(*reads[0])
        finally:
            os.kill(pid, signal.SIGCONT)
        readers = [Reader(client, reads[1:])
                   for client, reads in zip(clients, parts)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(WAIT_TIMEOUT)
        for number, reader in enumerate(readers):
            self.assertFalse(reader.is_alive(), f'reader {number} hangs')
            self.assertIsNone(reader.ended, f'reader {number}')
            self.assertIsNone(reader.failure, f'reader {number}')
        replies = [r for reader in readers for r in reader.replies]
        self.assertEqual([r for r in replies if r.error], [])
        self.assertEqual(self.wrong_replies(replies), [],
                         'answers with wrong bytes')
        self.assertEqual(sorted((r.offset, r.length) for r in replies),
                         sorted(read for reads in parts for read in reads))
        self.assertEqual(sum(r.length for r in replies), image.size)

        for client in clients:
            client.close()
        self.remove_export(qsd, '0')
        self.assertEmptyDaemon(qsd)
        self.assertEqual(qsd.shutdown(), 0)
        most = self.most_reads_at_once(trace.read_text(encoding='utf-8'))
        print(f'\nlifecycle: {READERS} NBD readers, {len(replies)} reads of '
              f'{mib(image.size)}: at most {most} reads in the driver at '
              f'once', flush=True)
        self.assertEqual(most, READERS)

    @staticmethod
    def process_state(pid: int) -> str:
        """The state letter of process @pid (R, S, T...)."""
        with open(f'/proc/{pid}/stat', encoding='ascii') as stat:
            return stat.read().rsplit(')', 1)[1].split()[0]

    @staticmethod
    def most_reads_at_once(trace: str) -> int:
        """The most reads in the driver at once, from its trace."""
        depth = most = 0
        for line in trace.splitlines():
            if re.match(r'^(\d+@[\d.]+:)?curl_co_preadv_done ', line):
                depth -= 1
            elif re.match(r'^(\d+@[\d.]+:)?curl_co_preadv ', line):
                depth += 1
                most = max(most, depth)
        return most


if __name__ == '__main__':
    unittest.main()
