# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: a real guest reads its disk over HTTPS.
#
# qemu-system-x86_64 -M q35 (TCG) boots the test guest of
# scripts/build-guest.py: a Debian kernel and a busybox initramfs whose
# init loads the virtio modules, mounts /dev/vda (ext4), checks the
# sha256 of every file on it against the list stored on the disk, prints
# one result line on the serial console and powers off.  The disk is a
# -drive file.driver=https,...,if=virtio,format=raw,read-only=on on nginx
# (HTTPS, the test CA), with the driver's defaults, with 64 KiB and 2 MiB
# blocks, as a qcow2 image with more of the driver's options, and as a
# member of a tar file read with file.offset; then from the range server
# over HTTPS, which cuts every 4th GET short in the middle of its body:
# the driver must fetch again, and the guest must not notice.  The stock
# qemu-system-x86_64 (QEMU's own driver) boots the same disk as a
# baseline.
#
# Each boot is bounded by qemu_guest.BOOT_TIMEOUT; its console log and
# QEMU's stderr are kept in <build>/guest-logs/<test>/ and the end of them
# is in the failure message.  What is checked is the outcome: the result line
# says that every file of the disk was verified, the server sent the
# guest's data in the ranges the new driver asks for (whole 4 KiB
# granules from the offset, at most 4 MiB each), the fault happened.
"""A guest boots from an https:// drive and verifies its files."""

from __future__ import annotations

import json
import unittest
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Union

import fixtures
import qemu_guest
from e2e_case import GRANULE, E2ETestCase, merge_ranges
from fixtures import (KiB, MissingPrerequisite, Nginx, RangeServer,
                      TarMember)
from qemu_guest import BootResult, Guest, GuestDisk

TAR_NAME = 'appliance.tar'
#: How many times the driver asks again for what broke off (its default)
DEFAULT_RETRIES = 2
#: Every FAULT_EVERY-th GET of the range server is cut short
FAULT_EVERY = 4
#: ... after this many body bytes (less than any block asked for)
FAULT_BYTES = 3000


class GuestBootTest(E2ETestCase):
    """Boot the test guest from an https:// -drive and verify its disk."""

    guest: ClassVar[Guest]
    disk: ClassVar[GuestDisk]
    members: ClassVar[Dict[str, TarMember]]
    nginx: ClassVar[Nginx]
    range_server: ClassVar[RangeServer]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        try:
            cls.guest = Guest.from_build(cls.bins.build)
            cls.disk = cls.guest.disk('test')
        except MissingPrerequisite as err:
            raise unittest.SkipTest(str(err)) from err
        www = cls.class_tmp / 'www'
        www.mkdir()
        (www / 'disk.raw').symlink_to(cls.disk.path)
        fixtures.run([cls.bins.qemu_img, 'convert', '-f', 'raw', '-O',
                      'qcow2', cls.disk.path, www / 'disk.qcow2'],
                     check=True)
        cls.members = fixtures.make_tar(www / TAR_NAME, [
            ('appliance.ovf', b'<Envelope><!-- the disk is disk.raw -->'
             b'</Envelope>\n' * 11),
            ('disk.raw', cls.disk.path),
        ])
        cls.nginx = cls.start_server(Nginx(www, cls.ca_dir))
        cls.range_server = cls.start_server(RangeServer(
            str(www), tls_cert=str(cls.ca_dir / 'server.pem'),
            tls_key=str(cls.ca_dir / 'server.key'),
            log_path=str(cls.class_tmp / 'range-server.log')))

    def setUp(self) -> None:
        super().setUp()
        self.nginx.reset_log()
        self.range_server.reset()

    # -- helpers

    def log_dir(self) -> Path:
        """Where this test's boot logs are kept: <build>/guest-logs/NAME."""
        return self.bins.build / 'guest-logs' / self.id().rsplit('.', 1)[-1]

    def boot(self, drive: str,
             qemu: Union[str, Path, None] = None) -> BootResult:
        """Boot the guest on @drive; assert that it verified every file."""
        result = qemu_guest.boot(qemu or self.bins.qemu_system, self.guest,
                                 drive, self.log_dir())
        if not result.verified_all(self.disk):
            self.fail(f'the guest did not verify all {self.disk.file_count} '
                      f'files\n{result.describe()}')
        return result

    def https_drive(self, name: str, options: str = '',
                    fmt: str = 'raw') -> str:
        """A read-only virtio -drive of @name on nginx over HTTPS."""
        drive = (f'file.driver=https,file.url={self.nginx.https_url(name)},'
                 f'if=virtio,format={fmt},read-only=on')
        return drive + (',' + options if options else '')

    def nginx_gets(self, name: str) -> List[Dict[str, Any]]:
        """The GETs of @name that nginx logged; all answered with 206."""
        gets = [e for e in self.nginx.settled_log()
                if e['method'] == 'GET' and e['uri'] == '/' + name]
        self.assertTrue(gets, f'nginx logged no GET of {name}')
        self.assertEqual({e['status'] for e in gets}, {206})
        return gets

    def check_served(self, name: str, fetches: bool = False,
                     offset: int = 0) -> None:
        """Assert that nginx sent at least the guest's files, and, with
        @fetches, that every range was one the new driver asks for:
        whole 4 KiB granules counted from @offset (the last one of the
        file may end early), at most 4 MiB long."""
        gets = self.nginx_gets(name)
        sent = sum(e['body_bytes_sent'] for e in gets)
        self.assertGreaterEqual(sent, self.disk.file_bytes,
                                'the server sent less than the files')
        if fetches:
            size = (self.class_tmp / 'www' / name).stat().st_size
            self.assertFetchRanges(
                [fixtures.parse_byte_range(e['range']) for e in gets],
                size, offset)

    # -- the new driver

    def test_raw_defaults(self) -> None:
        """The raw disk with the driver's default options."""
        self.boot(self.https_drive('disk.raw'))
        self.check_served('disk.raw', fetches=True)

    def test_raw_blocksize_64k(self) -> None:
        """The raw disk in 64 KiB blocks."""
        self.boot(self.https_drive('disk.raw', 'file.blocksize=64k'))
        self.check_served('disk.raw', fetches=True)

    def test_raw_blocksize_2m(self) -> None:
        """The raw disk in 2 MiB blocks, 4 of them readahead."""
        self.boot(self.https_drive('disk.raw', 'file.blocksize=2M,'
                                   'file.x-readahead-window=8M'))
        self.check_served('disk.raw', fetches=True)

    def test_qcow2_driver_options(self) -> None:
        """The disk as a qcow2 image, with the driver's options."""
        self.boot(self.https_drive(
            'disk.qcow2', 'file.blocksize=256k,file.blockcount=64,'
            'file.connections=4,file.readahead=4M,file.timeout=30,'
            'file.sslverify=on', fmt='qcow2'))
        self.check_served('disk.qcow2', fetches=True)
        gets = self.nginx_gets('disk.qcow2')
        self.assertLessEqual(len({e['connection'] for e in gets}), 4)

    def test_tar_member_offset(self) -> None:
        """The raw disk inside a tar file, with file.offset and a raw node
        of the member's size."""
        member = self.members['disk.raw']
        self.assertNotEqual(member.offset % (4 * KiB), 0)
        self.boot(self.https_drive(
            TAR_NAME, f'offset=0,size={member.size},'
            f'file.offset={member.offset},file.blocksize=1M'))
        self.check_served(TAR_NAME, True, member.offset)

    def test_fault_short_body(self) -> None:
        """The range server cuts every 4th GET short mid-body: the driver
        fetches again and the guest verifies every file."""
        # The first rule that matches a request decides alone, and one
        # that has run out of times no longer matches: each rule lets
        # FAULT_EVERY - 1 GETs through, then cuts one short
        self.range_server.set_faults([
            {'action': 'short', 'method': 'GET', 'bytes': FAULT_BYTES,
             'skip': FAULT_EVERY - 1, 'times': 1}] * 500)
        url = self.range_server.url('disk.raw')
        self.boot(f'file.driver=https,file.url={url},if=virtio,format=raw,'
                  'read-only=on,file.blocksize=256k')
        log = self.range_server.stats()['log']
        (self.log_dir() / 'range-server-log.json').write_text(
            json.dumps(log, indent=1))
        gets = [e for e in log if e['method'] == 'GET']
        faults = [e for e in gets if e['fault'] == 'short']
        self.assertGreaterEqual(len(faults), 2, 'no GET was cut short')
        self.assertTrue(all(e['bytes_sent'] == FAULT_BYTES for e in faults))
        # Each GET cut short was asked for again from its first byte that
        # did not arrive, and in the end every byte of it arrived
        ranges = {e['seq']: fixtures.parse_byte_range(e['range'])
                  for e in gets}
        arrived = merge_ranges(
            (ranges[e['seq']][0],
             ranges[e['seq']][0] + e['bytes_sent'] - 1)
            if e['fault'] == 'short' else ranges[e['seq']]
            for e in gets if e['status'] == 206)
        for entry in faults:
            first, last = ranges[entry['seq']]
            # The tries of one fetch end at the same byte.  A readahead
            # fetch whose every try was cut short fails quietly when no
            # read waits for it: nothing asks for the rest again, and the
            # guest, which verified its files, did not need it
            tries = [e['seq'] for e in faults if ranges[e['seq']][1] == last]
            gave_up = len(tries) > DEFAULT_RETRIES
            if gave_up and entry['seq'] == max(tries):
                continue
            # (or, when the fetch had used up its tries, a read fetched
            # what it needed anew, from the granule the fetch stopped in)
            resumed = first + FAULT_BYTES
            later = [ranges[e['seq']] for e in gets
                     if e['seq'] > entry['seq']]
            self.assertTrue((resumed, last) in later or
                            any(r[0] == resumed // GRANULE * GRANULE
                                for r in later),
                            f'{entry["range"]} was not resumed')
            if not gave_up:
                self.assertTrue(any(a <= first and last <= b
                                    for a, b in arrived),
                                f'not every byte of {entry["range"]} '
                                'arrived')

    # -- the stock driver, as a baseline

    def test_stock_baseline(self) -> None:
        """QEMU's own curl driver boots the same raw disk."""
        try:
            qemu = qemu_guest.stock_qemu_system(self.bins.build)
        except MissingPrerequisite as err:
            self.fail(str(err))
        self.boot(self.https_drive('disk.raw'), qemu)
        gets = self.nginx_gets('disk.raw')
        self.assertGreaterEqual(sum(e['body_bytes_sent'] for e in gets),
                                self.disk.file_bytes)


if __name__ == '__main__':
    unittest.main()
