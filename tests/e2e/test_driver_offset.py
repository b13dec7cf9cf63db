# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: images read in place from a tar file, with the offset option.
#
# The raw and the qcow2 standard images are members of an uncompressed
# tar file (GNU format, written with Python's tarfile), each after a
# member of odd size, so that their data starts at a multiple of 512
# that no block size (4 KiB or more) divides.  nginx serves the tar file
# over HTTPS.  As the documentation describes, file.offset is set to
# where a member's data starts, and a raw image is bounded with a raw
# format node (offset=0,size=<member size>) on top; a qcow2 image knows
# its own size.
#
# Checked: qemu-img convert gives the image's data byte for byte with
# several block sizes; every Range request that nginx logged starts on a
# 4 KiB granule counted from the offset (bytes=O+k*4096-...) and ends
# on one or at the end of the remote file, no byte is asked for twice,
# and a raw member's every byte is asked for; qemu-img info
# reports the member's size; an offset at or past the end of the file is
# refused naming offset, the last byte is a one-byte image; an offset
# past 4 GiB (in a sparse 6 GiB file) works; GNU tar's listing gives the
# same offsets as the documentation's recipe says.
"""Images inside a tar file, read in place with file.offset."""

from __future__ import annotations

import json
import re
import unittest
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import fixtures
from e2e_case import ERROR_TIMEOUT, GRANULE, E2ETestCase
from fixtures import ImageSet, KiB, MiB, Nginx, TarMember, TestImage

TAR_NAME = 'images.tar'

#: A sparse file of 6 GiB, with 0x5a from BIG_OFFSET on for 100000 bytes
#: and 0xa5 in its last 5000 bytes
BIG_NAME = 'big.bin'
BIG_SIZE = 6 * 1024 * MiB
BIG_OFFSET = 5 * 1024 * MiB + 1536


class DriverOffsetTest(E2ETestCase):
    """file.offset: a raw and a qcow2 image inside images.tar."""

    images: ClassVar[ImageSet]
    nginx: ClassVar[Nginx]
    members: ClassVar[Dict[str, TarMember]]
    tar_size: ClassVar[int]
    url: ClassVar[str]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = fixtures.shared_images()
        directory = cls.class_tmp / 'www'
        directory.mkdir()
        tar_path = directory / TAR_NAME
        cls.members = fixtures.make_tar(tar_path, [
            ('README', b'an odd-sized member before the raw image\n' * 301),
            ('disk.raw', cls.images.raw.path),
            ('notes.txt', b'x' * 777),
            ('disk.qcow2', cls.images.qcow2.path),
        ])
        cls.tar_size = tar_path.stat().st_size
        for name in ('disk.raw', 'disk.qcow2'):
            # Not a multiple of the smallest block size, hence of none
            assert cls.members[name].offset % (4 * KiB) != 0, cls.members
        # A sparse file larger than 4 GiB, with data past 5 GiB
        with open(directory / BIG_NAME, 'wb') as big:
            big.truncate(BIG_SIZE)
            big.seek(BIG_OFFSET)
            big.write(b'\x5a' * 100000)
            big.seek(BIG_SIZE - 5000)
            big.write(b'\xa5' * 5000)
        cls.nginx = cls.start_server(Nginx(directory, cls.ca_dir))
        cls.url = cls.nginx.https_url(TAR_NAME)

    def setUp(self) -> None:
        super().setUp()
        self.nginx.reset_log()

    # -- helpers

    def image_opts(self, image: TestImage, offset: int,
                   blocksize: Optional[int] = None,
                   bounded: bool = True) -> str:
        """--image-opts for @image stored at @offset of the tar file.

        A raw image gets offset=0,size=<its size> on its format node if
        @bounded.
        """
        spec = f'driver={image.fmt},'
        if image.fmt == 'raw' and bounded:
            spec += f'offset=0,size={image.size},'
        spec += f'file.driver=https,file.url={self.url},file.offset={offset}'
        if blocksize is not None:
            spec += f',file.blocksize={blocksize}'
        return spec

    def logged_ranges(self) -> List[Tuple[int, int]]:
        """The byte ranges of the GETs nginx answered, all with 206."""
        gets = [e for e in self.nginx.settled_log() if e['method'] == 'GET']
        self.assertTrue(gets, 'no GET logged')
        self.assertEqual({e['status'] for e in gets}, {206})
        return [fixtures.parse_byte_range(e['range']) for e in gets]

    def check_convert(self, name: str, blocksize: int,
                      json_filename: bool = False) -> None:
        """Convert member @name with @blocksize; check data and ranges."""
        image: TestImage = (self.images.raw if name == 'disk.raw' else
                            self.images.qcow2)
        member = self.members[name]
        self.assertEqual(member.size, image.path.stat().st_size)
        out = self.tmp / 'out.raw'
        if json_filename:
            spec: Dict[str, Any] = {'driver': image.fmt,
                    'file': {'driver': 'https', 'url': self.url,
                             'offset': member.offset,
                             'blocksize': blocksize}}
            if image.fmt == 'raw':
                spec.update(offset=0, size=image.size)
            source = [f'json:{json.dumps(spec)}']
        else:
            source = ['--image-opts',
                      self.image_opts(image, member.offset, blocksize)]
        result = self.qemu_img('convert', '-O', 'raw', *source, out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, self.images.raw)
        # (the default cache, 56 MiB, holds the whole tar file)
        self.assertFetchRanges(
            self.logged_ranges(), self.tar_size, member.offset,
            cover=(0, member.size) if image.fmt == 'raw' else None,
            once=True)

    # -- convert

    def test_raw_member_blocksize_4k(self) -> None:
        """Raw member, 4 KiB blocks."""
        self.check_convert('disk.raw', 4 * KiB)

    def test_raw_member_blocksize_64k(self) -> None:
        """Raw member, 64 KiB blocks."""
        self.check_convert('disk.raw', 64 * KiB)

    def test_raw_member_blocksize_2m_json(self) -> None:
        """Raw member, 2 MiB blocks, options in a json: filename."""
        self.check_convert('disk.raw', 2 * MiB, json_filename=True)

    def test_qcow2_member_blocksize_4k(self) -> None:
        """qcow2 member, 4 KiB blocks."""
        self.check_convert('disk.qcow2', 4 * KiB)

    def test_qcow2_member_blocksize_64k_json(self) -> None:
        """qcow2 member, 64 KiB blocks, options in a json: filename."""
        self.check_convert('disk.qcow2', 64 * KiB, json_filename=True)

    def test_qcow2_member_blocksize_2m(self) -> None:
        """qcow2 member, 2 MiB blocks: the last block is the tar file's
        tail."""
        self.check_convert('disk.qcow2', 2 * MiB)

    def test_raw_member_last_bytes(self) -> None:
        """The last bytes of the raw member and the first of the next
        header, read without the raw bounds, equal the tar file's."""
        member = self.members['disk.raw']
        start = member.size - 100
        result = self.qemu_io(
            '-r', '-c', f'read -v {start} 612', '--image-opts',
            self.image_opts(self.images.raw, member.offset, 64 * KiB,
                            bounded=False))
        self.assertSucceeded(result)
        dump = fixtures.parse_hexdump(result.stdout)
        self.assertEqual(sorted(dump), list(range(start, start + 612)),
                         result.stdout)
        got = bytes(dump[start + i] for i in range(612))
        expected = fixtures.read_bytes(self.nginx.root / TAR_NAME,
                                       member.offset + start, 612)
        self.assertEqual(got.hex(), expected.hex())

    # -- sizes

    def info_virtual_size(self, spec: str) -> int:
        """qemu-img info --output=json's virtual size for @spec."""
        result = self.qemu_img('info', '--output=json', '--image-opts', spec)
        self.assertSucceeded(result)
        return int(json.loads(result.stdout)['virtual-size'])

    def test_qcow2_member_info(self) -> None:
        """qemu-img info of the qcow2 member: its own virtual size."""
        member = self.members['disk.qcow2']
        result = self.qemu_img(
            'info', '--image-opts',
            self.image_opts(self.images.qcow2, member.offset))
        self.assertSucceeded(result)
        self.assertIn('file format: qcow2\n', result.stdout)
        self.assertRegex(result.stdout, rf'virtual size: [^\n]*\('
                         rf'{self.images.qcow2.size} bytes\)')
        self.assertRegex(result.stdout, rf'file length: [^\n]*\('
                         rf'{self.tar_size - member.offset} bytes\)')

    def test_raw_member_info(self) -> None:
        """The raw member: bounded, the member's size; unbounded, up to
        the end of the tar file."""
        member = self.members['disk.raw']
        image = self.images.raw
        self.assertEqual(self.info_virtual_size(
            self.image_opts(image, member.offset)), image.size)
        self.assertEqual(self.info_virtual_size(
            self.image_opts(image, member.offset, bounded=False)),
            self.tar_size - member.offset)

    def test_offset_beyond_4g(self) -> None:
        """An offset past 4 GiB, in a 6 GiB file: the data, the size and
        the ranges asked for are right."""
        spec = (f'driver=raw,file.driver=https,'
                f'file.url={self.nginx.https_url(BIG_NAME)},'
                f'file.offset={BIG_OFFSET},file.blocksize=4k,'
                f'file.readahead=0')
        length = BIG_SIZE - BIG_OFFSET
        result = self.qemu_io('-r', '-c', 'read -P 0x5a 0 100000', '-c',
                              'read -P 0 100000 1000', '-c',
                              f'read -P 0xa5 {length - 5000} 5000',
                              '--image-opts', spec)
        self.assertSucceeded(result)
        self.assertNoPatternFailure(result.output)
        self.assertEqual(result.stdout.count('bytes at offset'), 3,
                         result.stdout)
        # Each read fetches its own granules, counted from the offset,
        # once: the second read lies in the last granule of the first
        first_end = BIG_OFFSET + -(-100000 // GRANULE) * GRANULE
        last_start = BIG_OFFSET + (length - 5000) // GRANULE * GRANULE
        self.assertEqual(sorted(self.logged_ranges()),
                         [(BIG_OFFSET, first_end - 1),
                          (last_start, BIG_SIZE - 1)])
        # (the last granule is short: granules count from the offset)
        self.assertNotEqual(length % GRANULE, 0)
        self.assertEqual(self.info_virtual_size(spec), length)

    # -- errors

    def check_offset_refused(self, offset: int) -> None:
        """file.offset=@offset is refused, with a message naming it."""
        result = self.qemu_img(
            'info', '--image-opts',
            self.image_opts(self.images.raw, offset, bounded=False),
            timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertIn(f'offset {offset} is at or past the end of the remote '
                      f'file, which has {self.tar_size} bytes', result.stderr)

    def test_offset_at_end_refused(self) -> None:
        """offset = the size of the tar file."""
        self.check_offset_refused(self.tar_size)

    def test_offset_past_end_refused(self) -> None:
        """offset past the end of the tar file."""
        self.check_offset_refused(self.tar_size + 12345)

    def test_last_byte_offset_accepted(self) -> None:
        """offset = size - 1: a one-byte image, fetched with a one-byte
        range request (raw rounds the image up to 512 bytes of which
        the rest reads as zeroes)."""
        offset = self.tar_size - 1
        result = self.qemu_io(
            '-r', '-c', 'read -P 0 0 512', '--image-opts',
            self.image_opts(self.images.raw, offset, bounded=False))
        self.assertSucceeded(result)
        self.assertNoPatternFailure(result.output)
        self.assertIn('read 512/512 bytes at offset 0\n', result.stdout)
        self.assertEqual(self.logged_ranges(), [(offset, offset)])

    # -- the documented recipe

    def test_gnu_tar_listing_gives_the_offsets(self) -> None:
        """(block + 1) * 512 from 'tar --list --verbose --block-number'
        is where each image's data starts, as the documentation says."""
        result = fixtures.run(['tar', '--list', '--verbose',
                               '--block-number', '--file',
                               self.nginx.root / TAR_NAME], check=True)
        listed = {}
        for line in result.stdout.splitlines():
            match = re.match(r'block (\d+): .* (\S+)$', line)
            if match:
                listed[match.group(2)] = (int(match.group(1)) + 1) * 512
        self.assertEqual(listed.get('disk.raw'),
                         self.members['disk.raw'].offset, result.stdout)
        self.assertEqual(listed.get('disk.qcow2'),
                         self.members['disk.qcow2'].offset, result.stdout)


if __name__ == '__main__':
    unittest.main()
