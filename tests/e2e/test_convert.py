# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: qemu-img convert from http:// and https:// sources.
#
# Converts a raw, a qcow2 and a compressed qcow2 image served by nginx
# (HTTP and HTTPS) and by the range server (HTTP) to raw and to qcow2,
# and checks the result byte for byte against the source: sha256 of raw
# output, qemu-img compare for both, plus what the servers logged (the
# driver used byte ranges and fetched every byte of the data at least
# once).
"""qemu-img convert from HTTP(S) servers, checked byte for byte."""

from __future__ import annotations

import unittest
from typing import Any, Callable, ClassVar, Dict, List, Optional

import fixtures
from e2e_case import NginxImagesCase
from fixtures import Nginx, RangeServer, TestImage

SOURCES = ('nginx_http', 'nginx_https', 'rangeserver_http')
IMAGES = ('raw', 'qcow2', 'qcow2c')
OUTPUTS = ('raw', 'qcow2')


class ConvertTest(NginxImagesCase):
    """qemu-img convert -O raw|qcow2 of remote images."""

    range_server: ClassVar[RangeServer]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.range_server = cls.start_range_server(cls.images.directory)

    def url(self, source: str, image: TestImage) -> str:
        """The URL of @image on @source."""
        if source == 'nginx_http':
            return self.nginx.http_url(image.name)
        if source == 'nginx_https':
            return self.nginx.https_url(image.name)
        return self.range_server.url(image.name)

    def server_gets(self, source: str,
                    image: TestImage) -> List[Dict[str, Any]]:
        """The GET requests for @image that @source answered.

        As dicts with the keys 'status' and 'bytes' (body bytes sent).
        """
        if source == 'rangeserver_http':
            log = self.range_server.stats()['log']
            return [{'status': e['status'], 'bytes': e['bytes_sent']}
                    for e in log if e['method'] == 'GET' and
                    e['path'] == '/' + image.name]
        scheme = 'https' if source == 'nginx_https' else 'http'
        return [{'status': e['status'], 'bytes': e['body_bytes_sent']}
                for e in self.nginx.access_log()
                if e['method'] == 'GET' and e['uri'] == '/' + image.name and
                e['scheme'] == scheme]

    def reset_server_logs(self) -> None:
        """Forget what the servers logged so far."""
        self.nginx.reset_log()
        self.range_server.reset()

    def check_convert(self, source: str, image_key: str,
                      out_fmt: str) -> None:
        """Convert one image from one source to one format and check it."""
        image: TestImage = getattr(self.images, image_key)
        url = self.url(source, image)
        out = self.tmp / f'out.{out_fmt}'
        self.reset_server_logs()

        result = self.qemu_img('convert', '-f', image.fmt, '-O', out_fmt,
                               url, out)
        self.assertSucceeded(result, f'convert {url}')

        self.assertConvertOutput(out, out_fmt, self.images.raw)

        # The server side: only byte ranges, every byte at least once.
        # A server logs a request just after answering it: poll a little.
        minimum = image.size if image.fmt == 'raw' else 1

        def complete_log() -> Optional[List[Dict[str, Any]]]:
            gets = self.server_gets(source, image)
            return gets if sum(g['bytes'] for g in gets) >= minimum else None

        try:
            gets = fixtures.wait_for(complete_log, 10, 'the server log')
        except TimeoutError:
            gets = self.server_gets(source, image)
        self.assertTrue(gets, f'no GET request for {image.name} logged')
        statuses = {g['status'] for g in gets}
        self.assertEqual(statuses, {206},
                         f'expected only 206 answers, got {statuses}')
        sent = sum(g['bytes'] for g in gets)
        self.assertGreaterEqual(
            sent, minimum, 'the server sent fewer bytes than the image '
            'has: the data cannot have been read in full')

    def test_nginx_https_http2_qcow2_to_raw(self) -> None:
        """Convert over HTTPS from an nginx that offers HTTP/2 (ALPN).

        Whichever HTTP version the driver negotiates, the data must be
        right; the log tells which one it used.
        """
        nginx = Nginx(self.images.directory, self.ca_dir, http2=True)
        nginx.start()
        self.addCleanup(nginx.stop)
        image = self.images.qcow2
        out = self.tmp / 'out.raw'
        result = self.qemu_img('convert', '-f', 'qcow2', '-O', 'raw',
                               nginx.https_url(image.name), out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, self.images.raw)
        log = nginx.wait_for_requests(1)
        self.assertEqual({entry['status'] for entry in log
                          if entry['method'] == 'GET'}, {206})
        protocols = {entry['protocol'] for entry in log}
        self.assertTrue(protocols <= {'HTTP/1.1', 'HTTP/2.0'}, protocols)

    def test_image_opts_https_sslverify_on(self) -> None:
        """--image-opts with file.driver=https and sslverify=on."""
        image = self.images.qcow2
        out = self.tmp / 'out.raw'
        result = self.qemu_img(
            'convert', '--image-opts',
            f'driver=qcow2,file.driver=https,'
            f'file.url={self.nginx.https_url(image.name)},'
            f'file.sslverify=on', '-O', 'raw', out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, self.images.raw)


def _make_test(source: str, image_key: str,
               out_fmt: str) -> Callable[[ConvertTest], None]:
    def test(self: ConvertTest) -> None:
        self.check_convert(source, image_key, out_fmt)
    test.__doc__ = (f'convert the {image_key} image from {source} to '
                    f'{out_fmt}')
    return test


for _source in SOURCES:
    for _image in IMAGES:
        for _out in OUTPUTS:
            setattr(ConvertTest, f'test_{_source}_{_image}_to_{_out}',
                    _make_test(_source, _image, _out))


if __name__ == '__main__':
    unittest.main()
