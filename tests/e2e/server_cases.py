# SPDX-License-Identifier: GPL-2.0-or-later
#
# The cases that every real server of test_real_servers.py and
# test_ftps.py passes through QEMU's curl block driver, as a mixin of
# E2ETestCase: a subclass starts its servers and says how the driver
# reaches a file (its file.* options, --object options, environment).
#
# * test_convert_raw: qemu-img convert of the raw image gives its bytes.
# * test_convert_qcow2: so does a convert of the same data as qcow2.
# * test_random_reads: 48 reads in one qemu-io process, at random offsets
#   and of random lengths (1 byte to 12 KiB, every other one across a
#   64 KiB block boundary), each compared byte for byte with the file.
# * test_tar_member: the raw image inside a tar file, read in place with
#   file.offset (and a raw node bounding it), gives its bytes.
"""The convert, random read and tar member cases of the real servers."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Union

import fixtures
from e2e_case import E2ETestCase
from fixtures import COMMAND_TIMEOUT, CmdResult, KiB, TestImage
from servers import ServedImages, VsftpdTls, served_images

#: qemu-io reads, each checked byte for byte from its hex dump
RANDOM_READS = 48
LONGEST_READ = 12 * KiB
#: The driver's cache block: some reads start just before a multiple of it
BLOCK = 64 * KiB


def random_reads(size: int, seed: int) -> List[Tuple[int, int]]:
    """(offset, length) of RANDOM_READS reads all over a file of @size
    bytes; every other one straddles a BLOCK boundary."""
    rng = random.Random(seed)
    reads = []
    for number in range(RANDOM_READS):
        length = rng.randrange(1, LONGEST_READ + 1)
        if number % 2 and length > 1:
            boundary = rng.randrange(1, size // BLOCK) * BLOCK
            offset = boundary - rng.randrange(1, length)
        else:
            offset = rng.randrange(size - length + 1)
        reads.append((offset, length))
    return reads


class ServerCases(E2ETestCase):
    """Base of the real server tests; subclasses define file_options().

    unittest runs the cases of the subclasses only: test modules import
    this module, not the class, so that discovery does not find it.
    """

    images: ClassVar[ServedImages]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = served_images()

    # -- what subclasses say

    def file_options(self, name: str) -> Dict[str, Any]:
        """The options of the protocol node that reads file @name."""
        raise NotImplementedError

    def objects(self) -> List[str]:
        """--object options the node needs (tls-creds-x509, secret)."""
        return []

    def environment(self) -> Optional[Dict[str, str]]:
        """Environment variables for the QEMU tools (a proxy's)."""
        return None

    def after_each(self) -> None:
        """Checks after every case: that the server under test answered
        (its log); by default none."""

    # -- helpers

    def spec(self, name: str, fmt: str, **format_options: Any) -> str:
        """A json: filename of file @name opened as @fmt."""
        spec: Dict[str, Any] = {'driver': fmt, **format_options,
                                'file': self.file_options(name)}
        return 'json:' + json.dumps(spec)

    def tool(self, binary: Any, *args: Union[str, Any],
             timeout: float = COMMAND_TIMEOUT) -> CmdResult:
        """Run a QEMU tool with the objects and environment.

        qemu-img takes --object after its command (@args[0]).
        """
        objects: List[str] = []
        for obj in self.objects():
            objects += ['--object', obj]
        cut = 1 if binary == self.bins.qemu_img else 0
        return fixtures.run([binary, *args[:cut], *objects, *args[cut:]],
                            timeout=timeout, env=self.environment())

    def convert(self, source: str, out: Any) -> CmdResult:
        """qemu-img convert @source to raw file @out."""
        return self.tool(self.bins.qemu_img, 'convert', '-O', 'raw', source,
                         out)

    def check_convert(self, image: TestImage, name: str, **format_options:
                      Any) -> None:
        """Convert file @name as @image's format; the result must be the
        raw image's data."""
        out = self.tmp / 'out.raw'
        result = self.convert(self.spec(name, image.fmt, **format_options),
                              out)
        self.assertSucceeded(result, f'convert of {name}')
        self.assertFileHasImageData(out, self.images.raw)
        self.after_each()

    def assertProxyRefused(self, result: CmdResult) -> None:
        """Assert that a command failed because a proxy answered 407, and
        that its message says so (the proxy and the status)."""
        self.assertFailedCleanly(result)
        self.assertRegex(result.stderr, re.compile(r'proxy.*407',
                                                   re.IGNORECASE | re.S),
                         result.describe())

    # -- the cases

    def test_convert_raw(self) -> None:
        """qemu-img convert of the raw image: every byte."""
        self.check_convert(self.images.raw, self.images.raw.name)

    def test_convert_qcow2(self) -> None:
        """qemu-img convert of the qcow2 image to raw: every byte."""
        self.check_convert(self.images.qcow2, self.images.qcow2.name)

    def test_tar_member(self) -> None:
        """The raw image inside the tar file, with file.offset."""
        member = self.images.member
        self.assertNotEqual(member.offset % (4 * KiB), 0)
        out = self.tmp / 'out.raw'
        spec: Dict[str, Any] = {'driver': 'raw', 'offset': 0,
                                'size': member.size,
                                'file': {**self.file_options(
                                    self.images.tar.name),
                                         'offset': member.offset}}
        result = self.convert('json:' + json.dumps(spec), out)
        self.assertSucceeded(result, 'convert of the tar member')
        self.assertFileHasImageData(out, self.images.raw)
        self.after_each()

    def test_random_reads(self) -> None:
        """Random reads in one qemu-io process return the file's bytes."""
        raw = self.images.raw
        reads = random_reads(raw.size, 20261208)
        commands = []
        for offset, length in reads:
            commands += ['-c', f'read -v {offset} {length}']
        result = self.tool(self.bins.qemu_io, '-r', *commands,
                           self.spec(raw.name, 'raw'))
        self.assertSucceeded(result, 'qemu-io')
        done = [f'read {length}/{length} bytes at offset {offset}'
                for offset, length in reads]
        missing = [line for line in done if line not in result.stdout]
        self.assertEqual(missing, [], f'reads that did not complete\n'
                         f'{result.describe()}')
        dumped = fixtures.parse_hexdump(result.stdout)
        wrong = []
        for offset, length in reads:
            got = [dumped.get(offset + i) for i in range(length)]
            if got != list(fixtures.read_bytes(raw.path, offset, length)):
                wrong.append(f'{length} bytes at {offset}')
        self.assertEqual(wrong, [], 'reads whose bytes are not the file\'s')
        self.after_each()


def parse_headers(text: str) -> Tuple[int, Dict[str, str]]:
    """The status and headers (lower-case names) of the last answer in
    curl's -D output (after a proxy's "200 Connection established")."""
    blocks = [b for b in re.split(r'\r?\n\r?\n', text) if b.strip()]
    if not blocks:
        return 0, {}
    lines = blocks[-1].splitlines()
    status = int(lines[0].split()[1]) if len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(':')
        headers[name.strip().lower()] = value.strip()
    return status, headers


class HttpServerCases(ServerCases):
    """ServerCases over http:// or https://, with a check of the
    validators the server's answers carry, as the curl CLI sees them."""

    def url_of(self, name: str) -> str:
        """The URL of file @name (what file.url is)."""
        return str(self.file_options(name)['url'])

    def curl_options(self) -> List[str]:
        """Options of the curl CLI to reach the server (a CA, a proxy's
        credentials)."""
        return []

    def curl_headers(self, *args: str) -> Tuple[int, Dict[str, str]]:
        """The status and headers of curl's answer for the raw image."""
        result = fixtures.run(['curl', '-sS', '-D', '-', '-o', '/dev/null',
                               *self.curl_options(), *args,
                               self.url_of(self.images.raw.name)],
                              env=self.environment(), timeout=60)
        self.assertSucceeded(result, 'curl')
        return parse_headers(result.stdout)

    def test_validators(self) -> None:
        """A 206 carries the validator that a HEAD gave, as the driver
        demands: the strong ETag, else Last-Modified."""
        head_status, head = self.curl_headers('-I')
        range_status, ranged = self.curl_headers('-r', '4096-8191')
        self.assertEqual((head_status, range_status), (200, 206),
                         f'HEAD {head}, GET {ranged}')
        self.assertEqual(ranged.get('content-range'),
                         f'bytes 4096-8191/{self.images.raw.size}')
        etag = head.get('etag', '')
        if etag and not etag.startswith('W/'):
            self.assertEqual(ranged.get('etag'), etag, 'the 206\'s ETag')
        elif 'last-modified' in head:
            self.assertEqual(ranged.get('last-modified'),
                             head['last-modified'],
                             'the 206\'s Last-Modified')
        self.assertTrue(etag or 'last-modified' in head,
                        f'no validator at all: {head}')


class RecentFileCases(HttpServerCases):
    """Base of the servers whose files have no ETag: the driver pins them
    by Last-Modified, and sends that date as If-Range."""

    def check_recent_file(self, age: float) -> None:
        """A file modified @age seconds before the convert gives its
        bytes."""
        source = self.images.raw
        name = f'recent-{type(self).__name__}.raw'
        path = self.images.directory / name
        shutil.copyfile(source.path, path)
        self.addCleanup(path.unlink)
        path.chmod(0o644)
        mtime = time.time() - age
        os.utime(path, (mtime, mtime))
        out = self.tmp / 'out.raw'
        result = self.convert(self.spec(name, 'raw'), out)
        self.assertSucceeded(result, f'convert of a file modified {age} s '
                             'before')
        self.assertFileHasImageData(out, source)


class FtpsCases(ServerCases):
    """Base: one vsftpd with TLS for the class."""

    ftp: ClassVar[VsftpdTls]

    def after_each(self) -> None:
        """The data connections were protected by TLS."""
        log = self.ftp.log()
        self.assertTrue('"PROT P"' in log, 'vsftpd logged no PROT P')
        self.assertTrue('"RETR' in log, 'vsftpd logged no transfer')

    def open_fails(self, options: Dict[str, Any],
                   objects: List[str]) -> CmdResult:
        """qemu-img info of the raw image with file @options; it must
        fail cleanly."""
        args: List[str] = []
        for obj in objects:
            args += ['--object', obj]
        result = fixtures.run([self.bins.qemu_img, 'info', *args,
                               'json:' + json.dumps({'driver': 'raw',
                                                     'file': options})],
                              timeout=90)
        self.assertFailedCleanly(result)
        return result
