# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: which libcurl the binaries under test run with.
#
# Runs each binary of the build folder (qemu-img, qemu-io, qemu-nbd,
# qemu-storage-daemon, qemu-system-x86_64) with LD_DEBUG=libs, so that the
# dynamic loader itself says which libcurl.so it initialises in that
# process, and asks that file's curl_version() what it is.  All five must
# load one and the same libcurl.  With QCURL_LIBCURL_MAJOR set (the curl8
# layer of scripts/check.py sets it to 8), its major version must be that
# one: both libcurl 7 and 8 are libcurl.so.4.8.0, so a build that fell
# back to Debian 12's 7.88 is told apart only this way.
"""The binaries under test load the libcurl the build expects."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unittest
from pathlib import Path
from typing import Dict

from e2e_case import E2ETestCase

# "     12345:     calling init: /path/libcurl.so.4"
LOADER_INIT = re.compile(r'calling init: (\S*/libcurl[\w.-]*\.so[\w.]*)$',
                         re.M)
CURL_VERSION = ('import ctypes, sys\n'
                'lib = ctypes.CDLL(sys.argv[1])\n'
                'lib.curl_version.restype = ctypes.c_char_p\n'
                'print(lib.curl_version().decode())\n')


def loaded_libcurl(binary: Path) -> str:
    """The libcurl that the loader initialises when @binary runs."""
    env = dict(os.environ, LD_DEBUG='libs')
    proc = subprocess.run([str(binary), '--version'], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors='replace', timeout=60,
                          check=False)
    match = LOADER_INIT.search(proc.stdout)
    if not match:
        raise AssertionError(f'{binary} --version initialised no libcurl '
                             f'(exit {proc.returncode})')
    return os.path.realpath(match.group(1))


def curl_version(library: str) -> str:
    """curl_version() of @library, asked in a process of its own."""
    return subprocess.run([sys.executable, '-c', CURL_VERSION, library],
                          stdout=subprocess.PIPE, text=True, timeout=60,
                          check=True).stdout.strip()


class LibcurlTest(E2ETestCase):
    """The libcurl that qemu-img and the others load at run time."""

    def test_one_libcurl_of_the_expected_version(self) -> None:
        """All five binaries load the same libcurl, of the expected major."""
        libraries: Dict[str, str] = {}
        for field in ('qemu_img', 'qemu_io', 'qemu_nbd',
                      'qemu_storage_daemon', 'qemu_system'):
            binary: Path = getattr(self.bins, field)
            libraries[binary.name] = loaded_libcurl(binary)
        self.assertEqual(len(set(libraries.values())), 1,
                         f'the binaries load different libcurls: {libraries}')
        library = libraries['qemu-img']
        version = curl_version(library)
        match = re.match(r'libcurl/(\d+)\.(\d+)\.(\d+) ', version)
        self.assertIsNotNone(match, f'{library}: curl_version() said '
                             f'{version!r}')
        assert match is not None
        expected = os.environ.get('QCURL_LIBCURL_MAJOR', '')
        if expected:
            self.assertEqual(int(match.group(1)), int(expected),
                             f'{self.bins.build}/qemu-img loads {library}: '
                             f'{version}, not libcurl {expected}.x')
        else:
            # Anything the driver builds with: 7.x and later
            self.assertGreaterEqual(int(match.group(1)), 7, version)


if __name__ == '__main__':
    unittest.main()
