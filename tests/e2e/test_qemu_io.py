# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: qemu-io reads with pattern checks over https://.
#
# An image is made locally with known regions written by
# ``qemu-io write -P``; nginx serves it over HTTPS, and ``qemu-io -r``
# reads the regions back through the curl driver with ``read -P``:
# aligned and unaligned offsets, regions crossing 64 KiB and 1 MiB
# boundaries, a multi-MiB region, the last bytes of the file, and zero
# regions.  ``read -v`` hex dumps are compared with the local bytes.
"""qemu-io pattern reads and hex dumps over HTTPS."""

from __future__ import annotations

import unittest
from typing import ClassVar, List

import fixtures
from e2e_case import E2ETestCase
from fixtures import MiB, Nginx, PatternRegion, TestImage

#: Not a multiple of 4 KiB or 64 KiB, so the end of the file is unaligned
PATTERN_IMAGE_SIZE = 8 * MiB + 3 * 512


class QemuIoTest(E2ETestCase):
    """qemu-io -r -f raw -c 'read -P ...' https://..."""

    image: ClassVar[TestImage]
    regions: ClassVar[List[PatternRegion]]
    nginx: ClassVar[Nginx]
    url: ClassVar[str]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.regions = fixtures.standard_pattern_regions(PATTERN_IMAGE_SIZE)
        cls.image = fixtures.make_pattern_image(
            cls.class_tmp / 'pattern.raw', PATTERN_IMAGE_SIZE, cls.regions)
        cls.nginx = cls.start_server(Nginx(cls.class_tmp, cls.ca_dir))
        cls.url = cls.nginx.https_url(cls.image.name)

    def read(self, *commands: str) -> fixtures.CmdResult:
        """Run qemu-io -r -f raw with @commands on the image's URL."""
        args: List[str] = ['-r', '-f', 'raw']
        for command in commands:
            args += ['-c', command]
        return self.qemu_io(*args, self.url)

    def check_reads(self, *regions: PatternRegion) -> None:
        """Read @regions with pattern checks; assert they all pass."""
        result = self.read(*(r.read_cmd() for r in regions))
        self.assertSucceeded(result)
        self.assertNoPatternFailure(result.output, f'reading {regions}')
        for region in regions:
            self.assertIn(f'read {region.length}/{region.length} bytes at '
                          f'offset {region.offset}\n', result.stdout)

    def region(self, pattern: int) -> PatternRegion:
        """The region written with @pattern."""
        return next(r for r in self.regions if r.pattern == pattern)

    def test_aligned_start(self) -> None:
        """The first 4 KiB."""
        self.check_reads(self.region(0x11))

    def test_unaligned_small(self) -> None:
        """7777 bytes at an odd offset, crossing no boundary."""
        self.check_reads(self.region(0x22))

    def test_crossing_1mib(self) -> None:
        """300 bytes across the 1 MiB boundary."""
        self.check_reads(self.region(0x33))

    def test_large_unaligned(self) -> None:
        """2 MiB + 3 bytes from an odd offset."""
        self.check_reads(self.region(0x44))

    def test_near_end(self) -> None:
        """60000 bytes shortly before the end."""
        self.check_reads(self.region(0x55))

    def test_last_bytes(self) -> None:
        """The last 529 bytes, the last 17 and the very last byte."""
        last = self.region(0x66)
        size = self.image.size
        self.assertEqual(last.end, size)
        self.check_reads(last, PatternRegion(size - 17, 17, 0x66),
                         PatternRegion(size - 1, 1, 0x66))

    def test_parts_of_regions(self) -> None:
        """Unaligned pieces inside the regions, in one qemu-io run."""
        pieces = [PatternRegion(r.offset + 1 + r.length // 3,
                                max(1, r.length // 3), r.pattern)
                  for r in self.regions]
        self.check_reads(*pieces)

    def test_zero_regions(self) -> None:
        """Regions never written read as zeroes, also next to data."""
        gap0 = self.region(0x11).end
        gap1 = self.region(0x22).end
        self.check_reads(
            PatternRegion(gap0, self.region(0x22).offset - gap0, 0),
            PatternRegion(gap1, 1, 0),
            PatternRegion(6 * MiB, 100000, 0),
            PatternRegion(self.region(0x55).end,
                          self.region(0x66).offset -
                          self.region(0x55).end, 0))

    def test_all_regions_in_one_run(self) -> None:
        """Every region, in one qemu-io process, in reverse order."""
        self.check_reads(*reversed(self.regions))

    def test_wrong_pattern_is_detected(self) -> None:
        """Control: a wrong pattern is reported, so the checks mean
        something."""
        region = self.region(0x22)
        result = self.read(region.read_cmd(pattern=0x23))
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertIn('Pattern verification failed', result.output)

    def check_hexdump(self, offset: int, length: int) -> None:
        """Compare ``read -v`` of a range with the local file's bytes."""
        result = self.read(f'read -v {offset} {length}')
        self.assertSucceeded(result)
        dump = fixtures.parse_hexdump(result.stdout)
        expected = fixtures.read_bytes(self.image.path, offset, length)
        missing = [offset + i for i in range(length)
                   if offset + i not in dump]
        self.assertEqual(missing, [], f'offsets missing from the dump\n'
                         f'{result.stdout}')
        got = bytes(dump[offset + i] for i in range(length))
        self.assertEqual(got.hex(), expected.hex(), result.stdout)

    def test_hexdump_across_pattern_start(self) -> None:
        """read -v of 64 bytes where the 0x22 region starts."""
        self.check_hexdump(self.region(0x22).offset - 29, 64)

    def test_hexdump_across_1mib(self) -> None:
        """read -v of 100 bytes around 1 MiB, inside the 0x33 region."""
        self.check_hexdump(MiB - 50, 100)

    def test_hexdump_end_of_file(self) -> None:
        """read -v of the last 48 bytes, across the last region start."""
        self.check_hexdump(self.region(0x66).offset - 16, 48)


if __name__ == '__main__':
    unittest.main()
