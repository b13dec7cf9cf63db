#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Run every test of the series and add up the results
#
# Copyright (C) 2026 The QEMU curl series authors
"""Run all test layers, each with its own runner, and sum them up.

Layers: the project's test harness itself (tests/harness), the unit tests in
tests/unit (glib, TAP output), the overlay as a patch series
(scripts/series.py --bisect: git am, checkpatch, a build and the unit
tests after every patch; not under the sanitizers), the qemu-iotests in
tests/qemu-iotests/tests (through the base tree's check script), and the
end-to-end tests of the real binaries (tests/e2e; under the sanitizers,
all but ASAN_E2E_LEFT_OUT), and those tests again,
a subset of them (CURL8_E2E), against the patched binaries linked to
libcurl 8 (the curl8 layer: <build>/curl8, made by scripts/build.sh
--curl8).  Every layer prints its runner's own summary, then what this
script made of it: passed, failed and skipped.  The last line is "N
passed, N failed".

The count cannot be fooled by a test that does not run.  A skip (a
skipped unittest, an expected failure, a TAP SKIP or TODO, an iotest that
was not run or had cases not run) is a failure unless tests/expected-skips
lists it with a reason; it is never a pass.  Each layer knows how many
tests it should run (the unittest ids its loader finds, the TAP plans,
the iotests it names, the e2e runner's --list) and every one that gave
no result is a failure, so an empty or cut-short layer fails.  On a
machine set up by the README's command, everything runs.

With QCURL_SANITIZER_LOGS set to a folder (scripts/with-sanitizers.sh
sets it, with the sanitizers' log_path there), every AddressSanitizer, LeakSanitizer
or UndefinedBehaviorSanitizer report that a layer's binaries write into it
is printed and fails that layer, whatever the test that ran the binary made
of it.

Run it through scripts/check.sh, which makes the test CA trusted.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

TOP = Path(__file__).resolve().parents[1]
PY = '/usr/bin/python3'
EXPECTED_SKIPS = TOP / 'tests' / 'expected-skips'
LAYERS = ('harness', 'unit', 'series', 'iotests', 'e2e', 'curl8')
# The e2e test modules that the curl8 layer runs against the binaries
# linked to libcurl 8: every protocol (http, https, HTTP/2, ftp, ftps,
# TLS with tls-creds), redirects, credentials, real servers and caches,
# the fault matrix, the drains, the fuzzer (with CURL8_FUZZ_ANSWERS
# answers instead of 10,000) and the guest boot; 8 to 10 minutes on 2
# cores.  Left out: test_driver_grid (84 combinations of the driver's own
# options, 47 s, whose transfers the other modules make too),
# test_fixtures (the harness), test_libvirt (its emulator would need the
# firmware in build/qemu-curl8's data directory, and it boots the guest
# test_guest boots), and any module not named here (README.rst,
# "libcurl 8").
CURL8_FUZZ_ANSWERS = 5000
CURL8_E2E = ('test_libcurl', 'test_convert', 'test_drain',
             'test_driver_offset', 'test_driver_qemu', 'test_driver_random',
             'test_driver_traffic', 'test_errors', 'test_fault_matrix',
             'test_ftp', 'test_fuzz', 'test_guest', 'test_http_credentials',
             'test_info', 'test_lifecycle', 'test_main_job', 'test_qemu_io',
             'test_redirect_credentials', 'test_storage_daemon',
             'test_system', 'test_tls_creds', 'test_vsftpd', 'test_ftps',
             'test_http2', 'test_real_servers')
# The e2e test modules left out under the sanitizers (make check-asan), to
# keep CI within its time: the real servers and the guest boots (under
# libvirt, the emulator is not the sanitized one anyway), and the grid of
# the driver's options; the driver's paths that they take, the fault
# matrix, the fuzzer, the drains and the lifecycle tests take too.
ASAN_E2E_LEFT_OUT = ('test_driver_grid', 'test_ftps', 'test_guest',
                     'test_libvirt', 'test_real_servers')
SANITIZER_LOGS = 'QCURL_SANITIZER_LOGS'
REPORT_LINES = 150              # printed of each sanitizer report


@dataclass
class Skip:
    """A test that reported a result other than pass or fail."""

    test: str                   # its id within the layer; '?' if unknown
    reason: str


@dataclass
class LayerResult:
    """What a layer's runner reported, before expected skips are applied.

    @expected is how many tests the layer should have run and @ran how
    many gave a result; each one missing counts as failed.  Each entry of
    @problems (the runner crashed, printed no summary, bailed out...)
    counts as one failure; @notes only explain.
    """

    layer: str
    passed: int = 0
    failed: int = 0
    skips: List[Skip] = field(default_factory=list)
    ran: int = 0
    expected: int = 0
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def shortfall(self) -> int:
        """How many of the expected tests gave no result."""
        return max(self.expected - self.ran, 0)

    def merge(self, other: 'LayerResult') -> None:
        """Add the results of another run of the same layer."""
        self.passed += other.passed
        self.failed += other.failed
        self.skips += other.skips
        self.ran += other.ran
        self.expected += other.expected
        self.problems += other.problems
        self.notes += other.notes


@dataclass
class Verdict:
    """A layer's result judged against the expected skips."""

    layer: str
    passed: int
    failed: int
    seconds: float
    skipped: int                # all skips, expected or not
    excused: List[str]          # skipped tests listed as expected skips
    stale: List[str]            # listed tests of the layer that did not skip
    reasons: List[str]          # why anything counts as failed


def plural(count: int, noun: str) -> str:
    """"1 test", "2 tests"."""
    return f'{count} {noun}' + ('' if count == 1 else 's')


def exit_note(code: int) -> str:
    """Describe a non-zero exit code."""
    if code < 0:
        return f'killed by signal {-code}'
    return f'exit code {code}'


def check_exit(result: LayerResult, code: int, what: str) -> None:
    """Record a non-zero exit of @what, a failure if nothing else is."""
    if code == 0:
        return
    note = f'{what}: {exit_note(code)}'
    if result.failed == 0 and result.shortfall == 0 and not result.problems:
        result.problems.append(f'{note}, though no test failed')
    else:
        result.notes.append(note)


def judge(result: LayerResult, expected_skips: Dict[str, str]) -> Verdict:
    """Count @result's skips as failed unless listed in @expected_skips.

    @expected_skips maps "layer:test" to the reason it may skip.  An entry
    of this layer whose test did not skip is stale, and fails too, so that
    the list cannot rot.
    """
    reasons = [plural(result.failed, 'test') + ' failed'] \
        if result.failed else []
    reasons += result.problems
    failed = result.failed + len(result.problems) + result.shortfall
    if result.shortfall:
        reasons.append(f'{result.shortfall} of '
                       f'{plural(result.expected, "test")} gave no result')
    if result.expected == 0 and result.ran == 0 and not result.problems:
        failed += 1
        reasons.append('no tests to run: an empty layer fails')
    excused = []
    for skip in result.skips:
        test_id = f'{result.layer}:{skip.test}'
        if skip.test != '?' and test_id in expected_skips:
            excused.append(test_id)
        else:
            failed += 1
            reasons.append(f'skipped, not in {EXPECTED_SKIPS.name}: '
                           f'{test_id}: {skip.reason}')
    stale = sorted(t for t in expected_skips
                   if t.startswith(result.layer + ':') and t not in excused)
    failed += len(stale)
    reasons += [f'in {EXPECTED_SKIPS.name} but did not skip: {t}'
                for t in stale]
    if failed == 0 and result.passed == 0:
        failed = 1
        reasons.append('no test passed: everything skipped')
    return Verdict(result.layer, result.passed, failed, result.seconds,
                   len(result.skips), excused, stale, reasons)


def load_expected_skips(text: str) -> Tuple[Dict[str, str], List[str]]:
    """Parse the expected-skips list: "layer:test  reason" per line.

    Return the entries and the errors (each one fails the run).
    """
    entries: Dict[str, str] = {}
    errors: List[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        parts = line.split(None, 1)
        test_id = parts[0]
        where = f'{EXPECTED_SKIPS.name}:{number}'
        if test_id.split(':', 1)[0] not in LAYERS or ':' not in test_id:
            errors.append(f'{where}: {test_id} does not start with one of '
                          f'{", ".join(name + ":" for name in LAYERS)}')
        elif len(parts) < 2:
            errors.append(f'{where}: {test_id} has no reason')
        elif test_id in entries:
            errors.append(f'{where}: {test_id} is listed twice')
        else:
            entries[test_id] = parts[1]
    return entries, errors


def run(cmd: List[str], cwd: Path = TOP, timeout: int = 3600,
        echo: bool = True,
        env: Optional[Dict[str, str]] = None) -> Tuple[int, str]:
    """Run a command, echoing its output, and return (exit code, output).

    @env, if given, is added to this process's environment.
    """
    if echo:
        print('$ ' + ' '.join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          errors='replace',
                          env=dict(os.environ, **env) if env else None
                          ) as proc:
        assert proc.stdout is not None
        start = time.monotonic()
        for line in proc.stdout:
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
            lines.append(line)
            if time.monotonic() - start > timeout:
                proc.kill()
                lines.append(f'killed after {timeout} s\n')
                break
        code = proc.wait()
    return code, ''.join(lines)


# unittest (tests/harness)

# Print the id of every test that unittest's discovery finds in argv[1]
LIST_UNITTESTS = '''
import sys, unittest
def ids(suite):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from ids(test)
        else:
            yield test.id()
for test_id in ids(unittest.TestLoader().discover(sys.argv[1],
                                                  pattern='test_*.py')):
    print(test_id)
'''

UNITTEST_ID = re.compile(r'^[\w.]+$')
# A test in unittest's verbose output: "name (module.Class.name)", then
# " ... outcome", perhaps after a line of docstring or the test's output
VERBOSE_TEST = re.compile(r'^(\w+) \(([\w.]+)\)(?: \.\.\. (.*))?$')
VERBOSE_OUTCOME = re.compile(r"(?:^| \.\.\. .*?)(ok|FAIL|ERROR|skipped '.*'|"
                             r'skipped ".*"|expected failure|'
                             r'unexpected success)$')


def parse_test_ids(out: str, code: int,
                   layer: str) -> Tuple[List[str], Optional[str]]:
    """The ids LIST_UNITTESTS or tests/e2e/run --list printed, and why not."""
    ids = [line for line in out.splitlines() if UNITTEST_ID.match(line)]
    if code != 0:
        return ids, f'{layer}: listing the tests failed ({exit_note(code)})'
    return ids, None


def verbose_outcomes(out: str) -> List[Tuple[str, str]]:
    """The (test id, outcome) pairs of unittest's verbose output."""
    outcomes = []
    current: Optional[str] = None
    for line in out.splitlines():
        head = VERBOSE_TEST.match(line)
        if head:
            name, where, rest = head.groups()
            # Python < 3.11 prints the class, not the test's id
            current = where if where.endswith('.' + name) else \
                f'{where}.{name}'
            if rest is None:
                continue
            line = ' ... ' + rest
        if current is None:
            continue
        outcome = VERBOSE_OUTCOME.search(line)
        if outcome:
            outcomes.append((current, outcome.group(1)))
            current = None
    return outcomes


def parse_unittest(layer: str, out: str, code: int,
                   expected_ids: Sequence[str]) -> LayerResult:
    """Read the output of "python3 -m unittest -v".

    The failures, skips and tests run are counted from unittest's summary
    ("Ran N tests", "FAILED (failures=1, skipped=2)"); the verbose lines
    name the skips (a skip that cannot be named cannot be excused) and the
    passes (only a listed test whose "ok" is seen is counted).
    """
    result = LayerResult(layer, expected=len(expected_ids))
    ran = re.findall(r'^Ran (\d+) tests? in ', out, re.M)
    status = re.findall(r'^(OK|FAILED|NO TESTS RAN)(?: \((.*)\))?\s*$', out,
                        re.M)
    if not ran or not status:
        result.problems.append('unittest printed no summary ("Ran N tests" '
                               'and OK or FAILED)')
        check_exit(result, code, 'unittest')
        return result
    result.ran = int(ran[-1])
    counts = {key: int(value) for key, value in
              re.findall(r'(\w[\w ]*)=(\d+)', status[-1][1])}
    failures = counts.get('failures', 0) + counts.get('errors', 0)
    failures += counts.get('unexpected successes', 0)
    skipped = counts.get('skipped', 0) + counts.get('expected failures', 0)
    result.failed = failures
    passed: Set[str] = set()
    for test_id, outcome in verbose_outcomes(out):
        if outcome == 'ok':
            passed.add(test_id)
        elif outcome.startswith('skipped '):
            result.skips.append(Skip(test_id, outcome[9:-1]))
        elif outcome == 'expected failure':
            result.skips.append(Skip(test_id, 'expected failure'))
    del result.skips[skipped:]
    result.passed = min(len(passed & set(expected_ids)), result.ran)
    result.skips += [Skip('?', 'a skip without a test id in the output')] * \
        (skipped - len(result.skips))
    check_exit(result, code, 'unittest')
    return result


def layer_unittest(layer: str, start_dir: Path) -> LayerResult:
    """Run the unittests under @start_dir against the ids its loader finds."""
    code, out = run([PY, '-c', LIST_UNITTESTS, str(start_dir)], echo=False)
    expected_ids, error = parse_test_ids(out, code, layer)
    if error:
        print(out, end='')
    code, out = run([PY, '-m', 'unittest', 'discover', '-v',
                     '-s', str(start_dir), '-p', 'test_*.py'])
    result = parse_unittest(layer, out, code, expected_ids)
    if error:
        result.problems.append(error)
    return result


def layer_harness() -> LayerResult:
    """The harness itself: overlay, test server, this script."""
    return layer_unittest('harness', TOP / 'tests' / 'harness')


# TAP (tests/unit)

TAP_RESULT = re.compile(r'^(ok|not ok)\b\s*(\d*)\s*(?:- )?([^#]*?)\s*'
                        r'(?:#\s*(SKIP|TODO)\b\s*(.*))?$', re.I)


def parse_tap(name: str, out: str, code: int,
              layer: str = 'unit') -> LayerResult:
    """Read the TAP output of one glib test binary, @name.

    A SKIP and a TODO (glib's g_test_skip and g_test_incomplete) are skips;
    the plan gives the count expected; "Bail out!" and a crash fail.
    """
    result = LayerResult(layer)
    plan = None
    for line in out.splitlines():
        match = re.match(r'^1\.\.(\d+)', line)
        if match:
            if plan is not None:
                result.problems.append(f'{name}: two TAP plans')
            plan = int(match.group(1))
            continue
        if line.startswith('Bail out!'):
            result.problems.append(f'{name}: {line}')
            continue
        match = TAP_RESULT.match(line)
        if not match:
            continue
        status, number, desc, directive, reason = match.groups()
        result.ran += 1
        test_id = f'{name}:{desc or "#" + number}'
        if directive:
            result.skips.append(Skip(test_id, f'{directive.upper()} '
                                              f'{reason}'.strip()))
        elif status == 'ok':
            result.passed += 1
        else:
            result.failed += 1
            result.notes.append(f'failed: {test_id}')
    if plan is None:
        result.problems.append(f'{name}: no TAP plan (1..N)')
    else:
        result.expected = plan
        if result.ran > plan:
            result.problems.append(f'{name}: {result.ran} results for a '
                                   f'plan of {plan}')
    check_exit(result, code, name)
    return result


def layer_unit(build: Path) -> LayerResult:
    """glib unit tests the series adds, run from the build."""
    result = LayerResult('unit')
    for src in sorted((TOP / 'tests' / 'unit').glob('test-*.c')):
        binary = build / 'qemu' / 'tests' / 'unit' / src.stem
        if not binary.exists():
            print(f'missing unit test binary {binary}: run make')
            result.problems.append(f'{src.stem}: no binary {binary}')
            continue
        code, out = run([str(binary), '--tap', '-k'])
        result.merge(parse_tap(src.stem, out, code))
    return result


# The patch series (scripts/series.py --bisect, TAP)

def layer_series(build: Path) -> LayerResult:
    """The overlay as a patch series: it carries every file, each patch
    passes checkpatch, applies with git am, builds and passes the unit
    tests, and the last one gives the overlay build's tree."""
    code, out = run([sys.executable, str(TOP / 'scripts' / 'series.py'),
                     '--build', str(build), '--bisect'])
    return parse_tap('series', out, code, layer='series')


# qemu-iotests

IOTEST_RESULT = re.compile(r'^(\S+)\s+(pass|fail|not run)\s+'
                           r'\[[\d:]+\]\s+\[[\d:]+\]\s+\S+'
                           r'(?:\s+\(last: [^)]*\))?\s*(.*?)\s*$')


def parse_iotests(fmt: str, names: Sequence[str], out: str,
                  code: int) -> LayerResult:
    """Read the output of the base tree's check run on @names in @fmt.

    check prints "not run" for an iotest that called notrun(), and "pass"
    with "    [case not run] reason" lines below it (and its path in "Some
    cases not run in:") for one that called case_notrun(): both are skips.
    """
    result = LayerResult('iotests', expected=len(names))
    out = re.sub(r'\x1b\[[\d;]*m', '', out.replace('\r', '\n'))
    status: Dict[str, Tuple[str, str]] = {}
    cases: Dict[str, List[str]] = {name: [] for name in names}
    current = None
    for line in out.splitlines():
        match = IOTEST_RESULT.match(line)
        if match and match.group(1) in cases:
            current = match.group(1)
            status[current] = (match.group(2), match.group(3))
            continue
        match = re.match(r'^\s+\[case not run\] (.*)$', line)
        if match and current:
            cases[current].append(match.group(1))
            continue
        current = None
        match = re.match(r'^Some cases not run in: (.*)$', line)
        if match:
            for path in match.group(1).split():
                name = os.path.basename(path)
                if name in cases and not cases[name]:
                    cases[name].append('(no reason printed)')
    for name in names:
        test_id = f'{fmt}:{name}'
        if name not in status:
            result.notes.append(f'no result: {test_id}')
            continue
        result.ran += 1
        state, desc = status[name]
        if state == 'fail':
            result.failed += 1
            result.notes.append(f'failed: {test_id}: {desc}')
        elif state == 'not run':
            result.skips.append(Skip(test_id, f'not run: {desc}'))
        elif cases[name]:
            result.skips.append(Skip(test_id, 'cases not run: ' +
                                     '; '.join(cases[name])))
        else:
            result.passed += 1
    check_exit(result, code, f'check -{fmt}')
    return result


def iotest_formats(path: Path) -> List[str]:
    """The formats an iotest supports, among those we run."""
    text = path.read_text()
    match = re.search(r'supported_fmts\s*=\s*\[([^\]]*)\]', text)
    if not match:
        return ['raw']
    fmts = re.findall(r"'([\w-]+)'", match.group(1))
    return [f for f in ('raw', 'qcow2') if f in fmts] or ['raw']


def layer_iotests(build: Path) -> LayerResult:
    """The curl iotests, through the base tree's check script."""
    result = LayerResult('iotests')
    tests = sorted(p for p in (TOP / 'tests' / 'qemu-iotests' / 'tests').glob(
        'curl-*') if not p.name.endswith('.out'))
    by_fmt: Dict[str, List[str]] = {}
    for test in tests:
        for fmt in iotest_formats(test):
            by_fmt.setdefault(fmt, []).append(test.name)
    check_dir = build / 'qemu' / 'tests' / 'qemu-iotests'
    for fmt, names in by_fmt.items():
        code, out = run([PY, './check', f'-{fmt}'] + names, cwd=check_dir)
        result.merge(parse_iotests(fmt, names, out, code))
    return result


# e2e

E2E_SUMMARY = re.compile(r'^e2e: (\d+) passed, (\d+) failed, (\d+) skipped$',
                         re.M)


def parse_e2e(out: str, code: int, expected_ids: Sequence[str],
              layer: str = 'e2e') -> LayerResult:
    """Read the output of tests/e2e/run: its summary and SKIPPED lines."""
    result = LayerResult(layer, expected=len(expected_ids))
    summary = E2E_SUMMARY.findall(out)
    if not summary:
        result.problems.append('tests/e2e/run printed no summary')
        check_exit(result, code, 'tests/e2e/run')
        return result
    passed, failed, skipped = (int(n) for n in summary[-1])
    result.passed, result.failed = passed, failed
    ran = re.findall(r'^e2e: ran (\d+) of \d+ tests? in ', out, re.M)
    result.ran = int(ran[-1]) if ran else passed + failed + skipped
    for test_id, reason in re.findall(r'^e2e: SKIPPED (.+?): (.*)$', out,
                                      re.M)[:skipped]:
        result.skips.append(Skip(test_id, reason))
    result.skips += [Skip('?', 'a skip without a test id in the output')] * \
        (skipped - len(result.skips))
    check_exit(result, code, 'tests/e2e/run')
    return result


def layer_e2e(sanitized: bool) -> LayerResult:
    """End-to-end tests of the real binaries; if @sanitized, all but the
    modules of ASAN_E2E_LEFT_OUT."""
    runner = str(TOP / 'tests' / 'e2e' / 'run')
    select: List[str] = []
    if sanitized:
        for path in sorted((TOP / 'tests' / 'e2e').glob('test_*.py')):
            if path.stem not in ASAN_E2E_LEFT_OUT:
                select += ['-k', f'{path.stem}.*']
        print('e2e: under the sanitizers, without '
              + ', '.join(ASAN_E2E_LEFT_OUT))
    code, out = run([runner, '--list'] + select, echo=False)
    expected_ids, error = parse_test_ids(out, code, 'e2e')
    if error:
        print(out, end='')
    code, out = run([runner] + select)
    result = parse_e2e(out, code, expected_ids)
    if error:
        result.problems.append(error)
    return result


def layer_curl8(build: Path) -> LayerResult:
    """The e2e tests of CURL8_E2E against the binaries linked to libcurl 8.

    Their build folder is <build>/curl8 (scripts/build.sh --curl8), and
    test_libcurl checks there that they load libcurl 8.x.
    """
    runner = str(TOP / 'tests' / 'e2e' / 'run')
    view = build / 'curl8'
    if not (view / 'qemu-img').exists():
        result = LayerResult('curl8', expected=1)
        result.problems.append(f'{view}/qemu-img missing: run make check '
                               '(or scripts/build.sh --curl8)')
        return result
    # BUILD too, for the scripts that the tests run (scripts/convert.sh):
    # the binaries and the test CA of the view
    env = {'QCURL_BUILD': str(view), 'BUILD': str(view),
           'QCURL_LIBCURL_MAJOR': '8',
           'QCURL_FUZZ_ANSWERS': str(CURL8_FUZZ_ANSWERS)}
    select = [arg for module in CURL8_E2E for arg in ('-k', f'{module}.*')]
    code, out = run([runner, '--list'] + select, echo=False, env=env)
    expected_ids, error = parse_test_ids(out, code, 'curl8')
    if error:
        print(out, end='')
    code, out = run([runner] + select, env=env)
    result = parse_e2e(out, code, expected_ids, layer='curl8')
    if error:
        result.problems.append(error)
    return result


# Sanitizer reports

SANITIZER_SUMMARY = re.compile(r'^(?:SUMMARY: .*|.*: runtime error: .*|'
                               r'==[\w.-]*==\d+==ERROR: .*)$', re.M)
# A frame of a sanitizer's stack: "#3 0x7f... in function file:line"
STACK_FRAME = re.compile(r'^\s*#\d+ 0x[0-9a-f]+ in (\S+)(.*)$')
# Frames of the machinery between a bug and the report: the allocator,
# abort(), assert(), the sanitizers themselves
MACHINERY = re.compile(r'^(?:__interceptor_|__asan_|__lsan_|__ubsan|__sanitizer'
                       r'|__pthread_kill|__GI_|raise$|abort$|__assert|'
                       r'g_assertion_message|g_assert|g_log|g_malloc|'
                       r'g_malloc0|g_realloc|g_try_|g_new|g_slice|'
                       r'g_strdup|g_memdup|malloc$|calloc$|realloc$|'
                       r'handle\w+Impl|\w+::)')


def first_frame(lines: Sequence[str], after: str = '') -> str:
    """The first frame of @lines that is not MACHINERY, as "function place".

    With @after, only frames after the first one whose function starts
    with it count.
    """
    found = not after
    for line in lines:
        match = STACK_FRAME.match(line)
        if not match:
            continue
        function = match.group(1)
        if not found:
            found = function.startswith(after)
            continue
        if not MACHINERY.match(function):
            return f'{function}{match.group(2)}'.strip()
    return '?'


def report_summary(text: str) -> str:
    """The line that says what a sanitizer report is about, and where.

    An abort() that ends a UBSan report (scripts/check-asan.sh says why
    it comes as an ASan ABRT report) is named after its __ubsan_handle_
    frame, and a leak or other abort after its first frame out of the
    allocator, abort() and the sanitizers.
    """
    lines = text.splitlines()
    handler = re.search(r' in __ubsan_handle_(\w+?)(?:_abort)?(?: |$)', text,
                        re.M)
    if handler:
        return (f'UndefinedBehaviorSanitizer: {handler.group(1)} in '
                f'{first_frame(lines, "__ubsan_handle_")} (the message is '
                f'on the stderr of the process)')
    found = SANITIZER_SUMMARY.findall(text)
    summaries = [line for line in found if line.startswith('SUMMARY: ')]
    line = summaries[0] if summaries else found[0].strip() if found else ''
    if not line:
        stripped = text.strip()
        return stripped.splitlines()[0] if stripped else '(empty report)'
    if 'leaked in' in line or ': ABRT ' in line:
        line += f' (first: {first_frame(lines)})'
    return line


# Warnings that libasan writes without an error, in a file of their own:
# - once a process at its first swapcontext(), which QEMU's coroutines
#   call; QEMU annotates its stack switches for ASan
#   (CONFIG_ASAN_IFACE_FIBER), and no option silences it;
# - when a function that does not return (siglongjmp(), out of a coroutine
#   or out of TCG's CPU loop) is called on a stack ASan does not know:
#   it leaves that stack's poisoning alone, which can only cause a false
#   report later, and a report is a report.
# A file with nothing else is no report.
SANITIZER_NOISE = re.compile(
    r"^==[\w.-]*==\d+==WARNING: ASan doesn't fully support "
    r'makecontext/swapcontext functions and may produce false positives '
    r'in some cases!\n|'
    r'^==[\w.-]*==\d+==WARNING: ASan is ignoring requested '
    r'__asan_handle_no_return: stack type: \w+ top: 0x[0-9a-f]+; '
    r'bottom 0x[0-9a-f]+; size: 0x[0-9a-f]+ \(\d+\)\n'
    r'False positive error reports may follow\n'
    r'For details see https://github.com/google/sanitizers/issues/189\n',
    re.M)


def new_sanitizer_reports(directory: Path,
                          seen: Set[str]) -> List[Tuple[str, str]]:
    """The (file name, text) of each report in @directory not in @seen.

    The sanitizers write one file a process (log_path.exe_name.pid); the
    names returned are added to @seen.  A file of SANITIZER_NOISE only
    is no report.
    """
    try:
        names = sorted(p.name for p in directory.iterdir() if p.is_file())
    except OSError as err:
        return [(str(directory), f'cannot read the folder: {err}')]
    reports = []
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        try:
            text = (directory / name).read_text(errors='replace')
        except OSError as err:
            text = f'cannot read it: {err}'
        if SANITIZER_NOISE.sub('', text).strip():
            reports.append((name, text))
    return reports


def print_sanitizer_reports(reports: Sequence[Tuple[str, str]],
                            directory: Path) -> List[str]:
    """Print @reports (the start of each); return one problem for each."""
    problems = []
    for name, text in reports:
        lines = text.splitlines()
        print(f'--- sanitizer report {directory / name} ---')
        for line in lines[:REPORT_LINES]:
            print(line)
        if len(lines) > REPORT_LINES:
            print(f'... ({len(lines) - REPORT_LINES} more lines in the file)')
        problems.append(f'sanitizer report {name}: {report_summary(text)}')
    return problems


def print_verdict(verdict: Verdict, result: LayerResult) -> None:
    """Say what a layer's result counts as, and why."""
    print(f'== {verdict.layer}: {verdict.passed} passed, {verdict.failed} '
          f'failed, {verdict.skipped} skipped ({len(verdict.excused)} '
          f'expected); {result.ran} of {result.expected} tests gave a '
          f'result ({verdict.seconds:.0f} s)', flush=True)
    for note in result.notes:
        print(f'   {note}')
    for reason in verdict.reasons:
        print(f'   FAILED: {reason}')


def print_expected_skips(entries: Dict[str, str], errors: List[str],
                         verdicts: Dict[str, Verdict]) -> None:
    """Print the expected-skips list, so that what it excuses is seen."""
    where = EXPECTED_SKIPS.relative_to(TOP)
    if not entries and not errors:
        print(f'expected skips ({where}): none')
        return
    print(f'expected skips ({where}):')
    for test_id, reason in entries.items():
        verdict = verdicts.get(test_id.split(':', 1)[0])
        if verdict is None:
            state = 'layer not run'
        elif test_id in verdict.stale:
            state = 'FAILED: did not skip, remove it'
        else:
            state = 'skipped'
        print(f'    {test_id}: {reason} [{state}]')
    for error in errors:
        print(f'    FAILED: {error}')


def totals(verdicts: Sequence[Verdict],
           errors: Sequence[str]) -> Tuple[int, int]:
    """Passed and failed in all; an error in the skips list fails too."""
    return (sum(v.passed for v in verdicts),
            sum(v.failed for v in verdicts) + len(errors))


def final_line(verdicts: Sequence[Verdict], errors: Sequence[str]) -> str:
    """The last line of a run: every skip that is not expected is failed."""
    passed, failed = totals(verdicts, errors)
    return f'{passed} passed, {failed} failed'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--only', choices=LAYERS, action='append',
                        help='run only these layers')
    args = parser.parse_args()
    build = Path(os.environ.get('QCURL_BUILD', TOP / 'build'))
    logs_env = os.environ.get(SANITIZER_LOGS)
    # The series builds its own tree, without the sanitizers, and the
    # curl8 layer uses binaries built without them: under them, both would
    # only test again what make check tested
    layers = args.only or [layer for layer in LAYERS
                           if not (logs_env and layer in ('series', 'curl8'))]
    try:
        entries, errors = load_expected_skips(EXPECTED_SKIPS.read_text())
    except OSError as err:
        entries, errors = {}, [f'cannot read {EXPECTED_SKIPS}: {err}']
    logs = Path(logs_env) if logs_env else None
    seen: Set[str] = set()
    if logs is not None:
        print(f'sanitizer reports: {logs} (each one fails its layer)')
        logs.mkdir(parents=True, exist_ok=True)
        for name in ('ASAN_OPTIONS', 'UBSAN_OPTIONS', 'LSAN_OPTIONS'):
            print(f'   {name}={os.environ.get(name, "")}')
        # Reports from before this run are not this run's.
        old = new_sanitizer_reports(logs, seen)
        if old:
            print(f'   ignoring {plural(len(old), "older report")} there')
    verdicts: Dict[str, Verdict] = {}
    for layer in LAYERS:
        if layer not in layers:
            continue
        start = time.monotonic()
        if layer == 'harness':
            result = layer_harness()
        elif layer == 'unit':
            result = layer_unit(build)
        elif layer == 'series':
            result = layer_series(build)
        elif layer == 'iotests':
            result = layer_iotests(build)
        elif layer == 'curl8':
            result = layer_curl8(build)
        else:
            result = layer_e2e(logs is not None)
        result.seconds = time.monotonic() - start
        if logs is not None:
            result.problems += print_sanitizer_reports(
                new_sanitizer_reports(logs, seen), logs)
        verdicts[layer] = judge(result, entries)
        print_verdict(verdicts[layer], result)
    late: List[str] = []
    if logs is not None:
        # A process that outlived its layer may report at its exit.
        late = print_sanitizer_reports(new_sanitizer_reports(logs, seen),
                                       logs)
    print()
    for verdict in verdicts.values():
        print(f'{verdict.layer:>40}: {verdict.passed:4} passed, '
              f'{verdict.failed:3} failed, {verdict.skipped:3} skipped '
              f'({len(verdict.excused)} expected), {verdict.seconds:5.0f} s')
    print_expected_skips(entries, errors, verdicts)
    for problem in late:
        print(f'FAILED after the last layer: {problem}')
    print(final_line(list(verdicts.values()), errors + late))
    return 1 if totals(list(verdicts.values()), errors + late)[1] else 0


if __name__ == '__main__':
    sys.exit(main())
