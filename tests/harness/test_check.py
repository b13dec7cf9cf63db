# SPDX-License-Identifier: GPL-2.0-or-later
#
# Tests of scripts/check.py: a test that does not run is never a pass
#
# Copyright (C) 2026 The QEMU curl series authors
"""scripts/check.py counts skips, short runs and empty layers as failed.

Each layer's parser is fed what its runner printed (captured from real
runs: glib 2.74's TAP, QEMU 10.0's iotests check script, tests/e2e/run)
or, for unittest, a real run of a throwaway test directory.
"""

import contextlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path
from typing import Dict, List

TOP = Path(__file__).resolve().parents[2]


def load(name: str, path: Path):  # type: ignore[no-untyped-def]
    """Import the module at @path as @name."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


check = load('check', TOP / 'scripts' / 'check.py')
e2e_runner = load('e2e_runner', TOP / 'tests' / 'e2e' / 'runner.py')


def verdict(result, skips: Dict[str, str] = None):  # type: ignore
    """Judge @result against the expected @skips (none by default)."""
    return check.judge(result, skips or {})


# glib 2.74, test-range-cache --tap -k, all passing (shortened to 3)
TAP_PASS = '''\
# random seed: R02S5995b4400ec3e5b30559610844e1e8df
1..3
# Start of range-cache tests
ok 1 /range-cache/geometry
ok 2 /range-cache/remote-range
# Start of read tests
ok 3 /range-cache/read/fetches-once
# End of read tests
# End of range-cache tests
'''

# glib 2.74 --tap -k: g_test_skip, g_test_incomplete, g_test_fail
TAP_SKIP_TODO_FAIL = '''\
# random seed: R02S885219fc054e423a1b20eaf6d94349e2
1..5
# Start of demo tests
ok 1 /demo/ok
ok 2 /demo/skip # SKIP no frobnicator here
not ok 3 /demo/todo # TODO not written yet
not ok 4 /demo/fail
ok 5 /demo/ok2
# End of demo tests
'''

# glib 2.74 --tap: a failed g_assert_cmpint (the process aborts)
TAP_ASSERT = '''\
# random seed: R02S9f2bc174ca0d1955ab746f94050c0bea
1..3
# Start of demo tests
ok 1 /demo/ok
**
ERROR:taptest.c:8:t_assert: assertion failed (1 == 2): (1 == 2)
Bail out! ERROR:taptest.c:8:t_assert: assertion failed (1 == 2): (1 == 2)
'''

# glib 2.74 --tap: SIGSEGV in the second test
TAP_CRASH = '''\
# random seed: R02S50428c3f33fe67394fedb5375f66434f
1..3
# Start of demo tests
ok 1 /demo/ok
'''

# glib 2.74 --tap -p /demo/ok: the plan comes last
TAP_PLAN_LAST = '''\
# random seed: R02S95a57d1155a6f6f9ecf71ddc5dcaddcd
# Start of demo tests
ok 1 /demo/ok
# End of demo tests
1..1
'''

IOTESTS_HEAD = '''\
QEMU          -- "/work/build/qemu/qemu-system-x86_64" -nodefaults -display none -accel qtest
IMGFMT        -- raw
IMGPROTO      -- file

'''

# QEMU 10.0's check -raw on four passing iotests (stdout is a pipe: the
# "..." line ends in a carriage return)
IOTESTS_PASS = IOTESTS_HEAD + '''\
curl-basic     ...        [07:57:06]              ...                  \r\
curl-basic     pass       [07:57:06] [07:57:09]   2.7s
curl-faults    ...        [07:57:09]              ...                  \r\
curl-faults    pass       [07:57:09] [07:57:26]   17.1s
curl-options   ...        [07:57:26]              ...    (last: 5.3s)  \r\
curl-options   pass       [07:57:26] [07:57:31]   5.3s   (last: 5.3s)
curl-qmp       ...        [07:57:31]              ...                  \r\
curl-qmp       pass       [07:57:31] [07:57:36]   5.0s
Passed all 4 iotests
'''

# curl-basic run without QCURL_CA_DIR: test_https calls case_notrun()
IOTESTS_CASE_NOTRUN = IOTESTS_HEAD + '''\
curl-basic   ...        [07:59:15]              ...    (last: 2.7s)  \r\
curl-basic   pass       [07:59:15] [07:59:17]   1.1s   (last: 2.7s)
    [case not run] QCURL_CA_DIR is not set: run under scripts/with-test-ca.sh for a trusted certificate

Some cases not run in: /work/build/src/tests/qemu-iotests/tests/curl-basic
Passed all 1 iotests
'''

# check -vmdk: both iotests call notrun() (via their supported_fmts)
IOTESTS_NOTRUN = IOTESTS_HEAD.replace('raw', 'vmdk') + '''\
curl-basic   ...        [07:59:17]              ...                  \r\
curl-basic   not run    [07:59:17] [07:59:17]   ...                  not suitable for this image format: vmdk
curl-qmp     ...        [07:59:17]              ...                  \r\
curl-qmp     not run    [07:59:17] [07:59:17]   ...                  not suitable for this image format: vmdk
Not run: curl-basic curl-qmp
Passed all 0 iotests
'''

# One iotest whose output differs, one with a case_skip()
IOTESTS_FAIL = IOTESTS_HEAD + '''\
zz-fail   ...        [07:59:32]              ...                  \r\
zz-fail   fail       [07:59:32] [07:59:32]   0.3s                 output mismatch (see /work/build/qemu/tests/qemu-iotests/scratch/raw-file-zz-fail/zz-fail.out.bad)
--- /work/build/src/tests/qemu-iotests/tests/zz-fail.out
+++ /work/build/qemu/tests/qemu-iotests/scratch/raw-file-zz-fail/zz-fail.out.bad
@@ -1 +1 @@
-expected
+something else
zz-skip   ...        [07:59:32]              ...                  \r\
zz-skip   pass       [07:59:32] [07:59:32]   0.2s
    [case not run] no frobnicator

Some cases not run in: /work/build/src/tests/qemu-iotests/tests/zz-skip
Failures: zz-fail
Failed 1 of 2 iotests
'''

E2E_IDS = ['test_convert.ConvertTest.test_nginx_http_raw_to_raw',
           'test_ftp.FtpTest.test_ftps',
           'test_info.InfoTest.test_info_http']


def e2e_output(passed: int, failed: int, skips: List[str], ran: int,
               listed: int = 3) -> str:
    """What tests/e2e/run prints, as runner.py writes it."""
    lines = [f'e2e: {listed} tests, patched qemu-img and qemu-io, build /b',
             '.' * ran, '', '-' * 70, f'Ran {ran} tests in 1.000s', '',
             'OK' if not failed else f'FAILED (failures={failed})']
    lines += [f'e2e: SKIPPED {skip}' for skip in skips]
    lines += [f'e2e: ran {ran} of {listed} tests in 1.0 s',
              e2e_runner.summary_line(passed, failed, len(skips))]
    return '\n'.join(lines) + '\n'


# GCC 12's libasan, from a test program like SANITIZED_C: shortened
ASAN_UAF = """\
=================================================================
==t==1729==ERROR: AddressSanitizer: heap-use-after-free on address 0x6020000\
00010 at pc 0x55b4a6b95319 bp 0x7ffc62a549f0 sp 0x7ffc62a549e8
READ of size 1 at 0x602000000010 thread T0
    #0 0x55b4a6b95318 in main /tmp/sz/t.c:5
    #1 0x7f26cd245249 in __libc_start_call_main ../sysdeps/nptl/libc_start_c\
all_main.h:58

SUMMARY: AddressSanitizer: heap-use-after-free /tmp/sz/t.c:5 in main
==t==1729==ABORTING
"""
LSAN_LEAK = """
=================================================================
==t==1754==ERROR: LeakSanitizer: detected memory leaks

Direct leak of 8 byte(s) in 1 object(s) allocated from:
    #0 0x7fb45a2b89cf in __interceptor_malloc ../../../../src/libsanitizer/a\
san/asan_malloc_linux.cpp:69
    #1 0x7fb45a2b89d0 in g_malloc (/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x\
5e719)
    #2 0x561e1ecd33f8 in main /tmp/sz/t.c:6

SUMMARY: AddressSanitizer: 8 byte(s) leaked in 1 allocation(s)."""
UBSAN_ABRT = """\
=================================================================
==t==1744==ERROR: AddressSanitizer: ABRT on unknown address 0x0000000006d0 (\
pc 0x7f12600a8eec bp 0x7f12610bf7c0 sp 0x7ffe681a1dc0 T0)
    #0 0x7f12600a8eec in __pthread_kill_implementation nptl/pthread_kill.c:44
    #1 0x7f1260059fb1 in __GI_raise ../sysdeps/posix/raise.c:26
    #2 0x7f1260044471 in __GI_abort stdlib/abort.c:79
    #3 0x7f126021e84e in __sanitizer::Abort() ../../../../src/libsanitizer/s\
anitizer_common/sanitizer_posix_libcdep.cpp:143
    #4 0x7f126022aee0 in __sanitizer::Die() ../../../../src/libsanitizer/san\
itizer_common/sanitizer_termination.cpp:58
    #5 0x7f126020a5c3 in handleIntegerOverflowImpl<__ubsan::Value> ../../../\
../src/libsanitizer/ubsan/ubsan_handlers.cpp:231
    #6 0x7f126020d7bc in __ubsan_handle_add_overflow ../../../../src/libsani\
tizer/ubsan/ubsan_handlers.cpp:242
    #7 0x556bb8103505 in main /tmp/sz/t.c:7

AddressSanitizer can not provide additional info.
SUMMARY: AddressSanitizer: ABRT nptl/pthread_kill.c:44 in __pthread_kill_im\
plementation
==t==1744==ABORTING
"""
ASAN_WARNINGS = """\
==qemu-io==16301==WARNING: ASan doesn't fully support makecontext/swapcontext \
functions and may produce false positives in some cases!
==qemu-io==16301==WARNING: ASan is ignoring requested __asan_handle_no_return\
: stack type: default top: 0x7ffc7095e000; bottom 0x7fa44dcfa000; size: 0x005\
822c64000 (378540539904)
False positive error reports may follow
For details see https://github.com/google/sanitizers/issues/189
"""
ASSERT_ABRT = """\
==qemu-img==9==ERROR: AddressSanitizer: ABRT on unknown address 0x9 (pc 0x1 \
bp 0x2 sp 0x3 T0)
    #0 0x7f12600a8eec in __pthread_kill_implementation nptl/pthread_kill.c:44
    #1 0x7f1260059fb1 in __GI_raise ../sysdeps/posix/raise.c:26
    #2 0x7f1260044471 in __GI_abort stdlib/abort.c:79
    #3 0x7f1260044395 in __assert_fail_base assert/assert.c:92
    #4 0x7f1260052eb1 in __GI___assert_fail assert/assert.c:101
    #5 0x55d0c0ffee00 in curl_read_cb ../src/block/curl.c:123
SUMMARY: AddressSanitizer: ABRT nptl/pthread_kill.c:44 in __pthread_kill_im\
plementation
"""

# Each mode of this program does one thing each sanitizer reports
SANITIZED_C = """\
#include <limits.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv)
{
    char *p = malloc(8);
    int x = INT_MAX;
    if (!strcmp(argv[1], "use-after-free")) {
        free(p);
        return p[0];
    }
    if (!strcmp(argv[1], "overflow")) {
        x += argc;
        return x & 1;
    }
    if (!strcmp(argv[1], "leak")) {
        p = NULL;
        return 0;
    }
    free(p);
    return 0;
}
"""


class SanitizerTest(unittest.TestCase):
    """A sanitizer report fails its layer (QCURL_SANITIZER_LOGS)."""

    def test_summaries(self) -> None:
        self.assertEqual(check.report_summary(ASAN_UAF),
                         'SUMMARY: AddressSanitizer: heap-use-after-free '
                         '/tmp/sz/t.c:5 in main')
        self.assertEqual(check.report_summary(LSAN_LEAK),
                         'SUMMARY: AddressSanitizer: 8 byte(s) leaked in 1 '
                         'allocation(s). (first: main /tmp/sz/t.c:6)')
        self.assertEqual(check.report_summary(UBSAN_ABRT),
                         'UndefinedBehaviorSanitizer: add_overflow in main '
                         '/tmp/sz/t.c:7 (the message is on the stderr of '
                         'the process)')
        self.assertTrue(check.report_summary(ASSERT_ABRT).endswith(
            '(first: curl_read_cb ../src/block/curl.c:123)'))
        self.assertEqual(check.report_summary(''), '(empty report)')

    def test_each_report_once(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            seen: set = set()
            self.assertEqual(check.new_sanitizer_reports(Path(tmp), seen), [])
            Path(tmp, 'san.qemu-img.1').write_text(ASAN_UAF)
            self.assertEqual(check.new_sanitizer_reports(Path(tmp), seen),
                             [('san.qemu-img.1', ASAN_UAF)])
            self.assertEqual(check.new_sanitizer_reports(Path(tmp), seen), [])
            Path(tmp, 'san.qemu-io.2').write_text(LSAN_LEAK)
            self.assertEqual(check.new_sanitizer_reports(Path(tmp), seen),
                             [('san.qemu-io.2', LSAN_LEAK)])
            # libasan's warnings alone are no report; with an error they are
            Path(tmp, 'san.qemu-io.3').write_text(ASAN_WARNINGS)
            self.assertEqual(check.new_sanitizer_reports(Path(tmp), seen), [])
            Path(tmp, 'san.qemu-io.4').write_text(ASAN_WARNINGS + ASAN_UAF)
            self.assertEqual(len(check.new_sanitizer_reports(Path(tmp),
                                                             seen)), 1)
        # A folder that cannot be read fails, and again next time
        self.assertEqual(len(check.new_sanitizer_reports(Path(tmp), seen)), 1)
        self.assertEqual(len(check.new_sanitizer_reports(Path(tmp), seen)), 1)

    def test_a_report_fails_a_passing_layer(self) -> None:
        result = check.LayerResult('e2e', passed=3, ran=3, expected=3)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            result.problems += check.print_sanitizer_reports(
                [('san.qemu-img.1', ASAN_UAF), ('san.qemu-io.2', LSAN_LEAK)],
                Path('/logs'))
        self.assertIn('--- sanitizer report /logs/san.qemu-img.1 ---\n'
                      '=====', out.getvalue())
        self.assertIn('    #1 0x7fb45a2b89d0 in g_malloc', out.getvalue())
        judged = verdict(result)
        self.assertEqual((judged.passed, judged.failed), (3, 2))
        self.assertIn('sanitizer report san.qemu-img.1: SUMMARY: '
                      'AddressSanitizer: heap-use-after-free /tmp/sz/t.c:5 '
                      'in main', judged.reasons)

    def test_real_reports(self) -> None:
        """scripts/with-sanitizers.sh's options, on GCC's runtimes."""
        with tempfile.TemporaryDirectory() as tmp:
            source, program = Path(tmp, 'san.c'), Path(tmp, 'san')
            source.write_text(SANITIZED_C)
            subprocess.run(['cc', '-g', '-fsanitize=address,undefined',
                            '-fno-omit-frame-pointer', '-o', str(program),
                            str(source)], check=True)
            env = {k: v for k, v in os.environ.items()
                   if not k.endswith('SAN_OPTIONS')}
            wanted = {'use-after-free': 'heap-use-after-free',
                      'overflow': 'UndefinedBehaviorSanitizer: add_overflow '
                                  'in main',
                      'leak': 'leaked in 1 allocation(s). (first: main',
                      'clean': None}
            for mode, summary in wanted.items():
                with self.subTest(mode=mode):
                    logs = Path(tmp, 'logs-' + mode)
                    proc = subprocess.run(
                        [str(TOP / 'scripts' / 'with-sanitizers.sh'),
                         str(logs), str(program), mode], env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
                    reports = check.new_sanitizer_reports(logs, set())
                    if summary is None:
                        self.assertEqual((proc.returncode, reports), (0, []))
                        continue
                    self.assertEqual(proc.returncode, -signal.SIGABRT,
                                     proc.stderr)
                    self.assertEqual(len(reports), 1, proc.stderr)
                    self.assertTrue(reports[0][0].startswith('san.san.'))
                    self.assertIn(summary, check.report_summary(reports[0][1]))
                    if mode == 'overflow':
                        self.assertIn('runtime error: signed integer '
                                      'overflow', proc.stderr)


class ExpectedSkipsTest(unittest.TestCase):
    """The list of expected skips: one "layer:test reason" a line."""

    def test_parse(self) -> None:
        entries, errors = check.load_expected_skips(textwrap.dedent('''\
            # a comment

            iotests:raw:curl-basic   needs a frobnicator
            e2e:test_ftp.FtpTest.test_ftps no FTPS here
            '''))
        self.assertEqual(errors, [])
        self.assertEqual(entries, {
            'iotests:raw:curl-basic': 'needs a frobnicator',
            'e2e:test_ftp.FtpTest.test_ftps': 'no FTPS here'})

    def test_mistakes(self) -> None:
        entries, errors = check.load_expected_skips(textwrap.dedent('''\
            unit:test-range-cache:/range-cache/geometry
            bench:x because
            e2e:a.B.c reason
            e2e:a.B.c reason again
            '''))
        self.assertEqual(entries, {'e2e:a.B.c': 'reason'})
        self.assertEqual(len(errors), 3, errors)
        self.assertIn('has no reason', errors[0])
        self.assertIn('does not start with', errors[1])
        self.assertIn('listed twice', errors[2])
        self.assertEqual(check.final_line([], errors), '0 passed, 3 failed')

    def test_the_list_is_valid(self) -> None:
        _, errors = check.load_expected_skips(
            check.EXPECTED_SKIPS.read_text())
        self.assertEqual(errors, [])


class JudgeTest(unittest.TestCase):
    """What a layer's result adds to "N passed, N failed"."""

    def test_all_passed(self) -> None:
        result = check.LayerResult('unit', passed=3, ran=3, expected=3)
        self.assertEqual((verdict(result).passed, verdict(result).failed),
                         (3, 0))

    def test_expected_skip_is_neither(self) -> None:
        result = check.LayerResult('unit', passed=2, ran=3, expected=3,
                                   skips=[check.Skip('t:/a', 'why')])
        self.assertEqual(verdict(result).failed, 1)
        judged = verdict(result, {'unit:t:/a': 'it may'})
        self.assertEqual((judged.passed, judged.failed, judged.excused),
                         (2, 0, ['unit:t:/a']))

    def test_unnamed_skip_cannot_be_excused(self) -> None:
        result = check.LayerResult('harness', passed=2, ran=3, expected=3,
                                   skips=[check.Skip('?', 'no id')])
        self.assertEqual(verdict(result, {'harness:?': 'any'}).failed, 2)

    def test_stale_expected_skip(self) -> None:
        result = check.LayerResult('e2e', passed=3, ran=3, expected=3)
        judged = verdict(result, {'e2e:a.B.c': 'it used to skip',
                                  'unit:t:/a': 'another layer'})
        self.assertEqual((judged.passed, judged.failed, judged.stale),
                         (3, 1, ['e2e:a.B.c']))

    def test_everything_skipped(self) -> None:
        result = check.LayerResult('unit', ran=1, expected=1,
                                   skips=[check.Skip('t:/a', 'why')])
        self.assertEqual(verdict(result, {'unit:t:/a': 'it may'}).failed, 1)

    def test_shortfall_and_problems(self) -> None:
        result = check.LayerResult('unit', passed=2, ran=2, expected=5,
                                   problems=['crashed'])
        self.assertEqual(verdict(result).failed, 4)

    def test_empty_layer(self) -> None:
        self.assertEqual(verdict(check.LayerResult('unit')).failed, 1)

    def test_issue_guards(self) -> None:
        """A skip, a not-run iotest, a short TAP plan, an empty layer."""
        skip = check.parse_tap('t', TAP_SKIP_TODO_FAIL.replace(
            'not ok 3 /demo/todo # TODO not written yet',
            'ok 3 /demo/todo').replace('not ok 4', 'ok 4'), 0)
        notrun = check.parse_iotests('vmdk', ['curl-basic', 'curl-qmp'],
                                     IOTESTS_NOTRUN, 0)
        short = check.parse_tap('t', TAP_PASS.replace('1..3', '1..5'), 0)
        empty = check.parse_unittest('harness', 'Ran 0 tests in 0.000s\n\n'
                                     'OK\n', 0, [])
        verdicts = [verdict(r) for r in (skip, notrun, short, empty)]
        self.assertEqual([(v.passed, v.failed) for v in verdicts],
                         [(4, 1), (0, 2), (3, 2), (0, 1)])
        self.assertEqual(check.final_line(verdicts, []), '7 passed, 6 failed')


class TapTest(unittest.TestCase):
    """glib test binaries, run with --tap -k."""

    def judged(self, out: str, code: int = 0):  # type: ignore
        return verdict(check.parse_tap('test-x', out, code))

    def test_pass(self) -> None:
        judged = self.judged(TAP_PASS)
        self.assertEqual((judged.passed, judged.failed), (3, 0))

    def test_skip_todo_and_fail(self) -> None:
        result = check.parse_tap('test-x', TAP_SKIP_TODO_FAIL, 1)
        self.assertEqual((result.passed, result.failed, result.ran,
                          result.expected), (2, 1, 5, 5))
        self.assertEqual(result.skips, [
            check.Skip('test-x:/demo/skip', 'SKIP no frobnicator here'),
            check.Skip('test-x:/demo/todo', 'TODO not written yet')])
        self.assertEqual((verdict(result).passed, verdict(result).failed),
                         (2, 3))
        judged = verdict(result, {'unit:test-x:/demo/skip': 'r',
                                  'unit:test-x:/demo/todo': 'r'})
        self.assertEqual((judged.passed, judged.failed), (2, 1))

    def test_short_plan(self) -> None:
        judged = self.judged(TAP_PASS.replace('1..3', '1..21'))
        self.assertEqual((judged.passed, judged.failed), (3, 18))

    def test_more_results_than_planned(self) -> None:
        judged = self.judged(TAP_PASS.replace('1..3', '1..2'))
        self.assertEqual((judged.passed, judged.failed), (3, 1))

    def test_bail_out(self) -> None:
        judged = self.judged(TAP_ASSERT, -6)
        self.assertEqual((judged.passed, judged.failed), (1, 3))

    def test_crash(self) -> None:
        judged = self.judged(TAP_CRASH, -11)
        self.assertEqual((judged.passed, judged.failed), (1, 2))

    def test_crash_after_the_last_test(self) -> None:
        judged = self.judged(TAP_PASS, -11)
        self.assertEqual((judged.passed, judged.failed), (3, 1))
        self.assertIn('killed by signal 11', ' '.join(judged.reasons))

    def test_plan_last(self) -> None:
        judged = self.judged(TAP_PLAN_LAST)
        self.assertEqual((judged.passed, judged.failed), (1, 0))

    def test_no_plan(self) -> None:
        judged = self.judged(TAP_PLAN_LAST.replace('1..1\n', ''))
        self.assertEqual((judged.passed, judged.failed), (1, 1))

    def test_no_output(self) -> None:
        judged = self.judged('', 1)
        self.assertEqual((judged.passed, judged.failed), (0, 1))

    def test_empty_plan(self) -> None:
        judged = self.judged('1..0 # SKIP no tests here\n')
        self.assertEqual((judged.passed, judged.failed), (0, 1))

    def test_missing_binary(self) -> None:
        with tempfile.TemporaryDirectory() as build, \
                contextlib.redirect_stdout(io.StringIO()):
            result = check.layer_unit(Path(build))
        judged = verdict(result)
        self.assertEqual(judged.passed, 0)
        self.assertGreaterEqual(judged.failed, 1)


class IotestsTest(unittest.TestCase):
    """The base tree's check script on the curl iotests."""

    def test_pass(self) -> None:
        names = ['curl-basic', 'curl-faults', 'curl-options', 'curl-qmp']
        judged = verdict(check.parse_iotests('raw', names, IOTESTS_PASS, 0))
        self.assertEqual((judged.passed, judged.failed), (4, 0))

    def test_case_notrun(self) -> None:
        result = check.parse_iotests('raw', ['curl-basic'],
                                     IOTESTS_CASE_NOTRUN, 0)
        self.assertEqual(result.passed, 0)
        self.assertEqual([s.test for s in result.skips], ['raw:curl-basic'])
        self.assertIn('QCURL_CA_DIR is not set', result.skips[0].reason)
        self.assertEqual(verdict(result).failed, 1)

    def test_case_notrun_without_reason(self) -> None:
        out = IOTESTS_CASE_NOTRUN.replace('    [case not run]', 'XX')
        result = check.parse_iotests('raw', ['curl-basic'], out, 0)
        self.assertEqual([s.test for s in result.skips], ['raw:curl-basic'])

    def test_notrun(self) -> None:
        result = check.parse_iotests('vmdk', ['curl-basic', 'curl-qmp'],
                                     IOTESTS_NOTRUN, 0)
        self.assertEqual((result.passed, result.ran), (0, 2))
        self.assertEqual(result.skips[1], check.Skip(
            'vmdk:curl-qmp', 'not run: not suitable for this image format: '
            'vmdk'))
        self.assertEqual(verdict(result).failed, 2)

    def test_fail_and_case_skip(self) -> None:
        result = check.parse_iotests('raw', ['zz-fail', 'zz-skip'],
                                     IOTESTS_FAIL, 1)
        self.assertEqual((result.passed, result.failed, len(result.skips)),
                         (0, 1, 1))
        self.assertEqual(verdict(result).failed, 2)

    def test_no_result_line(self) -> None:
        names = ['curl-basic', 'curl-faults', 'curl-new', 'curl-options',
                 'curl-qmp']
        judged = verdict(check.parse_iotests('raw', names, IOTESTS_PASS, 0))
        self.assertEqual((judged.passed, judged.failed), (4, 1))

    def test_check_refuses(self) -> None:
        judged = verdict(check.parse_iotests(
            'raw', ['curl-basic', 'nosuch'],
            'Test "tests/nosuch" is not found\n', 1))
        self.assertEqual((judged.passed, judged.failed), (0, 2))

    def test_no_iotests(self) -> None:
        judged = verdict(check.parse_iotests('raw', [], 'Passed all 0 '
                                             'iotests\n', 0))
        self.assertEqual((judged.passed, judged.failed), (0, 1))

    def test_colours(self) -> None:
        out = IOTESTS_PASS.replace(' pass   ', ' \033[32mpass\033[0m   ')
        names = ['curl-basic', 'curl-faults', 'curl-options', 'curl-qmp']
        judged = verdict(check.parse_iotests('raw', names, out, 0))
        self.assertEqual((judged.passed, judged.failed), (4, 0))


class E2eTest(unittest.TestCase):
    """tests/e2e/run: its summary, SKIPPED and ran lines."""

    def test_pass(self) -> None:
        judged = verdict(check.parse_e2e(e2e_output(3, 0, [], 3), 0,
                                         E2E_IDS))
        self.assertEqual((judged.passed, judged.failed), (3, 0))

    def test_skip(self) -> None:
        out = e2e_output(2, 0, ['test_ftp.FtpTest.test_ftps: no FTPS'], 3)
        result = check.parse_e2e(out, 0, E2E_IDS)
        self.assertEqual(result.skips, [check.Skip(
            'test_ftp.FtpTest.test_ftps', 'no FTPS')])
        self.assertEqual(verdict(result).failed, 1)
        judged = verdict(result, {'e2e:test_ftp.FtpTest.test_ftps': 'r'})
        self.assertEqual((judged.passed, judged.failed), (2, 0))

    def test_skipped_class(self) -> None:
        """A class whose setUpClass skips: one skip, its tests not run."""
        out = e2e_output(1, 0, ['setUpClass (test_ftp.FtpTest): no FTP'], 1)
        judged = verdict(check.parse_e2e(out, 0, E2E_IDS))
        self.assertEqual((judged.passed, judged.failed), (1, 3))

    def test_fewer_than_listed(self) -> None:
        judged = verdict(check.parse_e2e(e2e_output(2, 0, [], 2), 0,
                                         E2E_IDS))
        self.assertEqual((judged.passed, judged.failed), (2, 1))

    def test_zero_tests(self) -> None:
        out = 'e2e: no test matches []\ne2e: 0 passed, 1 failed, 0 skipped\n'
        self.assertEqual(verdict(check.parse_e2e(out, 1, [])).failed, 1)
        out = e2e_output(0, 0, [], 0, listed=0)
        self.assertEqual(verdict(check.parse_e2e(out, 0, [])).failed, 1)

    def test_no_summary(self) -> None:
        judged = verdict(check.parse_e2e('Traceback\n', 1, E2E_IDS))
        self.assertEqual((judged.passed, judged.failed), (0, 4))

    def test_watchdog(self) -> None:
        """runner.py gave up: a summary but no "ran" line."""
        out = ('e2e: test_info.InfoTest.test_info_http ran for more than '
               '300 s: giving up\ne2e: 2 passed, 1 failed, 0 skipped\n')
        judged = verdict(check.parse_e2e(out, 1, E2E_IDS))
        self.assertEqual((judged.passed, judged.failed), (2, 1))

    def test_listing(self) -> None:
        ids, error = check.parse_test_ids(
            'e2e: missing: nginx\ne2e: 0 passed, 1 failed, 0 skipped\n', 1,
            'e2e')
        self.assertEqual(ids, [])
        self.assertIsNotNone(error)
        ids, error = check.parse_test_ids('\n'.join(E2E_IDS) + '\n', 0,
                                          'e2e')
        self.assertEqual((ids, error), (E2E_IDS, None))

    def test_runner_counts(self) -> None:
        """runner.py counts an expected failure as a skip, and names it."""
        class Demo(unittest.TestCase):
            def test_pass(self) -> None:
                pass

            def test_skip(self) -> None:
                self.skipTest('why')

            @unittest.expectedFailure
            def test_xfail(self) -> None:
                self.fail()

        suite = unittest.TestLoader().loadTestsFromTestCase(Demo)
        result = e2e_runner.E2EResult(io.StringIO(), False, 0)
        suite.run(result)
        self.assertEqual(result.counts(), (1, 0, 2))
        self.assertEqual([reason for _, reason in result.skips()],
                         ['why', 'expected failure'])


class UnittestTest(unittest.TestCase):
    """python3 -m unittest -v, run for real on a throwaway directory."""

    def run_layer(self, files: Dict[str, str]):  # type: ignore
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                Path(tmp, name).write_text(textwrap.dedent(text))
            with contextlib.redirect_stdout(io.StringIO()):
                return check.layer_unittest('harness', Path(tmp))

    def test_pass_and_skip(self) -> None:
        result = self.run_layer({'test_demo.py': '''\
            import unittest
            class Demo(unittest.TestCase):
                def test_pass(self):
                    """A docstring ... with dots."""
                def test_skip(self):
                    """A docstring."""
                    print('output ', end='', flush=True)
                    self.skipTest('no frobnicator')
            '''})
        self.assertEqual((result.passed, result.failed, result.ran,
                          result.expected), (1, 0, 2, 2))
        self.assertEqual(result.skips, [check.Skip('test_demo.Demo.test_skip',
                                                   'no frobnicator')])
        self.assertEqual(verdict(result).failed, 1)
        judged = verdict(result, {'harness:test_demo.Demo.test_skip': 'r'})
        self.assertEqual((judged.passed, judged.failed), (1, 0))

    def test_expected_failure_and_unexpected_success(self) -> None:
        result = self.run_layer({'test_demo.py': '''\
            import unittest
            class Demo(unittest.TestCase):
                def test_pass(self):
                    pass
                @unittest.expectedFailure
                def test_xfail(self):
                    self.fail()
                @unittest.expectedFailure
                def test_xpass(self):
                    pass
            '''})
        self.assertEqual(result.skips, [check.Skip(
            'test_demo.Demo.test_xfail', 'expected failure')])
        judged = verdict(result)
        self.assertEqual((judged.passed, judged.failed), (1, 2))

    def test_import_error(self) -> None:
        result = self.run_layer({'test_demo.py': '''\
            import unittest
            class Demo(unittest.TestCase):
                def test_pass(self):
                    pass
            ''', 'test_broken.py': 'import nosuchmodule\n'})
        judged = verdict(result)
        self.assertEqual((judged.passed, judged.failed), (1, 1))

    def test_skipped_class(self) -> None:
        result = self.run_layer({'test_demo.py': '''\
            import unittest
            class Demo(unittest.TestCase):
                def test_pass(self):
                    pass
            class Gone(unittest.TestCase):
                @classmethod
                def setUpClass(cls):
                    raise unittest.SkipTest('not today')
                def test_1(self):
                    pass
                def test_2(self):
                    pass
            '''})
        self.assertEqual((result.passed, result.ran, result.expected),
                         (1, 1, 3))
        judged = verdict(result)
        self.assertEqual((judged.passed, judged.failed), (1, 3))

    def test_empty(self) -> None:
        judged = verdict(self.run_layer({}))
        self.assertEqual((judged.passed, judged.failed), (0, 1))

    def test_python_310_output(self) -> None:
        """Before 3.11, the parentheses name the class only."""
        out = textwrap.dedent('''\
            test_pass (test_demo.Demo) ... ok
            test_skip (test_demo.Demo) ... skipped 'why'

            ------------------------------------------------------------
            Ran 2 tests in 0.001s

            OK (skipped=1)
            ''')
        result = check.parse_unittest('harness', out, 0,
                                      ['test_demo.Demo.test_pass',
                                       'test_demo.Demo.test_skip'])
        self.assertEqual((result.passed, result.skips), (1, [check.Skip(
            'test_demo.Demo.test_skip', 'why')]))

    def test_crash(self) -> None:
        out = ('test_pass (test_demo.Demo.test_pass) ... ok\n'
               'Segmentation fault\n')
        judged = verdict(check.parse_unittest('harness', out, -11,
                                              ['a.B.c', 'a.B.d']))
        self.assertEqual((judged.passed, judged.failed), (0, 3))


if __name__ == '__main__':
    unittest.main()
