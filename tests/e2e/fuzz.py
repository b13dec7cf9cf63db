#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Fuzz QEMU's curl block driver with the hostile server of fuzz_server.py.
#
# A run is made of one seed: an image (raw or qcow2, of an odd size,
# perhaps inside a larger file at an offset), the driver's options, a
# client (qemu-img convert, or qemu-io with random reads), the server's
# validator mode and its mutation rate.  A run ends with the image's
# bytes or with a clean error that names its cause; anything else (wrong
# bytes, a crash or sanitizer report, a hang, another exit code, an error
# that names no cause, an error when no answer was mutated) is a
# violation.  This module is the engine of tests/e2e/test_fuzz.py, and a
# command line tool for long runs and for replaying one seed:
#
#   tests/e2e/fuzz.py --answers 100000 --seed 1 --jobs 2
#   tests/e2e/fuzz.py --replay SEED
"""Fuzz the curl block driver: runs of seeds, their outcomes, a summary."""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import itertools
import math
import os
import random
import re
import shlex
import sys
import time
from pathlib import Path
from typing import (Callable, Counter, Dict, List, Optional, Sequence, Set,
                    Tuple)

import fixtures
from fixtures import MiB
from fuzz_server import (B_KEY, C_KEY, MODES, MUTATIONS, Exchange, Fuzzer,
                         FuzzServer, Versions, xor_bytes)

#: A command still running after this long hangs (sanitized binaries are
#: 2 to 10 times slower)
RUN_TIMEOUT = 300.0 if os.environ.get('QCURL_SANITIZER_LOGS') else 60.0
#: The driver's timeout option in every run: short, so that stalls are
#: quick to give up on
DRIVER_TIMEOUT = 1
#: The default budget of a campaign
ANSWERS = 10000
#: What a command's output never holds
CRASH_MARKS = ('Assertion', 'AddressSanitizer', 'runtime error',
               'LeakSanitizer', 'SUMMARY:', 'Segmentation')
Read = Tuple[int, int]      # (offset, length)


@dataclasses.dataclass(frozen=True)
class Tools:
    """The binaries under test."""

    qemu_img: Path
    qemu_io: Path


@dataclasses.dataclass(frozen=True)
class RunSpec:  # pylint: disable=too-many-instance-attributes
    """Everything a run is made of, all drawn from its seed."""

    seed: int
    fmt: str                    # raw or qcow2
    size: int                   # of the image, as a client sees it
    offset: int                 # where it starts in the served file
    blocksize: str
    connections: int
    readahead: Optional[str]    # x-readahead-window; None: the default
    retries: int
    client: str                 # convert or qemu-io
    mode: str                   # the server's validator mode
    etag_length: int            # of its strong ETags; 0: short ones
    refuse_head: bool           # whether the server refuses HEAD
    rate: float                 # the share of answers mutated
    probe_rate: float           # and of the answers to probes
    reads: Tuple[Read, ...]     # what qemu-io reads
    kinds: Tuple[str, ...] = ()     # the mutations; all if empty

    @classmethod
    def from_seed(cls, seed: int, kinds: Sequence[str] = ()) -> 'RunSpec':
        """The run of @seed, with the mutations @kinds (default: all).

        Runs that refuse HEAD, and runs whose probes are mutated more
        often than the other answers, are frequent: a mutation of the
        probe that follows a refused HEAD is a mutation of two answers
        of a run, and would be rare otherwise.
        """
        rng = random.Random(f'fuzz-run/{seed}')
        size = rng.randrange(MiB // 2 // 512, 3 * MiB // 512 + 1) * 512
        offset = rng.choice((0, 0, 4096 * rng.randrange(1, 64),
                             4096 * rng.randrange(64) + 512))
        reads = []
        for _ in range(rng.randrange(4, 13)):
            length = rng.choice((1, 512, rng.randrange(1, 4096),
                                 rng.randrange(1, 16384)))
            reads.append((rng.randrange(size - length + 1), length))
        return cls(seed=seed, fmt=rng.choice(('raw', 'qcow2')), size=size,
                   offset=offset, blocksize=rng.choice(('4k', '64k', '1M')),
                   connections=rng.choice((1, 2, 4, 16)),
                   readahead=rng.choice((None, '0', '64k', '1M')),
                   retries=rng.randrange(4),
                   client=rng.choice(('convert', 'qemu-io')),
                   mode=rng.choice(MODES),
                   etag_length=rng.choice((0, 0, 0, 0, 130, 200, 1000)),
                   refuse_head=rng.random() < 0.4,
                   rate=rng.choice((0.0, 0.05, 0.1, 0.2, 0.3)),
                   probe_rate=rng.choice((0.0, 0.1, 0.5, 1.0)),
                   reads=tuple(reads), kinds=tuple(kinds))

    def options(self, url: str) -> str:
        """The --image-opts of the image at @url."""
        opts = [f'driver={self.fmt}', 'file.driver=http', f'file.url={url}',
                f'file.timeout={DRIVER_TIMEOUT}',
                f'file.retries={self.retries}',
                f'file.blocksize={self.blocksize}',
                f'file.connections={self.connections}']
        if self.readahead is not None:
            opts.append(f'file.x-readahead-window={self.readahead}')
        if self.offset:
            opts.append(f'file.offset={self.offset}')
        return ','.join(opts)

    def command(self, tools: Tools, url: str, out: Path) -> List[str]:
        """The command of the run: its client on the image at @url,
        converting to @out."""
        if self.client == 'convert':
            return [str(tools.qemu_img), 'convert', '--image-opts',
                    self.options(url), '-O', 'raw', str(out)]
        args = [str(tools.qemu_io), '-r', '--image-opts']
        for offset, length in self.reads:
            args += ['-c', f'read -v {offset} {length}']
        return args + [self.options(url)]

    def describe(self) -> str:
        """The run in one line."""
        etags = f', ETags of {self.etag_length} characters' \
            if self.etag_length else ''
        head = ', HEAD refused' if self.refuse_head else ''
        kinds = f' (only {", ".join(self.kinds)})' if self.kinds else ''
        return (f'seed {self.seed}: {self.fmt} image of {self.size} bytes at '
                f'offset {self.offset}, {self.client}, validators '
                f'{self.mode}{etags}{head}, {self.rate:.0%} of answers and '
                f'{self.probe_rate:.0%} of probes mutated{kinds}')

    def replay_command(self) -> str:
        """The command that replays the run."""
        kinds = f' --kinds {",".join(self.kinds)}' if self.kinds else ''
        return f'tests/e2e/fuzz.py --replay {self.seed}{kinds}'


# ---------------------------------------------------------------------------
# Running a command and judging how it ended
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Execution:
    """How a command ended."""

    args: List[str]
    returncode: Optional[int]   # None: killed after its timeout
    output: str                 # stdout, then stderr
    duration: float


def execute(args: Sequence[str], timeout: float) -> Execution:
    """Run @args, killing them after @timeout seconds."""
    try:
        result = fixtures.run(args, timeout=timeout)
    except fixtures.CommandTimeout as err:
        return Execution(list(args), None, str(err), timeout)
    return Execution(result.args, result.returncode, result.output,
                     result.duration)


def exit_violation(execution: Execution) -> Optional[str]:
    """What is wrong with how @execution ended whatever it printed: a hang,
    a crash, an exit code other than 0 and 1; None if nothing."""
    if execution.returncode is None:
        return f'hang: not done after {execution.duration:.0f} s'
    for mark in CRASH_MARKS:
        if mark in execution.output:
            return f'crash: the output says {mark!r}'
    if execution.returncode < 0:
        return f'crash: killed by signal {-execution.returncode}'
    if execution.returncode not in (0, 1):
        return f'unclean exit: exit code {execution.returncode}'
    return None


def whose(got: bytes, image: bytes) -> str:
    """Which version of the file @got seems to come from, where the image
    has @image."""
    for name, key in (('B', B_KEY), ('C', C_KEY)):
        if got == xor_bytes(image, key):
            return f"version {name}'s bytes"
    return 'unknown bytes'


def compare(got: bytes, image: bytes, what: str,
            offset: int = 0) -> Optional[str]:
    """How @got differs from @image (@what they are, read at @offset of
    the image), or None."""
    if got == image:
        return None
    if len(got) != len(image):
        return (f'wrong bytes: {what} has {len(got)} bytes, the image '
                f'{len(image)}')
    blocks = [i for i in range(0, len(got), 4096)
              if got[i:i + 4096] != image[i:i + 4096]]
    first = next(i for i in range(blocks[0], len(got)) if got[i] != image[i])
    sample = slice(first, first + 16)
    return (f'wrong bytes: {what} differs from byte {offset + first} on, in '
            f'{len(blocks)} 4 KiB blocks '
            f'({whose(got[sample], image[sample])})')


HEX_LINE = re.compile(r'^[0-9a-f]{8,16}:\s')
READ_DONE = re.compile(r'^read (\d+)/\d+ bytes at offset (\d+)$')


def check_reads(output: str, reads: Sequence[Read],
                image: bytes) -> Tuple[Optional[str], int]:
    """Check the hex dumps that qemu-io printed for @reads of @image.

    Return what is wrong with them (None if nothing: each read printed
    the image's bytes, or failed) and how many reads failed.
    """
    results: List[Optional[Tuple[int, int, str]]] = []
    dump: List[str] = []
    for line in output.splitlines():
        done = READ_DONE.match(line)
        if HEX_LINE.match(line):
            dump.append(line)
        elif done:
            results.append((int(done.group(2)), int(done.group(1)),
                            '\n'.join(dump)))
            dump = []
        elif line.startswith('read failed: '):
            results.append(None)
            dump = []
    if len(results) not in (0, len(reads)):
        return (f'qemu-io gave {len(results)} results for {len(reads)} '
                'reads'), 0
    for (offset, length), result in zip(reads, results):
        if result is None:
            continue
        if result[:2] != (offset, length):
            return (f'qemu-io read {result[1]} bytes at {result[0]} for '
                    f'read -v {offset} {length}'), 0
        shown = fixtures.parse_hexdump(result[2])
        if any(offset + i not in shown for i in range(length)):
            return f'the dump of read -v {offset} {length} is garbled', 0
        got = bytes(shown[offset + i] for i in range(length))
        wrong = compare(got, image[offset:offset + length],
                        f'read -v {offset} {length}', offset)
        if wrong:
            return wrong, 0
    return None, results.count(None)


#: What an error line starts with, or holds, to name its cause: the
#: driver, the URL or the options (qemu-io's "can't open" names no image
#: opened with --image-opts, but there is only one)
CAUSE_NAMES = re.compile(r"curl|<url>|<options>|^qemu-io: can't open:")
#: What varies between errors of one kind, and how it is shown
VARYING = ((re.compile(r'^qemu-(img|io): '), ''),
           (re.compile(r'(W/)?"[^"]*"?'), '<etag>'),
           (re.compile(r'\w{3}, \d\d \w{3} \d{4} [\d:]{8} GMT'), '<date>'),
           (re.compile(r'(\w)\1{15,}'), r'\1...'),
           (re.compile(r'\d+'), 'N'))


def error_cause(output: str, url: str, options: str) -> Optional[str]:
    """The error line of @output that names its cause (CAUSE_NAMES), and a
    reason after that; normalized, so that errors of one kind look alike:
    the URL and options as <url> and <options>, then VARYING."""
    for line in output.splitlines():
        shown = line.strip().replace(options, '<options>')
        shown = shown.replace(url, '<url>')
        named = CAUSE_NAMES.search(shown)
        if not named:
            continue
        reason = shown[named.end():].rsplit('<url>', 1)[-1]
        if re.search('[A-Za-z]{3}', reason):
            for pattern, shown_as in VARYING:
                shown = pattern.sub(shown_as, shown)
            return shown[:160]
    return None


def asked(exchange: Exchange, size: int) -> Optional[Tuple[int, int]]:
    """The bytes @exchange asked for of a file of @size bytes, inclusive,
    if it asked for a closed range."""
    try:
        first, last = fixtures.parse_byte_range(exchange.range or '')
    except ValueError:
        return None
    return first, min(last, size - 1)


def asked_for(exchange: Exchange, first: int, last: int, size: int) -> bool:
    """Whether @exchange asked for a byte from @first to @last."""
    span = asked(exchange, size)
    return span is not None and span[0] <= last and span[1] >= first


def blame(log: Sequence[Exchange], output: str, cause: str, size: int,
          offset: Optional[int]) -> Optional[str]:
    """The mutation an outcome is put down to, from its @cause and the
    command's @output; the file has @size bytes, the image starts at
    @offset in it (None if a client's offset is not one of the file).

    Wrong bytes are put down to the first answer that carried the
    version's bytes the cause names, else that asked for the first wrong
    byte, else that carried other bytes of the file than asked for; an
    error to the last answer that asked for the bytes the driver's error
    names ("reading bytes FIRST-LAST"); else to the last mutated answer.
    """
    mutated = [e for e in log if e.kind]
    if cause.startswith('wrong bytes'):
        version = re.search(r"version (\w)'s bytes", cause)
        versions = (version.group(1),) if version else ('B', 'C')
        suspects = [e for e in mutated if e.data in versions]
        wrong = re.search(r'from byte (\d+)', cause)
        if wrong and offset is not None:
            at = offset + int(wrong.group(1))
            suspects += [e for e in mutated if asked_for(e, at, at, size)]
        suspects += [e for e in mutated
                     if e.data == 'A' and e.span != asked(e, size)]
        if suspects:
            return suspects[0].kind
    named = re.search(r'reading bytes (\d+)-(\d+)', output)
    if named:
        first, last = int(named.group(1)), int(named.group(2))
        mutated = [e for e in mutated
                   if asked_for(e, first, last, size)] or mutated
    return mutated[-1].kind if mutated else None


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunResult:
    """A run, what the server sent, and how it ended."""

    spec: RunSpec
    execution: Execution
    log: List[Exchange]
    outcome: str                # same, error or violation
    cause: str                  # the error, or what the violation is
    blamed: Optional[str]       # the mutation it is put down to

    @property
    def mutated(self) -> List[Exchange]:
        """The mutated answers."""
        return [e for e in self.log if e.kind]

    def line(self) -> str:
        """The run in one line."""
        ending = {'same': 'same bytes', 'error': f'error: {self.cause}',
                  'violation': f'VIOLATION: {self.cause}'}[self.outcome]
        if self.outcome == 'violation' and self.blamed:
            ending += f' (after {self.blamed})'
        return (f'seed {self.spec.seed}: {len(self.log)} answers, '
                f'{len(self.mutated)} mutated, '
                f'{self.execution.duration:.1f} s: {ending}')

    def report(self) -> str:
        """All about a violation, and how to replay it."""
        output = self.execution.output[-4000:].rstrip('\n')
        return '\n'.join([
            f'VIOLATION {self.spec.describe()}', f'  what: {self.cause}',
            f'  put down to: {self.blamed or "no mutation"}',
            f'  command: {shlex.join(self.execution.args)}',
            '  mutated answers:',
            *(f'    {e.line()}' for e in self.mutated),
            '  output:', *(f'    {line}' for line in output.split('\n')),
            f'  replay: {self.spec.replay_command()}'])


def make_files(spec: RunSpec, workdir: Path) -> Tuple[bytes, bytes]:
    """Make the image of @spec in @workdir; return what a client must
    read of it (the raw image) and the bytes of the served file."""
    raw = fixtures.make_test_image(workdir / 'image.raw', spec.size,
                                   spec.seed)
    image = raw if spec.fmt == 'raw' else \
        fixtures.make_qcow2(raw, workdir / 'image.qcow2')
    prefix = random.Random(spec.seed).randbytes(spec.offset)
    return raw.path.read_bytes(), prefix + image.path.read_bytes()


def judge(spec: RunSpec, execution: Execution, image: bytes, out: Path,
          url: str, log: Sequence[Exchange]) -> Tuple[str, str]:
    """The outcome of a run and its cause (see RunResult)."""
    # pylint: disable=too-many-arguments
    broken = exit_violation(execution)
    if broken:
        return 'violation', broken
    failed = execution.returncode != 0
    if spec.client == 'convert':
        wrong = None if failed else compare(
            out.read_bytes() if out.exists() else b'', image, 'the output')
    else:
        wrong, failed_reads = check_reads(execution.output, spec.reads,
                                          image)
        failed = failed or failed_reads > 0
    if wrong:
        return 'violation', wrong
    if not failed:
        return 'same', ''
    cause = error_cause(execution.output, url, spec.options(url))
    if cause is None:
        return 'violation', 'an error that names no cause'
    if not any(e.kind for e in log):
        return 'violation', f'an error though every answer was correct: ' \
            f'{cause}'
    return 'error', cause


def run_one(spec: RunSpec, tools: Tools, timeout: float = RUN_TIMEOUT,
            lie: bool = False,
            on_exchange: Optional[Callable[[Exchange], None]] = None
            ) -> RunResult:
    """Run @spec (with a lying server if @lie) and judge it."""
    # pylint: disable=too-many-locals
    workdir = fixtures.make_tempdir(f'fuzz-{spec.seed}')
    try:
        image, served = make_files(spec, workdir)
        versions = Versions.make(served, spec.mode, spec.seed,
                                 spec.etag_length)
        out = workdir / 'out.raw'
        fuzzer = Fuzzer(versions, spec.seed, spec.rate, spec.kinds, lie,
                        spec.probe_rate, spec.refuse_head)
        server = FuzzServer(fuzzer, on_exchange)
        with server:
            execution = execute(spec.command(tools, server.url, out),
                                timeout)
        if server.errors:
            raise RuntimeError(f'the fuzz server failed in {spec.describe()}'
                               f':\n{server.errors[0]}')
        log = server.log()
        outcome, cause = judge(spec, execution, image, out, server.url, log)
    finally:
        fixtures.remove_tree(workdir)
    blamed = None if outcome == 'same' else blame(
        log, execution.output, cause, len(served),
        spec.offset if spec.fmt == 'raw' else None)
    return RunResult(spec, execution, log, outcome, cause, blamed)


# ---------------------------------------------------------------------------
# Many runs
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Summary:  # pylint: disable=too-many-instance-attributes
    """What many runs came to."""

    runs: int = 0
    answers: int = 0
    mutated: int = 0
    seconds: float = 0.0
    kinds: Counter[str] = dataclasses.field(
        default_factory=collections.Counter)
    outcomes: Counter[str] = dataclasses.field(
        default_factory=collections.Counter)
    causes: Counter[str] = dataclasses.field(
        default_factory=collections.Counter)
    #: the causes of clean errors, by the mutation they are put down to
    errors: Dict[str, Counter[str]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    violations: List[RunResult] = dataclasses.field(default_factory=list)

    def add(self, result: RunResult) -> None:
        """Count in @result."""
        self.runs += 1
        self.answers += len(result.log)
        self.mutated += len(result.mutated)
        self.kinds.update(e.kind for e in result.mutated if e.kind)
        self.outcomes[result.outcome] += 1
        if result.outcome == 'error':
            self.causes[result.cause] += 1
            self.errors[result.blamed or '-'][result.cause] += 1
        elif result.outcome == 'violation':
            self.violations.append(result)

    def headline(self) -> str:
        """The summary in one line."""
        rate = self.answers / self.seconds if self.seconds else 0.0
        return (f'fuzz: {self.runs} runs, {self.answers} answers '
                f'({self.mutated} mutated) in {self.seconds:.0f} s, '
                f'{rate:.1f} answers/s; same bytes {self.outcomes["same"]}, '
                f'clean errors {self.outcomes["error"]}, violations '
                f'{len(self.violations)}')

    def lines(self) -> List[str]:
        """The whole summary: the headline, every mutation kind with its
        count and the clean errors put down to it, the causes of clean
        errors, and the violations."""
        lines = [self.headline(), 'fuzz: answers and clean errors by '
                 'mutation kind:']
        for kind in sorted(set(self.kinds) | set(self.errors)):
            lines.append(f'  {kind}: {self.kinds[kind]} answers')
            lines += [f'      {count} x {cause}' for cause, count
                      in self.errors[kind].most_common()]
        lines.append('fuzz: clean errors by cause:')
        lines += [f'  {count} x {cause}'
                  for cause, count in self.causes.most_common()]
        suspects: Dict[str, List[str]] = collections.defaultdict(list)
        for result in self.violations:
            suspects[result.blamed or '-'].append(str(result.spec.seed))
        lines += [f'fuzz: violations put down to {kind}: {len(seeds)} (seeds '
                  f'{" ".join(seeds)})' for kind, seeds in sorted(
                      suspects.items(), key=lambda item: -len(item[1]))]
        lines += [f'fuzz: {r.line()}' for r in self.violations]
        return lines


def campaign(tools: Tools, first_seed: int, answers: int, seconds: float,
             jobs: int, timeout: float = RUN_TIMEOUT,
             on_result: Optional[Callable[[RunResult], None]] = None,
             kinds: Sequence[str] = ()) -> Summary:
    """Run the seeds from @first_seed on (with the mutations @kinds, all
    by default), @jobs at a time, until the runs done have had @answers
    answers or @seconds have passed."""
    # pylint: disable=too-many-arguments,too-many-locals
    summary = Summary()
    start = time.monotonic()
    seeds = itertools.count(first_seed)

    def more() -> bool:
        return summary.answers < answers and \
            time.monotonic() - start < seconds

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        pending: Set['concurrent.futures.Future[RunResult]'] = set()
        while True:
            while more() and len(pending) < jobs:
                pending.add(pool.submit(
                    run_one, RunSpec.from_seed(next(seeds), kinds), tools,
                    timeout))
            if not pending:
                break
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                result = future.result()
                summary.add(result)
                if on_result is not None:
                    on_result(result)
    summary.seconds = time.monotonic() - start
    return summary


def replay(seed: int, tools: Tools, timeout: float,
           kinds: Sequence[str] = ()) -> RunResult:
    """Run @seed alone (with the mutations @kinds, all by default),
    printing every answer as it is sent."""
    spec = RunSpec.from_seed(seed, kinds)
    print(spec.describe(), flush=True)
    result = run_one(spec, tools, timeout, on_exchange=lambda e: print(
        f'  {e.line()}\n', end='', flush=True))
    print(f'command: {shlex.join(result.execution.args)}')
    print(result.execution.output.rstrip('\n'))
    print(result.line())
    return result


def main(argv: Optional[List[str]] = None) -> int:
    """Fuzz, or replay a seed; 1 if a violation was found."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--answers', type=int, default=ANSWERS,
                        help='start no run once the runs done had this many '
                             'answers (default: %(default)s)')
    parser.add_argument('--seconds', type=float, default=math.inf,
                        help='start no run after this long (default: no '
                             'limit)')
    parser.add_argument('--seed', type=int, default=1,
                        help='the seed of the first run (default: 1)')
    parser.add_argument('--jobs', type=int, default=2,
                        help='runs at once (default: 2)')
    parser.add_argument('--replay', type=int, metavar='SEED',
                        help='run SEED alone, showing every answer')
    parser.add_argument('--timeout', type=float, default=RUN_TIMEOUT,
                        help='a run taking longer hangs (default: '
                             '%(default)s s)')
    parser.add_argument('--kinds', default='',
                        help='only these mutations, comma-separated (see '
                             'fuzz_server.py)')
    parser.add_argument('--qemu-img', type=Path,
                        help='the qemu-img under test (default: the build\'s)')
    parser.add_argument('--qemu-io', type=Path,
                        help='the qemu-io under test (default: the build\'s)')
    args = parser.parse_args(argv)
    tools = Tools(args.qemu_img or fixtures.binaries().qemu_img,
                  args.qemu_io or fixtures.binaries().qemu_io)
    kinds = [k for k in args.kinds.split(',') if k]
    unknown = set(kinds) - set(MUTATIONS)
    if unknown:
        parser.error(f'unknown mutations: {", ".join(sorted(unknown))}')
    if args.replay is not None:
        result = replay(args.replay, tools, args.timeout, kinds)
        return 1 if result.outcome == 'violation' else 0

    count = itertools.count(1)

    def progress(result: RunResult) -> None:
        print(f'[{next(count)}] {result.line()}', flush=True)

    summary = campaign(tools, args.seed, args.answers, args.seconds,
                       args.jobs, args.timeout, progress, kinds)
    for result in summary.violations:
        print(result.report())
    print('\n'.join(summary.lines()))
    return 1 if summary.violations else 0


if __name__ == '__main__':
    sys.exit(main())
