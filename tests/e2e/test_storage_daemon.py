# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: qemu-storage-daemon exporting an https:// node over NBD.
#
# Starts qemu-storage-daemon with only a QMP monitor, then over QMP:
# blockdev-add of an https node (sslverify on) and of a raw or qcow2
# format node on top, nbd-server-start on a UNIX socket and
# block-export-add; compares the NBD export with the local image using
# qemu-img compare; then block-export-del, blockdev-del of both nodes,
# nbd-server-stop, and checks that the daemon quits cleanly.
"""qemu-storage-daemon: https node, NBD export, clean teardown."""

from __future__ import annotations

import unittest
from typing import List

import fixtures
from e2e_case import NginxImagesCase
from fixtures import StorageDaemon, TestImage


class StorageDaemonTest(NginxImagesCase):
    """blockdev-add driver=https + block-export-add type=nbd."""

    @staticmethod
    def node_names(qsd: StorageDaemon) -> List[str]:
        """The names of the daemon's block nodes."""
        return [n['node-name'] for n in qsd.cmd('query-named-block-nodes')]

    def check_export(self, image: TestImage) -> None:
        """Add, export, compare and remove @image's https node."""
        qsd = StorageDaemon()
        qsd.start()
        self.addCleanup(qsd.cleanup)
        url = self.nginx.https_url(image.name)

        qsd.cmd('blockdev-add', driver='https', node_name='proto0', url=url,
                sslverify=True, read_only=True)
        qsd.cmd('blockdev-add', driver=image.fmt, node_name='fmt0',
                file='proto0', read_only=True)
        self.assertEqual(sorted(self.node_names(qsd)), ['fmt0', 'proto0'])

        sock = qsd.socket_path('nbd.sock')
        # nbd-server-start takes a SocketAddressLegacy
        qsd.cmd('nbd-server-start',
                addr={'type': 'unix', 'data': {'path': str(sock)}})
        qsd.cmd('block-export-add', type='nbd', id='exp0', node_name='fmt0',
                name='disk', writable=False)
        exports = qsd.cmd('query-block-exports')
        self.assertEqual([(e['id'], e['node-name']) for e in exports],
                         [('exp0', 'fmt0')])

        self.assertSameGuestData(fixtures.nbd_unix_uri('disk', sock), 'raw',
                                 self.images.raw)

        # The client is gone, but the export may not have seen it leave yet
        qsd.cmd('block-export-del', id='exp0', mode='hard')
        qsd.event_wait('BLOCK_EXPORT_DELETED', match={'id': 'exp0'})
        self.assertEqual(qsd.cmd('query-block-exports'), [])
        qsd.cmd('blockdev-del', node_name='fmt0')
        qsd.cmd('blockdev-del', node_name='proto0')
        self.assertEqual(self.node_names(qsd), [])
        qsd.cmd('nbd-server-stop')
        self.assertEqual(qsd.shutdown(), 0)

    def test_raw_export(self) -> None:
        """raw over https, exported over NBD."""
        self.check_export(self.images.raw)

    def test_qcow2_export(self) -> None:
        """qcow2 over https, exported over NBD."""
        self.check_export(self.images.qcow2)

    def test_compressed_qcow2_export(self) -> None:
        """Compressed qcow2 over https, exported over NBD."""
        self.check_export(self.images.qcow2c)


if __name__ == '__main__':
    unittest.main()
