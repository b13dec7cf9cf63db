# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: qemu-img convert with the curl driver's cache options.
#
# Converts the raw, qcow2 and compressed qcow2 standard images from
# nginx over http:// (options in a json: filename) and https://
# (options with --image-opts), and from the range server over http://,
# with the default options and with a covering set of values of
# blocksize (4k, 64k, 2M, 64M), blockcount (1, 2, default, 256),
# connections (1, 4, 16) and readahead (0, default): every value of
# every option appears for each image and each source, and so do the
# extreme pairs blocksize=4k + blockcount=1, blocksize=64M +
# blockcount=2, blockcount=1 + readahead=0 and connections=1 + the
# default readahead.
#
# Every output is checked byte for byte (size and sha256 of the raw
# output), and the server's log must show well-formed fetches: each GET
# answered with 206, starting and ending on a 4 KiB granule (or at the
# end of the file), at most 4 MiB long, over no more connections than
# allowed; for raw images every byte of the file was asked for, and no
# byte was asked for twice whenever the cache can hold the whole file.
#
# Also: blockcount=1 with the default readahead (which then becomes 0)
# works and fetches nothing ahead; readahead larger than
# (blockcount - 1) * blocksize is refused, naming readahead.
"""qemu-img convert over a grid of blocksize/blockcount/connections/
readahead values, checked byte for byte and against the server logs."""

from __future__ import annotations

import json
import unittest
from typing import Any, Callable, ClassVar, Dict, List, Tuple

import fixtures
from e2e_case import NginxImagesCase
from fixtures import CmdResult, KiB, MiB, RangeServer, TestImage

DEFAULT_BLOCKSIZE = 64 * KiB
#: The default cache size: blockcount defaults to it over blocksize
DEFAULT_CACHE = 56 * MiB
DEFAULT_CONNECTIONS = 16

#: The option sets: name -> driver options (absent: the default)
OPTION_SETS: Dict[str, Dict[str, int]] = {
    'defaults': {},
    # blockcount=1 and the default readahead, which becomes 0
    'bs4k_bc1_c4': {'blocksize': 4 * KiB, 'blockcount': 1,
                    'connections': 4},
    'bs4k_bc256_c16_ra0': {'blocksize': 4 * KiB, 'blockcount': 256,
                           'connections': 16, 'readahead': 0},
    'bs64k_bc1_c16_ra0': {'blocksize': 64 * KiB, 'blockcount': 1,
                          'connections': 16, 'readahead': 0},
    'bs64k_c1': {'blocksize': 64 * KiB, 'connections': 1},
    'bs2m_bc2_c4_ra0': {'blocksize': 2 * MiB, 'blockcount': 2,
                        'connections': 4, 'readahead': 0},
    'bs2m_bc256_c1': {'blocksize': 2 * MiB, 'blockcount': 256,
                      'connections': 1},
    'bs64m_bc2_c16': {'blocksize': 64 * MiB, 'blockcount': 2,
                      'connections': 16},
    'bs64m_c1_ra0': {'blocksize': 64 * MiB, 'connections': 1,
                     'readahead': 0},
}

IMAGES = ('raw', 'qcow2', 'qcow2c')

#: Sources: nginx over http (json: filename), nginx over https
#: (--image-opts), the range server over http (json: filename)
SOURCES = ('http', 'https', 'rangeserver')


def size_text(value: int) -> str:
    """Spell a size as a user would: 4k, 64k, 2M, 64M."""
    for unit, suffix in ((MiB, 'M'), (KiB, 'k')):
        if value >= unit and value % unit == 0:
            return f'{value // unit}{suffix}'
    return str(value)


class DriverGridTest(NginxImagesCase):
    """qemu-img convert with blocksize/blockcount/connections/readahead."""

    range_server: ClassVar[RangeServer]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.range_server = cls.start_range_server(cls.images.directory)

    def setUp(self) -> None:
        super().setUp()
        self.nginx.reset_log()
        self.range_server.reset()

    # -- helpers

    def source_spec(self, source: str, image: TestImage,
                    options: Dict[str, int]) -> List[str]:
        """The qemu-img arguments that open @image from @source."""
        if source == 'https':
            opts = ''.join(f',file.{key}={size_text(value)}'
                           for key, value in options.items())
            return ['--image-opts',
                    f'driver={image.fmt},file.driver=https,'
                    f'file.url={self.nginx.https_url(image.name)}{opts}']
        url = (self.nginx.http_url(image.name) if source == 'http' else
               self.range_server.url(image.name))
        spec = {'driver': image.fmt,
                'file': {'driver': 'http', 'url': url, **options}}
        return [f'json:{json.dumps(spec)}']

    def server_gets(self, source: str,
                    image: TestImage) -> List[Tuple[int, int, int, Any]]:
        """The GETs of @image: (first, last, status, connection) each."""
        result = []
        if source == 'rangeserver':
            for entry in self.range_server.stats()['log']:
                if entry['method'] == 'GET' and \
                        entry['path'] == '/' + image.name:
                    first, last = fixtures.parse_byte_range(
                        entry['range'] or '')
                    result.append((first, last, entry['status'],
                                   entry['client_port']))
            return result
        for entry in self.nginx.settled_log():
            if entry['method'] == 'GET' and entry['uri'] == '/' + image.name:
                first, last = fixtures.parse_byte_range(entry['range'])
                result.append((first, last, entry['status'],
                               entry['connection']))
        return result

    def check_requests(self, gets: List[Tuple[int, int, int, Any]],
                       image: TestImage, options: Dict[str, int]) -> None:
        """Assert that @gets are well-formed fetches answered with 206,
        over at most the allowed connections, that they cover a raw
        image entirely, and that no byte was fetched twice when the
        cache holds the whole file."""
        file_size = image.path.stat().st_size
        blocksize = options.get('blocksize', DEFAULT_BLOCKSIZE)
        blockcount = options.get('blockcount',
                                 max(2, DEFAULT_CACHE // blocksize))
        connections = options.get('connections', DEFAULT_CONNECTIONS)
        # (a GET cut short at close is logged without a status)
        answered = [g for g in gets if g[2] is not None]
        self.assertEqual([g for g in answered if g[2] != 206], [],
                         'GETs not answered with 206')
        self.assertFetchRanges(
            [(g[0], g[1]) for g in answered], file_size,
            cover=(0, file_size) if image.fmt == 'raw' else None,
            once=blocksize * blockcount >= file_size)
        used = {g[3] for g in gets}
        self.assertLessEqual(len(used), connections,
                             f'GETs came over {len(used)} connections')

    def check_convert(self, set_name: str, source: str,
                      image_key: str) -> None:
        """Convert one image from one source with one option set."""
        image: TestImage = getattr(self.images, image_key)
        options = OPTION_SETS[set_name]
        out = self.tmp / 'out.raw'
        result = self.qemu_img('convert', '-O', 'raw',
                               *self.source_spec(source, image, options),
                               out)
        self.assertSucceeded(result, f'convert with {options}')
        self.assertFileHasImageData(out, self.images.raw)
        self.check_requests(self.server_gets(source, image), image, options)

    def https_opts(self, image: TestImage, extra: str) -> str:
        """--image-opts for @image over https with @extra file options."""
        return (f'driver={image.fmt},file.driver=https,'
                f'file.url={self.nginx.https_url(image.name)},{extra}')

    # -- the limits of readahead

    def test_blockcount1_default_readahead_fetches_nothing_ahead(self) -> None:
        """blockcount=1 opens with the default readahead, which is then
        0: sequential reads fetch only the blocks read, once each."""
        image = self.images.raw
        reads = [f'read -q {i * 4 * KiB} {4 * KiB}' for i in range(12)]
        args: List[str] = []
        for read in reads:
            args += ['-c', read]
        result = self.qemu_io(
            '-r', *args, '--image-opts',
            self.https_opts(image, 'file.blocksize=4k,file.blockcount=1'))
        self.assertSucceeded(result)
        self.assertNoPatternFailure(result.output)
        ranges = sorted((g[0], g[1])
                        for g in self.server_gets('https', image))
        self.assertEqual(ranges, [(i * 4 * KiB, (i + 1) * 4 * KiB - 1)
                                  for i in range(12)])

    def assertClamped(self, result: CmdResult, given: str,
                      room: int) -> None:
        """@result is that of a command that opened the image with a
        readahead (@given) larger than the cache holds besides a block:
        it warned, named the option and used @room instead."""
        self.assertSucceeded(result)
        self.assertIn(f'warning: curl: readahead={given} is more than the '
                      'cache holds besides the block being read; using '
                      f'(blockcount - 1) * blocksize = {room} bytes',
                      result.stderr)

    def test_blockcount1_readahead_1m_clamped(self) -> None:
        """blockcount=1,readahead=1M: no room for readahead, which is
        turned off with a warning (QEMU 10.0 took any readahead)."""
        image = self.images.raw
        result = self.qemu_img(
            'info', '--image-opts',
            self.https_opts(image, 'file.blockcount=1,file.readahead=1M'))
        self.assertClamped(result, '1M', 0)

    def test_readahead_limit(self) -> None:
        """readahead = (blockcount - 1) * blocksize is taken as it is,
        one byte more is reduced to it with a warning that names
        readahead."""
        image = self.images.raw
        accepted = self.qemu_img(
            'info', '--image-opts',
            self.https_opts(image, 'file.blocksize=64k,file.blockcount=3,'
                            f'file.readahead={128 * KiB}'))
        self.assertSucceeded(accepted)
        self.assertNotIn('warning', accepted.stderr)
        self.assertRegex(accepted.stdout, rf'virtual size: [^\n]*\({image.size} '
                         r'bytes\)')
        clamped = self.qemu_img(
            'info', '--image-opts',
            self.https_opts(image, 'file.blocksize=64k,file.blockcount=3,'
                            f'file.readahead={128 * KiB + 1}'))
        self.assertClamped(clamped, str(128 * KiB + 1), 128 * KiB)


def _make_test(set_name: str, source: str,
               image_key: str) -> Callable[[DriverGridTest], None]:
    def test(self: DriverGridTest) -> None:
        self.check_convert(set_name, source, image_key)
    test.__doc__ = (f'convert the {image_key} image from {source} with '
                    f'{OPTION_SETS[set_name] or "the default options"}')
    return test


for _set in OPTION_SETS:
    for _source in SOURCES:
        for _image in IMAGES:
            setattr(DriverGridTest, f'test_{_set}_{_source}_{_image}',
                    _make_test(_set, _source, _image))


if __name__ == '__main__':
    unittest.main()
