# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: qemu-img convert from ftp:// and ftps:// sources.
#
# pyftpdlib (tests/e2e/ftpd.py) serves the standard images read-only:
# anonymously over FTP, with a user and password over FTP, and over
# implicit FTPS (TLS from the first byte, which is what ftps:// means to
# libcurl) with the test CA's certificate and verification on.  Raw and
# qcow2 images are converted and compared byte for byte.  A server that
# answers the first REST to each position with a transient 450 error
# costs retries, not the convert.
#
# The file is pinned at open by its modification time (MDTM) and size:
# one replaced by another of the same size while a node is open is refused
# on the next transfer, never mixed with the old one.
#
# The ftps:// conversions run with "qemu-img convert -m 1" (one request
# at a time): with parallel requests the stock driver (libcurl 7.88.1,
# GnuTLS) intermittently stalls on a new FTPS control connection after
# the server's "229 Entering extended passive mode" answer -- it never
# connect()s to the data port, as strace shows -- and the transfer fails
# after the driver's 5 s timeout.  The server is not at fault: curl(1)
# with 8 parallel ranged ftps:// downloads never stalls.  That bug of the
# stock driver is for the rewrite to fix, not for this baseline to hit.
"""qemu-img convert over FTP and implicit FTPS, checked byte for byte."""

from __future__ import annotations

import os
import unittest
from typing import ClassVar

import fixtures
from e2e_case import E2ETestCase
from fixtures import (FtpServer, ImageSet, MiB, NbdClient, StorageDaemon,
                      TestImage)

USER = 'e2e-user'
PASSWORD = 'pass-w0rd'


class FtpTest(E2ETestCase):
    """ftp:// and ftps:// sources."""

    images: ClassVar[ImageSet]
    ftp: ClassVar[FtpServer]
    ftp_auth: ClassVar[FtpServer]
    ftps: ClassVar[FtpServer]
    ftp_refusing: ClassVar[FtpServer]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = fixtures.shared_images()
        directory = cls.images.directory
        cls.ftp = cls.start_server(FtpServer(directory))
        cls.ftp_auth = cls.start_server(
            FtpServer(directory, user=USER, password=PASSWORD))
        cls.ftps = cls.start_server(
            FtpServer(directory, tls=True, ca_dir=cls.ca_dir))
        cls.ftp_refusing = cls.start_server(
            FtpServer(directory, refuse_rest=True))

    def check_convert(self, url: str, image: TestImage, out_fmt: str,
                      serial: bool = False) -> None:
        """Convert @url (holding @image) to @out_fmt and compare.

        With @serial, qemu-img issues one request at a time (-m 1).
        """
        out = self.tmp / f'out.{out_fmt}'
        options = ['-m', '1'] if serial else []
        result = self.qemu_img('convert', *options, '-f', image.fmt,
                               '-O', out_fmt, url, out)
        self.assertSucceeded(result, f'convert {url}')
        self.assertConvertOutput(out, out_fmt, self.images.raw)

    def test_ftp_raw_to_raw(self) -> None:
        """ftp://, raw image, to raw."""
        image = self.images.raw
        self.check_convert(self.ftp.url(image.name), image, 'raw')

    def test_ftp_qcow2_to_raw(self) -> None:
        """ftp://, qcow2 image, to raw."""
        image = self.images.qcow2
        self.check_convert(self.ftp.url(image.name), image, 'raw')

    def test_ftp_compressed_qcow2_to_qcow2(self) -> None:
        """ftp://, compressed qcow2 image, to qcow2."""
        image = self.images.qcow2c
        self.check_convert(self.ftp.url(image.name), image, 'qcow2')

    def test_ftp_transient_rest_refusals_retried(self) -> None:
        """A server refuses the first REST to each position with 450: each
        fetch is tried again, and the raw image converts byte for byte."""
        image = self.images.raw
        self.check_convert(self.ftp_refusing.url(image.name), image, 'raw')
        assert self.ftp_refusing.dir is not None
        log = (self.ftp_refusing.dir / 'ftpd.log').read_text()
        # (the whole convert may take one transfer, refused once)
        self.assertGreaterEqual(log.count('refused for the test'), 1,
                                log[-2000:])

    def test_ftp_replaced_file_refused(self) -> None:
        """A file replaced by another of the same size, a second later,
        after the node was opened: the next transfer finds another MDTM
        and fails, naming the change; no byte of the new file is read."""
        www = self.tmp / 'www'
        www.mkdir()
        image = fixtures.make_test_image(www / 'disk.raw', 4 * MiB, 2026)
        path = image.path
        ftp = FtpServer(www)
        ftp.start()
        self.addCleanup(ftp.stop)
        qsd = StorageDaemon()
        qsd.start()
        self.addCleanup(qsd.cleanup)
        qsd.cmd('blockdev-add', driver='ftp', node_name='ftp0',
                url=ftp.url(image.name), read_only=True, retries=0)
        sock = qsd.socket_path('nbd.sock')
        qsd.cmd('nbd-server-start',
                addr={'type': 'unix', 'data': {'path': str(sock)}})
        qsd.cmd('block-export-add', type='nbd', id='exp0', node_name='ftp0',
                name='disk', writable=False)

        new = path.with_name('new')
        new.write_bytes(bytes(b ^ 0xff for b in path.read_bytes()))
        mtime = path.stat().st_mtime + 100
        os.utime(new, (mtime, mtime))
        os.replace(new, path)
        with NbdClient(sock, 'disk') as client:
            reply = client.read(0, 4096)
        self.assertNotEqual(reply.error, 0, 'a read of the new file worked')
        self.assertIn('the remote file changed since it was opened',
                      qsd.output())
        qsd.cmd('block-export-del', id='exp0', mode='hard')
        qsd.event_wait('BLOCK_EXPORT_DELETED', match={'id': 'exp0'})
        qsd.cmd('blockdev-del', node_name='ftp0')
        self.assertEqual(qsd.shutdown(), 0)

    def test_ftp_user_password_in_url(self) -> None:
        """ftp://user:password@..., raw image, to raw."""
        image = self.images.raw
        self.check_convert(self.ftp_auth.url(image.name), image, 'raw')

    def test_ftp_username_password_secret(self) -> None:
        """file.username and file.password-secret options."""
        image = self.images.qcow2
        url = f'ftp://{fixtures.HOST}:{self.ftp_auth.port}/{image.name}'
        out = self.tmp / 'out.raw'
        result = self.qemu_img(
            'convert', '--object', f'secret,id=sec0,data={PASSWORD}',
            '--image-opts', f'driver=qcow2,file.driver=ftp,file.url={url},'
            f'file.username={USER},file.password-secret=sec0',
            '-O', 'raw', out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, self.images.raw)

    def test_ftp_wrong_password_fails(self) -> None:
        """A wrong password is refused with the server's answer."""
        url = f'ftp://{fixtures.HOST}:{self.ftp_auth.port}/disk.raw'
        result = self.qemu_img(
            'info', '--object', 'secret,id=sec0,data=not-the-password',
            '--image-opts', f'driver=raw,file.driver=ftp,file.url={url},'
            f'file.username={USER},file.password-secret=sec0',
            timeout=fixtures.COMMAND_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, 'Access denied: 530')

    def test_ftps_info(self) -> None:
        """qemu-img info over ftps:// (implicit TLS, certificate verified)."""
        image = self.images.qcow2
        url = self.ftps.url(image.name)
        result = self.qemu_img('info', '-f', 'qcow2', url)
        self.assertSucceeded(result)
        self.assertRegex(result.stdout,
                         rf'virtual size: [^\n]*\({image.size} bytes\)')
        self.assertIn('protocol type: ftps', result.stdout)
        self.assertRegex(result.stdout, rf'file length: [^\n]*\('
                         rf'{image.path.stat().st_size} bytes\)')

    def test_ftps_raw_to_raw(self) -> None:
        """ftps:// (implicit TLS, certificate verified), raw, to raw."""
        image = self.images.raw
        self.check_convert(self.ftps.url(image.name), image, 'raw',
                           serial=True)

    def test_ftps_qcow2_to_qcow2(self) -> None:
        """ftps:// (implicit TLS, certificate verified), qcow2, to qcow2."""
        image = self.images.qcow2
        self.check_convert(self.ftps.url(image.name), image, 'qcow2',
                           serial=True)

    def test_ftps_image_opts_sslverify_on(self) -> None:
        """--image-opts with file.driver=ftps and sslverify=on."""
        image = self.images.qcow2c
        out = self.tmp / 'out.raw'
        result = self.qemu_img(
            'convert', '-m', '1', '--image-opts',
            f'driver=qcow2,file.driver=ftps,'
            f'file.url={self.ftps.url(image.name)},file.sslverify=on',
            '-O', 'raw', out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, self.images.raw)


if __name__ == '__main__':
    unittest.main()
