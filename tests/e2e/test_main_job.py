# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: the main job (make convert, that is scripts/convert.sh) with bad
# input.
#
# An unreachable host, a URL that nginx answers with 404, a file that is
# not in the format given, a URL of another scheme and bad OPTS: each
# ends with a non-zero exit, the driver's (or qemu-img's) one-line error
# naming the cause, and no Python traceback.
"""The main job with bad input: a clear error, no traceback."""

from __future__ import annotations

import socket
import unittest

import fixtures
from e2e_case import ERROR_TIMEOUT, NginxImagesCase
from fixtures import CmdResult

CONVERT = fixtures.E2E_DIR.parent.parent / 'scripts' / 'convert.sh'


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (just freed)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


class MainJobTest(NginxImagesCase):
    """scripts/convert.sh --url ... with what a user may get wrong."""

    def convert(self, *args: str) -> CmdResult:
        """Run the main job with @args, its output under self.tmp."""
        return fixtures.run(['/bin/sh', str(CONVERT), '--output',
                             str(self.tmp / 'out.raw'), *args],
                            timeout=ERROR_TIMEOUT)

    def assertRefused(self, result: CmdResult, message: str) -> None:
        """The job failed cleanly, saying @message, without a traceback."""
        self.assertFailedCleanly(result)
        self.assertIn(message, result.stderr, result.describe())
        self.assertNotIn('Traceback', result.output, result.describe())

    def test_unreachable_host(self) -> None:
        """Nothing listens at the URL's port."""
        port = closed_port()
        result = self.convert('--url', f'https://127.0.0.1:{port}/'
                              'disk.qcow2')
        self.assertRefused(result, f'Failed to connect to 127.0.0.1 port '
                           f'{port}')
        # libcurl 7.x says "Couldn't", 8.x "Could not"
        self.assertOutputMentions(result, "Couldn't connect to server",
                                  'Could not connect to server')

    def test_not_found(self) -> None:
        """nginx answers 404."""
        result = self.convert('--url', self.nginx.https_url('no-such.qcow2'))
        self.assertRefused(result, 'the server answered HTTP 404')

    def test_not_in_the_format_given(self) -> None:
        """A raw image converted as qcow2."""
        result = self.convert('--url',
                              self.nginx.https_url(self.images.raw.name),
                              '--format', 'qcow2')
        self.assertRefused(result, 'Image is not in qcow2 format')

    def test_other_scheme(self) -> None:
        """A file:// URL is not the driver's."""
        result = self.convert('--url', 'file:///etc/hostname')
        self.assertRefused(result, 'the URL must start with http://, '
                           "https://, ftp:// or ftps://, not "
                           "'file:///etc/hostname'")

    def test_bad_option_value(self) -> None:
        """OPTS with a blocksize the driver refuses."""
        result = self.convert('--url',
                              self.nginx.https_url(self.images.qcow2.name),
                              '--opts', 'blocksize=3000')
        self.assertRefused(result, 'blocksize must be a power of two '
                           'between 4 KiB and 64 MiB, not 3000')

    def test_bad_option_syntax(self) -> None:
        """OPTS that are not KEY=VALUE."""
        result = self.convert('--url',
                              self.nginx.https_url(self.images.qcow2.name),
                              '--opts', 'blocksize')
        self.assertRefused(result, "OPTS must be KEY=VALUE,..., not "
                           "'blocksize'")


if __name__ == '__main__':
    unittest.main()
