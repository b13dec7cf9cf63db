#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Tests of scripts/overlay.sh, which lays the series over a QEMU tree
#
# Copyright (C) 2026 The QEMU curl series authors
"""Tests of the overlay machinery on a small fake QEMU tree.

The build trusts scripts/overlay.sh to put exactly the series' files into
the working copy, to stop with the patch's name when one no longer applies,
and to rewrite only what changed so that rebuilds stay incremental.
"""

import os
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
OVERLAY_SH = TOP / 'scripts' / 'overlay.sh'

BASE_FILES = {
    'VERSION': '10.0.13\n',
    'block/curl.c': 'old driver\n',
    'block/meson.build': "files(\n  'a.c',\n  'c.c',\n)\n",
    'qapi/block-core.json': '{ "a": 1 }\n{ "b": 2 }\n',
    'docs/index.rst': 'Docs\n',
}


def make_patch(path: str, old: str, new: str, workdir: Path) -> str:
    """Return a unified diff of path from old to new text."""
    a = workdir / 'a'
    b = workdir / 'b'
    a.write_text(old)
    b.write_text(new)
    proc = subprocess.run(['diff', '-u', '--label', f'a/{path}', '--label',
                           f'b/{path}', str(a), str(b)],
                          stdout=subprocess.PIPE, text=True, check=False)
    assert proc.returncode == 1, proc
    return proc.stdout


class OverlayTest(unittest.TestCase):
    """Each test gets a fresh base tree, overlay and working copy."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix='overlay-test-'))
        self.base = self.tmp / 'base'
        self.src = self.tmp / 'src'
        self.ovl = self.tmp / 'overlay'
        for name, text in BASE_FILES.items():
            self.write(self.base / name, text)
        self.ovl.mkdir()
        self.series([])

    def tearDown(self) -> None:
        shutil.rmtree(self.tmp)

    @staticmethod
    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def series(self, patches: list) -> None:
        self.write(self.ovl / 'series',
                   '# comment\n\n' + ''.join(p + '\n' for p in patches))

    def add_patch(self, path: str, new: str) -> str:
        name = path + '.patch'
        self.write(self.ovl / name,
                   make_patch(path, BASE_FILES[path], new, self.tmp))
        return name

    def overlay(self, expect_ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(['sh', str(OVERLAY_SH), str(self.base),
                               str(self.src), str(self.ovl)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, check=False, timeout=60)
        if expect_ok:
            self.assertEqual(proc.returncode, 0, proc.stderr)
        else:
            self.assertNotEqual(proc.returncode, 0, proc.stdout)
        return proc

    def read_src(self, path: str) -> str:
        return (self.src / path).read_text()

    def test_plain_file_and_patch(self) -> None:
        """A plain file replaces QEMU's; a patch changes QEMU's."""
        self.write(self.ovl / 'block' / 'curl.c', 'new driver\n')
        self.write(self.ovl / 'block' / 'range-cache.c', 'cache\n')
        patch = self.add_patch('block/meson.build',
                               "files(\n  'a.c',\n  'b.c',\n  'c.c',\n)\n")
        self.series([patch])
        self.overlay()
        self.assertEqual(self.read_src('block/curl.c'), 'new driver\n')
        self.assertEqual(self.read_src('block/range-cache.c'), 'cache\n')
        self.assertIn("'b.c'", self.read_src('block/meson.build'))
        self.assertEqual(self.read_src('docs/index.rst'), 'Docs\n')
        # The base is never written
        self.assertEqual((self.base / 'block' / 'curl.c').read_text(),
                         'old driver\n')

    def test_broken_patch_names_the_file(self) -> None:
        """A patch that no longer applies stops the build with its name."""
        patch = self.add_patch('qapi/block-core.json',
                               '{ "a": 1 }\n{ "b": 3 }\n')
        self.write(self.base / 'qapi' / 'block-core.json',
                   '{ "a": 9 }\n{ "z": 2 }\n')
        self.series([patch])
        proc = self.overlay(expect_ok=False)
        self.assertIn('qapi/block-core.json.patch no longer applies',
                      proc.stderr)

    def test_series_mistakes(self) -> None:
        """Unlisted, missing and doubly listed patches are refused."""
        patch = self.add_patch('qapi/block-core.json',
                               '{ "a": 1 }\n{ "b": 3 }\n')
        self.series([])
        self.assertIn('not listed in series',
                      self.overlay(expect_ok=False).stderr)
        self.series([patch, patch])
        self.assertIn('twice', self.overlay(expect_ok=False).stderr)
        self.series([patch, 'block/gone.c.patch'])
        self.assertIn('block/gone.c.patch, which does not exist',
                      self.overlay(expect_ok=False).stderr)

    def test_patch_and_plain_file_conflict(self) -> None:
        """A file cannot be both replaced and patched."""
        patch = self.add_patch('block/meson.build', 'x\n')
        self.write(self.ovl / 'block' / 'meson.build', 'whole\n')
        self.series([patch])
        self.assertIn('also provides whole',
                      self.overlay(expect_ok=False).stderr)

    def test_only_changes_are_rewritten(self) -> None:
        """Unchanged files keep their mtime, so ninja rebuilds nothing."""
        self.write(self.ovl / 'block' / 'curl.c', 'new driver\n')
        self.write(self.ovl / 'block' / 'other.c', 'other\n')
        self.overlay()
        past = time.time() - 3600
        for name in ('block/curl.c', 'block/other.c', 'docs/index.rst'):
            os.utime(self.src / name, (past, past))
        self.write(self.ovl / 'block' / 'curl.c', 'newer driver\n')
        proc = self.overlay()
        self.assertIn('1 updated', proc.stdout)
        self.assertEqual(self.read_src('block/curl.c'), 'newer driver\n')
        self.assertEqual(os.stat(self.src / 'block/other.c').st_mtime, past)
        self.assertEqual(os.stat(self.src / 'docs/index.rst').st_mtime, past)

    def test_dropped_files_are_restored(self) -> None:
        """What the overlay stops providing goes back to QEMU's version."""
        self.write(self.ovl / 'block' / 'curl.c', 'new driver\n')
        self.write(self.ovl / 'block' / 'extra.c', 'extra\n')
        self.overlay()
        (self.ovl / 'block' / 'curl.c').unlink()
        (self.ovl / 'block' / 'extra.c').unlink()
        self.overlay()
        self.assertEqual(self.read_src('block/curl.c'), 'old driver\n')
        self.assertFalse((self.src / 'block' / 'extra.c').exists())

    def test_project_files_stay_out(self) -> None:
        """The project's own harness is not part of the QEMU tree."""
        self.write(self.ovl / 'tests' / 'e2e' / 'test_x.py', 'x\n')
        self.write(self.ovl / 'tests' / 'bench' / 'run', 'x\n')
        self.write(self.ovl / 'tests' / 'unit' / 'test-y.c', 'y\n')
        self.overlay()
        self.assertFalse((self.src / 'tests' / 'e2e').exists())
        self.assertFalse((self.src / 'tests' / 'bench').exists())
        self.assertEqual(self.read_src('tests/unit/test-y.c'), 'y\n')

    def test_new_base_gives_fresh_copy(self) -> None:
        """Pointing at another base tree starts from a fresh copy of it."""
        self.overlay()
        other = self.tmp / 'other-base'
        shutil.copytree(self.base, other)
        self.write(other / 'docs' / 'index.rst', 'Other docs\n')
        self.base = other
        self.overlay()
        self.assertEqual(self.read_src('docs/index.rst'), 'Other docs\n')


if __name__ == '__main__':
    unittest.main()
