# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: the hostile-server fuzz test.  Runs of tests/e2e/fuzz.py, one per
# seed from QCURL_FUZZ_SEED (default 1) on, two at a time, against the
# server of tests/e2e/fuzz_server.py, until the runs done have had
# QCURL_FUZZ_ANSWERS answers (default 10000) or QCURL_FUZZ_SECONDS have
# passed (default 200: with a run that hangs for its whole timeout, the
# test still ends before the e2e runner's 300 s watchdog).  Every run
# must give the image's bytes or fail cleanly, naming the cause; the
# summary (runs, answers, answers and errors per mutation kind, outcomes)
# goes to stderr, and each violation fails the test with its seed, its
# mutated answers, the command's output and the command that replays it.
#
# The other tests show that the checks are not vacuous: a server that
# lies undetectably once makes a run that reports wrong bytes, and a
# command that hangs, crashes or exits oddly is a violation.
"""Fuzz the curl driver with a hostile HTTP server, within a budget."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import ClassVar

import fuzz
from e2e_case import E2ETestCase
from fuzz_server import LIE

ANSWERS = int(os.environ.get('QCURL_FUZZ_ANSWERS', fuzz.ANSWERS))
SECONDS = float(os.environ.get('QCURL_FUZZ_SECONDS', '200'))
FIRST_SEED = int(os.environ.get('QCURL_FUZZ_SEED', '1'))
JOBS = 2


class FuzzTest(E2ETestCase):
    """The fuzz budget, and the checks of the fuzz test itself."""

    tools: ClassVar[fuzz.Tools]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.tools = fuzz.Tools(cls.bins.qemu_img, cls.bins.qemu_io)

    def test_fuzz(self) -> None:
        """Each run gives the image's bytes, or a clean error."""
        summary = fuzz.campaign(self.tools, FIRST_SEED, ANSWERS, SECONDS,
                                JOBS)
        print('\n' + '\n'.join(summary.lines()), file=sys.stderr)
        self.assertGreater(summary.outcomes['same'], 0)
        if summary.violations:
            self.fail(f'{len(summary.violations)} violations:\n\n' +
                      '\n\n'.join(r.report() for r in summary.violations))

    def lying_run(self, client: str) -> fuzz.RunResult:
        """A run of @client on a raw image whose answers are all correct,
        but for one that sends other bytes under the right validators."""
        spec = dataclasses.replace(
            fuzz.RunSpec.from_seed(FIRST_SEED), fmt='raw', offset=0,
            client=client, mode='strong', refuse_head=False, rate=0.0,
            probe_rate=0.0, connections=1, reads=((0, 4096), (4096, 1)))
        result = fuzz.run_one(spec, self.tools, lie=True)
        self.assertEqual([e.kind for e in result.mutated], [LIE])
        return result

    def test_wrong_bytes_are_caught(self) -> None:
        """qemu-img convert of a lying server's image is a violation."""
        result = self.lying_run('convert')
        self.assertEqual(result.outcome, 'violation', result.line())
        self.assertRegex(result.cause, r"^wrong bytes: .*version B's bytes")
        self.assertEqual(result.blamed, LIE)
        self.assertIn(f'replay: tests/e2e/fuzz.py --replay {FIRST_SEED}',
                      result.report())

    def test_wrong_reads_are_caught(self) -> None:
        """A qemu-io read of a lying server's bytes is a violation."""
        result = self.lying_run('qemu-io')
        self.assertEqual(result.outcome, 'violation', result.line())
        self.assertRegex(result.cause, r'^wrong bytes: read -v 0 4096 ')

    def test_hang_is_caught(self) -> None:
        """A command that does not end in time is a violation."""
        execution = fuzz.execute(['sleep', '100'], timeout=2)
        self.assertRegex(fuzz.exit_violation(execution) or '', r'^hang: ')
        self.assertLess(execution.duration, 10)

    def test_crashes_are_caught(self) -> None:
        """A signal, an assertion, another exit code are violations."""
        for script, violation in (
                ('kill -SEGV $$', 'crash: killed by signal 11'),
                ('echo "x: Assertion \'y\' failed."; exit 1',
                 "crash: the output says 'Assertion'"),
                ('exit 3', 'unclean exit: exit code 3')):
            execution = fuzz.execute(['sh', '-c', script], timeout=10)
            self.assertEqual(fuzz.exit_violation(execution), violation)
        self.assertIsNone(fuzz.exit_violation(fuzz.execute(['false'], 10)))
