# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: the http-version option, and servers that speak only HTTP/2.
#
# By default the driver speaks HTTP/1.1, one transfer per connection;
# with http-version=http2 it multiplexes its transfers as HTTP/2 streams
# over one connection.  A server that speaks only HTTP/2 drops an
# HTTP/1.1 request with no answer ("Empty reply from server" over TLS,
# HTTP/2 frames where an HTTP/1.1 status line was due in cleartext):
# the error must say that the server speaks only HTTP/2, and what to do.
#
# The HTTP/2-only server is nghttpd (Debian's nghttp2-server), over TLS
# with the test CA's certificate (ALPN offers h2 only) and in cleartext
# (HTTP/2 with prior knowledge only).  nghttpd ignores Range, so that
# even with http-version=http2 the image cannot be opened: the error
# then says so.  The HTTP/2 server with ranges is Debian's nginx.
#
# Each test proves one thing:
#
# * test_http2_only_tls_named, test_http2_only_cleartext_named: opening
#   an image of nghttpd with the default http-version fails, and the
#   error says that the server speaks only HTTP/2, with libcurl's words
#   for what HTTP/1.1 got, and names the option.
# * test_http2_only_without_ranges: with http-version=http2, nghttpd's
#   200 to a range request is refused for what it is (over TLS).
# * test_http2_convert: a qcow2 converted with http-version=http2 over
#   https from nginx is the image, byte for byte, every request nginx
#   logged was HTTP/2, and all of them came over one connection.
# * test_http1_default: the same without the option: only HTTP/1.1.
# * test_http2_cleartext: http-version=http2 over http://: libcurl
#   before 8.0 fails the second request of a connection that starts in
#   HTTP/2 (curl's pull request 10643), so the driver refuses to open
#   with such a libcurl and says why; with a later one, it speaks HTTP/2
#   to nghttpd, which is then refused for ignoring ranges.
"""http-version, and servers that speak only HTTP/2."""

from __future__ import annotations

import shutil
import subprocess
import unittest
from pathlib import Path
from typing import ClassVar, List, Optional

import fixtures
from e2e_case import NginxImagesCase
from fixtures import HOST, START_TIMEOUT, CmdResult, Nginx

NGHTTPD = '/usr/sbin/nghttpd'
H2_ONLY = ("the server speaks only HTTP/2: it answered HTTP/1.1 with "
           "'{why}'; use http-version=http2")


class Nghttpd:
    """nghttpd serving @root over HTTP/2 only, with TLS unless @cleartext."""

    def __init__(self, root: Path, ca_dir: Path, cleartext: bool) -> None:
        self.root = root
        self.ca_dir = ca_dir
        self.cleartext = cleartext
        self.port = 0
        self._proc: Optional['subprocess.Popen[bytes]'] = None
        self._log: Optional[Path] = None

    def start(self) -> None:
        """Start it on a free port and wait until it listens."""
        if not Path(NGHTTPD).exists():
            raise fixtures.MissingPrerequisite(
                'nghttpd not found: apt-get install nghttp2-server')
        self.port = fixtures.free_port()
        args = [NGHTTPD, '-d', str(self.root), '--address', HOST,
                str(self.port)]
        if self.cleartext:
            args.insert(1, '--no-tls')
        else:
            args += [str(self.ca_dir / 'server.key'),
                     str(self.ca_dir / 'server.pem')]
        self._log = fixtures.make_tempdir('nghttpd') / 'nghttpd.log'
        with open(self._log, 'wb') as log:
            # Reaped in stop()  # pylint: disable=consider-using-with
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=log,
                                          start_new_session=True)
        fixtures.wait_for(lambda: fixtures.port_open(self.port),
                          START_TIMEOUT, 'nghttpd to listen')

    def stop(self) -> None:
        """Stop it."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None
        if self._log is not None:
            fixtures.remove_tree(self._log.parent)
            self._log = None

    def url(self, name: str) -> str:
        """The URL of file @name."""
        scheme = 'http' if self.cleartext else 'https'
        return f'{scheme}://{HOST}:{self.port}/{name}'


class Http2Test(NginxImagesCase):
    """http-version, and HTTP/2-only servers."""

    h2_tls: ClassVar[Nghttpd]
    h2_clear: ClassVar[Nghttpd]
    nginx2: ClassVar[Nginx]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        if not shutil.which('ldd'):
            raise unittest.SkipTest('ldd not found')
        root = cls.images.directory
        try:
            cls.h2_tls = cls.start_server(Nghttpd(root, cls.ca_dir, False))
            cls.h2_clear = cls.start_server(Nghttpd(root, cls.ca_dir, True))
        except fixtures.MissingPrerequisite as err:
            raise unittest.SkipTest(str(err)) from err
        cls.nginx2 = cls.start_server(Nginx(root, cls.ca_dir, http2=True))

    def open_raw(self, url: str, version: Optional[str] = None) -> CmdResult:
        """qemu-img info of the raw image at @url."""
        opts = f'driver=raw,file.url={url}'
        opts += ',file.driver=' + url.split(':', 1)[0]
        if version:
            opts += f',file.http-version={version}'
        return self.qemu_img('info', '--image-opts', opts)

    def assertRefusedWith(self, result: CmdResult, message: str) -> None:
        """The command failed cleanly, and its error ends with @message."""
        self.assertFailedCleanly(result)
        self.assertIn(f': {message}\n', result.stderr, result.describe())

    def test_http2_only_tls_named(self) -> None:
        """Over TLS: named as an HTTP/2-only server."""
        result = self.open_raw(self.h2_tls.url(self.images.raw.name))
        self.assertRefusedWith(
            result, H2_ONLY.format(why='Empty reply from server'))

    def test_http2_only_cleartext_named(self) -> None:
        """In cleartext: named as an HTTP/2-only server."""
        result = self.open_raw(self.h2_clear.url(self.images.raw.name))
        self.assertFailedCleanly(result)
        self.assertRegex(result.stderr, r": the server speaks only HTTP/2: "
                         r"it answered HTTP/1\.1 with '[^']+'; use "
                         r"http-version=http2\n")

    def test_http2_only_without_ranges(self) -> None:
        """nghttpd ignores Range: refused for that, in HTTP/2."""
        result = self.open_raw(self.h2_tls.url(self.images.raw.name),
                               'http2')
        self.assertRefusedWith(
            result, 'the server does not support byte ranges: it answered '
            'a request for the first byte with HTTP 200')

    def convert(self, version: Optional[str]) -> List[dict]:
        """Convert the qcow2 image from nginx over https with @version,
        check the output, and return what nginx logged for it."""
        image = self.images.qcow2
        before = len(self.nginx2.access_log())
        out = self.tmp / 'out.raw'
        opts = ('driver=qcow2,file.driver=https,'
                f'file.url={self.nginx2.https_url(image.name)}')
        if version:
            opts += f',file.http-version={version}'
        result = self.qemu_img('convert', '-O', 'raw', '--image-opts', opts,
                               out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, self.images.raw)
        log = self.nginx2.access_log()[before:]
        self.assertTrue(log)
        self.assertEqual({e['status'] for e in log if e['method'] == 'GET'},
                         {206})
        return log

    def test_http2_convert(self) -> None:
        """http2: right bytes, HTTP/2 only, over one connection."""
        log = self.convert('http2')
        self.assertEqual({e['protocol'] for e in log}, {'HTTP/2.0'})
        self.assertEqual(len({e['connection'] for e in log}), 1, log)

    def test_http1_default(self) -> None:
        """By default: right bytes, HTTP/1.1 only, on many connections."""
        log = self.convert(None)
        self.assertEqual({e['protocol'] for e in log}, {'HTTP/1.1'})
        self.assertGreater(len({e['connection'] for e in log}), 1, log)

    def test_http2_cleartext(self) -> None:
        """http2 over http://: refused before libcurl 8.0, and why."""
        result = self.open_raw(self.h2_clear.url(self.images.raw.name),
                               'http2')
        if fixtures.libcurl_version(self.bins.qemu_img) < (8, 0, 0):
            self.assertFailedCleanly(result)
            self.assertRegex(result.stderr,
                             r': http-version=http2 over http:// needs '
                             r'libcurl 8\.0 or later: libcurl 7\.[0-9.]+ '
                             r'fails the second request of a connection '
                             r'that starts in HTTP/2\n')
        else:
            self.assertRefusedWith(
                result, 'the server does not support byte ranges: it '
                'answered a request for the first byte with HTTP 200')


if __name__ == '__main__':
    unittest.main()
