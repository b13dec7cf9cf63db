# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: qemu-img info over https://.
#
# Checks that qemu-img info reports the format, the virtual size and the
# length of the remote file (the protocol node's "file length") of raw,
# qcow2 and compressed qcow2 images served by nginx over HTTPS, in the
# human and the JSON output, with and without an explicit format.
"""qemu-img info of images served over HTTPS."""

from __future__ import annotations

import json
import re
import unittest
from typing import Any, Dict

from e2e_case import NginxImagesCase
from fixtures import TestImage


class InfoTest(NginxImagesCase):
    """qemu-img info [--output=json] https://..."""

    def info_json(self, image: TestImage,
                  probe: bool = False) -> Dict[str, Any]:
        """Run qemu-img info --output=json on @image over HTTPS."""
        args = ['info', '--output=json']
        if not probe:
            args += ['-f', image.fmt]
        result = self.qemu_img(*args, self.nginx.https_url(image.name))
        self.assertSucceeded(result)
        info: Dict[str, Any] = json.loads(result.stdout)
        return info

    def check_human(self, image: TestImage, probe: bool) -> None:
        """Check the human-readable qemu-img info output for @image."""
        url = self.nginx.https_url(image.name)
        args = ['info'] if probe else ['info', '-f', image.fmt]
        result = self.qemu_img(*args, url)
        self.assertSucceeded(result)
        out = result.stdout
        file_length = image.path.stat().st_size

        self.assertIn(f'image: {url}\n', out)
        self.assertIn(f'file format: {image.fmt}\n', out)
        self.assertRegex(out, rf'virtual size: [^\n]*\({image.size} bytes\)')
        child = out[out.index("Child node '/file':"):]
        self.assertIn('protocol type: https\n', child)
        self.assertIn(f'filename: {url}\n', child)
        match = re.search(r'file length: [^\n]*\((\d+) bytes\)', child)
        self.assertIsNotNone(match, f'no file length in\n{out}')
        assert match is not None
        self.assertEqual(int(match.group(1)), file_length)

    def check_json(self, image: TestImage, probe: bool) -> None:
        """Check the JSON qemu-img info output for @image."""
        url = self.nginx.https_url(image.name)
        info = self.info_json(image, probe)
        self.assertEqual(info['format'], image.fmt)
        self.assertEqual(info['virtual-size'], image.size)
        self.assertEqual(info['filename'], url)
        children = {c['name']: c['info'] for c in info.get('children', [])}
        self.assertIn('file', children, f'no file child in {info}')
        proto = children['file']
        self.assertEqual(proto['format'], 'https')
        self.assertEqual(proto['filename'], url)
        # The protocol node's size is the length of the remote file
        self.assertEqual(proto['virtual-size'], image.path.stat().st_size)
        if image.fmt == 'qcow2':
            self.assertEqual(info['format-specific']['type'], 'qcow2')
            self.assertEqual(info['cluster-size'], 65536)
            self.assertFalse(info['format-specific']['data']['corrupt'])

    def test_raw_human(self) -> None:
        """info -f raw of the raw image."""
        self.check_human(self.images.raw, probe=False)

    def test_qcow2_human(self) -> None:
        """info -f qcow2 of the qcow2 image."""
        self.check_human(self.images.qcow2, probe=False)

    def test_qcow2_compressed_human_probed(self) -> None:
        """info of the compressed qcow2 image, format probed."""
        self.check_human(self.images.qcow2c, probe=True)

    def test_raw_json(self) -> None:
        """info --output=json -f raw of the raw image."""
        self.check_json(self.images.raw, probe=False)

    def test_qcow2_json(self) -> None:
        """info --output=json -f qcow2 of the qcow2 image."""
        self.check_json(self.images.qcow2, probe=False)

    def test_qcow2_json_probed(self) -> None:
        """info --output=json of the qcow2 image, format probed."""
        self.check_json(self.images.qcow2, probe=True)

    def test_image_opts_sslverify_on(self) -> None:
        """info --image-opts with file.sslverify=on and a readahead."""
        image = self.images.qcow2c
        url = self.nginx.https_url(image.name)
        result = self.qemu_img(
            'info', '--output=json', '--image-opts',
            f'driver=qcow2,file.driver=https,file.url={url},'
            'file.sslverify=on,file.readahead=65536,file.timeout=30')
        self.assertSucceeded(result)
        info = json.loads(result.stdout)
        self.assertEqual(info['format'], 'qcow2')
        self.assertEqual(info['virtual-size'], image.size)
        proto = info['children'][0]['info']
        self.assertEqual(proto['format'], 'https')
        self.assertEqual(proto['virtual-size'], image.path.stat().st_size)


if __name__ == '__main__':
    unittest.main()
