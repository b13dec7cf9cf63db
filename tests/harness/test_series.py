#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Tests of scripts/series.py, which writes the overlay as a patch series
#
# Copyright (C) 2026 The QEMU curl series authors
"""The parts of scripts/series.py that decide what goes in a patch."""

import fnmatch
import importlib.util
import subprocess
import tempfile
import unittest
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent.parent
_SPEC = importlib.util.spec_from_file_location('series',
                                               TOP / 'scripts' / 'series.py')
series = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(series)


class SeriesTest(unittest.TestCase):

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix='test-series-'))
        self.addCleanup(subprocess.run, ['rm', '-rf', str(self.tmp)])

    def test_read_step(self) -> None:
        step = self.tmp / '0001-x.txt'
        step.write_text('Files: block/a.c block/b.c.patch\n'
                        'Files: tests/c\nMaintainers: yes\n\n'
                        'block: subject\n\nWhy.\n')
        files, maintainers, message = series.read_step(step)
        self.assertEqual(files, ['block/a.c', 'block/b.c.patch', 'tests/c'])
        self.assertTrue(maintainers)
        self.assertEqual(message, 'block: subject\n\nWhy.\n')

    def test_read_step_mistakes(self) -> None:
        step = self.tmp / '0001-x.txt'
        step.write_text('Flies: block/a.c\n\nblock: subject\n')
        with self.assertRaisesRegex(series.SeriesError, 'unknown header'):
            series.read_step(step)
        step.write_text('Files: block/a.c\n\n')
        with self.assertRaisesRegex(series.SeriesError, 'no message'):
            series.read_step(step)

    def test_every_step_names_existing_files(self) -> None:
        """The real steps: each file exists, none is in two patches, and
        together they are what the overlay lays over QEMU."""
        placed = []
        for step in sorted(series.PATCHES.glob('000[1-9]-*.txt')):
            files, _, message = series.read_step(step)
            self.assertRegex(message.splitlines()[0], r'^[\w/.-]+: \S')
            for name in files:
                self.assertTrue((TOP / name).is_file(), name)
            placed += files
        self.assertEqual(sorted(placed), series.overlay_files())

    def test_maintainers_lists_files_that_exist(self) -> None:
        repo = self.tmp / 'repo'
        (repo / 'block').mkdir(parents=True)
        (repo / 'block' / 'curl.c').write_text('')
        (repo / 'MAINTAINERS').write_text(
            'SSH\nF: block/ssh.c\n\nCURL\nL: qemu-block@nongnu.org\n'
            'S: Odd Fixes\nF: block/curl.c\n\nGLUSTER\nL: qemu-block@nongnu.org\n'
            'F: block/gluster.c\n')
        subprocess.run(['git', 'init', '-q'], cwd=repo, check=True)
        base = self.tmp / 'base'
        base.mkdir()
        (base / 'MAINTAINERS').write_text(
            (repo / 'MAINTAINERS').read_text())
        series.update_maintainers(repo, series.curl_section(base))
        text = (repo / 'MAINTAINERS').read_text()
        section = text.split('CURL\n')[1].split('\n\n')[0].splitlines()
        self.assertIn('F: block/curl.c', section)
        self.assertIn('S: Maintained', section)
        self.assertTrue(any(line.startswith('M: ') for line in section))
        # Not yet in the tree: not listed yet
        self.assertNotIn('F: block/range-cache.c', section)
        self.assertNotIn('F: tests/qemu-iotests/tests/curl-*', section)
        self.assertTrue(text.startswith('SSH\nF: block/ssh.c\n\nCURL\n'))
        self.assertTrue(text.endswith('\n\nGLUSTER\nL: qemu-block@nongnu.org'
                                      '\nF: block/gluster.c\n'))

    def test_maintainers_patch_names_files_of_the_series(self) -> None:
        """Every F: line that MAINTAINERS.patch adds matches a file that
        the overlay provides."""
        files = [name[:-len('.patch')] if name.endswith('.patch') else name
                 for name in series.overlay_files()]
        added = [line[4:].strip() for line in
                 (TOP / series.MAINTAINERS_PATCH).read_text().splitlines()
                 if line.startswith('+F: ')]
        self.assertIn('block/range-cache.c', added)
        for pattern in added:
            self.assertTrue(fnmatch.filter(files, pattern), pattern)

    def test_allowed_warning(self) -> None:
        allowed = series.ALLOWED_WARNING
        self.assertTrue(allowed.match(
            "WARNING: Does new file 'tests/qemu-iotests/tests/curl-qmp.out' "
            "need 'SPDX-License-Identifier'?"))
        self.assertFalse(allowed.match(
            "WARNING: Does new file 'tests/qemu-iotests/tests/curl-qmp' "
            "need 'SPDX-License-Identifier'?"))
        self.assertFalse(allowed.match(
            "ERROR: New file 'a.out.py' requires 'SPDX-License-Identifier'"))

    def test_bench_table(self) -> None:
        table = series.bench_table()
        self.assertRegex(table,
                         r'(?m)^S1 +qcow2 +new +[\d.]+ +[\d.]+ +[\d.]+$')
        self.assertRegex(table, r'(?m)^S1 +qcow2 +aria2c .* 1\.00$')


if __name__ == '__main__':
    unittest.main()
