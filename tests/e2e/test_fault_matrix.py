# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: the fault matrix.  Every fault the range server can inject, run
# against a raw and a qcow2 image with the real `qemu-img convert`
# (--image-opts driver=raw|qcow2,file.driver=http|https), ends in exactly
# one of two ways, written in the table below for each case:
#
#   same    the output is byte for byte the source image, and the server's
#           log shows that the fault did happen (and what the driver did
#           about it: asked again, waited, fell back...);
#   failed  qemu-img exits with an error (not a signal) and its output
#           names the cause (the HTTP status, "the remote file changed",
#           "Content-Encoding", "no data for N seconds"...).
#
# Never wrong bytes, never a hang (each command is killed after
# CASE_TIMEOUT seconds, which fails the test), never a crash.  At the end
# the matrix (case, image, outcome, time, the error's first line or what
# the server saw) is printed to stderr.
#
# Faults that are to happen once hit the first GET from 1 MiB on (past
# the open, and bytes that the convert needs: a readahead fetch of bytes
# nobody reads may fail without consequence); those that are always there
# hit every GET from 1 MiB on.  A range that a fault keeps from bringing
# anything new is asked for DEFAULT_RETRIES more times, then the command
# fails; one that keeps coming in, however often it breaks off, is read
# to its end.  The file replaced while open is
# deterministic without sleeps: a delay rule holds that first GET from
# 1 MiB on, the test replaces the file while the log shows it held, then
# releases it.
"""The fault matrix: each fault, raw and qcow2, same bytes or a clear error."""

from __future__ import annotations

import dataclasses
import filecmp
import os
import re
import shutil
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import (Any, Callable, ClassVar, Dict, List, Optional, Sequence,
                    Tuple)

import fixtures
from e2e_case import E2ETestCase
from fixtures import CmdResult, MiB, RangeServer, TestImage

IMAGE_SIZE = 8 * MiB
IMAGE_SEED = 20261111
#: The driver's default 'retries': how many times in a row it asks again
#: for a range that brought nothing new before it gives up
DEFAULT_RETRIES = 5
#: Every command of a case is killed after this long (a hang fails)
CASE_TIMEOUT = 60.0
#: file.timeout of the cases that stall: short, so that they are quick
STALL_TIMEOUT = 2
#: Where "always" faults start: past the open, in the middle of the reads
MID = 1 * MiB
#: Where Retry-After faults start: past what the warm-up at open fetches
#: (1.5 MiB).  A graph change drains every node (qemu-img convert opens
#: its target after its source), and a drain cuts the backoff of what a
#: read waits for short: under ASan, the warm-up's 429s came before it.
PAST_WARM_UP = 2 * MiB
#: Longer than any case: a held request waits for release()
HOLD = 120

Record = Dict[str, Any]


@dataclasses.dataclass
class Seen:
    """What the servers saw during one run of a case."""

    log: List[Record]                   # the case's server
    others: Dict[str, List[Record]]     # the other servers, by name
    duration: float                     # of the command
    values: Dict[str, str]              # the {placeholders} of the case

    def fill(self, text: str) -> str:
        """@text with the case's {placeholders} filled in."""
        return text.format(**self.values)

    def gets(self) -> List[Record]:
        return [r for r in self.log if r['method'] == 'GET']

    def faulted(self, action: str) -> List[Record]:
        return [r for r in self.log if action in (r['fault'] or '')]


#: A check of what the server saw: a short description for the matrix,
#: or an AssertionError if the fault did not happen as it should
Check = Callable[[Seen], str]


def range_end(record: Record) -> Optional[int]:
    """The last byte a logged request asked for."""
    match = re.fullmatch(r'bytes=(\d+)-(\d+)', record['range'] or '')
    return int(match.group(2)) if match else None


def log_summary(seen: Seen) -> str:
    """The requests the case's server got, one line each."""
    return 'the server saw:\n' + '\n'.join(
        f"  {r['seq']} {r['time']:.3f} {r['method']} {r['path']} "
        f"{r['range']} -> {r['status']} {r['fault'] or '-'} "
        f"{r['bytes_sent']} bytes" for r in seen.log)


def require(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def fired(action: str, least: int = 1) -> Check:
    """The fault happened, at least @least times."""
    def check(seen: Seen) -> str:
        hits = seen.faulted(action)
        require(len(hits) >= least, f'{len(hits)} requests got {action!r}, '
                f'expected at least {least}')
        return f'{len(hits)} x {action}'
    return check


def cut_short(record: Record) -> bool:
    """Whether a logged answer went without all of its body, or any."""
    return (record['served'] is None or record['bytes_sent'] <
            record['served'][1] - record['served'][0] + 1)


#: Faults that cut an answer short or hold it, but leave the bytes it
#: sent right: the driver keeps them
KEEPS_BYTES = ('reset', 'short', 'stall', 'trickle', 'delay', 'close')


def delivered(record: Record) -> Optional[Tuple[int, int]]:
    """The first and last byte a logged answer delivered of the file,
    right ones, or None if it delivered none (or wrong ones)."""
    faults = (record['fault'] or '').split('+')
    if (record['status'] != 206 or not record['served'] or
            not record['bytes_sent'] or
            any(f and f not in KEEPS_BYTES for f in faults)):
        return None
    first = record['served'][0]
    return first, min(record['served'][1], first + record['bytes_sent'] - 1)


def covers(records: Sequence[Record], first: int, last: int) -> bool:
    """Whether what @records delivered holds every byte from @first to
    @last."""
    for start, end in sorted(filter(None, map(delivered, records))):
        if start > first:
            break
        first = max(first, end + 1)
    return first > last


def recovered(action: str, least: int = 1, path: Optional[str] = None,
              only_cut_short: bool = False) -> Check:
    """The fault hit, and what each answer it hit did not bring was asked
    for again and delivered (on @path, if the answer comes from
    elsewhere): usually by a request for the rest of the range, which the
    fault may cut short again if it keeps the bytes it sent; a drain may
    have ended that retry, and a read asked for those bytes with others.
    With @only_cut_short, only the answers whose body the fault cut short
    are hit (a reset after the last byte of a body took nothing away)."""
    def hit(record: Record) -> bool:
        return (action in (record['fault'] or '') and
                (cut_short(record) or not only_cut_short))

    def check(seen: Seen) -> str:
        hits = [r for r in seen.gets() if hit(r)]
        require(len(hits) >= least, f'{len(hits)} GETs got {action!r}, '
                f'expected at least {least}')
        for each in hits:
            later = [r for r in seen.gets() if r['seq'] > each['seq'] and
                     (path is None or r['path'] == path)]
            first, last = fixtures.parse_byte_range(each['range'])
            kept = delivered(each)
            require(covers(later, kept[1] + 1 if kept else first, last),
                    f'what {each} did not bring was never delivered')
        return f'{len(hits)} x {action}, each range asked again and served'
    return check


def asked_again(action: str, tries: int = DEFAULT_RETRIES + 1) -> Check:
    """Each range the fault hit was asked for @tries times in all (the
    first try and the driver's retries), never served."""
    def check(seen: Seen) -> str:
        hits = [r for r in seen.faulted(action) if r['method'] == 'GET']
        require(bool(hits), f'no GET got {action!r}')
        ends = sorted({range_end(r) for r in hits}, key=str)
        counts = {end: sum(1 for r in hits if range_end(r) == end)
                  for end in ends}
        # (Two fetches may end at the same byte: no upper bound)
        require(max(counts.values()) >= tries, f'no range asked {tries} '
                f'times (the first try and each retry): {counts}')
        return f'{len(hits)} x {action}, {tries} tries of a range'
    return check


def waited(action: str, least: float) -> Check:
    """After the first request of each range that the fault hit, the next
    one for the range came at least @least seconds later (Retry-After was
    honoured).  Only the first: once a read failed, the command ends, and
    the drain of its node asks at once for what other reads still wait
    for, rather than after the backoff."""
    def check(seen: Seen) -> str:
        hits = [r for r in seen.faulted(action) if r['method'] == 'GET']
        require(bool(hits), f'no GET got {action!r}')
        gaps = []
        for end in dict.fromkeys(range_end(r) for r in hits):
            hit = next(r for r in hits if range_end(r) == end)
            later = [r for r in seen.gets() if r['seq'] > hit['seq'] and
                     range_end(r) == end]
            if later:
                gaps.append(later[0]['time'] - hit['time'])
        require(bool(gaps), 'no range was asked for again')
        require(min(gaps) >= least, f'a retry came {min(gaps):.2f} s after '
                f'the answer that said Retry-After, less than {least} s')
        return (f'{len(hits)} x {action}, retries >= {min(gaps):.1f} s '
                'later')
    return check


def most_hits_in_a_range(seen: Seen, action: str) -> int:
    """How many GETs for the same range (last byte) the fault hit at most."""
    ends = Counter(range_end(r) for r in seen.faulted(action)
                   if r['method'] == 'GET')
    return max(ends.values(), default=0)


def resumed(action: str, least_in_a_range: int = 1) -> Check:
    """Each answer the fault cut short was followed by a request for the
    rest of its range, served in full, and some range got the fault at
    least @least_in_a_range times: the driver went on with a range while
    it kept coming in, however many times it broke off."""
    def check(seen: Seen) -> str:
        described = recovered(action, only_cut_short=True)(seen)
        most = most_hits_in_a_range(seen, action)
        require(most >= least_in_a_range, f'no range got {action!r} '
                f'{least_in_a_range} times (at most {most})')
        return f'{described}; up to {most} in one range'
    return check


def once_per_range(action: str, nth: int) -> Check:
    """Every @nth GET was picked for the fault, no range got it twice, and
    each range it cut short was asked for again and served in full."""
    def check(seen: Seen) -> str:
        gets = seen.gets()
        picked = [i + 1 for i, r in enumerate(gets) if r['fault']]
        require(picked == list(range(nth, len(gets) + 1, nth)),
                f'the GETs picked are {picked} of {len(gets)}, not every '
                f'{nth}th')
        most = most_hits_in_a_range(seen, action)
        require(most == 1, f'a range got {action!r} {most} times')
        return recovered(action, only_cut_short=True)(seen)
    return check


def each_range_once(action: str) -> Check:
    """Every range the driver asked for got the fault exactly once, then
    was served in full ("per-range" rules)."""
    def check(seen: Seen) -> str:
        described = recovered(action)(seen)
        ends = {range_end(r) for r in seen.gets()}
        for end in ends:
            hits = [r for r in seen.faulted(action) if range_end(r) == end]
            require(len(hits) == 1, f'the ranges ending at {end} got '
                    f'{action!r} {len(hits)} times')
        return f'{described}, {len(ends)} ranges'
    return check


def every_nth(action: str, nth: int) -> Check:
    """Every @nth GET got the fault, and each was asked for again."""
    def check(seen: Seen) -> str:
        gets = seen.gets()
        faulted = [i + 1 for i, r in enumerate(gets)
                   if action in (r['fault'] or '')]
        require(faulted == list(range(nth, len(gets) + 1, nth)),
                f'the GETs that got {action!r} are {faulted} of '
                f'{len(gets)}, not every {nth}th')
        return recovered(action, least=len(faulted))(seen)
    return check


def head_refused(code: int) -> Check:
    """HEAD was refused with @code (or answered with it, but with headers
    the driver could not use), a GET of the first byte told."""
    def check(seen: Seen) -> str:
        first = [(r['method'], r['status'], r['range']) for r in seen.log[:2]]
        require(first == [('HEAD', code, None), ('GET', 206, 'bytes=0-0')],
                f'the open went {first}')
        return f'HEAD {code}, then GET bytes=0-0'
    return check


def redirected_chain(codes: Sequence[int], target: str) -> Check:
    """The open followed the redirects with @codes, then the reads went
    straight to @target."""
    def check(seen: Seen) -> str:
        path = seen.fill(target)
        hops = [(r['method'], r['status']) for r in seen.log[:len(codes)]]
        require(hops == [('HEAD', c) for c in codes],
                f'the open got {hops}')
        head = seen.log[len(codes)]
        require((head['method'], head['path'], head['status']) ==
                ('HEAD', path, 200), f'the end of the chain: {head}')
        gets = seen.gets()
        require(bool(gets) and all(r['path'] == path and
                                   r['status'] == 206 for r in gets),
                f'the GETs did not all go to {path}')
        return (f'HEAD {" -> ".join(map(str, codes))} -> 200, '
                f'{len(gets)} GETs to the target')
    return check


def expired(*paths: str) -> Check:
    """Reads sent to the first of @paths were refused (it expired): each
    asked the second (the origin) again, which redirected to the third,
    which served them."""
    def check(seen: Seen) -> str:
        first, origin, second = map(seen.fill, paths)
        refused = [r for r in seen.gets()
                   if r['path'] == first and r['status'] == 403]
        require(bool(refused), f'no GET of {first} was refused')
        described = recovered('status', len(refused), path=second)(seen)
        again = [r for r in seen.gets()
                 if r['path'] == origin and r['status'] == 302]
        require(len(again) >= 1, f'no GET asked {origin} again')
        return (f'{len(refused)} GETs refused (403) by the expired URL, '
                f'{len(again)} redirected again; {described}')
    return check


def trickled(nbytes: int, interval: float) -> Check:
    """The trickled answer was read to its end (the driver did not give
    up on it) and the command waited for it."""
    def check(seen: Seen) -> str:
        [slow] = seen.faulted('trickle')
        length = slow['served'][1] - slow['served'][0] + 1
        require(slow['bytes_sent'] == length,
                f'{slow["bytes_sent"]} of the {length} bytes of the '
                'trickled answer were sent: the driver gave up on it')
        least = (nbytes - 1) * interval
        require(seen.duration >= least, f'the command took '
                f'{seen.duration:.1f} s, less than the trickle ({least} s)')
        return f'1 x trickle of {nbytes} bytes over >= {least:.1f} s, read'
    return check


def nothing_to(server: str) -> Check:
    """The redirect was not followed: @server got no request."""
    def check(seen: Seen) -> str:
        require(seen.others[server] == [], f'{server} got requests: '
                f'{seen.others[server]}')
        return f'{server} got no request'
    return check


def fewer_than(count: int) -> Check:
    def check(seen: Seen) -> str:
        require(len(seen.log) < count, f'{len(seen.log)} requests')
        return f'{len(seen.log)} requests'
    return check


def all_of(*checks: Check) -> Check:
    """Each of @checks."""
    def check(seen: Seen) -> str:
        return '; '.join(each(seen) for each in checks)
    return check


@dataclasses.dataclass(frozen=True)
class Case:  # pylint: disable=too-many-instance-attributes
    """One row of the matrix.

    @rules are the fault rules of the case's @server ('http', 'https' or
    'untrusted'); in their strings, {name} is the image's file name,
    {http} and {https} the base URLs of the two trusted servers and
    {path} the image's local path.  @url is the name the driver opens.
    @error is None if the output must be the image (outcome "same"), else
    a regular expression that the output of the failed command must
    match.  @check tells what the server must have seen.  @opts are more
    file.* options; @replace ('same-size' or 'other-size') replaces the
    file while the request that its delay rule holds waits.
    """

    name: str
    rules: Sequence[Dict[str, Any]]
    error: Optional[str]
    check: Optional[Check]
    opts: Dict[str, Any] = dataclasses.field(default_factory=dict)
    server: str = 'http'
    url: str = '{name}'
    replace: Optional[str] = None

    @property
    def scheme(self) -> str:
        return 'http' if self.server == 'http' else 'https'


GET = {'method': 'GET'}
#: After the open, in the middle of the reads, once
MID_ONCE = {'method': 'GET', 'from': MID, 'times': 1}
#: From the middle of the reads on, always
MID_ALWAYS = {'method': 'GET', 'from': MID}
#: Held until the test releases it: the first GET of the middle
HOLD_MID = {'action': 'delay', 'seconds': HOLD, **MID_ONCE}
#: A cache in front of the server, which does not pass If-Range on
IGNORE_IF_RANGE = {'action': 'ignore-if-range'}
NO_HEAD = {'action': 'no-head'}
TIMEOUT = {'timeout': STALL_TIMEOUT}
#: For faults that the driver must refuse: what it says is the point, and
#: that it says the same after retrying is shown by ignore-range, long,
#: wrong-range and the like, so ask once and save their retries' waits
NO_RETRIES = {'retries': 0}
TIMED_OUT = f'no data for {STALL_TIMEOUT} seconds|timed out'


def status_cases(code: int) -> List[Case]:
    status = {'action': 'status', 'code': code}
    cases = [
        Case(f'{code}-once', [{**status, **MID_ONCE}], None,
             recovered('status')),
        Case(f'{code}-always', [{**status, **MID_ALWAYS}],
             f'the server answered HTTP {code}', asked_again('status')),
    ]
    if code != 500:
        status['retry-after'] = 1
        late_once = {**MID_ONCE, 'from': PAST_WARM_UP}
        late_always = {**MID_ALWAYS, 'from': PAST_WARM_UP}
        cases += [
            Case(f'{code}-retry-after-once', [{**status, **late_once}], None,
                 waited('status', 0.95)),
            Case(f'{code}-retry-after-always', [{**status, **late_always}],
                 f'the server answered HTTP {code}', waited('status', 0.95)),
        ]
    return cases


def replace_cases() -> List[Case]:
    cases = []
    for size in ('same-size', 'other-size'):
        for etag in (True, False):
            for if_range in (True, False):
                rules: List[Dict[str, Any]] = []
                name = f'replaced-{size}'
                if not etag:
                    rules.append({'action': 'no-etag'})
                    name += '-no-etag'
                rules.append(HOLD_MID)
                if not if_range:
                    rules.append(IGNORE_IF_RANGE)
                    name += '-if-range-ignored'
                cases.append(Case(name, rules, 'the remote file changed',
                                  fired('delay'), replace=size))
    cases.append(Case('replaced-same-size-https', [HOLD_MID],
                      'the remote file changed', fired('delay'),
                      server='https', replace='same-size'))
    return cases


#: The file's only validator: a strong ETag of more than 128 characters,
#: made of the file's own tag so that it changes with the file, and no
#: Last-Modified date that the driver could go by instead
LONG_ETAG_ONLY: List[Dict[str, Any]] = [
    {'action': 'header', 'name': 'ETag',
     'value': '"$version-' + 'x' * 200 + '"'},
    {'action': 'header', 'name': 'Last-Modified', 'value': None}]
#: How the driver refuses an answer without the validators it pinned
NOT_CHECKABLE = 'cannot be checked against the file'


def stale_validator_cases() -> List[Case]:
    """The file replaced by another of the same size, behind a cache that
    ignores If-Range, with validators that cannot tell the new version
    from the old one as they should: each must fail, never give the
    bytes of two versions."""
    changed = 'the remote file changed'
    stale: Dict[str, Tuple[List[Dict[str, Any]], str]] = {
        # The cache strips the validators of its answers from MID on
        'strip-validators': ([{'action': 'strip-validators', **MID_ALWAYS}],
                             f'{changed}|{NOT_CHECKABLE}'),
        # The same weak tag for both versions: only the date tells (weak
        # tags say that two versions mean the same, not that they hold
        # the same bytes)
        'weak-etag': ([{'action': 'weak-etag'}], changed),
        # A tag of more than 128 characters, and another for the new file
        'long-etag': (LONG_ETAG_ONLY, changed),
    }
    return [Case(f'replaced-{name}', [*rules, HOLD_MID, IGNORE_IF_RANGE],
                 error, all_of(fired('delay'), fired(rules[0]['action'])),
                 replace='same-size')
            for name, (rules, error) in stale.items()]


#: What a read from MID that gets a bad Content-Range must say: the
#: header, not a consequence of misreading it
NAMES_CONTENT_RANGE = r'Content-Range'
#: Content-Range values that are not the range asked for of the file
#: opened, written with the $placeholders of the "header" rule (for the
#: first-byte probe, $first and $last are 0, $next is 1): (name, value,
#: what the error of a read from MID says).  A driver that parses them
#: loosely takes a sign, a space or too many digits for a number.
BAD_CONTENT_RANGES = [
    ('negative-size', 'bytes $first-$last/-1', NAMES_CONTENT_RANGE),
    ('signed-size', 'bytes $first-$last/+$size', NAMES_CONTENT_RANGE),
    ('spaced-size', 'bytes $first-$last/ $size', NAMES_CONTENT_RANGE),
    ('signed-first', 'bytes +$first-$last/$size', NAMES_CONTENT_RANGE),
    ('overflowing-size', 'bytes $first-$last/99999999999999999999999',
     NAMES_CONTENT_RANGE),
    ('hex-size', 'bytes $first-$last/0x800000', NAMES_CONTENT_RANGE),
    ('reversed', 'bytes $next-$last/$size', NAMES_CONTENT_RANGE),
    # Well-formed, but more than QEMU can address: after a normal open, a
    # file that changed size
    ('unaddressable-size', 'bytes $first-$last/9223372036854775807',
     r'the remote file changed|more than|Content-Range'),
    # Well-formed, but not the bytes asked for
    ('one-byte-more', 'bytes $first-$next/$size',
     r'the server sent bytes \d+-\d+ for a request of bytes|'
     r'Content-Range'),
]
#: What an open whose first-byte probe gets a bad Content-Range says
PROBE_REFUSED = r'Content-Range|byte ranges|more than'


def content_range_cases() -> List[Case]:
    """Each bad Content-Range, in the answer to the first-byte probe of an
    open whose HEAD is refused (the open must fail, never abort), and in
    the answers to reads from MID after a normal open."""
    cases = []
    for name, value, error in BAD_CONTENT_RANGES:
        content_range = {'action': 'header', 'name': 'Content-Range',
                         'value': value}
        cases += [
            Case(f'probe-content-range-{name}',
                 [NO_HEAD, {**content_range, **GET}], PROBE_REFUSED,
                 all_of(head_refused(405), fired('header'))),
            Case(f'content-range-{name}', [{**content_range, **MID_ALWAYS}],
                 error, fired('header'), opts=NO_RETRIES),
        ]
    return cases


#: Content-Length values that do not frame the body, which is the range
#: asked for all the same.  RFC 9112 6.3: an answer whose Content-Length
#: is invalid has no framing to trust and must be discarded.  A signed
#: length, two that differ, and one that no integer holds are invalid,
#: even though libcurl makes a number of each (it takes the sign, keeps
#: the last of two, and reads an overflowing one to the connection's
#: end); so refusing them is failing closed.  A valid length larger than
#: the range is more than was asked for.
BAD_CONTENT_LENGTHS = [
    ('negative', '-1'),
    ('signed', '+$length'),
    ('twice', ['$size', '$length']),
    ('too-large', '4611686018427387904'),
    ('overflowing', '99999999999999999999999'),
]


def content_length_cases() -> List[Case]:
    """Each bad Content-Length in the answers to reads from MID, and in
    the answer to HEAD, which then says a size that no file has, or more
    than QEMU can address: the open asks a GET of the first byte instead,
    as it does a server that refuses HEAD."""
    cases = [Case(f'content-length-{name}',
                  [{'action': 'header', 'name': 'Content-Length',
                    'value': value, **MID_ALWAYS}],
                  r'Content-Length|the server announced \d+ bytes',
                  fired('header'), opts=NO_RETRIES)
             for name, value in BAD_CONTENT_LENGTHS]
    for name, value in (('negative', '-1'),
                        ('unaddressable', '9223372036854775807')):
        cases.append(Case(f'head-content-length-{name}',
                          [{'action': 'header', 'name': 'Content-Length',
                            'value': value, 'method': 'HEAD'}],
                          None, all_of(head_refused(200), fired('header'))))
    return cases


CASES: List[Case] = [
    # The connection reset (TCP RST) in the middle of a body
    Case('reset-every-3rd', [{'action': 'reset', 'bytes': 1000,
                              'every': 3, **GET}], None,
         every_nth('reset', 3),
         # (one connection: a retry is the very next request)
         opts={'connections': 1}),
    Case('reset-once-per-range', [{'action': 'reset', 'bytes': 1000,
                                   'per-range': True, 'times': 1, **GET}],
         None, each_range_once('reset')),
    Case('reset-once-per-range-https', [{'action': 'reset', 'bytes': 1000,
                                         'per-range': True, 'times': 1,
                                         **GET}],
         None, each_range_once('reset'), server='https'),
    Case('reset-always', [{'action': 'reset', 'bytes': 1000, **MID_ALWAYS}],
         'Connection reset by peer', asked_again('reset')),
    Case('reset-at-once-always', [{'action': 'reset', **MID_ALWAYS}],
         'Connection reset by peer', asked_again('reset')),
    # Resets after 64 KiB: each try brings more, however many break off,
    # so none counts against 'retries'
    Case('reset-every-4th-after-64k', [{'action': 'reset', 'bytes': 65536,
                                        'every': 4, **GET}],
         None, resumed('reset')),
    Case('reset-every-2nd-once-per-range',
         # A delay of no time picks every 2nd GET for the rule after it,
         # which resets it unless its range (per-range) was reset before
         [{'action': 'delay', 'seconds': 0, 'every': 2, **GET},
          {'action': 'reset', 'bytes': 65536, 'per-range': True,
           'times': 1, **GET}],
         None, once_per_range('reset', 2)),
    Case('reset-3-times-per-range', [{'action': 'reset', 'bytes': 65536,
                                      'per-range': True, 'times': 3,
                                      **GET}],
         None, resumed('reset', 3)),
    # Stalls: before the headers, in the middle of the body; a trickle
    Case('delay-once', [HOLD_MID], None, recovered('delay'),
         opts=TIMEOUT),
    Case('delay-always', [{'action': 'delay', 'seconds': HOLD,
                           **MID_ALWAYS}],
         TIMED_OUT, asked_again('delay'), opts=TIMEOUT),
    Case('stall-once', [{'action': 'stall', 'bytes': 10000,
                         'seconds': HOLD, **MID_ONCE}], None,
         recovered('stall'), opts=TIMEOUT),
    # (Less than a granule before each stall: no try brings anything new)
    Case('stall-always', [{'action': 'stall', 'bytes': 1000,
                           'seconds': HOLD, **MID_ALWAYS}],
         TIMED_OUT, asked_again('stall'), opts=TIMEOUT),
    Case('trickle', [{'action': 'trickle', 'bytes': 150, 'seconds': 0.02,
                      **MID_ONCE}], None, trickled(150, 0.02),
         opts=TIMEOUT),
    # Error statuses, retried (and Retry-After honoured) or not
    *status_cases(500), *status_cases(503), *status_cases(429),
    # Answers that are not the bytes asked for: never stored, asked for
    # again (a proxy in the way may garble one answer), an error if the
    # server keeps at it
    Case('ignore-range-once', [{'action': 'ignore-range', **MID_ONCE}],
         None, recovered('ignore-range')),
    Case('wrong-range-once', [{'action': 'wrong-range', 'shift': 4096,
                               **MID_ONCE}], None, recovered('wrong-range')),
    Case('long-once', [{'action': 'long', **MID_ONCE}], None,
         recovered('long')),
    Case('gzip-once', [{'action': 'gzip', **MID_ONCE}], None,
         recovered('gzip')),
    Case('ignore-range', [{'action': 'ignore-range', **MID_ALWAYS}],
         'answered a range request with HTTP 200', fired('ignore-range')),
    Case('wrong-range', [{'action': 'wrong-range', 'shift': 4096,
                          **MID_ALWAYS}],
         r'the server sent bytes \d+-\d+ for a request of bytes \d+-\d+',
         fired('wrong-range')),
    Case('short-once', [{'action': 'short', 'bytes': 1000, **MID_ONCE}],
         None, recovered('short')),
    # (libcurl 7.x: "transfer closed with N bytes remaining to read",
    # 8.x: "end of response with N bytes missing")
    Case('short-always', [{'action': 'short', 'bytes': 1000,
                           **MID_ALWAYS}],
         r'transfer closed with \d+ bytes remaining|end of response with '
         r'\d+ bytes missing|the transfer ended after',
         asked_again('short')),
    Case('long', [{'action': 'long', **MID_ALWAYS}],
         r'the server announced \d+ bytes for a range of \d+|the server '
         r'sent more than the \d+ bytes asked for', fired('long')),
    Case('gzip', [{'action': 'gzip', **MID_ALWAYS}],
         r'Content-Encoding: gzip', fired('gzip')),
    # The chunked transfer coding, right and wrong: the chunk-size lines
    # of bad-chunks say 3 bytes more than their chunks hold, so the
    # client takes the end of each chunk and the start of the next size
    # line for data before it notices; with 8 KiB more, two more chunks
    # and the size lines between them
    Case('chunked', [{'action': 'chunked', **GET}], None, fired('chunked')),
    Case('bad-chunks-once', [{'action': 'bad-chunks', **MID_ONCE}], None,
         recovered('bad-chunks')),
    Case('bad-chunks-8k-once', [{'action': 'bad-chunks', 'extra': 8192,
                                 **MID_ONCE}], None,
         recovered('bad-chunks')),
    Case('bad-chunks', [{'action': 'bad-chunks', **MID_ALWAYS}],
         r'chunk|transfer closed|Malformed|[Ee]ncoding', fired('bad-chunks')),
    *content_length_cases(),
    # The file replaced while open
    *replace_cases(),
    *stale_validator_cases(),
    # Validators that are right, but long: a long tag is legal (If-Range
    # with it is ignored: the server checks it against its own short tag)
    Case('long-etag', [*LONG_ETAG_ONLY, IGNORE_IF_RANGE], None,
         fired('header')),
    # Validators at open, none with the ranges: nothing to check them by
    Case('validators-on-head-only', [{'action': 'strip-validators', **GET}],
         NOT_CHECKABLE, fired('strip-validators')),
    # HEAD refused: a GET of the first byte tells
    Case('head-403', [{'action': 'status', 'code': 403, 'method': 'HEAD'}],
         None, head_refused(403)),
    Case('head-405', [NO_HEAD], None, head_refused(405)),
    Case('head-503', [{'action': 'status', 'code': 503, 'method': 'HEAD'}],
         None, head_refused(503)),
    *content_range_cases(),
    # Redirects
    Case('redirect-chain-3',
         [{'action': 'redirect', 'path': '/hop1-{name}',
           'location': '{http}/hop2-{name}'},
          {'action': 'redirect', 'code': 301, 'path': '/hop2-{name}',
           'location': '/hop3-{name}'},
          {'action': 'redirect', 'code': 307, 'path': '/hop3-{name}',
           'location': '{http}/{name}'}],
         None, redirected_chain((302, 301, 307), '/{name}'),
         url='hop1-{name}'),
    Case('redirect-loop',
         [{'action': 'redirect', 'path': '/loop1-{name}',
           'location': '{http}/loop2-{name}'},
          {'action': 'redirect', 'path': '/loop2-{name}',
           'location': '{http}/loop1-{name}'}],
         'more than 16 redirects', fewer_than(40), url='loop1-{name}'),
    Case('redirect-expired',
         # The URL the origin redirects to at open expires after one GET:
         # the transfers in flight fall back to the origin, which now
         # redirects to a new URL
         [{'action': 'status', 'code': 403, 'path': '/moved1-{name}',
           'method': 'GET', 'skip': 1},
          {'action': 'redirect', 'path': '/exp-{name}',
           'location': '{http}/moved1-{name}', 'times': 1},
          {'action': 'redirect', 'path': '/exp-{name}',
           'location': '{http}/moved2-{name}'}],
         None, expired('/moved1-{name}', '/exp-{name}', '/moved2-{name}'),
         url='exp-{name}'),
    Case('redirect-to-file',
         [{'action': 'redirect', 'path': '/{name}',
           'location': 'file://{path}'}],
         'refused to follow a redirect to file://', fired('redirect')),
    Case('redirect-https-to-http',
         [{'action': 'redirect', 'path': '/{name}',
           'location': '{http}/moved1-{name}'}],
         'refused to follow a redirect from https to plain http',
         nothing_to('http'), server='https'),
    Case('wrong-certificate', [],
         'SSL certificate problem: self.signed certificate', fewer_than(1),
         server='untrusted'),
]


def fill(value: Any, values: Dict[str, str]) -> Any:
    """@value with the {placeholders} of its strings filled in."""
    if isinstance(value, str):
        return value.format(**values)
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [fill(v, values) for v in value]
    return value


def replacement(path: Path, size: str) -> Path:
    """A new version of the file at @path: the second half of its bytes
    inverted, 64 KiB longer if @size is 'other-size', dated 100 s later."""
    data = bytearray(path.read_bytes())
    half = len(data) // 2
    data[half:] = bytes(b ^ 0xff for b in data[half:])
    if size == 'other-size':
        data += bytes(64 * 1024)
    new = path.with_name(path.name + '.new')
    new.write_bytes(data)
    mtime = path.stat().st_mtime + 100
    os.utime(new, (mtime, mtime))
    return new


@dataclasses.dataclass
class Outcome:
    """One cell of the matrix, as it happened."""

    case: str
    image: str
    expected: str
    outcome: str = '?'
    seconds: float = 0.0
    text: str = ''


class FaultMatrixTest(E2ETestCase):
    """Each fault case, for a raw and a qcow2 image."""

    raw: ClassVar[TestImage]
    qcow2: ClassVar[TestImage]
    www: ClassVar[Path]
    servers: ClassVar[Dict[str, RangeServer]]
    matrix: ClassVar[List[Outcome]]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        images = cls.class_tmp / 'images'
        images.mkdir()
        cls.raw = fixtures.make_test_image(images / 'disk.raw', IMAGE_SIZE,
                                           IMAGE_SEED)
        cls.qcow2 = fixtures.make_qcow2(cls.raw, images / 'disk.qcow2')
        cls.www = cls.class_tmp / 'www'
        cls.www.mkdir()
        for image in (cls.raw, cls.qcow2):
            # The same file under other names: the same ETag
            for prefix in ('', 'moved1-', 'moved2-'):
                (cls.www / f'{prefix}{image.name}').symlink_to(image.path)
        ca_dir = cls.ca_dir
        cls.servers = {}
        for name, cert in (('http', None), ('https', 'server'),
                           ('untrusted', 'untrusted')):
            tls = {} if cert is None else {
                'tls_cert': str(ca_dir / f'{cert}.pem'),
                'tls_key': str(ca_dir / f'{cert}.key')}
            cls.servers[name] = cls.start_server(RangeServer(
                str(cls.www), log_path=str(cls.class_tmp / f'{name}.log'),
                **tls))
        cls.matrix = []
        cls.addClassCleanup(cls.print_matrix)

    @classmethod
    def print_matrix(cls) -> None:
        """Print the matrix to stderr, one line per case and image."""
        if not cls.matrix:
            return
        rows = [('case', 'image', 'outcome', 'time', 'error / server saw')]
        rows += [(o.case, o.image, o.outcome +
                  ('' if o.outcome.split()[0] == o.expected else
                   f' (EXPECTED {o.expected})'),
                  f'{o.seconds:.1f} s', o.text) for o in cls.matrix]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ['', f'fault matrix: {len(cls.matrix)} runs, '
                 f'{sum(o.seconds for o in cls.matrix):.0f} s of commands']
        for i, row in enumerate(rows):
            lines.append('  '.join(cell.ljust(width) for cell, width
                                   in zip(row, widths)) + '  ' + row[4])
            if i == 0:
                lines.append('  '.join('-' * w for w in widths) + '  ' +
                             '-' * 20)
        print('\n'.join(lines), file=sys.stderr)

    # -- running one case

    def convert(self, case: Case, image: TestImage, name: str,
                out: Path) -> CmdResult:
        """qemu-img convert of @name on the case's server to raw @out."""
        server = self.servers[case.server]
        url = server.url(fill(case.url, {'name': name}), case.scheme)
        opts = (f'driver={image.fmt},file.driver={case.scheme},'
                f'file.url={url}')
        for key, value in case.opts.items():
            opts += f',file.{key}={value}'
        return self.qemu_img('convert', '--image-opts', opts, '-O', 'raw',
                             out, timeout=CASE_TIMEOUT)

    def convert_replacing(self, case: Case, image: TestImage, name: str,
                          out: Path) -> CmdResult:
        """convert(), replacing the file while its second GET is held."""
        assert case.replace is not None
        path = self.www / name
        new = replacement(path, case.replace)
        server = self.servers[case.server]
        results: List[Any] = []

        def run() -> None:
            try:
                results.append(self.convert(case, image, name, out))
            except AssertionError as err:       # a timeout
                results.append(err)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            fixtures.wait_for(
                lambda: any('delay' in (r['fault'] or '')
                            for r in server.stats()['log']),
                CASE_TIMEOUT, 'the second GET to be held',
                abort=lambda: None if thread.is_alive() or not results
                else 'qemu-img ended first')
            os.replace(new, path)
        finally:
            server.release()
            thread.join(CASE_TIMEOUT + 10)
        self.assertFalse(thread.is_alive(), 'qemu-img did not end')
        if isinstance(results[0], AssertionError):
            raise results[0]
        result: CmdResult = results[0]
        return result

    def run_case(self, case: Case, image: TestImage) -> None:
        """Run @case on @image and check its outcome."""
        expected = 'same' if case.error is None else 'failed'
        cell = Outcome(case.name, image.fmt, expected)
        for each in self.servers.values():
            each.reset()
        self.matrix.append(cell)
        name = image.name
        if case.replace:
            name = f'r-{case.name}-{image.name}'
            shutil.copyfile(image.path, self.www / name)
            self.addCleanup(os.unlink, self.www / name)
        values = {'name': name, 'path': str(image.path),
                  'http': self.servers['http'].url('').rstrip('/'),
                  'https': self.servers['https'].url('').rstrip('/')}
        server = self.servers[case.server]
        server.set_faults(fill(list(case.rules), values))
        out = self.tmp / f'out-{image.fmt}.raw'
        try:
            if case.replace:
                result = self.convert_replacing(case, image, name, out)
            else:
                result = self.convert(case, image, name, out)
        except AssertionError:
            cell.outcome = 'hang'
            raise
        finally:
            for each in self.servers.values():
                each.release()
        cell.seconds = result.duration
        seen = Seen(server.stats()['log'],
                    {n: s.stats()['log'] for n, s in self.servers.items()
                     if s is not server}, result.duration, values)
        first_line = next((line.strip() for line in result.output.splitlines()
                           if line.strip()), '')

        if result.returncode < 0 or result.returncode >= 128:
            cell.outcome = f'crashed ({result.returncode})'
            self.fail(f'qemu-img crashed or was killed\n{result.describe()}')
        if result.returncode == 0:
            same = filecmp.cmp(out, self.raw.path, shallow=False)
            cell.outcome = 'same' if same else 'WRONG BYTES'
            cell.text = first_line
            self.assertTrue(same, f'the output differs from the image\n'
                            f'{result.describe()}\n{log_summary(seen)}')
        else:
            cell.outcome = f'failed (exit {result.returncode})'
            cell.text = first_line
        if case.error is None:
            self.assertEqual(result.returncode, 0,
                             f'expected the same bytes\n{result.describe()}')
        else:
            self.assertNotEqual(result.returncode, 0,
                                f'expected a failure matching '
                                f'{case.error!r}\n{result.describe()}')
            self.assertRegex(result.output, case.error,
                             f'the error does not name the cause\n'
                             f'{result.describe()}')
        if case.check is not None:
            try:
                saw = case.check(seen)
            except AssertionError as err:
                cell.text = f'FAULT NOT AS EXPECTED: {err}'
                raise AssertionError(f'{err}\n{result.describe()}\n'
                                     f'{log_summary(seen)}') from None
            if result.returncode == 0:
                cell.text = saw


def _make_test(case: Case) -> Callable[[FaultMatrixTest], None]:
    def test(self: FaultMatrixTest) -> None:
        for image in (self.raw, self.qcow2):
            with self.subTest(image=image.fmt):
                self.run_case(case, image)
    test.__doc__ = (f'{case.name}: '
                    f'{"same bytes" if case.error is None else "fails"}')
    return test


def _add_tests() -> None:
    names = set()
    for case in CASES:
        assert case.name not in names, case.name
        names.add(case.name)
        setattr(FaultMatrixTest, 'test_' + case.name.replace('-', '_'),
                _make_test(case))


_add_tests()
