# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: drain, close and AioContext changes of http nodes whose transfers
# are on their way, in qemu-storage-daemon.
#
# The block layer drains a node before it moves it to another AioContext
# and before it closes it; the driver must then stop or finish what it
# does by itself (its warm-up at open, readahead, retries waiting for
# their time), and after a move nothing of the node may run in the old
# context.  Each test puts transfers in flight at the worst moment and
# checks that the daemon survives, that every QMP command succeeds and
# that no node is left.  The driver of fa2f857 crashes in the first three
# (a SIGSEGV, or an abort on "qemu_mutex_destroy: Device or resource
# busy", after 1 to 85 cycles in six runs), and blocks blockdev-add with
# timeout=0 for ever in test_open_bounded_without_timeout.
#
# The range server (tests/qemu-iotests/range_server.py) sends the body of
# every GET of the "trickled" image one byte per millisecond, so that
# all 16 fetches of the warm-up at open are always on their way.
#
# Each test proves one thing:
#
# * test_close_in_iothread: hundreds of times, an http node whose warm-up
#   streams is moved to an iothread and deleted there.
# * test_close_raw_over_http_in_iothread: the same with a raw node over
#   an inline http child: deleting the raw node moves the child back to
#   the main loop and closes it there at once.
# * test_move_back_and_forth: a streaming node goes from an iothread to
#   the main loop and back several times, then is deleted.
# * test_exported_node_moves_under_reader: an http node exported over
#   NBD moves between two iothreads and the main loop as fast as QMP
#   allows while a client reads the whole image: every byte is right.
# * test_delete_cuts_backoff_short: transfers that wait 60 s (Retry-After)
#   before their retry do not hold blockdev-del, and never ask again.
# * test_open_bounded_without_timeout: with timeout=0, the look at the
#   remote file at open, on a server that accepts and never answers,
#   still fails after 30 s, cleanly, in qemu-img info and in blockdev-add
#   (after which the monitor answers again).
# * test_open_default_timeout: with the default timeout, that open fails
#   after about 5 s.
#
# Under ASan (QCURL_SANITIZER_LOGS set) the cycles are fewer, and any
# sanitizer report of the daemon fails the test that ran it.
"""Drain, close and moves of http nodes with transfers on their way."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import os
import re
import socket
import threading
import time
import unittest
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional

import fixtures
from e2e_case import E2ETestCase, warm_up_ranges
from fixtures import (HOST, KiB, MiB, NbdClient, NbdDisconnected,
                      NbdReply, QemuProcessError, RangeServer, StorageDaemon,
                      TestImage)

#: Under ASan and UBSan (scripts/with-sanitizers.sh)
SANITIZED = bool(os.environ.get('QCURL_SANITIZER_LOGS'))
#: Open-move-close cycles per test: hundreds, for the driver of fa2f857
#: died after 1 to 85 of them.  A cycle takes 20 to 30 ms, mostly waiting
#: for the server, and about as long under ASan, where fewer still keep
#: the whole run short.  QCURL_E2E_DRAIN_CYCLES overrides both.
CLOSE_CYCLES = int(os.environ.get('QCURL_E2E_DRAIN_CYCLES',
                                  200 if SANITIZED else 400))
#: The moves of each cycle of test_move_back_and_forth (None: the main
#: loop), and its cycles: about as many moves in all as the other tests
BACK_AND_FORTH = ('io0', None, 'io0', None, 'io0')
MOVE_CYCLES = max(CLOSE_CYCLES // len(BACK_AND_FORTH), 20)
#: The image whose GETs trickle: more than the warm-up fetches (1.5 MiB)
TRICKLED_SIZE = 4 * MiB
#: Every GET of it sends its body one byte per millisecond
TRICKLE = {'action': 'trickle', 'bytes': TRICKLED_SIZE, 'seconds': 0.001,
           'method': 'GET'}
#: The image read over NBD while its node moves
STREAMED_SIZE = 64 * MiB
#: The NBD client's reads, and how many it keeps in flight
READ_LENGTH = 256 * KiB
READS_IN_FLIGHT = 4
#: Each warm-up GET is answered 503 with this Retry-After (seconds)
RETRY_AFTER = 60
#: How long the driver believes Retry-After at most (seconds;
#: CURL_RETRY_MAX_DELAY_MS): a retry that was not cancelled goes out
#: by then
RETRY_AFTER_CAP = 10
#: The look at the remote file at open has this long in all (seconds;
#: CURL_PROBE_TIMEOUT_S), and 'timeout' this long by default
PROBE_BUDGET = 30
DEFAULT_TIMEOUT = 5
#: Generous bound of an open that the probe's budget ends
OPEN_LIMIT = 90
#: Generous deadline for one wait (the daemon, the server, a reader)
WAIT_TIMEOUT = 120.0
#: A line of a sanitizer's error report (as scripts/check.py sees them)
SANITIZER_ERROR = re.compile(r'^(?:SUMMARY: |==[\w.-]*==\d+==ERROR: |'
                             r'.*: runtime error: )', re.M)


def daemon_died(qsd: StorageDaemon) -> Callable[[], Optional[str]]:
    """An abort check for fixtures.wait_for: has @qsd exited?"""
    return lambda: 'the daemon exited' if qsd.exited() else None


def names_seconds(seconds: int) -> 're.Pattern[str]':
    """What an error message that names a bound of @seconds contains."""
    return re.compile(rf'\b{seconds} ?(s|seconds)\b')


def sanitizer_report(pid: int) -> Optional[str]:
    """The beginning of the sanitizer report of process @pid, if any.

    Its file may hold warnings only (libasan's about swapcontext, say),
    which are no report: scripts/check.py says why.
    """
    logs = os.environ.get('QCURL_SANITIZER_LOGS')
    if not logs:
        return None
    for path in Path(logs).glob(f'san.*.{pid}'):
        text = path.read_text(encoding='utf-8', errors='replace')
        if SANITIZER_ERROR.search(text):
            return text[:6000]
    return None


class StreamReader(threading.Thread):
    """Read a whole NBD export in order, READS_IN_FLIGHT reads of
    READ_LENGTH at a time, and compare each answer with @data."""

    def __init__(self, client: NbdClient, data: bytes) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.data = data
        self.read = 0                       # bytes answered right
        self.wrong: List[str] = []          # answers that were not
        self.failure: Optional[str] = None  # why it stopped early

    def run(self) -> None:
        offsets = range(0, len(self.data), READ_LENGTH)
        try:
            for offset in offsets[:READS_IN_FLIGHT]:
                self.send(offset)
            for offset in offsets[READS_IN_FLIGHT:]:
                self.check(self.client.reply())
                self.send(offset)
            while self.client.pending:
                self.check(self.client.reply())
        except (NbdDisconnected, OSError) as err:
            self.failure = repr(err)

    def send(self, offset: int) -> None:
        """Send the read at @offset."""
        self.client.send_read(offset, min(READ_LENGTH,
                                          len(self.data) - offset))

    def check(self, reply: NbdReply) -> None:
        """Account the answer to one read."""
        where = f'{reply.length} bytes at {reply.offset}'
        if reply.error:
            self.wrong.append(f'{where}: error {reply.error}')
        elif reply.data != self.data[reply.offset:
                                     reply.offset + reply.length]:
            self.wrong.append(f'{where}: wrong bytes')
        else:
            self.read += reply.length


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections, keeps them
    open and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0), backlog=64)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: List[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def start(self) -> None:
        """Start accepting."""
        self.thread.start()

    def serve(self) -> None:
        """Accept until stop() and keep every connection."""
        while not self.stopping.is_set():
            try:
                self.accepted.append(self.sock.accept()[0])
            except socket.timeout:
                continue

    def stop(self) -> None:
        """Stop accepting; close every connection."""
        self.stopping.set()
        self.thread.join()
        for conn in self.accepted:
            conn.close()
        self.sock.close()

    def url(self, name: str) -> str:
        """The http:// URL of @name on this server."""
        return f'http://{HOST}:{self.port}/{name}'


class DrainTest(E2ETestCase):
    """http nodes drained, moved and closed with transfers on their way."""

    trickled: ClassVar[TestImage]
    streamed: ClassVar[TestImage]
    server: ClassVar[RangeServer]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        directory = cls.class_tmp / 'www'
        directory.mkdir()
        cls.trickled = fixtures.make_test_image(
            directory / 'trickled.raw', TRICKLED_SIZE, 20260401)
        cls.streamed = fixtures.make_test_image(
            directory / 'streamed.raw', STREAMED_SIZE, 20260402)
        cls.server = cls.start_range_server(directory)

    def setUp(self) -> None:
        super().setUp()
        self.server.reset()

    # -- helpers

    def start_daemon(self, *iothreads: str, trace: Optional[Path] = None,
                     qmp_timeout: float = fixtures.QMP_TIMEOUT
                     ) -> StorageDaemon:
        """A qemu-storage-daemon with @iothreads; with @trace, the driver's
        retry trace events go there."""
        args: List[str] = []
        for name in iothreads:
            args += ['--object', f'iothread,id={name}']
        if trace is not None:
            args += ['--trace',
                     f'enable=curl_transfer_again_locked,file={trace}']
        qsd = StorageDaemon(args, qmp_timeout=qmp_timeout)
        qsd.start()
        self.addCleanup(qsd.cleanup)
        return qsd

    def http_node(self, node_name: str, image: TestImage,
                  **options: Any) -> Dict[str, Any]:
        """The blockdev-add arguments of a read-only http node of @image
        on the range server."""
        return {'driver': 'http', 'node-name': node_name, 'read-only': True,
                'url': self.server.url(image.name), **options}

    def streaming_gets(self) -> int:
        """How many GETs the range server has sent body bytes to."""
        return sum(1 for r in self.server.stats()['log']
                   if r['method'] == 'GET' and r['bytes_sent'] > 0)

    def open_streaming(self, qsd: StorageDaemon,
                       node: Dict[str, Any]) -> None:
        """blockdev-add @node, whose GETs trickle; return once the server
        sends the body of one of them."""
        self.server.reset()
        self.server.set_faults([TRICKLE])
        qsd.cmd('blockdev-add', **node)
        fixtures.wait_for(lambda: self.streaming_gets() > 0, WAIT_TIMEOUT,
                          'a GET of the new node to stream',
                          abort=daemon_died(qsd))

    def move(self, qsd: StorageDaemon, node_name: str,
             iothread: Optional[str], force: bool = False) -> None:
        """Move @node_name to @iothread (None: the main loop); @force if
        it has a BlockBackend."""
        qsd.cmd('x-blockdev-set-iothread', node_name=node_name,
                iothread=iothread, force=force)

    @contextlib.contextmanager
    def step(self, qsd: StorageDaemon, name: str) -> Iterator[None]:
        """Fail with the name of the step (a cycle, a move) in which the
        daemon failed, and with what the sanitizers said."""
        try:
            yield
        except (QemuProcessError, TimeoutError, RuntimeError) as err:
            report = sanitizer_report(qsd.pid) or ''
            raise self.failureException(f'{name}: {err}\n{report}') from err

    def assertHealthyDaemon(self, qsd: StorageDaemon) -> None:
        """Assert that the daemon runs with no node, quits with 0, said
        nothing of a busy mutex and has no sanitizer report."""
        pid = qsd.pid
        self.assertFalse(qsd.exited(), str(qsd.fail('died')))
        self.assertEqual(qsd.cmd('query-named-block-nodes'), [],
                         str(qsd.fail('nodes left')))
        self.assertEqual(qsd.shutdown(check=False), 0,
                         str(qsd.fail('quit badly')))
        self.assertNotIn('qemu_mutex_destroy', qsd.output())
        self.assertIsNone(sanitizer_report(pid))

    def run_cycles(self, qsd: StorageDaemon, total: int, what: str,
                   one_cycle: Callable[[], None]) -> None:
        """Run @one_cycle(), @total times; then check the daemon and print
        how long a cycle took."""
        start = time.monotonic()
        for number in range(1, total + 1):
            with self.step(qsd, f'cycle {number} of {total}'):
                one_cycle()
        elapsed = time.monotonic() - start
        self.assertHealthyDaemon(qsd)
        print(f'\ndrain: {total} cycles of {what} in {elapsed:.1f} s '
              f'({elapsed / total * 1000:.0f} ms each)', flush=True)

    # -- closing in an iothread

    def test_close_in_iothread(self) -> None:
        """Open an http node, move it to an iothread while its warm-up
        streams, delete it there; CLOSE_CYCLES times."""
        qsd = self.start_daemon('io0')

        def one_cycle() -> None:
            self.open_streaming(qsd, self.http_node('n0', self.trickled))
            self.move(qsd, 'n0', 'io0')
            qsd.cmd('blockdev-del', node_name='n0')

        self.run_cycles(qsd, CLOSE_CYCLES, 'open, move to io0, delete',
                        one_cycle)

    def test_close_raw_over_http_in_iothread(self) -> None:
        """A raw node over an inline http child: moved to an iothread while
        the child's warm-up streams, deleted (the child goes back to the
        main loop and is closed there); CLOSE_CYCLES times."""
        qsd = self.start_daemon('io0')

        def one_cycle() -> None:
            self.open_streaming(qsd, {
                'driver': 'raw', 'node-name': 'r0', 'read-only': True,
                'file': self.http_node('n0', self.trickled)})
            self.move(qsd, 'r0', 'io0')
            qsd.cmd('blockdev-del', node_name='r0')

        self.run_cycles(qsd, CLOSE_CYCLES, 'raw over http, move, delete',
                        one_cycle)

    def test_move_back_and_forth(self) -> None:
        """A node whose warm-up streams moves between an iothread and the
        main loop five times, then is deleted; MOVE_CYCLES times."""
        qsd = self.start_daemon('io0')

        def one_cycle() -> None:
            self.open_streaming(qsd, self.http_node('n0', self.trickled))
            for iothread in BACK_AND_FORTH:
                self.move(qsd, 'n0', iothread)
            qsd.cmd('blockdev-del', node_name='n0')

        self.run_cycles(qsd, MOVE_CYCLES, f'{len(BACK_AND_FORTH)} moves',
                        one_cycle)

    # -- an exported node moved under a reader

    def test_exported_node_moves_under_reader(self) -> None:
        """An exported http node moves io0 -> io1 -> main loop -> ... while
        an NBD client reads the whole image at full speed."""
        qsd = self.start_daemon('io0', 'io1')
        sock = qsd.socket_path('nbd.sock')
        qsd.cmd('nbd-server-start',
                addr={'type': 'unix', 'data': {'path': str(sock)}})
        qsd.cmd('blockdev-add', **self.http_node('n0', self.streamed))
        # Not fixed: the export follows its node
        qsd.cmd('block-export-add', type='nbd', id='e0', node_name='n0',
                name='d0', writable=False, fixed_iothread=False)
        client = NbdClient(sock, 'd0', timeout=WAIT_TIMEOUT)
        client.connect()
        self.addCleanup(client.close)
        reader = StreamReader(client, self.streamed.path.read_bytes())

        start = time.monotonic()
        reader.start()
        moves = 0
        for iothread in itertools.cycle(('io0', 'io1', None)):
            if not reader.is_alive():
                break
            with self.step(qsd, f'move {moves + 1} (to {iothread})'):
                self.move(qsd, 'n0', iothread, force=True)
            moves += 1
        reader.join(WAIT_TIMEOUT)
        elapsed = time.monotonic() - start
        print(f'\ndrain: {moves} moves of the exported node while a '
              f'reader read {self.streamed.size // MiB} MiB in '
              f'{elapsed:.1f} s', flush=True)

        self.assertIsNone(reader.failure,
                          str(qsd.fail('the reader stopped')))
        self.assertEqual(reader.wrong, [], 'wrong answers')
        self.assertEqual(reader.read, self.streamed.size)
        self.assertGreaterEqual(moves, 3, 'the read ended before the node '
                                'went everywhere: the test proves nothing')
        client.close()
        qsd.cmd('block-export-del', id='e0', mode='hard')
        qsd.event_wait('BLOCK_EXPORT_DELETED', match={'id': 'e0'})
        qsd.cmd('blockdev-del', node_name='n0')
        self.assertHealthyDaemon(qsd)

    # -- retries waiting for their time

    def repeated_gets(self) -> Dict[str, int]:
        """The ranges that the server was asked for more than once."""
        counts = collections.Counter(r['range'] for r in
                                     self.server.stats()['log']
                                     if r['method'] == 'GET')
        return {header: n for header, n in counts.items() if n > 1}

    def test_delete_cuts_backoff_short(self) -> None:
        """The warm-up's GETs are answered 503 with Retry-After: 60 and
        wait for their retry: blockdev-del neither waits for it nor lets
        it go out."""
        trace = self.tmp / 'trace.log'
        qsd = self.start_daemon(trace=trace)
        self.server.set_faults([{'action': 'status', 'code': 503,
                                 'retry-after': RETRY_AFTER,
                                 'method': 'GET'}])
        qsd.cmd('blockdev-add', **self.http_node('n0', self.trickled,
                                                 retries=16))
        warm_up = len(warm_up_ranges(self.trickled.size))

        def retries_waiting() -> bool:
            text = trace.read_text(encoding='utf-8') if trace.exists() else ''
            return text.count('curl_transfer_again_locked') >= warm_up

        fixtures.wait_for(retries_waiting, WAIT_TIMEOUT,
                          f'the {warm_up} warm-up fetches to wait for their '
                          f'retry', abort=daemon_died(qsd))
        last_answer = max(r['time'] for r in self.server.stats()['log'])

        start = time.monotonic()
        qsd.cmd('blockdev-del', node_name='n0')
        took = time.monotonic() - start
        self.assertEqual(self.repeated_gets(), {},
                         'blockdev-del waited for a retry')
        self.assertEqual(qsd.cmd('query-named-block-nodes'), [])

        # A retry left behind would go out RETRY_AFTER_CAP s after its 503
        window = last_answer + RETRY_AFTER_CAP + 2 - time.time()
        try:
            repeated = fixtures.wait_for(self.repeated_gets, max(window, 0),
                                         'a retry after blockdev-del')
        except TimeoutError:
            repeated = {}
        self.assertEqual(repeated, {}, str(qsd.fail('a retry went out '
                                                    'after blockdev-del')))
        print(f'\ndrain: blockdev-del of a node with {warm_up} fetches '
              f'told to retry in {RETRY_AFTER} s took {took:.2f} s',
              flush=True)
        self.assertHealthyDaemon(qsd)

    # -- a server that never answers

    def test_open_bounded_without_timeout(self) -> None:
        """timeout=0 on a server that never answers: qemu-img info and
        blockdev-add both fail after the probe's 30 s, cleanly."""
        silent = SilentServer()
        silent.start()
        self.addCleanup(silent.stop)
        url = silent.url('disk.raw')
        qsd = self.start_daemon(qmp_timeout=OPEN_LIMIT)

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            start = time.monotonic()
            info_run = pool.submit(
                self.qemu_img, 'info', '--image-opts',
                f'driver=raw,file.driver=http,file.url={url},file.timeout=0',
                timeout=OPEN_LIMIT)
            with self.step(qsd, f'blockdev-add with timeout=0 did not fail '
                           f'within {OPEN_LIMIT} s'):
                error = qsd.cmd_error('blockdev-add', driver='http',
                                      node_name='n0', read_only=True,
                                      url=url, timeout=0)
            took = time.monotonic() - start
            info = info_run.result()

        self.assertRegex(error, names_seconds(PROBE_BUDGET))
        self.assertOpenTook(took, PROBE_BUDGET, OPEN_LIMIT, error)
        # The monitor answers again
        self.assertEqual(qsd.cmd('query-named-block-nodes'), [])
        self.assertEqual(info.returncode, 1, info.describe())
        self.assertRegex(info.stderr, names_seconds(PROBE_BUDGET))
        self.assertOpenTook(info.duration, PROBE_BUDGET, OPEN_LIMIT,
                            info.describe())
        print(f'\ndrain: timeout=0 on a silent server: blockdev-add failed '
              f'after {took:.1f} s, qemu-img info after '
              f'{info.duration:.1f} s', flush=True)
        self.assertHealthyDaemon(qsd)

    def test_open_default_timeout(self) -> None:
        """With the default timeout, qemu-img info of a server that never
        answers fails after about 5 s."""
        silent = SilentServer()
        silent.start()
        self.addCleanup(silent.stop)
        result = self.qemu_img('info', '-f', 'raw', silent.url('disk.raw'),
                               timeout=OPEN_LIMIT)
        self.assertEqual(result.returncode, 1, result.describe())
        self.assertRegex(result.stderr, names_seconds(DEFAULT_TIMEOUT))
        self.assertOpenTook(result.duration, DEFAULT_TIMEOUT,
                            PROBE_BUDGET * 0.8, result.describe())

    def assertOpenTook(self, took: float, expected: float, limit: float,
                       context: str) -> None:
        """Assert that an open that should end after @expected seconds
        took at least 90 % of that and at most @limit seconds."""
        self.assertGreaterEqual(took, expected * 0.9, f'the open ended '
                                f'after {took:.1f} s, before its bound of '
                                f'{expected} s\n{context}')
        self.assertLessEqual(took, limit, f'the open took {took:.1f} s\n'
                             f'{context}')


if __name__ == '__main__':
    unittest.main()
