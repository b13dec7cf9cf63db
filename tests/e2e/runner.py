# SPDX-License-Identifier: GPL-2.0-or-later
#
# Test runner of the e2e suite of QEMU's curl block driver.
#
# Run by tests/e2e/run (which sets up the test CA, the environment and
# checks the prerequisites); not meant to be run directly.  It discovers
# tests/e2e/test_*.py, runs them with unittest, prints every skip with
# its reason ("e2e: SKIPPED id: reason"), how many tests ran ("e2e: ran N
# of N tests in N s"), and ends with exactly one summary line:
#
#   e2e: N passed, N failed, N skipped
#
# Errors (in tests or fixtures) count as failures, expected failures as
# skips.  A watchdog ends the run (with a traceback of every thread and
# the summary) if one test takes longer than --test-timeout seconds
# (default: $QCURL_E2E_TEST_TIMEOUT, else 300; scripts/check-asan.sh gives
# the sanitized binaries more).
"""Run the e2e suite and print a one-line summary."""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import threading
import time
import unittest
from typing import Any, List, Optional, TextIO, Tuple

E2E_DIR = os.path.dirname(os.path.abspath(__file__))


class E2EResult(unittest.TextTestResult):
    """A TextTestResult that knows the test being run (for the watchdog)."""

    def __init__(self, stream: TextIO, descriptions: bool,
                 verbosity: int) -> None:
        super().__init__(stream, descriptions, verbosity)
        self.current: Optional[str] = None
        self.current_since = time.monotonic()
        self.lock = threading.Lock()

    def startTest(self, test: unittest.TestCase) -> None:
        with self.lock:
            self.current = test.id()
            self.current_since = time.monotonic()
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        with self.lock:
            self.current = None
            self.current_since = time.monotonic()

    def counts(self) -> Tuple[int, int, int]:
        """Return (passed, failed, skipped) so far.

        Errors in class or module fixtures count as failures, and a
        skip of a whole class as one skip, though they are not tests
        that ran.  An expected failure is a skip: it proved nothing.
        """
        failed = (len(self.failures) + len(self.errors) +
                  len(self.unexpectedSuccesses))
        skipped = len(self.skipped) + len(self.expectedFailures)
        ran_failed = failed - sum(1 for test, _ in self.errors
                                  if not isinstance(test, unittest.TestCase))
        ran_skipped = sum(1 for test, _ in self.skipped
                          if isinstance(test, unittest.TestCase))
        passed = (self.testsRun - ran_failed - ran_skipped -
                  len(self.expectedFailures))
        return max(passed, 0), failed, skipped

    def skips(self) -> List[Tuple[str, str]]:
        """Return the (test id, reason) of every skip, as counted."""
        return ([(test.id(), reason) for test, reason in self.skipped] +
                [(test.id(), 'expected failure')
                 for test, _ in self.expectedFailures])


def summary_line(passed: int, failed: int, skipped: int) -> str:
    """The closing line of a run."""
    return f'e2e: {passed} passed, {failed} failed, {skipped} skipped'


def start_watchdog(result: E2EResult, limit: float) -> None:
    """End the process if one test (or class fixture) runs too long."""
    def watch() -> None:
        while True:
            time.sleep(1)
            with result.lock:
                current = result.current or 'a class or module fixture'
                elapsed = time.monotonic() - result.current_since
            if elapsed > limit:
                out = sys.stdout
                out.write(f'\ne2e: {current} ran for more than {limit:.0f} '
                          's: giving up; the stacks of all threads:\n')
                out.flush()
                faulthandler.dump_traceback(file=out, all_threads=True)
                passed, failed, skipped = result.counts()
                out.write(summary_line(passed, failed + 1, skipped) + '\n')
                out.flush()
                os._exit(1)  # pylint: disable=protected-access

    threading.Thread(target=watch, name='e2e-watchdog', daemon=True).start()


def load_suite(patterns: List[str]) -> unittest.TestSuite:
    """Discover the e2e tests, keeping those matching @patterns.

    As with ``python3 -m unittest -k``: a pattern without wildcards
    matches any test whose full name (module.Class.method) contains it;
    otherwise it is an fnmatch pattern on the full name.
    """
    loader = unittest.TestLoader()
    if patterns:
        loader.testNamePatterns = [p if any(c in p for c in '*?[') else
                                   f'*{p}*' for p in patterns]
    return loader.discover(E2E_DIR, pattern='test_*.py',
                           top_level_dir=E2E_DIR)


def list_tests(suite: unittest.TestSuite) -> List[str]:
    """Return the ids of the tests in @suite."""
    result: List[str] = []
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            result += list_tests(item)
        else:
            result.append(item.id())
    return result


def main(argv: Optional[List[str]] = None) -> int:
    """Run the suite; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('-k', dest='patterns', action='append', default=[],
                        metavar='PATTERN',
                        help='only run tests matching PATTERN (repeatable)')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='one line per test')
    parser.add_argument('--list', action='store_true',
                        help='list the tests and exit')
    parser.add_argument('--test-timeout', type=float,
                        default=float(os.environ.get('QCURL_E2E_TEST_TIMEOUT',
                                                     '300')),
                        help='give up when one test runs longer than this '
                             '(default: %(default)s s)')
    args = parser.parse_args(argv)

    if E2E_DIR not in sys.path:
        sys.path.insert(0, E2E_DIR)
    try:
        suite = load_suite(args.patterns)
    except Exception as err:  # pylint: disable=broad-except
        print(f'e2e: could not load the tests: {err!r}')
        print(summary_line(0, 1, 0))
        return 1
    if args.list:
        print('\n'.join(list_tests(suite)))
        return 0
    if suite.countTestCases() == 0:
        print(f'e2e: no test matches {args.patterns}')
        print(summary_line(0, 1, 0))
        return 1

    flavour = 'stock' if os.environ.get('QCURL_STOCK') else 'patched'
    print(f'e2e: {suite.countTestCases()} tests, {flavour} qemu-img and '
          f'qemu-io, build {os.environ.get("QCURL_BUILD", "?")}', flush=True)
    runner = unittest.TextTestRunner(stream=sys.stdout,
                                     verbosity=2 if args.verbose else 1,
                                     resultclass=E2EResult)
    start = time.monotonic()
    holder: List[Any] = []

    def make_result(*a: Any, **kw: Any) -> E2EResult:
        result = E2EResult(*a, **kw)
        holder.append(result)
        start_watchdog(result, args.test_timeout)
        return result

    runner.resultclass = make_result
    try:
        result = runner.run(suite)
    except Exception as err:  # pylint: disable=broad-except
        print(f'e2e: the test runner failed: {err!r}')
        passed, failed, skipped = (holder[0].counts() if holder
                                   else (0, 0, 0))
        print(summary_line(passed, failed + 1, skipped))
        return 1
    assert isinstance(result, E2EResult)
    passed, failed, skipped = result.counts()
    for test_id, reason in result.skips():
        print(f'e2e: SKIPPED {test_id}: {reason}')
    print(f'e2e: ran {result.testsRun} of {suite.countTestCases()} tests in '
          f'{time.monotonic() - start:.1f} s')
    print(summary_line(passed, failed, skipped), flush=True)
    return 0 if failed == 0 and result.wasSuccessful() else 1


if __name__ == '__main__':
    sys.exit(main())
