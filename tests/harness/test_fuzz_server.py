# SPDX-License-Identifier: GPL-2.0-or-later
#
# Tests of tests/e2e/fuzz_server.py, the hostile server of the e2e fuzz
# test, with no QEMU: its correct answers are correct HTTP, each mutation
# does what its name says, and its choices depend on the seed and the
# request only.
"""The fuzz server: correct answers, mutations, and determinism."""

import gzip
import http.client
import random
import re
import socket
import sys
import time
import unittest
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from unittest import mock

sys.path.append(str(Path(__file__).resolve().parents[1] / 'e2e'))
# pylint: disable=wrong-import-position
import fuzz_server  # noqa: E402
from fuzz_server import (  # noqa: E402
    IMAGE_PATH, LIE, LOOP_PATHS, MIN_CHUNK, MODES, MUTATIONS, Exchange,
    Fuzzer, FuzzServer, Reply, Request, Versions, carries, correct_reply)

SIZE = 20000
DATA = random.Random(1).randbytes(SIZE)
#: What the mutations are tried on: a range of the file, not a probe
FIRST, LAST = 1000, 4999
GET = Request('GET', IMAGE_PATH, {'host': 'fuzz', 'range':
                                  f'bytes={FIRST}-{LAST}'})
HEAD = Request('HEAD', IMAGE_PATH, {'host': 'fuzz'})
PROBE = Request('GET', IMAGE_PATH, {'host': 'fuzz', 'range': 'bytes=0-0'})
VALIDATORS = ('etag', 'last-modified')


def versions(mode: str = 'strong', etag_length: int = 0) -> Versions:
    """The versions of DATA."""
    return Versions.make(DATA, mode, 7, etag_length)


def mutate(kind: str, mode: str = 'strong', request: Request = GET,
           seed: int = 0) -> Tuple[Optional[str], Reply]:
    """Answer @request with mutation @kind, if it applies."""
    return Fuzzer(versions(mode), seed, 1.0, [kind]).answer(request)


def one(reply: Reply, name: str) -> str:
    """The value of header @name, which @reply has once."""
    [value] = reply.values(name)
    return value


def numbers(value: str) -> List[int]:
    """The numbers in a header value."""
    return [int(n) for n in re.findall(r'\d+', value)]


def dechunk(body: bytes, error: int = 0) -> Tuple[bytes, List[str], bool]:
    """Undo chunked framing whose chunk sizes say @error bytes more than
    the chunks hold; return the data, the size lines, and whether the
    last chunk was there."""
    data, lines = b'', []
    while body:
        line, _, body = body.partition(b'\r\n')
        lines.append(line.decode())
        size = int(line.split(b';')[0], 16)
        if size == 0:
            return data, lines, body == b'\r\n'
        data += body[:size - error]
        assert body[size - error:size - error + 2] == b'\r\n'
        body = body[size - error + 2:]
    return data, lines, False


def logged(server: FuzzServer, count: int) -> List[Exchange]:
    """The log of @server once it has @count exchanges (a client may have
    an answer before the server logged it)."""
    deadline = time.monotonic() + 10
    while len(server.log()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.log()


def size_error(reply: Reply) -> int:
    """The chunk size error a chunked mutation logged."""
    match = re.fullmatch(r'size error ([-+]\d+)', reply.detail)
    return int(match.group(1)) if match else 0


class CorrectAnswersTest(unittest.TestCase):
    """With no mutation, the server answers as RFC 9110 says."""

    def setUp(self) -> None:
        self.versions = versions()
        self.server = FuzzServer(Fuzzer(self.versions, 0, 0.0))
        self.server.start()
        self.addCleanup(self.server.stop)
        self.conn = http.client.HTTPConnection('127.0.0.1', self.server.port,
                                               timeout=10)
        self.addCleanup(self.conn.close)

    def ask(self, method: str, path: str = IMAGE_PATH, **headers: str
            ) -> Tuple[http.client.HTTPResponse, bytes]:
        """Send a request on the test's connection (@headers with '-' for
        '_'); return the answer and its body."""
        self.conn.request(method, path, headers={
            k.replace('_', '-'): v for k, v in headers.items()})
        answer = self.conn.getresponse()
        return answer, answer.read()

    def test_head(self) -> None:
        answer, _ = self.ask('HEAD')
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.getheader('Content-Length'), str(SIZE))
        self.assertEqual(answer.getheader('Accept-Ranges'), 'bytes')
        self.assertEqual(answer.getheader('ETag'), self.versions.a.etag)
        self.assertEqual(answer.getheader('Last-Modified'),
                         self.versions.a.last_modified)

    def test_ranges(self) -> None:
        """Closed, open-ended and suffix ranges, all on one connection."""
        for value, first, last in ((f'bytes={FIRST}-{LAST}', FIRST, LAST),
                                   ('bytes=19990-', 19990, SIZE - 1),
                                   ('bytes=19990-30000', 19990, SIZE - 1),
                                   ('bytes=-5', SIZE - 5, SIZE - 1),
                                   ('bytes=0-0', 0, 0)):
            answer, body = self.ask('GET', range=value)
            self.assertEqual(answer.status, 206, value)
            self.assertEqual(answer.getheader('Content-Range'),
                             f'bytes {first}-{last}/{SIZE}')
            self.assertEqual(body, DATA[first:last + 1])
            self.assertEqual(answer.getheader('ETag'), self.versions.a.etag)
        self.assertEqual({e.connection for e in logged(self.server, 5)},
                         {1})

    def test_whole_file(self) -> None:
        ignored: List[Dict[str, str]] = [
            {}, {'range': 'bytes=5-1'}, {'range': 'bytes=1-2,4-5'},
            {'range': 'items=1-2'}]
        for headers in ignored:
            answer, body = self.ask('GET', **headers)
            self.assertEqual((answer.status, body), (200, DATA), headers)

    def test_unsatisfiable(self) -> None:
        answer, _ = self.ask('GET', range=f'bytes={SIZE}-')
        self.assertEqual(answer.status, 416)
        self.assertEqual(answer.getheader('Content-Range'), f'bytes */{SIZE}')

    def test_if_range(self) -> None:
        """A strong ETag or the date matches; a weak or other tag does
        not, and the whole file comes with 200."""
        a = self.versions.a
        for if_range, status in ((a.etag, 206), (a.last_modified, 206),
                                 ('W/' + a.etag, 200), (a.weak_etag, 200),
                                 (self.versions.b.etag, 200)):
            answer, body = self.ask('GET', range=f'bytes={FIRST}-{LAST}',
                                    if_range=if_range)
            self.assertEqual(answer.status, status, if_range)
            self.assertEqual(body, DATA if status == 200 else
                             DATA[FIRST:LAST + 1])

    def test_query_string(self) -> None:
        answer, body = self.ask('GET', IMAGE_PATH + '?fuzz=3',
                                range='bytes=0-9')
        self.assertEqual((answer.status, body), (206, DATA[:10]))

    def test_other_paths(self) -> None:
        self.assertEqual(self.ask('GET', '/missing-1')[0].status, 404)
        for path, other in (LOOP_PATHS, LOOP_PATHS[::-1]):
            answer, _ = self.ask('GET', path)
            self.assertEqual((answer.status, answer.getheader('Location')),
                             (302, other))
        self.assertEqual(self.ask('POST')[0].status, 405)

    def test_validator_modes(self) -> None:
        """What each mode sends, and what a client pins of it."""
        expected = {'strong': ('etag', 'last-modified'),
                    'etag-only': ('etag',), 'weak': ('etag', 'last-modified'),
                    'lm-only': ('last-modified',), 'none': ()}
        for mode in MODES:
            each = versions(mode)
            reply = correct_reply(each, HEAD)
            self.assertEqual(tuple(n.lower() for n, _ in reply.headers
                                   if n.lower() in VALIDATORS),
                             expected[mode], mode)
            self.assertEqual(each.a.weak_etag, each.b.weak_etag)
            self.assertNotEqual(each.a.etag, each.b.etag)
            pinned = each.pinned()
            if pinned is not None:
                self.assertTrue(carries(reply.headers, pinned), mode)
            self.assertEqual(pinned is None, mode == 'none')
            if mode == 'weak':
                self.assertEqual(pinned, ('Last-Modified',
                                          each.a.last_modified))

    def test_long_etags(self) -> None:
        each = versions(etag_length=200)
        self.assertEqual((len(each.a.etag), len(each.b.etag)), (200, 200))
        self.assertEqual(each.a.etag[:-2], each.b.etag[:-2])

    def test_refused_head(self) -> None:
        fuzzer = Fuzzer(self.versions, 0, 0.0, refuse_head=True)
        self.assertEqual(fuzzer.answer(HEAD)[1].status, 405)
        self.assertEqual(fuzzer.answer(PROBE)[1].status, 206)

    def test_log(self) -> None:
        self.ask('HEAD')
        self.ask('GET', range='bytes=0-0')
        log = logged(self.server, 2)
        self.assertEqual([(e.seq, e.method, e.range, e.probe, e.kind, e.data,
                           e.status) for e in log],
                         [(1, 'HEAD', None, True, None, '-', 200),
                          (2, 'GET', 'bytes=0-0', True, None, 'A', 206)])
        self.assertTrue(all(e.sent == e.length for e in log))
        self.assertIn('GET /image bytes=0-0 -> 206 correct', log[1].line())
        self.assertEqual(self.server.errors, [])


#: What each mutation must have done to the correct answer of GET: a
#: check of (test, correct answer, mutated answer, versions)
Claim = Callable[[unittest.TestCase, Reply, Reply, Versions], None]
# (Every claim takes all four, whether it needs them or not)
# pylint: disable=unused-argument


def _status(codes: Sequence[int], keep: bool) -> Claim:
    def check(test: unittest.TestCase, good: Reply, bad: Reply,
              each: Versions) -> None:
        test.assertIn(bad.status, codes)
        test.assertEqual(bad.body == good.body, keep)
        test.assertEqual(bad.values('Location'), [])
    return check


def _range_value(check_value: Callable[[str, str], bool]) -> Claim:
    """One Content-Range whose value passes @check_value(value, correct
    value); the body as it was."""
    def check(test: unittest.TestCase, good: Reply, bad: Reply,
              each: Versions) -> None:
        value, right = one(bad, 'Content-Range'), one(good, 'Content-Range')
        test.assertTrue(check_value(value, right), value)
        test.assertEqual(bad.body, good.body)
    return check


def _length_values(check_values: Callable[[List[str], str], bool]
                   ) -> Claim:
    def check(test: unittest.TestCase, good: Reply, bad: Reply,
              each: Versions) -> None:
        values = bad.values('Content-Length')
        test.assertTrue(check_values(values, one(good, 'Content-Length')),
                        values)
        test.assertEqual(bad.body, good.body)
    return check


def _labelled_span(test: unittest.TestCase, reply: Reply,
                   each: Versions) -> Tuple[int, int]:
    """The span the Content-Range of @reply claims, checking that its
    body holds those bytes of the version it names."""
    first, last, total = numbers(one(reply, 'Content-Range'))
    test.assertEqual(total, len(each[reply.data].data))
    test.assertEqual(reply.body, each[reply.data].data[first:last + 1])
    return first, last


def _shifted(test: unittest.TestCase, good: Reply, bad: Reply,
             each: Versions) -> None:
    first, last = _labelled_span(test, bad, each)
    test.assertNotEqual(first, FIRST)
    test.assertEqual(last - first, LAST - FIRST)


def _shorter(test: unittest.TestCase, good: Reply, bad: Reply,
             each: Versions) -> None:
    first, last = _labelled_span(test, bad, each)
    test.assertEqual(first, FIRST)
    test.assertLess(last, LAST)


def _two_ranges(test: unittest.TestCase, good: Reply, bad: Reply,
                each: Versions) -> None:
    values = bad.values('Content-Range')
    test.assertEqual(len(set(values)), 2)
    test.assertIn(one(good, 'Content-Range'), values)
    spans = [tuple(numbers(v)[:2]) for v in values]
    test.assertIn(bad.body, [DATA[f:l + 1] for f, l in spans])


def _other_size(test: unittest.TestCase, good: Reply, bad: Reply,
                each: Versions) -> None:
    test.assertEqual((bad.data, len(each.c.data) == SIZE), ('C', False))
    test.assertEqual(_labelled_span(test, bad, each), (FIRST, LAST))


def _whole(name: str) -> Claim:
    def check(test: unittest.TestCase, good: Reply, bad: Reply,
              each: Versions) -> None:
        test.assertEqual((bad.status, bad.values('Content-Range')), (200, []))
        test.assertEqual(bad.body, each[name].data)
        test.assertEqual(one(bad, 'Content-Length'), str(len(bad.body)))
    return check


def _cut(where: str, ending: str) -> Claim:
    def check(test: unittest.TestCase, good: Reply, bad: Reply,
              each: Versions) -> None:
        test.assertEqual(bad.ending, ending)
        head = good.body_start()
        test.assertIsNotNone(bad.cut)
        assert bad.cut is not None
        if where == 'before-head':
            test.assertEqual(bad.cut, 0)
        elif where == 'in-head':
            test.assertTrue(0 < bad.cut < head)
        else:
            test.assertTrue(head <= bad.cut < head + len(good.body))
        test.assertEqual(bad.wire(), good.wire())
    return check


def _chunked(error_sign: int, final: bool = True, length: bool = False,
             extensions: bool = False) -> Claim:
    def check(test: unittest.TestCase, good: Reply, bad: Reply,
              each: Versions) -> None:
        error = size_error(bad)
        test.assertEqual((error > 0) - (error < 0), error_sign)
        test.assertLess(abs(error), MIN_CHUNK)
        data, lines, last = dechunk(bad.body, error)
        test.assertEqual(data, good.body)
        test.assertEqual(last, final)
        test.assertEqual(all(';' in line for line in lines), extensions)
        test.assertEqual(one(bad, 'Transfer-Encoding'), 'chunked')
        test.assertEqual(bad.values('Content-Length'),
                         good.values('Content-Length') if length else [])
        test.assertEqual(bad.ending, 'keep' if final and not error
                         else 'close')
    return check


def _interim(misleading: bool) -> Claim:
    def check(test: unittest.TestCase, good: Reply, bad: Reply,
              each: Versions) -> None:
        heads = bad.interim.split(b'\r\n\r\n')[:-1]
        test.assertTrue(1 <= len(heads) <= 3)
        for head in heads:
            test.assertRegex(head, rb'^HTTP/1\.1 10[023] ')
        test.assertEqual(b'ETag: ' + each.b.etag.encode() in bad.interim,
                         misleading)
        test.assertEqual(bad.wire()[len(bad.interim):], good.wire())
    return check


def _redirect(target: str) -> Claim:
    def check(test: unittest.TestCase, good: Reply, bad: Reply,
              each: Versions) -> None:
        test.assertIn(bad.status, (301, 302, 307, 308))
        location = one(bad, 'Location')
        test.assertRegex(location, r'^(http://fuzz)?' + target)
        path = re.sub('^http://fuzz', '', location)
        followed = correct_reply(each, Request('GET', path,
                                               {'range': 'bytes=0-9'}))
        test.assertEqual(followed.status, 206 if path.startswith(IMAGE_PATH)
                         else 404 if path.startswith('/missing') else 302)
    return check


def _headers(check_headers: Callable[[List[Tuple[str, Optional[str]]],
                                      List[Tuple[str, Optional[str]]]],
                                     bool]) -> Claim:
    """The headers pass @check_headers(mutated, correct); the rest as it
    was."""
    def check(test: unittest.TestCase, good: Reply, bad: Reply,
              each: Versions) -> None:
        test.assertTrue(check_headers(bad.headers, good.headers), bad.headers)
        test.assertEqual((bad.status, bad.body), (good.status, good.body))
    return check


def _validators(check_headers: Callable[[Reply, Reply, Versions], bool]
                ) -> Claim:
    def check(test: unittest.TestCase, good: Reply, bad: Reply,
              each: Versions) -> None:
        test.assertTrue(check_headers(bad, good, each), bad.headers)
    return check


def _overlong(length: int) -> Claim:
    def check(test: unittest.TestCase, good: Reply, bad: Reply,
              each: Versions) -> None:
        name = (each.pinned() or ('ETag', ''))[0]
        old = (good.values(name) or [each.a.etag])[0]
        new = one(bad, name)
        test.assertGreaterEqual(len(new), min(length, len(old) + 1))
        test.assertTrue(new.startswith(old.rstrip('"')))
    return check


CLAIMS: Dict[str, Claim] = {
    'status-2xx': _status(range(201, 206), keep=True),
    'status-3xx-no-location': _status(range(300, 400), keep=False),
    'status-4xx': _status(range(400, 500), keep=False),
    'status-5xx': _status(range(500, 505), keep=False),
    'status-5xx-retry-after': lambda t, good, bad, each: t.assertEqual(
        (bad.status in (429, 503), len(bad.values('Retry-After'))),
        (True, 1)),
    'status-odd': _status((299, 600, 999), keep=True),
    'status-200-whole': _whole('A'),
    'status-200-other-size': _whole('C'),
    'cr-sign': _range_value(lambda v, right: v != right and re.sub(
        r'(?<=[ /-])[-+](?=\d)', '', v) == right),
    'cr-spaces': _range_value(lambda v, right: v != right and re.sub(
        r'\s+', ' ', v).replace(' ', '') == right.replace(' ', '')),
    'cr-leading-zeros': _range_value(lambda v, right: v != right and
                                     numbers(v) == numbers(right)),
    'cr-overflow': _range_value(lambda v, right: max(numbers(v)) >=
                                2**64 - 1),
    'cr-star': _range_value(lambda v, right: '*' in v),
    'cr-unit': _range_value(lambda v, right: not v.startswith('bytes ')),
    'cr-reversed': _range_value(lambda v, right: numbers(v)[0] >
                                numbers(v)[1]),
    'cr-past-end': _range_value(lambda v, right: numbers(v)[1] >=
                                numbers(v)[2] == SIZE),
    'cr-negative-total': _range_value(lambda v, right: v.endswith('/-1')),
    'cr-huge-total': _range_value(lambda v, right: numbers(v)[2] >= 2**63),
    'cr-missing': _headers(lambda bad, good: [h for h in good
                                              if h[0] != 'Content-Range'] ==
                           bad),
    'cr-duplicated-same': _headers(lambda bad, good: [
        v for n, v in bad if n == 'Content-Range'] == [
            v for n, v in good if n == 'Content-Range'] * 2),
    'cr-duplicated-different': _two_ranges,
    'cr-shifted': _shifted,
    'cr-shorter': _shorter,
    'cr-other-size': _other_size,
    'cl-missing': lambda t, good, bad, each: t.assertEqual(
        (bad.values('Content-Length'), bad.ending, bad.body),
        ([], 'close', good.body)),
    'cl-short': _cut('in-body', 'close'),
    'cl-long': lambda t, good, bad, each: t.assertEqual(
        (bad.body[:len(good.body)], one(bad, 'Content-Length'),
         len(bad.body) > len(good.body)),
        (good.body, str(len(bad.body)), True)),
    'body-overrun': lambda t, good, bad, each: t.assertEqual(
        (bad.body[:len(good.body)], bad.headers,
         len(bad.body) > len(good.body)), (good.body, good.headers, True)),
    'cl-duplicated-same': _length_values(lambda v, right: v == [right] * 2),
    'cl-duplicated-different': _length_values(
        lambda v, right: len(set(v)) == 2 and right in v),
    'cl-signed': _length_values(lambda v, right: v in (['+' + right],
                                                       ['-' + right])),
    'cl-spaces': _length_values(lambda v, right: len(v) == 1 and
                                ' ' in v[0] and v[0].replace(' ', '') ==
                                right),
    'ce-gzip': lambda t, good, bad, each: t.assertEqual(
        (one(bad, 'Content-Encoding'), gzip.decompress(bad.body),
         one(bad, 'Content-Length')), ('gzip', good.body, str(len(bad.body)))),
    'ce-br': lambda t, good, bad, each: t.assertEqual(
        (one(bad, 'Content-Encoding'), bad.body), ('br', good.body)),
    'ce-garbage': lambda t, good, bad, each: t.assertEqual(
        (one(bad, 'Content-Encoding') in ('', 'identity'), bad.body),
        (False, good.body)),
    'te-chunked': _chunked(0),
    'te-chunk-size-more': _chunked(1),
    'te-chunk-size-fewer': _chunked(-1),
    'te-chunk-extensions': _chunked(0, extensions=True),
    'te-no-final-chunk': _chunked(0, final=False),
    'te-chunked-and-cl': _chunked(0, length=True),
    'interim': _interim(misleading=False),
    'interim-misleading': _interim(misleading=True),
    'http10-close': lambda t, good, bad, each: t.assertEqual(
        (bad.protocol, bad.values('Content-Length'), bad.ending, bad.body),
        ('HTTP/1.0', [], 'close', good.body)),
    'redirect-same': _redirect(IMAGE_PATH + r'\?fuzz=\d+$'),
    'redirect-missing': _redirect(r'/missing-\d+$'),
    'redirect-loop': _redirect(LOOP_PATHS[0] + '$'),
    'close-before-head': _cut('before-head', 'close'),
    'close-in-head': _cut('in-head', 'close'),
    'reset-before-head': _cut('before-head', 'reset'),
    'reset-in-head': _cut('in-head', 'reset'),
    'reset-in-body': _cut('in-body', 'reset'),
    'stall': lambda t, good, bad, each: t.assertEqual(
        (bad.ending, bad.cut is not None and bad.cut < len(good.wire())),
        ('stall', True)),
    'trickle': lambda t, good, bad, each: t.assertEqual(
        (200 <= bad.trickle < 400, bad.wire()), (True, good.wire())),
    'header-10k': _headers(lambda bad, good: any(
        len(v or '') >= 10240 for _, v in bad)),
    'headers-200': _headers(lambda bad, good: len(bad) == len(good) + 200),
    'header-name-case': _headers(lambda bad, good: bad != good and [
        (n.lower(), v) for n, v in bad] == [(n.lower(), v) for n, v in good]),
    'header-obs-fold': _headers(lambda bad, good: [
        (n, (v or '').replace('\n ', '')) for n, v in bad] == good and
        bad != good),
    'header-no-colon': _headers(lambda bad, good: [
        h for h in bad if h[1] is not None] == good and len(bad) ==
        len(good) + 1),
    'header-nul': _headers(lambda bad, good: len([
        n for n, v in bad if '\0' in (v or '') and
        n.lower() not in VALIDATORS]) == 1),
    'bare-lf': lambda t, good, bad, each: t.assertEqual(
        (b'\r' in bad.head(), bad.head().replace(b'\n', b'\r\n')),
        (False, good.head())),
    'etag-changed': _validators(lambda bad, good, each: bool(
        bad.values('ETag')) and bad.values('ETag') != good.values('ETag')),
    'etag-removed': _validators(lambda bad, good, each: bool(
        good.values('ETag')) and not bad.values('ETag')),
    'etag-weakened': _validators(lambda bad, good, each: bad.values('ETag')
                                 == ['W/' + one(good, 'ETag')]),
    'etag-duplicated': _validators(lambda bad, good, each: len(set(
        bad.values('ETag'))) == 2),
    'lm-changed': _validators(lambda bad, good, each: bad.values(
        'Last-Modified') == [each.b.last_modified]),
    'lm-removed': _validators(lambda bad, good, each: bool(
        good.values('Last-Modified')) and not bad.values('Last-Modified')),
    'validators-removed': _validators(lambda bad, good, each: not any(
        bad.values(n) for n in VALIDATORS)),
    'validators-added': _validators(lambda bad, good, each: sum(
        len(bad.values(n)) for n in VALIDATORS) > sum(
            len(good.values(n)) for n in VALIDATORS)),
    'validator-overlong-200': _overlong(200),
    'validator-overlong-1000': _overlong(1000),
    'validator-overlong-10000': _overlong(10000),
}


class MutationTest(unittest.TestCase):
    """Each mutation does what its name says, in every validator mode."""

    def test_every_kind_has_a_claim(self) -> None:
        self.assertEqual(sorted(CLAIMS), sorted(MUTATIONS))

    def test_claims(self) -> None:
        applied: Dict[str, int] = {}
        for mode in MODES:
            each = versions(mode)
            good = correct_reply(each, GET)
            for kind, claim in CLAIMS.items():
                for seed in range(4):
                    with self.subTest(kind=kind, mode=mode, seed=seed):
                        got, bad = mutate(kind, mode, seed=seed)
                        if got is None:
                            continue
                        self.assertEqual(got, kind)
                        applied[kind] = applied.get(kind, 0) + 1
                        claim(self, good, bad, each)
        self.assertEqual(sorted(applied), sorted(MUTATIONS))

    def test_other_bytes_only_without_the_pinned_validator(self) -> None:
        """B's bytes exactly when the pinned validator is not carried
        exactly (so never in mode 'none'); else, the body is A's bytes of
        the span the answer claims (framing aside)."""
        framed = ('ce-gzip', 'cl-long', 'body-overrun')
        for mode in MODES:
            each = versions(mode)
            pinned = each.pinned()
            for kind, mutation in MUTATIONS.items():
                for seed in range(4):
                    got, reply = mutate(kind, mode, seed=seed)
                    if got is None or kind.startswith('te-') or \
                            kind in framed or reply.data == '-':
                        continue
                    with self.subTest(kind=kind, mode=mode, seed=seed):
                        lost = pinned is not None and \
                            not carries(reply.headers, pinned)
                        if reply.data != 'C':       # (another size)
                            self.assertEqual(reply.data == 'B', lost and
                                             mutation.scope == 'data')
                        data = each[reply.data].data
                        if reply.span is not None:
                            data = data[reply.span[0]:reply.span[1] + 1]
                        self.assertEqual(reply.body, data)

    def test_probes_keep_their_validators_and_size(self) -> None:
        """A mutated probe answer never carries other bytes, other
        validators, or a well-formed claim of another size."""
        for mode in MODES:
            each = versions(mode)
            truth = {(n.lower(), v) for n, v in each.a.validators(mode)}
            for kind in MUTATIONS:
                for request in (HEAD, PROBE):
                    for seed in range(4):
                        got, reply = mutate(kind, mode, request, seed)
                        if got is None:
                            continue
                        with self.subTest(kind=kind, mode=mode,
                                          request=request.method, seed=seed):
                            self.assertIn(reply.data, ('A', '-'))
                            sent = {(n.lower().strip(), (v or '').strip())
                                    for n, v in reply.headers
                                    if n.lower().strip() in VALIDATORS}
                            self.assertLessEqual(sent, truth)
                            self.assert_size_kept(reply, request)

    def assert_size_kept(self, reply: Reply, request: Request) -> None:
        """The size a 2xx @reply claims, if it claims one that a file may
        have (well-formed, less than 2^63)."""
        name = 'Content-Length' if request is HEAD else 'Content-Range'
        values = reply.values(name)
        if 200 <= reply.status < 300 and len(values) == 1 and \
                re.fullmatch(r'(bytes \d+-\d+/)?\d+', values[0]) and \
                numbers(values[0])[-1] < 2**63:
            self.assertEqual(numbers(values[0])[-1], SIZE)

    def test_lie(self) -> None:
        """A lying server sends B's bytes with A's headers, once."""
        fuzzer = Fuzzer(versions(), 0, 0.0, lie=True)
        good = correct_reply(versions(), GET)
        for request in (HEAD, PROBE):
            self.assertEqual(fuzzer.answer(request)[0], None)
        kind, reply = fuzzer.answer(GET)
        self.assertEqual((kind, reply.headers, reply.data),
                         (LIE, good.headers, 'B'))
        self.assertEqual(reply.body, versions().b.data[FIRST:LAST + 1])
        self.assertEqual(fuzzer.answer(GET), (None, good))


class DeterminismTest(unittest.TestCase):
    """The answers depend on the seed and the requests, not their order."""

    REQUESTS = [Request('GET', IMAGE_PATH, {'range': f'bytes={f}-{f + 999}'})
                for f in range(0, 19000, 500)] + [HEAD, PROBE] * 3

    def answers(self, seed: int, order: List[Request]
                ) -> Dict[Tuple[str, Optional[str], int], Tuple[
                    Optional[str], bytes]]:
        """Answer @order; return each answer by request and repeat."""
        fuzzer = Fuzzer(versions(), seed, 0.5)
        seen: Dict[Tuple[str, Optional[str]], int] = {}
        result = {}
        for request in order:
            key = (request.method, request.range)
            seen[key] = seen.get(key, 0) + 1
            kind, reply = fuzzer.answer(request)
            result[key + (seen[key],)] = (kind, reply.wire())
        return result

    def test_order_does_not_matter(self) -> None:
        shuffled = list(self.REQUESTS)
        random.Random(3).shuffle(shuffled)
        self.assertEqual(self.answers(5, self.REQUESTS),
                         self.answers(5, shuffled))

    def test_seed_and_repeat_matter(self) -> None:
        first = self.answers(5, self.REQUESTS)
        self.assertNotEqual(first, self.answers(6, self.REQUESTS))
        again = [first[('HEAD', None, n)] for n in (1, 2, 3)]
        self.assertGreater(len(set(again)), 1)

    def test_rate(self) -> None:
        for rate, low, high in ((0.0, 0, 0), (0.2, 0.1, 0.3), (1.0, 1, 1)):
            fuzzer = Fuzzer(versions(), 1, rate)
            kinds = [fuzzer.answer(GET)[0] for _ in range(300)]
            share = sum(1 for k in kinds if k) / len(kinds)
            self.assertTrue(low <= share <= high, (rate, share))


class WireTest(unittest.TestCase):
    """What goes over the socket."""

    def serve(self, kind: Optional[str], rate: float = 1.0) -> FuzzServer:
        """A server that answers every request with mutation @kind."""
        server = FuzzServer(Fuzzer(versions(), 0, rate,
                                   [kind] if kind else None))
        server.start()
        self.addCleanup(server.stop)
        return server

    def exchange(self, server: FuzzServer, request: bytes
                 ) -> Tuple[bytes, Optional[Exception], float]:
        """Send @request; return what came back until the connection
        ended, how it ended, and how long that took."""
        start = time.monotonic()
        got, error = b'', None
        with socket.create_connection(('127.0.0.1', server.port),
                                      timeout=10) as sock:
            sock.sendall(request)
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    got += data
            except OSError as err:
                error = err
        return got, error, time.monotonic() - start

    RANGE = (f'GET {IMAGE_PATH} HTTP/1.1\r\nHost: x\r\nRange: '
             f'bytes={FIRST}-{LAST}\r\nConnection: close\r\n\r\n').encode()

    def test_reset(self) -> None:
        server = self.serve('reset-in-body')
        got, error, _ = self.exchange(server, self.RANGE)
        self.assertIsInstance(error, ConnectionResetError)
        log = server.log()
        self.assertEqual(len(log), 1)
        exchange = log[0]
        self.assertEqual(len(got), exchange.sent)
        self.assertLess(exchange.sent, exchange.length)

    def test_close_before_head(self) -> None:
        got, error, _ = self.exchange(self.serve('close-before-head'),
                                      self.RANGE)
        self.assertEqual((got, error), (b'', None))

    def test_stall(self) -> None:
        with mock.patch.object(fuzz_server, 'STALL_SECONDS', 0.5):
            server = self.serve('stall')
            got, error, seconds = self.exchange(server, self.RANGE)
        self.assertIsNone(error)
        self.assertGreaterEqual(seconds, 0.5)
        self.assertEqual(len(got), server.log()[0].sent)

    def test_trickle(self) -> None:
        server = self.serve('trickle')
        got, _, seconds = self.exchange(server, self.RANGE)
        self.assertTrue(got.endswith(DATA[FIRST:LAST + 1]))
        self.assertGreaterEqual(seconds, 200 * fuzz_server.TRICKLE_INTERVAL)

    def test_chunked(self) -> None:
        """http.client reads a correctly chunked answer."""
        server = self.serve('te-chunk-extensions')
        conn = http.client.HTTPConnection('127.0.0.1', server.port, timeout=10)
        self.addCleanup(conn.close)
        conn.request('GET', IMAGE_PATH, headers={'Range': 'bytes=0-9999'})
        answer = conn.getresponse()
        self.assertEqual((answer.status, answer.read()), (206, DATA[:10000]))

    def test_bare_lf(self) -> None:
        got, _, _ = self.exchange(self.serve('bare-lf'), self.RANGE)
        head, _, body = got.partition(b'\n\n')
        self.assertNotIn(b'\r', head)
        self.assertEqual(body, DATA[FIRST:LAST + 1])

    def test_not_http(self) -> None:
        server = self.serve(None, 0.0)
        got, _, _ = self.exchange(server, b'\x16\x03\x01 hello\r\n\r\n')
        self.assertEqual((got, server.log(), server.errors), (b'', [], []))


if __name__ == '__main__':
    unittest.main()
