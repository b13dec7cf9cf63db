# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: the curl driver's new options in qemu-system-x86_64 and
# qemu-storage-daemon.
#
# qemu-system-x86_64 (-M none, no devices) gets a read-only -drive on an
# image inside a tar file served by nginx over HTTPS, with file.offset,
# file.blocksize, file.blockcount, file.connections and file.readahead
# (and a raw format node bounded with offset=0,size=...): regions of a
# pattern image are read through QMP's human-monitor-command "qemu-io"
# with pattern checks, and the drive (raw, and a qcow2 member) is
# exported over NBD and compared with qemu-img compare.  A bad value
# (file.blocksize=3000) makes qemu-system-x86_64 exit at once with an
# error naming blocksize.
#
# qemu-storage-daemon: blockdev-add of an https node with every new
# option (offset, blocksize, blockcount, connections, readahead,
# timeout, sslverify) and a raw node on top, exported over NBD and
# compared; bad values refused over QMP with the driver's (or QAPI's)
# message, the daemon staying up.  Then teardown with I/O in flight,
# against the range server's stall fault:
#
# * a read stalled in a transfer: block-export-del mode=hard returns at
#   once and disconnects the NBD client, whose read fails at once; the
#   daemon keeps answering QMP while the transfer stalls; the export is
#   gone (BLOCK_EXPORT_DELETED) once the stalled transfer has ended, and
#   then blockdev-del works and the daemon quits cleanly;
# * only readahead in flight (the reads are done): blockdev-del does not
#   wait for the stalled readahead, it returns at once;
# * readahead in flight when the node moves to an iothread: the transfers
#   survive the move and end from there, nothing is asked for twice, and
#   the export reads right.
"""qemu-system-x86_64 and qemu-storage-daemon with the new options."""

from __future__ import annotations

import json
import subprocess
import unittest
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import fixtures
from e2e_case import (ERROR_TIMEOUT, WARM_UP_FIRST_FETCH, E2ETestCase,
                      warm_up_ranges)
from fixtures import (ImageSet, KiB, MiB, Nginx, PatternRegion, QemuSystem,
                      RangeServer, StorageDaemon, TarMember, TestImage)

PATTERN_IMAGE_SIZE = 8 * MiB + 512
TAR_NAME = 'images.tar'

#: How long the range server stalls a transfer in the teardown tests
STALL_SECONDS = 6

#: Crash signs in a QEMU process's output
CRASH_SIGNS = ('Assertion', 'Segmentation fault', 'core dumped', 'Aborted')


class DriverQemuTest(E2ETestCase):
    """qemu-system-x86_64 -drive and qemu-storage-daemon blockdev-add."""

    images: ClassVar[ImageSet]
    pattern: ClassVar[TestImage]
    regions: ClassVar[List[PatternRegion]]
    members: ClassVar[Dict[str, TarMember]]
    tar_size: ClassVar[int]
    nginx: ClassVar[Nginx]
    range_server: ClassVar[RangeServer]
    url: ClassVar[str]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = fixtures.shared_images()
        cls.regions = fixtures.standard_pattern_regions(PATTERN_IMAGE_SIZE)
        cls.pattern = fixtures.make_pattern_image(
            cls.class_tmp / 'pattern.raw', PATTERN_IMAGE_SIZE, cls.regions)
        directory = cls.class_tmp / 'www'
        directory.mkdir()
        cls.members = fixtures.make_tar(directory / TAR_NAME, [
            ('README', b'odd-sized\n' * 1235),
            ('pattern.raw', cls.pattern.path),
            ('disk.qcow2', cls.images.qcow2.path),
        ])
        cls.tar_size = (directory / TAR_NAME).stat().st_size
        cls.nginx = cls.start_server(Nginx(directory, cls.ca_dir))
        cls.url = cls.nginx.https_url(TAR_NAME)
        cls.range_server = cls.start_range_server(cls.images.directory)

    def setUp(self) -> None:
        super().setUp()
        self.nginx.reset_log()
        self.range_server.reset()

    # -- helpers

    def start(self, qemu: Any) -> Any:
        """Start a QemuSystem or StorageDaemon; cleaned up after the test."""
        qemu.start()
        self.addCleanup(qemu.cleanup)
        return qemu

    def check_no_crash(self, qemu: Any) -> None:
        """Assert that a QEMU process's output shows no crash."""
        output = qemu.output(limit=None)
        for sign in CRASH_SIGNS:
            self.assertNotIn(sign, output)

    def check_fetches(self, offset: int,
                      connections: int) -> List[Tuple[int, int]]:
        """Assert that nginx answered every GET with 206, that each asked
        for whole 4 KiB granules counted from @offset (or up to the end
        of the tar file), and that they came over at most @connections
        connections."""
        gets = [e for e in self.nginx.settled_log() if e['method'] == 'GET']
        self.assertTrue(gets, 'no GET logged')
        self.assertEqual({e['status'] for e in gets}, {206})
        ranges = [fixtures.parse_byte_range(e['range']) for e in gets]
        self.assertFetchRanges(ranges, self.tar_size, offset)
        self.assertLessEqual(len({e['connection'] for e in gets}),
                             connections)
        return ranges

    def raw_drive(self, options: str) -> str:
        """A -drive for the pattern image in the tar, with @options."""
        member = self.members['pattern.raw']
        return (f'if=none,id=d0,format=raw,readonly=on,offset=0,'
                f'size={member.size},file.driver=https,file.url={self.url},'
                f'file.offset={member.offset},{options}')

    # -- qemu-system-x86_64

    def test_system_drive_options_hmp_qemu_io(self) -> None:
        """-drive with every new option; qemu-io read -P through HMP."""
        qemu = self.start(QemuSystem([
            '-drive', self.raw_drive(
                'file.blocksize=64k,file.blockcount=8,file.connections=2,'
                'file.readahead=128k,file.timeout=30,file.sslverify=on')]))
        image = next(b for b in qemu.cmd('query-block')
                     if b['device'] == 'd0')['inserted']['image']
        self.assertEqual(image['virtual-size'], PATTERN_IMAGE_SIZE)
        self.check_hmp_reads(qemu, self.regions, 'd0')
        self.check_fetches(self.members['pattern.raw'].offset, 2)

    def check_system_nbd_export(self, drive: str, reference: TestImage,
                                size: int) -> None:
        """Start qemu-system-x86_64 with @drive, export it over NBD and
        compare it with @reference; its size must be @size."""
        qemu = self.start(QemuSystem(['-drive', drive]))
        sock = qemu.socket_path('nbd.sock')
        qemu.cmd('nbd-server-start',
                 addr={'type': 'unix', 'data': {'path': str(sock)}})
        qemu.cmd('nbd-server-add', device='d0')
        uri = fixtures.nbd_unix_uri('d0', sock)
        info = self.qemu_img('info', '--output=json', '-f', 'raw', uri)
        self.assertSucceeded(info)
        self.assertEqual(json.loads(info.stdout)['virtual-size'], size)
        self.assertSameGuestData(uri, 'raw', reference)
        qemu.cmd('nbd-server-remove', name='d0')
        qemu.cmd('nbd-server-stop')
        self.assertEqual(qemu.shutdown(), 0)
        self.check_no_crash(qemu)

    def test_system_drive_raw_member_nbd_export(self) -> None:
        """The raw member, 4 KiB blocks, 1 connection, no readahead,
        exported over NBD: the same as the local image."""
        self.check_system_nbd_export(
            self.raw_drive('file.blocksize=4k,file.blockcount=64,'
                           'file.connections=1,file.readahead=0'),
            self.pattern, PATTERN_IMAGE_SIZE)
        self.check_fetches(self.members['pattern.raw'].offset, 1)

    def test_system_drive_qcow2_member_nbd_export(self) -> None:
        """The qcow2 member (format=qcow2, file.offset, 2 MiB blocks and
        4 connections), exported over NBD."""
        member = self.members['disk.qcow2']
        self.check_system_nbd_export(
            f'if=none,id=d0,format=qcow2,readonly=on,file.driver=https,'
            f'file.url={self.url},file.offset={member.offset},'
            'file.blocksize=2M,file.blockcount=6,file.connections=4,'
            'file.readahead=4M',
            self.images.raw, self.images.raw.size)
        self.check_fetches(member.offset, 4)

    def test_system_bad_blocksize_refused(self) -> None:
        """file.blocksize=3000: qemu-system-x86_64 does not start."""
        result = fixtures.run([
            self.bins.qemu_system, '-M', 'none', '-nodefaults', '-display',
            'none', '-drive', self.raw_drive('file.blocksize=3000')],
            timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertIn('blocksize must be a power of two between 4 KiB and '
                      '64 MiB, not 3000', result.stderr)

    # -- qemu-storage-daemon

    @staticmethod
    def node_names(qsd: StorageDaemon) -> List[str]:
        """The names of the daemon's block nodes, sorted."""
        return sorted(n['node-name']
                      for n in qsd.cmd('query-named-block-nodes'))

    def export(self, qsd: StorageDaemon, node: str) -> str:
        """Export @node over NBD as 'disk'; return its URI."""
        sock = qsd.socket_path('nbd.sock')
        qsd.cmd('nbd-server-start',
                addr={'type': 'unix', 'data': {'path': str(sock)}})
        qsd.cmd('block-export-add', type='nbd', id='exp0', node_name=node,
                name='disk', writable=False)
        return fixtures.nbd_unix_uri('disk', sock)

    def test_qsd_blockdev_add_every_option(self) -> None:
        """blockdev-add https with every new option, raw on top, NBD."""
        member = self.members['pattern.raw']
        qsd = self.start(StorageDaemon())
        qsd.cmd('blockdev-add', driver='https', node_name='proto0',
                url=self.url, offset=member.offset, blocksize=64 * KiB,
                blockcount=8, connections=4, readahead=192 * KiB,
                timeout=30, sslverify=True, read_only=True)
        qsd.cmd('blockdev-add', driver='raw', node_name='fmt0',
                file='proto0', offset=0, size=member.size, read_only=True)
        nodes = {n['node-name']: n
                 for n in qsd.cmd('query-named-block-nodes')}
        self.assertEqual(sorted(nodes), ['fmt0', 'proto0'])
        self.assertEqual(nodes['proto0']['image']['virtual-size'],
                         self.tar_size - member.offset)
        self.assertEqual(nodes['fmt0']['image']['virtual-size'],
                         member.size)
        uri = self.export(qsd, 'fmt0')
        self.assertSameGuestData(uri, 'raw', self.pattern)
        self.check_fetches(member.offset, 4)

        qsd.cmd('block-export-del', id='exp0', mode='hard')
        qsd.event_wait('BLOCK_EXPORT_DELETED', match={'id': 'exp0'})
        qsd.cmd('blockdev-del', node_name='fmt0')
        qsd.cmd('blockdev-del', node_name='proto0')
        self.assertEqual(self.node_names(qsd), [])
        qsd.cmd('nbd-server-stop')
        self.assertEqual(qsd.shutdown(), 0)
        self.check_no_crash(qsd)

    def test_qsd_bad_values_refused(self) -> None:
        """Bad option values: blockdev-add fails with the right message,
        adds no node, and the daemon carries on."""
        member = self.members['pattern.raw']
        cases: List[Tuple[Dict[str, Any], str]] = [
            ({'blocksize': 3000}, 'blocksize must be a power of two '
             'between 4 KiB and 64 MiB, not 3000'),
            ({'blocksize': 128 * MiB}, 'blocksize must be a power of two '
             'between 4 KiB and 64 MiB, not 134217728'),
            ({'blocksize': 2 * KiB}, 'blocksize must be a power of two '
             'between 4 KiB and 64 MiB, not 2048'),
            # QAPI's own type error
            ({'blocksize': 'abc'}, "Parameter 'blocksize' expects"),
            ({'readahead': '1M'}, "Invalid parameter type for 'readahead', "
             'expected: integer'),
            ({'connections': 65}, 'connections must be between 1 and 64, '
             'not 65'),
            ({'connections': 0}, 'connections must be between 1 and 64, '
             'not 0'),
            ({'blockcount': 0}, 'blockcount must be between 1 and 16384 with '
             'a blocksize of 65536 (the cache may take at most 1 GiB), '
             'not 0'),
            ({'blocksize': MiB, 'blockcount': 1025}, 'blockcount must be '
             'between 1 and 1024 with a blocksize of 1048576 (the cache '
             'may take at most 1 GiB), not 1025'),
            ({'offset': self.tar_size}, f'offset {self.tar_size} is at or '
             f'past the end of the remote file, which has {self.tar_size} '
             'bytes'),
            ({'offset': 10 * self.tar_size}, f'offset {10 * self.tar_size} '
             'is at or past the end of the remote file, which has '
             f'{self.tar_size} bytes'),
            ({'timeout': 10001}, 'timeout must be between 0 and 10000 '
             'seconds, not 10001'),
        ]
        qsd = self.start(StorageDaemon())
        for options, message in cases:
            with self.subTest(options=options):
                error = qsd.cmd_error('blockdev-add', driver='https',
                                      node_name='bad0', url=self.url,
                                      read_only=True, **options)
                self.assertIn(message, error)
                self.assertEqual(self.node_names(qsd), [])
        # -1 passes QAPI's size type (as 2^64 - 1): the driver refuses it
        error = qsd.cmd_error('blockdev-add', driver='https',
                              node_name='bad0', url=self.url,
                              read_only=True, blocksize=-1)
        self.assertIn('blocksize', error)
        # The daemon still works: a good node can be added and read
        qsd.cmd('blockdev-add', driver='https', node_name='proto0',
                url=self.url, offset=member.offset, blocksize=4 * KiB,
                read_only=True)
        qsd.cmd('blockdev-add', driver='raw', node_name='fmt0',
                file='proto0', offset=0, size=member.size, read_only=True)
        self.assertSameGuestData(self.export(qsd, 'fmt0'), 'raw',
                                 self.pattern)
        self.assertEqual(qsd.shutdown(), 0)
        self.check_no_crash(qsd)

    def start_stalling_export(self, *args: str,
                              **options: Any) -> Tuple[StorageDaemon, str]:
        """A daemon (with extra @args) exporting the standard raw image
        from the range server (driver http, @options) over NBD as
        'disk'."""
        qsd = self.start(StorageDaemon(args))
        qsd.cmd('blockdev-add', driver='http', node_name='proto0',
                url=self.range_server.url(self.images.raw.name),
                read_only=True, **options)
        qsd.cmd('blockdev-add', driver='raw', node_name='fmt0',
                file='proto0', read_only=True)
        return qsd, self.export(qsd, 'fmt0')

    def stalled_gets(self) -> List[Dict[str, Any]]:
        """The GETs the range server is stalling (no body byte sent)."""
        return [e for e in self.range_server.stats()['log']
                if e['method'] == 'GET' and e['fault'] == 'stall' and
                e['bytes_sent'] == 0]

    def test_qsd_hard_export_del_with_stalled_read(self) -> None:
        """block-export-del mode=hard while an NBD client's read waits
        for a stalled transfer, then blockdev-del."""
        # (no readahead: nothing is fetched before the read)
        qsd, uri = self.start_stalling_export(timeout=60, readahead=0)
        self.range_server.set_faults([{'action': 'stall',
                                       'seconds': 3 * STALL_SECONDS}])
        with subprocess.Popen([self.bins.qemu_io, '-r', '-f', 'raw', '-c',
                               'read 0 64k', uri],
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT,
                              start_new_session=True) as reader:
            try:
                fixtures.wait_for(self.stalled_gets, 10,
                                  'a stalled GET')
                qsd.cmd('block-export-del', id='exp0', mode='hard')
                out, _ = reader.communicate(timeout=2 * STALL_SECONDS)
            finally:
                if reader.poll() is None:
                    reader.kill()
                    reader.wait()
        # The client was cut off with an error, before the stall ended
        output = out.decode(errors='replace')
        self.assertNotEqual(reader.returncode, 0, output)
        self.assertIn('read failed', output)
        self.assertTrue(self.stalled_gets(),
                        'the NBD client waited for the stalled transfer')
        # The daemon answers while the transfer still stalls
        self.assertEqual(self.node_names(qsd), ['fmt0', 'proto0'])
        self.assertTrue(self.stalled_gets(), 'the stall is over already')
        # The export goes once the transfer has ended
        qsd.event_wait('BLOCK_EXPORT_DELETED',
                       timeout=3 * STALL_SECONDS + 30,
                       match={'id': 'exp0'})
        self.assertEqual(qsd.cmd('query-block-exports'), [])
        qsd.cmd('blockdev-del', node_name='fmt0')
        qsd.cmd('blockdev-del', node_name='proto0')
        self.assertEqual(self.node_names(qsd), [])
        self.assertFalse(qsd.exited())
        qsd.cmd('nbd-server-stop')
        self.assertEqual(qsd.shutdown(), 0)
        self.check_no_crash(qsd)

    def start_stalled_readahead(self, *args: str, **options: Any
                                ) -> Tuple[StorageDaemon, str,
                                           List[Tuple[int, int]]]:
        """A daemon exporting the standard raw image from the range
        server with 64 KiB blocks, 4 connections and readahead, whose
        GETs from byte 512 KiB on stall (range server rule @options):
        at open the driver warms up with a fetch of 512 KiB and three
        of 64 KiB after it, which stall.  Two reads in the first
        granules are answered; return the daemon, the export's URI and
        the ranges of the stalled GETs, all readahead."""
        self.range_server.set_faults([{'action': 'stall',
                                       'from': WARM_UP_FIRST_FETCH,
                                       **options}])
        qsd, uri = self.start_stalling_export(
            *args, blocksize=64 * KiB, blockcount=16, connections=4,
            readahead=256 * KiB, timeout=60)
        # The reads need nothing of what stalls: they do not wait for it
        result = self.qemu_io('-r', '-f', 'raw', '-c', 'read 0 4k', '-c',
                              'read 4k 4k', uri)
        self.assertSucceeded(result)

        def two_stalled() -> Optional[List[Dict[str, Any]]]:
            stalled = self.stalled_gets()
            return stalled if len(stalled) >= 2 else None

        stalled = sorted(fixtures.parse_byte_range(e['range']) for e in
                         fixtures.wait_for(two_stalled, 10,
                                           'two stalled warm-up fetches'))
        # (which two of the three depends on the order they reach the
        # server in)
        warm_up = warm_up_ranges(self.images.raw.size, 4)[1:]
        self.assertEqual(len(set(stalled[:2])), 2, stalled)
        for r in stalled[:2]:
            self.assertIn(r, warm_up)
        self.assertFetchRanges(stalled, self.images.raw.size)
        return qsd, uri, stalled

    def test_qsd_blockdev_del_with_stalled_readahead(self) -> None:
        """blockdev-del while readahead transfers stall: the reads are
        done, so it does not wait for them."""
        qsd, _, stalled = self.start_stalled_readahead(
            seconds=4 * STALL_SECONDS)
        qsd.cmd('block-export-del', id='exp0', mode='hard')
        qsd.event_wait('BLOCK_EXPORT_DELETED', match={'id': 'exp0'})
        qsd.cmd('blockdev-del', node_name='fmt0')
        qsd.cmd('blockdev-del', node_name='proto0')
        self.assertEqual(self.node_names(qsd), [])
        # (what still stalls was not waited for)
        still = {fixtures.parse_byte_range(e['range'])
                 for e in self.stalled_gets()}
        self.assertLessEqual(set(stalled), still,
                             'the stall ended before the teardown')
        self.assertEqual(qsd.shutdown(), 0)
        self.check_no_crash(qsd)

    def test_qsd_iothread_move_with_readahead_in_flight(self) -> None:
        """Moving the node to an iothread (block-export-add iothread=)
        while readahead transfers stall: the move drains the node, which
        holds the transfers without waiting for them and lets them go on
        from the iothread; they are not asked for again, and the export
        reads the whole image right."""
        qsd, uri, stalled = self.start_stalled_readahead(
            '--object', 'iothread,id=io0', seconds=STALL_SECONDS, times=2)
        qsd.cmd('block-export-del', id='exp0', mode='hard')
        qsd.event_wait('BLOCK_EXPORT_DELETED', match={'id': 'exp0'})
        # Exporting the node from io0 moves it to io0's AioContext
        qsd.cmd('block-export-add', type='nbd', id='exp1', node_name='fmt0',
                name='disk', writable=False, iothread='io0')
        self.assertSameGuestData(uri, 'raw', self.images.raw)
        log = [e for e in self.range_server.stats()['log']
               if e['method'] == 'GET']
        ranges = [fixtures.parse_byte_range(e['range']) for e in log]
        self.assertFetchRanges(ranges, self.images.raw.size,
                               cover=(0, self.images.raw.size), once=True)
        # The stalled GETs were not cancelled by the move: they ended
        sent = {fixtures.parse_byte_range(e['range']): e['bytes_sent']
                for e in log}
        self.assertEqual([sent[r] for r in stalled],
                         [last - first + 1 for first, last in stalled])
        qsd.cmd('block-export-del', id='exp1', mode='hard')
        qsd.event_wait('BLOCK_EXPORT_DELETED', match={'id': 'exp1'})
        qsd.cmd('blockdev-del', node_name='fmt0')
        qsd.cmd('blockdev-del', node_name='proto0')
        self.assertEqual(qsd.shutdown(), 0)
        self.check_no_crash(qsd)


if __name__ == '__main__':
    unittest.main()
