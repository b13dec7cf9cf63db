#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Run every test of the series and add up the results
#
# Copyright (C) 2026 The QEMU curl series authors
"""Run all test layers, each with its own runner, and sum them up.

Layers: the series' own machinery (tests/series), the unit tests in
tests/unit (glib, TAP output), the qemu-iotests in tests/qemu-iotests/tests
(through the base tree's check script), and the end-to-end tests of the
real binaries (tests/e2e).  Every layer prints its runner's own summary;
the last line is "N passed, N failed".  A test that did not run counts as
failed: on a machine set up by the README's command, everything runs.
Run it through scripts/check.sh, which makes the test CA trusted.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

TOP = Path(__file__).resolve().parents[1]
PY = '/usr/bin/python3'


class Tally:
    """Passed and failed counts, per layer and in total."""

    def __init__(self) -> None:
        self.layers: List[Tuple[str, int, int, float]] = []

    def add(self, layer: str, passed: int, failed: int,
            seconds: float) -> None:
        self.layers.append((layer, passed, failed, seconds))
        print(f'== {layer}: {passed} passed, {failed} failed '
              f'({seconds:.0f} s)', flush=True)

    @property
    def passed(self) -> int:
        return sum(p for _, p, _, _ in self.layers)

    @property
    def failed(self) -> int:
        return sum(f for _, _, f, _ in self.layers)


def run(cmd: List[str], cwd: Path = TOP, timeout: int = 3600) -> Tuple[int, str]:
    """Run a command, echoing its output, and return (exit code, output)."""
    print('$ ' + ' '.join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          errors='replace') as proc:
        assert proc.stdout is not None
        start = time.monotonic()
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
            if time.monotonic() - start > timeout:
                proc.kill()
                lines.append(f'killed after {timeout} s\n')
                break
        code = proc.wait()
    return code, ''.join(lines)


def layer_series(tally: Tally) -> None:
    """The series' own machinery: overlay, test server."""
    start = time.monotonic()
    code, out = run([PY, '-m', 'unittest', 'discover', '-s', 'tests/series',
                     '-p', 'test_*.py'])
    ran = re.search(r'^Ran (\d+) tests?', out, re.M)
    total = int(ran.group(1)) if ran else 0
    bad = sum(int(n) for n in re.findall(r'(?:failures|errors)=(\d+)', out))
    if code != 0 and bad == 0:
        bad = 1
    tally.add('series', total - bad, bad, time.monotonic() - start)


def layer_unit(tally: Tally, build: Path) -> None:
    """glib unit tests the series adds, run from the build."""
    start = time.monotonic()
    passed = failed = 0
    for src in sorted((TOP / 'tests' / 'unit').glob('test-*.c')):
        binary = build / 'qemu' / 'tests' / 'unit' / src.stem
        if not binary.exists():
            print(f'missing unit test binary {binary}: run make')
            failed += 1
            continue
        code, out = run([str(binary), '--tap'])
        ok = len(re.findall(r'^ok \d+', out, re.M))
        not_ok = len(re.findall(r'^not ok \d+', out, re.M))
        passed += ok
        failed += not_ok + (1 if code != 0 and not_ok == 0 else 0)
    tally.add('unit', passed, failed, time.monotonic() - start)


def iotest_formats(path: Path) -> List[str]:
    """The formats an iotest supports, among those we run."""
    text = path.read_text()
    match = re.search(r'supported_fmts\s*=\s*\[([^\]]*)\]', text)
    if not match:
        return ['raw']
    fmts = re.findall(r"'([\w-]+)'", match.group(1))
    return [f for f in ('raw', 'qcow2') if f in fmts] or ['raw']


def layer_iotests(tally: Tally, build: Path) -> None:
    """The curl iotests, through the base tree's check script."""
    start = time.monotonic()
    passed = failed = 0
    tests = sorted(p for p in (TOP / 'tests' / 'qemu-iotests' / 'tests').glob(
        'curl-*') if not p.name.endswith('.out'))
    by_fmt = {}
    for test in tests:
        for fmt in iotest_formats(test):
            by_fmt.setdefault(fmt, []).append(test.name)
    check_dir = build / 'qemu' / 'tests' / 'qemu-iotests'
    for fmt, names in by_fmt.items():
        code, out = run([PY, './check', f'-{fmt}'] + names, cwd=check_dir)
        for name in names:
            result = re.search(rf'^{re.escape(name)}\s+(\w+)', out, re.M)
            if result and result.group(1) == 'pass':
                passed += 1
            else:
                failed += 1
        if code != 0 and failed == 0:
            failed += 1
    tally.add('qemu-iotests', passed, failed, time.monotonic() - start)


def layer_e2e(tally: Tally) -> None:
    """End-to-end tests of the real binaries."""
    start = time.monotonic()
    code, out = run([str(TOP / 'tests' / 'e2e' / 'run')])
    match = re.search(r'^e2e: (\d+) passed, (\d+) failed, (\d+) skipped',
                      out, re.M)
    if match:
        passed, failed, skipped = (int(g) for g in match.groups())
    else:
        passed, failed, skipped = 0, 1, 0
    if code != 0 and failed == 0:
        failed = 1
    tally.add('e2e', passed, failed + skipped, time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--only', choices=('series', 'unit', 'iotests',
                                           'e2e'), action='append',
                        help='run only these layers')
    args = parser.parse_args()
    build = Path(os.environ.get('QCURL_BUILD', TOP / 'build'))
    layers = args.only or ['series', 'unit', 'iotests', 'e2e']
    tally = Tally()
    if 'series' in layers:
        layer_series(tally)
    if 'unit' in layers:
        layer_unit(tally, build)
    if 'iotests' in layers:
        layer_iotests(tally, build)
    if 'e2e' in layers:
        layer_e2e(tally)
    print()
    for layer, passed, failed, seconds in tally.layers:
        print(f'{layer:>40}: {passed:4} passed, {failed:3} failed, '
              f'{seconds:5.0f} s')
    print(f'{tally.passed} passed, {tally.failed} failed')
    return 1 if tally.failed else 0


if __name__ == '__main__':
    sys.exit(main())
