# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: error baseline of the curl block driver.
#
# What the stock driver does when the server or the network says no,
# asserting only what any correct driver must do as well: a non-zero
# exit (no crash, no hang: every command has a timeout) and an error
# message that names the cause: the server's status, the certificate,
# the missing byte ranges, the refused connection (in the words of
# either driver; never just the URL, which every error repeats).  Covered: a 404
# from nginx, a certificate the client does not trust (and that
# sslverify=off accepts it), a server without byte-range support, an
# HTTP 500 and a port nobody listens on.
"""Errors: 404, untrusted certificate, no ranges, 500, refused."""

from __future__ import annotations

import unittest
from typing import ClassVar

import fixtures
from e2e_case import ERROR_TIMEOUT, E2ETestCase
from fixtures import ImageSet, Nginx, RangeServer

# libcurl's words for CURLE_COULDNT_CONNECT: 7.x, then 8.x
COULD_NOT_CONNECT = ("Couldn't connect to server",
                     'Could not connect to server')


class ErrorTest(E2ETestCase):
    """Failures must be clean, quick and explained."""

    images: ClassVar[ImageSet]
    nginx: ClassVar[Nginx]
    untrusted: ClassVar[Nginx]
    range_server: ClassVar[RangeServer]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = fixtures.shared_images()
        directory = cls.images.directory
        cls.nginx = cls.start_server(Nginx(directory, cls.ca_dir))
        cls.untrusted = cls.start_server(
            Nginx(directory, cls.ca_dir, untrusted=True))
        cls.range_server = cls.start_range_server(directory)

    def setUp(self) -> None:
        super().setUp()
        self.range_server.reset()

    def test_404_info(self) -> None:
        """qemu-img info of a missing file: 404."""
        url = self.nginx.https_url('no-such-image.raw')
        result = self.qemu_img('info', url, timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, 'HTTP 404', 'returned error: 404')
        log = self.nginx.wait_for_requests(1)
        self.assertIn(404, [entry['status'] for entry in log])

    def test_404_convert(self) -> None:
        """qemu-img convert of a missing file over http: 404."""
        url = self.nginx.http_url('no-such-image.qcow2')
        out = self.tmp / 'out.raw'
        result = self.qemu_img('convert', '-f', 'qcow2', '-O', 'raw', url,
                               out, timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, 'HTTP 404', 'returned error: 404')

    def test_untrusted_certificate_refused(self) -> None:
        """sslverify (the default) refuses a self-signed certificate."""
        url = self.untrusted.https_url(self.images.raw.name)
        result = self.qemu_img('info', '-f', 'raw', url,
                               timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, 'SSL certificate problem')

    def test_untrusted_certificate_sslverify_on_refused(self) -> None:
        """Explicit sslverify=on refuses it, too."""
        url = self.untrusted.https_url(self.images.raw.name)
        result = self.qemu_img(
            'info', '--image-opts', f'driver=raw,file.driver=https,'
            f'file.url={url},file.sslverify=on', timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, 'SSL certificate problem')

    def test_untrusted_certificate_sslverify_off_accepted(self) -> None:
        """sslverify=off accepts the certificate; the data is right."""
        image = self.images.qcow2
        url = self.untrusted.https_url(image.name)
        out = self.tmp / 'out.raw'
        result = self.qemu_img(
            'convert', '--image-opts', f'driver=qcow2,file.driver=https,'
            f'file.url={url},file.sslverify=off', '-O', 'raw', out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, self.images.raw)

    def test_no_byte_ranges_refused(self) -> None:
        """A server without Accept-Ranges that ignores Range is refused."""
        self.range_server.set_faults([
            {'action': 'no-accept-ranges', 'method': 'HEAD'},
            {'action': 'ignore-range', 'method': 'GET'}])
        url = self.range_server.url(self.images.raw.name)
        result = self.qemu_img('info', '-f', 'raw', url,
                               timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, 'does not support byte ranges',
                                  "does not support 'range'")
        stats = self.range_server.stats()
        self.assertGreaterEqual(stats['requests'], 1)
        self.assertTrue(all(entry['fault'] for entry in stats['log']),
                        f'a request escaped the fault rules: {stats}')

    def test_ignore_range_refused(self) -> None:
        """A server answering every request with the whole file (200, no
        Accept-Ranges) is refused rather than misread."""
        self.range_server.set_faults([{'action': 'ignore-range'}])
        url = self.range_server.url(self.images.qcow2.name)
        out = self.tmp / 'out.raw'
        result = self.qemu_img('convert', '-f', 'qcow2', '-O', 'raw', url,
                               out, timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, 'does not support byte ranges',
                                  "does not support 'range'")

    def test_http_500_at_open(self) -> None:
        """The server answers 500 Internal Server Error."""
        self.range_server.set_faults([{'action': 'status', 'code': 500}])
        url = self.range_server.url(self.images.raw.name)
        result = self.qemu_img('info', '-f', 'raw', url,
                               timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, 'HTTP 500', 'returned error: 500')

    def test_connection_refused(self) -> None:
        """Nobody listens on the port."""
        port = fixtures.free_port()
        self.assertFalse(fixtures.port_open(port))
        url = f'http://{fixtures.HOST}:{port}/{self.images.raw.name}'
        result = self.qemu_img('info', '-f', 'raw', url,
                               timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertOutputMentions(
            result, f'Failed to connect to {fixtures.HOST} port {port}')
        self.assertOutputMentions(result, *COULD_NOT_CONNECT)

    def test_connection_refused_https(self) -> None:
        """Nobody listens on the port, over https with qemu-io."""
        port = fixtures.free_port()
        url = f'https://{fixtures.HOST}:{port}/{self.images.raw.name}'
        result = self.qemu_io('-r', '-f', 'raw', '-c', 'read 0 512', url,
                              timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertOutputMentions(
            result, f'Failed to connect to {fixtures.HOST} port {port}')
        self.assertOutputMentions(result, *COULD_NOT_CONNECT)


if __name__ == '__main__':
    unittest.main()
