# SPDX-License-Identifier: GPL-2.0-or-later
#
# Tests of tests/bench/report.py, the renderer of the benchmark's results
#
# Copyright (C) 2026 The QEMU curl series authors
"""tests/bench/report.py renders results.md from the results data alone.

A small hand-written results dict (two scenarios, one of them failed; a
contender that failed, a value that is missing) is rendered and the
markdown read back cell by cell; and the committed results.json renders
to the committed results.md, byte for byte, through the command line.
"""

import copy
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any, Dict, List

from test_check import load  # the harness tests' module loader

TOP = Path(__file__).resolve().parents[2]
BENCH = TOP / 'tests' / 'bench'
RESULTS = BENCH / 'results'

report = load('bench_report', BENCH / 'report.py')

MiB = 1024 * 1024
GiB = 1024 * MiB
QCOW2_SIZE = 256 * MiB


def sample_results() -> Dict[str, Any]:
    """A quick run in S1 and S2: S1 measured new, aria2c and stock (which
    timed out) on the qcow2; S2 failed as a whole."""
    meta = {
        'date': '2026-03-04T05:06:07+00:00', 'mode': 'quick',
        'argv': ['--quick', '--scenario', 'S1,S2'],
        'runtime_seconds': 90.0,
        'git': {'commit': '0123456789abcdef0123', 'describe':
                '0123456 tests: a commit', 'dirty': True},
        'qemu_base': 'v10.0.0',
        'binaries': {'new qemu-img': {'path': '/b/qemu-img',
                                      'mtime': '2026-03-04T01:02:03',
                                      'sha256': 'feedfacecafebeef'}},
        'machine': {'cpus': 8, 'kernel': '6.12.0', 'load_at_start':
                    [1.25, 1.0, 0.5]},
        'tools': {'aria2c': 'aria2 version 1.37.0', 'nbdkit': 'not built'},
        'outputs_on_tmpfs': True, 'reps': 1,
        'images': {'quick': {
            'virtual': GiB, 'allocated': 256 * MiB,
            'files': {'disk.qcow2': {'size': QCOW2_SIZE},
                      'disk-c.qcow2': {'size': 100_000_000},
                      'appliance.tar': {'size': 134_219_264}},
            'tar': {'member_size': 128 * MiB, 'offset_data': 2048}}},
    }
    summary: List[Dict[str, Any]] = [
        {'image': 'qcow2', 'contender': 'new', 'runs': 1, 'ok_runs': 1,
         'file_bytes': QCOW2_SIZE, 'needed_bytes': QCOW2_SIZE,
         'wall': 12.0, 'throughput': QCOW2_SIZE / 12.0, 'ratio_aria': 1.2,
         'maxrss_kb': 90 * 1024, 'cpu': 3.5, 'host_busy': 0.25,
         'server_bytes': QCOW2_SIZE * 1.01, 'requests': 40,
         'connections': 16, 'walls': [12.0]},
        {'image': 'qcow2', 'contender': 'stock', 'runs': 1, 'ok_runs': 0,
         'file_bytes': QCOW2_SIZE, 'needed_bytes': QCOW2_SIZE,
         'errors': ['timed out after 209 s'], 'wrong_output': False},
        # aria2c's CPU time and RSS are missing
        {'image': 'qcow2', 'contender': 'aria2c', 'runs': 1, 'ok_runs': 1,
         'file_bytes': QCOW2_SIZE, 'needed_bytes': QCOW2_SIZE,
         'wall': 10.0, 'throughput': QCOW2_SIZE / 10.0, 'ratio_aria': 1.0,
         'maxrss_kb': None, 'cpu': None, 'host_busy': None,
         'server_bytes': QCOW2_SIZE, 'requests': 16, 'connections': 16,
         'walls': [10.0]},
        {'image': 'qcow2', 'contender': 'link', 'wall': 2.0,
         'throughput': 125e6, 'file_bytes': QCOW2_SIZE,
         'ratio_aria': 0.2, 'computed': True},
    ]
    runs = [
        {'image': 'qcow2', 'contender': 'new', 'ok': True, 'verified': True,
         'error': None, 'file_bytes': QCOW2_SIZE,
         'trace': {'retries': 2, 'failed_fetches': 0,
                   'fetched': 300_000_000, 'served': QCOW2_SIZE}},
        {'image': 'qcow2', 'contender': 'stock', 'ok': False,
         'verified': None, 'error': 'timed out after 209 s',
         'file_bytes': QCOW2_SIZE},
        {'image': 'qcow2', 'contender': 'aria2c', 'ok': True,
         'verified': True, 'error': None, 'file_bytes': QCOW2_SIZE},
    ]
    sec_meta = {k: meta[k] for k in ('date', 'mode', 'git')}
    res: Dict[str, Any] = {
        'meta': meta,
        'main': {
            'S1': {'runs': runs, 'summary': summary, 'meta': sec_meta,
                   'images': {'qcow2': {'name': 'disk.qcow2',
                                        'size': QCOW2_SIZE}}},
            'S2': {'error': 'RuntimeError: the proxy died',
                   'meta': sec_meta},
        },
    }
    res['targets'] = report.evaluate_targets(res['main'])
    res['observations'] = report.observations(res)
    return res


def table_row(text: str, *first: str) -> List[str]:
    """The cells of the markdown table row whose first cells are @first."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('|') and cells[:len(first)] == list(first):
            return cells
    raise AssertionError(f'no table row starting with {first}')


class RenderTest(unittest.TestCase):
    """render() of a small hand-written results dict."""

    def setUp(self) -> None:
        self.res = sample_results()
        self.md = report.render(self.res)

    def test_header_from_the_data(self) -> None:
        lines = self.md.splitlines()
        self.assertEqual(lines[0], '# curl block driver benchmark')
        self.assertIn('- date: 2026-03-04T05:06:07+00:00; mode: **quick** '
                      '(`tests/bench/run --quick --scenario S1,S2`); '
                      'runtime 1.5 min', lines)
        self.assertIn('- repository: 0123456789ab (0123456 tests: a commit)'
                      ' + uncommitted changes', lines)
        self.assertIn('- new qemu-img: `/b/qemu-img` built '
                      '2026-03-04T01:02:03 (sha256 feedfacecafebeef…)', lines)
        self.assertIn('- machine: 8 CPUs (shared), kernel 6.12.0, load at '
                      'start 1.25', lines)
        self.assertIn('- tools: aria2c: aria2 version 1.37.0; nbdkit: not '
                      'built', lines)
        self.assertIn('`appliance.tar` 134.2 MB (raw member of 128 MiB at '
                      'offset 2048)', self.md)

    def test_side_by_side_rows(self) -> None:
        self.assertIn('### S1: CDN: RTT 40 ms, 10 MB/s per connection, '
                      '125 MB/s link', self.md)
        header = table_row(self.md, 'image', 'contender')
        self.assertEqual(header[2:6], ['wall s', 'MB/s', '× aria2c time',
                                       'peak RSS MiB'])
        new = table_row(self.md, 'qcow2 (256 MiB)', 'new')
        self.assertEqual(new[2:12], ['12.00', '22.4', '1.20', '90', '3.50',
                                     '25%', '271.1 (1.010)', '40', '16',
                                     'yes'])
        self.assertEqual(new[12], '')        # one run: no notes
        aria = table_row(self.md, 'qcow2 (256 MiB)', 'aria2c')
        self.assertEqual(aria[2:5], ['10.00', '26.8', '1.00'])
        # Missing values are dashes, not zeros
        self.assertEqual(aria[5:8], ['—', '—', '—'])
        link = table_row(self.md, 'qcow2 (256 MiB)', '*link limit*')
        self.assertEqual(link[2:5], ['2.00', '125.0', '0.20'])
        self.assertEqual(link[-1], 'computed')

    def test_failed_contender(self) -> None:
        stock = table_row(self.md, 'qcow2 (256 MiB)', 'stock')
        self.assertEqual(stock[2:5], ['—', '—', '—'])
        self.assertEqual(stock[11], 'failed')
        self.assertEqual(stock[12], 'FAILED: timed out after 209 s')
        self.res['main']['S1']['summary'][1]['wrong_output'] = True
        stock = table_row(report.render(self.res), 'qcow2 (256 MiB)',
                          'stock')
        self.assertEqual(stock[11], '**WRONG OUTPUT**')

    def test_failed_scenario(self) -> None:
        self.assertIn('### S2: far: RTT 150 ms, 25 MB/s link\n\n'
                      '**Failed:** RuntimeError: the proxy died\n', self.md)

    def test_targets(self) -> None:
        row = table_row(self.md, 'S1', 'qcow2', 'time / aria2c time')
        self.assertEqual(row[3], '❌ 1.200 vs ≤ 1: missed by 20%')
        row = table_row(self.md, 'S1', 'qcow2',
                        'stock time / new time (speed-up)')
        self.assertEqual(row[3], '— not measured (a contender failed or was '
                         'skipped)')
        row = table_row(self.md, 'S1', 'qcow2', 'bytes served / bytes '
                        'needed')
        self.assertEqual(row[3], '✅ 1.010 (≤ 1.02): met')
        # Neither the failed S2 nor a contender that was not run has one
        self.assertNotIn('| S2 |', self.md)
        self.assertNotIn('nbdkit time', self.md)

    def test_observations(self) -> None:
        section = self.md.split('## Observations\n\n', 1)[1]
        self.assertEqual(section.splitlines()[:4], [
            '- S1 qcow2 new driver: 2 retries, 0 failed fetches',
            '- S1 qcow2 new driver fetched 300.0 MB for a 268.4 MB file',
            '- S1 qcow2 stock failed: timed out after 209 s',
            '- S2: the main comparison failed: RuntimeError: the proxy died'])

    def test_parts_not_run_have_no_section(self) -> None:
        for title in ('## Proxy accuracy', '## HTTP/2', '## Redirect',
                      '## Random reads', '## Sweep'):
            self.assertNotIn(title, self.md)
        self.assertTrue(self.md.endswith('\n') and
                        not self.md.endswith('\n\n\n'))

    def test_section_of_an_earlier_run(self) -> None:
        res = copy.deepcopy(self.res)
        res['main']['S1']['meta'] = {
            'date': '2026-01-01T00:00:00+00:00', 'mode': 'quick',
            'git': {'commit': 'fedcba9876543210'}}
        md = report.render(res)
        self.assertIn('*(from the run of 2026-01-01T00:00:00+00:00, quick '
                      'mode, commit fedcba987654)*\n\n| image |', md)
        self.assertNotIn('*(from the run of', self.md)

    def test_sweep(self) -> None:
        point = {'blocksize': 256 * 1024, 'blockcount': 256,
                 'connections': 16, 'readahead': 32 * MiB}
        default = dict(report.DEFAULT_POINT)

        def ranked(p: Dict[str, int], thr: float, score: float,
                   is_default: bool) -> Dict[str, Any]:
            return {'point': p, 'label': report.point_label(p),
                    'memory': p['blocksize'] * p['blockcount'],
                    'throughput': {'S1/qcow2': thr}, 'runs': {'S1/qcow2': 1},
                    'timed_out': [], 'spreads': [], 'score': score,
                    'failures': 0, 'is_default': is_default}

        best = ranked(point, 60e6, 1.0, False)
        ranking = [best, ranked(default, 45e6, 0.75, True)]
        self.res['sweep'] = {
            'scenarios': ['S1'], 'images': ['qcow2'], 'noise': 0.05,
            'image_sizes': {'qcow2': QCOW2_SIZE}, 'grid_points': 2,
            'stages': [{'scenario': 'S1', 'points': 2, 'seconds': 30}],
            'runs': [{'point': default, 'scenario': 'S1', 'image': 'qcow2',
                      'ok': False, 'error': 'exit code 1: boom'}],
            'ranking_all': ranking, 'ranking_first': ranking,
            'recommendation': best}
        md = report.render(self.res)
        self.assertIn('**Recommended (memory ≤ 64 MiB): bs 256K x 256 '
                      '(= 64M), conns 16, ra 32M** — `blocksize=256K,'
                      'blockcount=256,connections=16,readahead=32M`, '
                      'score 1.000.', md)
        self.assertIn('1 settings with memory ≤ 64 MiB score within that '
                      'of the best, and the default scores 0.750.', md)
        row = table_row(md, 'bs 256K x 256 (= 64M), conns 16, ra 32M')
        self.assertEqual(row[1:], ['64 MiB', '60.0', '1.000'])
        row = table_row(md, report.point_label(default) + ' **(default)**')
        self.assertEqual(row[2:], ['45.0', '0.750'])
        self.assertIn('1 sweep runs failed: ' + report.point_label(default)
                      + ' S1/qcow2: exit code 1: boom', md)
        # The sweep comes last, before the observations
        self.assertLess(md.index('## Targets'), md.index('## Sweep'))
        self.assertLess(md.index('## Sweep'), md.index('## Observations'))

    def test_write_md_without_guest_boots(self) -> None:
        with tempfile.TemporaryDirectory(prefix='test-bench-report-') as tmp:
            report.write_md(self.res, Path(tmp))
            self.assertEqual((Path(tmp) / 'results.md').read_text(), self.md)


class CommittedResultsTest(unittest.TestCase):
    """The committed results.md is what report.py makes of results.json
    (and guest.json, whose section it holds)."""

    def test_rerender_is_identical(self) -> None:
        with tempfile.TemporaryDirectory(prefix='test-bench-report-') as tmp:
            proc = subprocess.run(
                [sys.executable, str(BENCH / 'report.py'),
                 str(RESULTS / 'results.json'), '--out', tmp],
                capture_output=True, text=True, timeout=120, check=False)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(proc.stdout.strip(), f'{tmp}/results.md')
            rendered = (Path(tmp) / 'results.md').read_bytes()
        committed = (RESULTS / 'results.md').read_bytes()
        self.assertEqual(rendered.decode(), committed.decode())
        self.assertEqual(rendered, committed)


if __name__ == '__main__':
    unittest.main()
