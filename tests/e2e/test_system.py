# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: qemu-system-x86_64 with an https:// drive.
#
# Starts the minimal qemu-system-x86_64 (-M none, no devices) with a
# read-only -drive on an https:// URL (with dotted file.* options, and
# once with a json: filename), reads regions through QMP's
# human-monitor-command "qemu-io" with pattern checks, and exports the
# drive over NBD (nbd-server-start on a UNIX socket + nbd-server-add)
# to compare it with the local image using qemu-img compare.
"""qemu-system-x86_64 with a read-only HTTPS drive, over QMP."""

from __future__ import annotations

import json
import unittest
from typing import Any, ClassVar, Dict, List

import fixtures
from e2e_case import E2ETestCase
from fixtures import (ImageSet, MiB, Nginx, PatternRegion, QemuSystem,
                      TestImage)

PATTERN_IMAGE_SIZE = 8 * MiB + 512


class SystemTest(E2ETestCase):
    """-drive if=none,file.driver=https,... in qemu-system-x86_64."""

    images: ClassVar[ImageSet]
    pattern_image: ClassVar[TestImage]
    regions: ClassVar[List[PatternRegion]]
    nginx: ClassVar[Nginx]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = fixtures.shared_images()
        cls.regions = fixtures.standard_pattern_regions(PATTERN_IMAGE_SIZE)
        # Served from the class directory, next to links to the images
        cls.pattern_image = fixtures.make_pattern_image(
            cls.class_tmp / 'pattern.raw', PATTERN_IMAGE_SIZE, cls.regions)
        for image in cls.images.all():
            (cls.class_tmp / image.name).symlink_to(image.path)
        cls.nginx = cls.start_server(Nginx(cls.class_tmp, cls.ca_dir))

    def start_qemu(self, *args: str) -> QemuSystem:
        """Start qemu-system-x86_64 with @args; stopped after the test."""
        qemu = QemuSystem(list(args))
        qemu.start()
        self.addCleanup(qemu.cleanup)
        return qemu

    def drive_info(self, qemu: QemuSystem, device: str) -> Dict[str, Any]:
        """The query-block entry of @device."""
        for entry in qemu.cmd('query-block'):
            if entry['device'] == device:
                return dict(entry)
        raise self.failureException(f'no {device} in query-block')

    def test_drive_dotted_options_hmp_qemu_io(self) -> None:
        """-drive with file.driver=https and file.url, HMP qemu-io reads."""
        url = self.nginx.https_url(self.pattern_image.name)
        qemu = self.start_qemu(
            '-drive', f'if=none,id=d0,file.driver=https,file.url={url},'
            'file.sslverify=on,format=raw,readonly=on')
        info = self.drive_info(qemu, 'd0')
        self.assertTrue(info['inserted']['ro'])
        self.assertEqual(info['inserted']['drv'], 'raw')
        self.check_hmp_reads(qemu, self.regions, 'd0')

    def test_drive_json_filename_hmp_qemu_io(self) -> None:
        """-drive file=json:{raw over https}, HMP qemu-io reads."""
        url = self.nginx.https_url(self.pattern_image.name)
        spec = json.dumps({'driver': 'raw',
                           'file': {'driver': 'https', 'url': url,
                                    'sslverify': True}})
        # Commas in a -drive value are doubled
        qemu = self.start_qemu(
            '-drive', 'if=none,id=d0,readonly=on,'
            f'file=json:{spec.replace(",", ",,")}')
        info = self.drive_info(qemu, 'd0')
        self.assertEqual(info['inserted']['drv'], 'raw')
        self.assertIn(url, json.dumps(info['inserted']))
        self.check_hmp_reads(qemu, self.regions, 'd0')

    def check_nbd_export(self, image: TestImage) -> None:
        """Export @image's https drive over NBD and compare it."""
        url = self.nginx.https_url(image.name)
        qemu = self.start_qemu(
            '-drive', f'if=none,id=d0,file.driver=https,file.url={url},'
            f'format={image.fmt},readonly=on')
        sock = qemu.socket_path('nbd.sock')
        qemu.cmd('nbd-server-start',
                 addr={'type': 'unix', 'data': {'path': str(sock)}})
        qemu.cmd('nbd-server-add', device='d0')
        self.assertSameGuestData(fixtures.nbd_unix_uri('d0', sock), 'raw',
                                 self.images.raw)
        qemu.cmd('nbd-server-remove', name='d0')
        qemu.cmd('nbd-server-stop')
        self.assertEqual(qemu.shutdown(), 0)

    def test_nbd_export_raw(self) -> None:
        """nbd-server-add of the raw https drive, qemu-img compare."""
        self.check_nbd_export(self.images.raw)

    def test_nbd_export_qcow2(self) -> None:
        """nbd-server-add of the qcow2 https drive, qemu-img compare."""
        self.check_nbd_export(self.images.qcow2)


if __name__ == '__main__':
    unittest.main()
