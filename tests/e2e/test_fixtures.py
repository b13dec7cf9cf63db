# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: self-tests of the harness (tests/e2e/fixtures.py).
#
# The other tests trust the fixtures; these check that the fixtures
# themselves do what they promise, independently of QEMU's curl driver
# where possible: test images are deterministic, a hung command or a
# hung QEMU is killed and reported with its output, nginx logs what it
# sent, and the implicit-FTPS server works with curl(1).
"""Self-tests of the e2e fixtures."""

from __future__ import annotations

import hashlib
import time
import unittest
import urllib.request

import fixtures
from e2e_case import E2ETestCase
from fixtures import (CommandTimeout, FtpServer, MiB, Nginx,
                      QemuProcessError, QemuSystem, RangeServer)


class FixturesTest(E2ETestCase):
    """The harness itself."""

    def test_test_image_is_deterministic(self) -> None:
        """Same seed, same bytes; other seed, other bytes; all kinds."""
        first = fixtures.make_test_image(self.tmp / 'a.raw', 4 * MiB, 7)
        again = fixtures.make_test_image(self.tmp / 'b.raw', 4 * MiB, 7)
        other = fixtures.make_test_image(self.tmp / 'c.raw', 4 * MiB, 8)
        self.assertEqual(first.sha256, again.sha256)
        self.assertNotEqual(first.sha256, other.sha256)
        self.assertEqual(fixtures.sha256_file(first.path), first.sha256)
        self.assertEqual(first.path.stat().st_size, 4 * MiB)
        kinds = {kind for _, _, kind in first.extents}
        self.assertLessEqual({'random', 'zero'}, kinds)
        # The extents tile the image exactly
        offset = 0
        for start, length, _ in first.extents:
            self.assertEqual(start, offset)
            offset += length
        self.assertEqual(offset, 4 * MiB)

    def test_qcow2_images_hold_the_same_data(self) -> None:
        """make_qcow2 (plain and compressed) keeps the guest data."""
        raw = fixtures.make_test_image(self.tmp / 'a.raw', 2 * MiB, 3)
        for compressed in (False, True):
            qcow2 = fixtures.make_qcow2(raw, self.tmp / f'a-{compressed}.q',
                                        compressed=compressed)
            self.assertSameGuestData(str(qcow2.path), 'qcow2', raw)

    def test_run_timeout_kills_and_reports(self) -> None:
        """A hung command is killed; its output is in the failure."""
        start = time.monotonic()
        with self.assertRaises(CommandTimeout) as ctx:
            fixtures.run(['sh', '-c', 'echo said-before-hanging >&2; '
                          'sleep 60'], timeout=1)
        self.assertLess(time.monotonic() - start, 30)
        self.assertIn('said-before-hanging', str(ctx.exception))
        self.assertIn('timed out', str(ctx.exception))

    def test_hung_qemu_is_killed_and_reported(self) -> None:
        """A QMP command that hangs fails with QEMU's output; the process
        is killed."""
        image = fixtures.make_test_image(self.tmp / 'stall.raw', MiB, 5)
        with RangeServer(str(self.tmp)) as server:
            server.set_faults([{'action': 'stall', 'seconds': 60,
                                'method': 'GET'}])
            url = server.url(image.name)
            qemu = QemuSystem(['-drive', f'if=none,id=d0,file.driver=http,'
                               f'file.url={url},file.timeout=50,format=raw,'
                               'readonly=on'], qmp_timeout=2)
            qemu.start()
            try:
                start = time.monotonic()
                with self.assertRaises(QemuProcessError) as ctx:
                    qemu.hmp('qemu-io d0 "read 0 4096"')
                self.assertLess(time.monotonic() - start, 30)
                message = str(ctx.exception)
                self.assertIn('human-monitor-command', message)
                self.assertIn('qemu-system-x86_64', message)
                qemu.kill()
                self.assertIsNotNone(qemu.exitcode)
                self.assertNotEqual(qemu.exitcode, 0)
            finally:
                qemu.cleanup()

    def test_nginx_logs_ranges_and_bytes(self) -> None:
        """nginx's JSON access log records the range and bytes sent."""
        data = bytes(range(256)) * 64
        (self.tmp / 'f.bin').write_bytes(data)
        with Nginx(self.tmp, self.ca_dir) as nginx:
            request = urllib.request.Request(nginx.http_url('f.bin'),
                                             headers={'Range': 'bytes=10-'
                                                      '1033'})
            with urllib.request.urlopen(request, timeout=30) as answer:
                self.assertEqual(answer.status, 206)
                self.assertEqual(answer.read(), data[10:1034])
            entry = nginx.wait_for_requests(1)[-1]
        self.assertEqual(entry['method'], 'GET')
        self.assertEqual(entry['uri'], '/f.bin')
        self.assertEqual(entry['status'], 206)
        self.assertEqual(entry['range'], 'bytes=10-1033')
        self.assertEqual(entry['body_bytes_sent'], 1024)
        self.assertEqual(entry['connection_requests'], 1)
        self.assertEqual(entry['scheme'], 'http')

    def test_ftps_server_with_curl(self) -> None:
        """The implicit-FTPS server serves whole files and ranges to
        curl(1), with certificate verification."""
        image = fixtures.make_test_image(self.tmp / 'f.raw', 3 * MiB, 9)
        with FtpServer(self.tmp, tls=True, ca_dir=self.ca_dir) as server:
            url = server.url(image.name)
            whole = self.tmp / 'whole'
            result = fixtures.run(['curl', '-sS', '--max-time', '60',
                                   '--cacert', self.ca_dir / 'ca.pem',
                                   url, '-o', whole])
            self.assertSucceeded(result)
            self.assertEqual(fixtures.sha256_file(whole), image.sha256)
            part = self.tmp / 'part'
            result = fixtures.run(['curl', '-sS', '--max-time', '60',
                                   '--cacert', self.ca_dir / 'ca.pem',
                                   '-r', '1000001-1065536', url, '-o', part])
            self.assertSucceeded(result)
        expected = fixtures.read_bytes(image.path, 1000001, 65536)
        self.assertEqual(hashlib.sha256(part.read_bytes()).hexdigest(),
                         hashlib.sha256(expected).hexdigest())


if __name__ == '__main__':
    unittest.main()
