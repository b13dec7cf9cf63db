# SPDX-License-Identifier: GPL-2.0-or-later
#
# Base class of the e2e test cases of QEMU's curl block driver.
#
# It gives each test class the binaries under test and the test CA, a
# private temporary directory per class and per test, helpers to run
# qemu-img and qemu-io with timeouts, and assertions that compare data
# byte for byte and put the commands' output into failure messages.
"""The e2e TestCase base class and its assertions."""

from __future__ import annotations

import os
import unittest
from pathlib import Path
from typing import (Any, ClassVar, Iterable, List, Optional, Sequence,
                    Tuple, TypeVar, Union)

import fixtures
from fixtures import (COMMAND_TIMEOUT, Binaries, CmdResult, ImageSet, KiB,
                      MiB, MissingPrerequisite, Nginx, PatternRegion,
                      QemuSystem, RangeServer, TestImage)

#: Timeout for commands that are expected to fail quickly
ERROR_TIMEOUT = 90.0

#: The driver's unit of fetching: every Range request starts on a multiple
#: of it past the image's offset, and ends on one or at the end of the file
GRANULE = 4 * KiB
#: The longest Range request the driver sends (a readahead fetch)
LARGEST_FETCH = 4 * MiB
#: What the warm-up at open asks for: its first fetch (over the connection
#: that the size probe left open), then one fetch on each other connection
WARM_UP_FIRST_FETCH = 512 * KiB
WARM_UP_FETCH = 64 * KiB

ServerT = TypeVar('ServerT')


def granule_range(offset: int, length: int, size: int) -> Tuple[int, int]:
    """The inclusive byte range of the granules that hold the bytes from
    @offset, @length of them, of a file of @size bytes."""
    return (offset // GRANULE * GRANULE,
            min(-(-min(offset + length, size) // GRANULE) * GRANULE,
                size) - 1)


def warm_up_ranges(size: int, connections: int = 16
                   ) -> List[Tuple[int, int]]:
    """What the warm-up at open asks for, as inclusive ranges: 512 KiB
    from the start of the image, then connections - 1 fetches of 64 KiB
    one after the other, all cut at the end of an image of @size bytes."""
    starts = [0] + [WARM_UP_FIRST_FETCH + i * WARM_UP_FETCH
                    for i in range(connections - 1)]
    ends = starts[1:] + [starts[-1] + (WARM_UP_FETCH if connections > 1
                                       else WARM_UP_FIRST_FETCH)]
    return [(first, min(end, size) - 1)
            for first, end in zip(starts, ends) if first < size]


def read_granules(reads: Iterable[Tuple[int, int]],
                  size: int) -> List[Tuple[int, int]]:
    """The granules that hold the bytes of @reads ((offset, length)
    each) of a file of @size bytes, as merged inclusive ranges."""
    return merge_ranges(granule_range(offset, length, size)
                        for offset, length in reads if length)


def merge_ranges(ranges: Iterable[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """The union of inclusive (first, last) @ranges, as sorted disjoint
    inclusive ranges (touching ones merged)."""
    merged: List[Tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def subtract_ranges(ranges: Iterable[Tuple[int, int]],
                    cut: Iterable[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """The bytes of inclusive @ranges that none of @cut holds, as sorted
    disjoint inclusive ranges."""
    left = merge_ranges(ranges)
    for c_first, c_last in merge_ranges(cut):
        kept: List[Tuple[int, int]] = []
        for first, last in left:
            if last < c_first or first > c_last:
                kept.append((first, last))
                continue
            if first < c_first:
                kept.append((first, c_first - 1))
            if last > c_last:
                kept.append((c_last + 1, last))
        left = kept
    return left


def overlapping_ranges(ranges: Iterable[Tuple[int, int]]
                       ) -> List[Tuple[Tuple[int, int], Tuple[int, int]]]:
    """The pairs of inclusive @ranges that share a byte (each range
    against the one that reaches furthest before it)."""
    pairs = []
    reach: Optional[Tuple[int, int]] = None
    for first, last in sorted(ranges):
        if reach is not None and first <= reach[1]:
            pairs.append((reach, (first, last)))
        if reach is None or last > reach[1]:
            reach = (first, last)
    return pairs


class E2ETestCase(unittest.TestCase):
    """Base class: binaries, temporary directories and assertions.

    Class attributes set by setUpClass: ``bins`` (the Binaries),
    ``ca_dir`` (the test CA directory) and ``class_tmp`` (a temporary
    directory for the class).  Each test also gets ``self.tmp``.
    """

    bins: ClassVar[Binaries]
    ca_dir: ClassVar[Path]
    class_tmp: ClassVar[Path]
    tmp: Path

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        try:
            cls.bins = fixtures.binaries()
            cls.ca_dir = fixtures.get_ca_dir()
        except MissingPrerequisite as err:
            raise unittest.SkipTest(str(err)) from err
        cls.class_tmp = fixtures.make_tempdir(cls.__name__)
        cls.addClassCleanup(fixtures.remove_tree, cls.class_tmp)

    def setUp(self) -> None:
        super().setUp()
        self.tmp = fixtures.make_tempdir(self.id().rsplit('.', 1)[-1][:40])
        self.addCleanup(fixtures.remove_tree, self.tmp)

    @classmethod
    def start_server(cls, server: ServerT) -> ServerT:
        """Start @server (anything with start/stop) for the whole class."""
        server.start()  # type: ignore[attr-defined]
        cls.addClassCleanup(server.stop)  # type: ignore[attr-defined]
        return server

    @classmethod
    def start_range_server(cls, directory: Union[str, Path]) -> RangeServer:
        """Start a range server of @directory for the whole class, logging
        to range-server.log in the class's directory."""
        return cls.start_server(RangeServer(
            str(directory), log_path=str(cls.class_tmp / 'range-server.log')))

    # -- commands

    def qemu_img(self, *args: Union[str, Path],
                 timeout: float = COMMAND_TIMEOUT) -> CmdResult:
        """Run the qemu-img under test."""
        return fixtures.run([self.bins.qemu_img, *args], timeout=timeout)

    def qemu_io(self, *args: Union[str, Path],
                timeout: float = COMMAND_TIMEOUT) -> CmdResult:
        """Run the qemu-io under test."""
        return fixtures.run([self.bins.qemu_io, *args], timeout=timeout)

    # -- assertions

    def assertSucceeded(self, result: CmdResult, msg: str = '') -> None:
        """Assert that a command exited with 0."""
        if result.returncode != 0:
            self.fail(f'{msg + ": " if msg else ""}command failed\n'
                      f'{result.describe()}')

    def assertFailedCleanly(self, result: CmdResult, msg: str = '') -> None:
        """Assert that a command failed with an error exit, not a crash.

        (A command that hangs is killed by run(), which fails the test.)
        """
        if result.returncode == 0:
            self.fail(f'{msg + ": " if msg else ""}command unexpectedly '
                      f'succeeded\n{result.describe()}')
        if result.returncode < 0 or result.returncode >= 128:
            self.fail(f'{msg + ": " if msg else ""}command crashed or was '
                      f'killed\n{result.describe()}')

    def assertOutputMentions(self, result: CmdResult, *needles: str,
                             msg: str = '') -> None:
        """Assert that stderr or stdout mentions one of @needles.

        Comparison is case-insensitive.
        """
        text = result.output.lower()
        if not any(needle.lower() in text for needle in needles):
            self.fail(f'{msg + ": " if msg else ""}output mentions none of '
                      f'{needles!r}\n{result.describe()}')

    def assertFileHasImageData(self, path: Union[str, Path],
                               image: TestImage) -> None:
        """Assert that a raw file holds exactly @image's guest data."""
        size = os.path.getsize(path)
        self.assertEqual(size, image.size,
                         f'{path}: size {size}, expected {image.size}')
        digest = fixtures.sha256_file(path)
        self.assertEqual(digest, image.sha256,
                         f'{path}: sha256 differs from {image.path}')

    def assertSameGuestData(self, target: str, target_fmt: str,
                            image: TestImage,
                            timeout: float = COMMAND_TIMEOUT) -> None:
        """Assert with ``qemu-img compare`` that @target equals @image.

        @target is a file name or a URI (nbd+unix://...) that qemu-img
        opens with format @target_fmt.
        """
        result = self.qemu_img('compare', '-f', target_fmt, '-F', image.fmt,
                               target, image.path, timeout=timeout)
        if result.returncode != 0 or 'Images are identical' not in \
                result.stdout:
            self.fail(f'{target} differs from {image.path}\n'
                      f'{result.describe()}')

    def assertConvertOutput(self, out: Union[str, Path], out_fmt: str,
                            reference: TestImage) -> None:
        """Assert that a qemu-img convert output file holds @reference.

        Always qemu-img compare; for raw output also size and sha256,
        for qcow2 output also qemu-img check.
        """
        self.assertSameGuestData(str(out), out_fmt, reference)
        if out_fmt == 'raw':
            self.assertFileHasImageData(out, reference)
        else:
            self.assertImageCheckClean(out, out_fmt)

    def assertImageCheckClean(self, path: Union[str, Path],
                              fmt: str = 'qcow2') -> None:
        """Assert that ``qemu-img check`` finds no error in a local image."""
        result = self.qemu_img('check', '-f', fmt, path)
        self.assertSucceeded(result, f'qemu-img check {path}')

    def assertNoPatternFailure(self, output: str, context: Any = '') -> None:
        """Assert that qemu-io output reports no failed pattern check."""
        for bad in ('Pattern verification failed', 'read failed',
                    'Input/output error'):
            if bad in output:
                self.fail(f'qemu-io reported {bad!r} {context}\n{output}')

    def assertFetchRanges(self, ranges: Sequence[Tuple[int, int]],
                          file_size: int, offset: int = 0,
                          cover: Optional[Tuple[int, int]] = None,
                          once: bool = False, msg: str = '',
                          largest: Optional[int] = LARGEST_FETCH) -> None:
        """Assert that the inclusive (first, last) byte ranges a server
        was asked for are ranges the driver may ask for.

        Each starts @offset plus a multiple of GRANULE into the remote file
        of @file_size bytes, ends one byte before such a multiple or at the
        end of the file, and is at most @largest long (None: any length,
        as over FTP, where readahead has no reason to split its
        transfers).  With @cover
        (start, end), counted from @offset, the ranges together hold every
        byte from start to end; with @once, no byte was asked for twice.
        """
        prefix = f'{msg}: ' if msg else ''
        self.assertTrue(ranges, f'{prefix}no Range request logged')
        bad = [(first, last) for first, last in ranges
               if first < offset or (first - offset) % GRANULE or
               last >= file_size or last < first or
               ((last + 1 - offset) % GRANULE and last != file_size - 1) or
               (largest is not None and last + 1 - first > largest)]
        self.assertEqual(bad, [], f'{prefix}ranges of a {file_size}-byte '
                         f'file that are not whole {GRANULE}-byte granules '
                         f'from {offset}, or longer than {largest}')
        if once:
            self.assertEqual(overlapping_ranges(ranges), [],
                             f'{prefix}bytes asked for twice')
        if cover is not None:
            want = (offset + cover[0], offset + cover[1] - 1)
            held = [r for r in merge_ranges(ranges)
                    if r[0] <= want[0] and r[1] >= want[1]]
            self.assertTrue(held, f'{prefix}the ranges asked for, '
                            f'{merge_ranges(ranges)}, do not hold every '
                            f'byte from {want[0]} to {want[1]}')

    def check_hmp_reads(self, qemu: QemuSystem,
                        regions: Sequence[PatternRegion],
                        device: str) -> None:
        """qemu-io read -P of every pattern region of @device through HMP,
        and one with a wrong pattern that must be reported; then quit.

        The HMP qemu-io command prints its results on QEMU's stdout (not
        in the HMP answer), so they are checked once QEMU has quit.
        """
        for region in regions:
            answer = qemu.hmp(f'qemu-io {device} "{region.read_cmd()}"')
            self.assertNoPatternFailure(answer, f'in {region}')
        control = regions[1]
        qemu.hmp(f'qemu-io {device} '
                 f'"{control.read_cmd(control.pattern ^ 0xff)}"')
        self.assertEqual(qemu.shutdown(), 0)

        output = qemu.output(limit=None)
        for region in regions:
            self.assertIn(f'read {region.length}/{region.length} bytes at '
                          f'offset {region.offset}\n', output)
        failures = [line for line in output.splitlines()
                    if 'Pattern verification failed' in line]
        self.assertEqual(failures, [f'Pattern verification failed at '
                                    f'offset {control.offset}, '
                                    f'{control.length} bytes'], output)
        for bad in ('read failed', 'Input/output error'):
            self.assertNotIn(bad, output)


class NginxImagesCase(E2ETestCase):
    """A test class with the shared test images (``images``) served by one
    nginx over HTTP and HTTPS (``nginx``) for the whole class."""

    images: ClassVar[ImageSet]
    nginx: ClassVar[Nginx]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = fixtures.shared_images()
        cls.nginx = cls.start_server(Nginx(cls.images.directory, cls.ca_dir))


def first_line_with(text: str, needle: str) -> Optional[str]:
    """Return the first line of @text that contains @needle, if any."""
    for line in text.splitlines():
        if needle in line:
            return line.strip()
    return None
