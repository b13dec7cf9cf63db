#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# A hostile HTTP/1.1 server for fuzzing QEMU's curl block driver.
#
# It serves one file over raw sockets (http.server cannot send malformed
# HTTP), computes the correct answer to every request, and then, by a
# random choice that depends only on the seed and on the request (not on
# the order requests arrive in), sends that answer or one of some seventy
# named mutations of it: other statuses, broken Content-Range and
# Content-Length headers, changed validators, encodings, chunked framing,
# interim answers, redirects, resets, stalls, odd header lines.  Every
# answer is logged, so that a test can tell what the client was sent.
#
# Run it as a script to serve a file by hand (one line per answer); the
# e2e fuzz test (tests/e2e/test_fuzz.py, tests/e2e/fuzz.py) runs it in
# process.  Python standard library only.
"""A raw-socket HTTP/1.1 server that answers correctly, or not, by seed.

The served file has three versions of which the client should only ever
accept the first: A (the file), B (as many bytes, all different: what a
cache sends after the file was replaced) and C (another size).  Each has
its own validators; the run's validator mode says which of them answers
carry.  A mutation that changes, removes, weakens or lengthens the
validator a client pins at open (the strong ETag if there is one, else
Last-Modified) sends B's bytes, so that a client which trusts such an
answer produces wrong bytes; B's bytes never come with A's pinned
validator intact, and the probe answers (HEAD, GET bytes=0-0) keep their
validators and their size claim.
"""

from __future__ import annotations

import argparse
import dataclasses
import email.utils
import fcntl
import gzip
import hashlib
import http
import random
import re
import socket
import struct
import sys
import termios
import threading
import time
import traceback
from pathlib import Path
from typing import (BinaryIO, Callable, Dict, List, Optional, Sequence, Set,
                    Tuple)

HOST = '127.0.0.1'
#: Where the file is served; any query string is the same file
IMAGE_PATH = '/image'
#: Two paths that redirect to each other, for the redirect-loop mutation
LOOP_PATHS = ('/loop-a', '/loop-b')
#: The validator modes: which validators the answers carry
MODES = ('strong', 'etag-only', 'weak', 'lm-only', 'none')
#: How long a 'stall' sends nothing: longer than the 1 s timeout the
#: fuzz test gives the driver
STALL_SECONDS = 3.0
#: The pause between the bytes of a 'trickle'
TRICKLE_INTERVAL = 0.003
#: How long an idle connection is kept
IDLE_TIMEOUT = 60.0
#: Longest request line or header line read
MAX_LINE = 64 * 1024
#: How long a reset waits for the client to acknowledge what was sent
RESET_ACK_TIMEOUT = 1.0
#: Versions B and C are the file's bytes xor these
B_KEY = 0x5a
C_KEY = 0xa5
#: Bytes added to the file for version C, the one of another size
OTHER_SIZE_EXTRA = 64 * 1024

Span = Tuple[int, int]
#: A header line: (name, value), or (text, None) for a line with no colon
Header = Tuple[str, Optional[str]]
#: A validator header: (name, value)
Validator = Tuple[str, str]


# ---------------------------------------------------------------------------
# The file's versions and their validators
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Version:
    """One version of the served file: its bytes and validators."""

    name: str                   # 'A', 'B' or 'C'
    data: bytes
    etag: str                   # its strong entity tag
    weak_etag: str              # its weak one (A and B share it)
    last_modified: str

    def validators(self, mode: str) -> List[Validator]:
        """The validator headers an answer with this version carries."""
        headers = []
        if mode in ('strong', 'etag-only'):
            headers.append(('ETag', self.etag))
        elif mode == 'weak':
            headers.append(('ETag', self.weak_etag))
        if mode in ('strong', 'weak', 'lm-only'):
            headers.append(('Last-Modified', self.last_modified))
        return headers


def xor_bytes(data: bytes, key: int) -> bytes:
    """@data with every byte xor @key."""
    return data.translate(bytes(i ^ key for i in range(256)))


@dataclasses.dataclass(frozen=True)
class Versions:
    """The three versions of the file, and the run's validator mode."""

    a: Version
    b: Version
    c: Version
    mode: str

    @classmethod
    def make(cls, data: bytes, mode: str, seed: int,
             etag_length: int = 0) -> 'Versions':
        """Versions of @data: A is @data, B every byte of it xor B_KEY, C
        xor C_KEY and 64 KiB longer.  Their strong ETags are @etag_length
        characters long (0: short ones), and differ only at the end."""
        if mode not in MODES:
            raise ValueError(f'unknown validator mode {mode!r}')
        digest = hashlib.sha256(data).hexdigest()[:16]
        stem = f'{seed:x}-{digest}'
        if etag_length:
            stem = (stem * (etag_length // len(stem) + 1))[:etag_length - 4]
        date = 1767225600 + seed % 86400 * 1000     # from 2026 on

        def version(name: str, content: bytes, day: int) -> Version:
            weak = 'c' if name == 'C' else 'ab'
            return Version(name, content, f'"{stem}-{name.lower()}"',
                           f'W/"{seed:x}-{weak}"',
                           email.utils.formatdate(date + day * 86400,
                                                  usegmt=True))

        other = xor_bytes(data, C_KEY) + bytes(OTHER_SIZE_EXTRA)
        return cls(version('A', data, 0),
                   version('B', xor_bytes(data, B_KEY), 1),
                   version('C', other, 2), mode)

    def __getitem__(self, name: str) -> Version:
        return {'A': self.a, 'B': self.b, 'C': self.c}[name]

    @property
    def size(self) -> int:
        """The size of the file (of A)."""
        return len(self.a.data)

    def pinned(self) -> Optional[Validator]:
        """The validator a client pins at open: A's strong ETag if the
        answers carry one, else its Last-Modified, else nothing."""
        if self.mode in ('strong', 'etag-only'):
            return ('ETag', self.a.etag)
        if self.mode in ('weak', 'lm-only'):
            return ('Last-Modified', self.a.last_modified)
        return None

    def if_range_matches(self, value: str) -> bool:
        """Whether If-Range @value names A (RFC 9110 13.1.5: a strong
        ETag, compared strongly, or the exact Last-Modified date)."""
        return any(value == v and not v.startswith('W/')
                   for _, v in self.a.validators(self.mode))


def carries(headers: Sequence[Header], validator: Validator) -> bool:
    """Whether @headers hold the header @validator, exactly, and no other
    value of it."""
    values = [v for n, v in headers
              if v is not None and n.lower() == validator[0].lower()]
    return bool(values) and all(v == validator[1] for v in values)


# ---------------------------------------------------------------------------
# Requests and answers
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Request:
    """An HTTP request as read: method, target and headers."""

    method: str
    target: str
    headers: Dict[str, str]     # by lower-case name; the last one wins

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split('?', 1)[0]

    @property
    def range(self) -> Optional[str]:
        """The Range header, if any."""
        return self.headers.get('range')

    @property
    def probe(self) -> bool:
        """Whether this is how a client learns the size and validators:
        a HEAD, or a GET of the first byte."""
        return self.method == 'HEAD' or self.range == 'bytes=0-0'


class NotHttp(Exception):
    """What the client sent is not an HTTP request."""


class Unsatisfiable(Exception):
    """A Range that selects no byte of the file: a 416."""


def parse_range(value: Optional[str], size: int) -> Optional[Span]:
    """The inclusive span a Range header value selects in a file of @size
    bytes, or None if it must be ignored (missing, invalid, several
    ranges: the whole file is sent).  Raise Unsatisfiable for a 416."""
    match = re.fullmatch(r'bytes=(\d*)-(\d*)', value or '')
    if not match or not any(match.groups()):
        return None
    first, last = match.groups()
    if not first:
        if int(last) == 0 or size == 0:
            raise Unsatisfiable()
        return max(size - int(last), 0), size - 1
    if last and int(last) < int(first):
        return None
    if int(first) >= size:
        raise Unsatisfiable()
    return int(first), (min(int(last), size - 1) if last else size - 1)


@dataclasses.dataclass
class Reply:  # pylint: disable=too-many-instance-attributes
    """An answer as it goes on the wire, and how the connection ends."""

    status: int
    headers: List[Header]
    body: bytes = b''           # as sent after the head, framing included
    protocol: str = 'HTTP/1.1'
    eol: str = '\r\n'
    interim: bytes = b''        # 1xx answers sent before this one
    data: str = '-'             # whose bytes the body holds: A, B, C or -
    span: Optional[Span] = None     # and which of them (None: all)
    ending: str = 'keep'        # then: keep, close, reset or stall
    cut: Optional[int] = None   # send only so many bytes before ending
    trickle: int = 0            # send so many bytes one at a time first
    detail: str = ''            # the mutation's parameters, for the log

    def copy(self, **changes: object) -> 'Reply':
        """A copy, with its own header list, and @changes made."""
        return dataclasses.replace(self, headers=list(self.headers),
                                   **changes)

    def values(self, name: str) -> List[str]:
        """The values of the header @name, in order."""
        return [v for n, v in self.headers
                if v is not None and n.lower() == name.lower()]

    def set_header(self, name: str, values: Sequence[str]) -> None:
        """Give header @name exactly @values (none: remove it), where it
        was, or at the end."""
        kept = [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        # (Every header before the first one named so is kept)
        where = next((i for i, (n, _) in enumerate(self.headers)
                      if n.lower() == name.lower()), len(kept))
        self.headers = kept[:where] + [(name, v) for v in values] + \
            kept[where:]

    def head(self) -> bytes:
        """The status line and the header lines; a '\\n' inside a value
        is a line break (obs-fold)."""
        lines = [f'{self.protocol} {self.status} {_phrase(self.status)}']
        lines += [n if v is None else f'{n}: {v}' for n, v in self.headers]
        text = '\n'.join(lines) + '\n\n'
        return text.replace('\n', self.eol).encode('latin-1')

    def wire(self) -> bytes:
        """All the bytes of the answer."""
        return self.interim + self.head() + self.body

    def body_start(self) -> int:
        """Where the body starts in wire()."""
        return len(self.interim) + len(self.head())


def _phrase(status: int) -> str:
    """The reason phrase of @status."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return 'Fuzz'


def text_reply(request: Request, status: int,
               headers: Sequence[Header] = ()) -> Reply:
    """A short text answer with @status (and @headers)."""
    text = f'{status} {_phrase(status)}\n'.encode()
    return Reply(status, [*headers, ('Content-Type', 'text/plain'),
                          ('Content-Length', str(len(text)))],
                 b'' if request.method == 'HEAD' else text)


def file_reply(versions: Versions, name: str, request: Request,
               span: Optional[Span]) -> Reply:
    """The correct answer with version @name's bytes: @span of them with
    206, or all of them with 200 if @span is None."""
    version = versions[name]
    size = len(version.data)
    headers: List[Header] = [('Accept-Ranges', 'bytes'),
                             *version.validators(versions.mode),
                             ('Content-Type', 'application/octet-stream')]
    if span is None:
        status, body = 200, version.data
    else:
        status, body = 206, version.data[span[0]:span[1] + 1]
        headers.append(('Content-Range', f'bytes {span[0]}-{span[1]}/{size}'))
    headers.append(('Content-Length', str(len(body))))
    if request.method == 'HEAD':
        return Reply(status, headers, span=span)
    return Reply(status, headers, body, data=name, span=span)


def correct_reply(versions: Versions, request: Request,
                  refuse_head: bool = False) -> Reply:
    """The answer RFC 9110 asks for: the file at IMAGE_PATH (with any
    query), GET and HEAD (unless @refuse_head, as presigned object store
    URLs do), single byte ranges, If-Range; 404 elsewhere, and the two
    loop paths redirecting to each other."""
    if request.path in LOOP_PATHS:
        other = LOOP_PATHS[1 - LOOP_PATHS.index(request.path)]
        return text_reply(request, 302, [('Location', other)])
    if request.path != IMAGE_PATH:
        return text_reply(request, 404)
    if request.method not in ('GET', 'HEAD') or \
            (request.method == 'HEAD' and refuse_head):
        return text_reply(request, 405, [
            ('Allow', 'GET' if refuse_head else 'GET, HEAD')])
    if_range = request.headers.get('if-range')
    try:
        span = parse_range(request.range, versions.size)
    except Unsatisfiable:
        if if_range is None or versions.if_range_matches(if_range):
            return text_reply(request, 416, [
                ('Content-Range', f'bytes */{versions.size}')])
        span = None
    if if_range is not None and not versions.if_range_matches(if_range):
        span = None
    return file_reply(versions, 'A', request, span)


# ---------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Context:
    """What a mutation works from: the request, its correct answer, and
    the random generator of this answer."""

    versions: Versions
    request: Request
    answer: Reply
    rng: random.Random

    def render(self, name: str, span: Optional[Span]) -> Reply:
        """The correct answer with version @name's bytes of @span."""
        return file_reply(self.versions, name, self.request, span)

    @property
    def size(self) -> int:
        """The size of the file."""
        return self.versions.size


MutationFn = Callable[[Context], Optional[Reply]]

#: Which answers a mutation applies to
SCOPES: Dict[str, Callable[[Context], bool]] = {
    # Every answer for the file
    'any': lambda ctx: True,
    # Answers that carry bytes of the file, the probe's included
    'body': lambda ctx: ctx.answer.data != '-',
    # 206 answers, the probe's included
    'range': lambda ctx: ctx.answer.data != '-' and ctx.answer.status == 206,
    # Answers that carry bytes of the file, except the probe's: their
    # validators and their size claim may change
    'data': lambda ctx: ctx.answer.data != '-' and not ctx.request.probe,
}


@dataclasses.dataclass(frozen=True)
class Mutation:
    """A named way of spoiling an answer."""

    kind: str
    scope: str                  # a key of SCOPES
    apply: MutationFn           # None when it does not apply after all
    weight: float = 1.0         # relative to the others


# -- statuses

RETRY_AFTERS = ('0', '1', 'soon', '-1', 'Thu, 01 Jan 1970 00:00:00 GMT')


def _status(codes: Sequence[int], keep: bool,
            retry_after: bool = False) -> MutationFn:
    """Answer with one of @codes: with the answer's headers and body if
    @keep, else as a short text; with a Retry-After if @retry_after."""
    def apply(ctx: Context) -> Reply:
        code = ctx.rng.choice(codes)
        reply = (ctx.answer.copy(status=code) if keep
                 else text_reply(ctx.request, code))
        if retry_after:
            reply.headers.append(('Retry-After',
                                  ctx.rng.choice(RETRY_AFTERS)))
        return reply
    return apply


def _whole_file(name: str) -> MutationFn:
    """A range asked for, version @name's whole file sent with 200."""
    def apply(ctx: Context) -> Optional[Reply]:
        if ctx.answer.span is None:
            return None
        return ctx.render(name, None)
    return apply


# -- Content-Range

#: The values of Content-Range headers, made of (rng, first, last, size):
#: the span asked for and the size of the file
RangeValues = Callable[[random.Random, int, int, int], List[str]]


def _content_range(values: RangeValues) -> MutationFn:
    """Replace the Content-Range header by @values, one header each; the
    body stays."""
    def apply(ctx: Context) -> Reply:
        assert ctx.answer.span is not None
        reply = ctx.answer.copy()
        reply.set_header('Content-Range',
                         values(ctx.rng, *ctx.answer.span, ctx.size))
        return reply
    return apply


def _other_span(ctx: Context) -> Optional[Span]:
    """A span of the file as long as the one asked for, elsewhere."""
    assert ctx.answer.span is not None
    first, last = ctx.answer.span
    room = ctx.size - (last - first + 1)
    if room == 0:
        return None
    moved = ctx.rng.randrange(room)
    moved += moved >= first
    return moved, moved + last - first


def _shifted(ctx: Context) -> Optional[Reply]:
    """Another span of the file than asked for, correctly labelled."""
    span = _other_span(ctx)
    return None if span is None else ctx.render('A', span)


def _shorter(ctx: Context) -> Optional[Reply]:
    """A shorter span than asked for, from the same first byte."""
    assert ctx.answer.span is not None
    first, last = ctx.answer.span
    if first == last:
        return None
    return ctx.render('A', (first, ctx.rng.randrange(first, last)))


def _duplicated_range(ctx: Context) -> Optional[Reply]:
    """Two Content-Range headers, the asked span and another; the body is
    the bytes of one of them."""
    asked, other = ctx.answer.span, _other_span(ctx)
    if asked is None or other is None:
        return None
    spans = [asked, other]
    ctx.rng.shuffle(spans)
    sent = ctx.rng.choice(spans)
    reply = ctx.render('A', sent)
    reply.set_header('Content-Range', [f'bytes {first}-{last}/{ctx.size}'
                                       for first, last in spans])
    reply.detail = f'body of bytes {sent[0]}-{sent[1]}'
    return reply


def _other_size(ctx: Context) -> Optional[Reply]:
    """The asked span of version C, the file of another size."""
    return None if ctx.answer.span is None else ctx.render('C',
                                                           ctx.answer.span)


# -- Content-Length and the length of the body

#: The values of Content-Length headers, made of (rng, the right length)
LengthValues = Callable[[random.Random, int], List[str]]


def _content_length(values: LengthValues) -> MutationFn:
    """Replace the Content-Length header by @values."""
    def apply(ctx: Context) -> Reply:
        reply = ctx.answer.copy()
        length = int(reply.values('Content-Length')[0])
        reply.set_header('Content-Length', values(ctx.rng, length))
        return reply
    return apply


def _no_length(ctx: Context) -> Reply:
    """No Content-Length: the body ends when the connection closes."""
    reply = ctx.answer.copy(ending='close')
    reply.set_header('Content-Length', [])
    return reply


def _spaced(rng: random.Random, length: int) -> List[str]:
    """The length with a space among (or before) its digits."""
    digits = str(length)
    where = rng.randrange(1, len(digits)) if len(digits) > 1 else 0
    return [f'{digits[:where]} {digits[where:]}']


def _two_lengths(rng: random.Random, length: int) -> List[str]:
    """The length, and another one, in random order."""
    delta = rng.randrange(1, 5000)
    other = length - delta if length > delta and rng.random() < 0.5 \
        else length + delta
    values = [str(length), str(other)]
    rng.shuffle(values)
    return values


def _longer(ctx: Context) -> Reply:
    """Content-Length and the body a few bytes longer than asked for."""
    reply = ctx.answer.copy()
    extra = ctx.rng.choice((1, 17, 4096))
    reply.body += ctx.rng.randbytes(extra)
    reply.set_header('Content-Length', [str(len(reply.body))])
    return reply


def _overrun(ctx: Context) -> Reply:
    """More bytes after the body than Content-Length says: they look like
    the start of the next answer on the connection."""
    garbage = ctx.rng.choice((b'HTTP/1.1 200 OK\r\n', b'\0' * 100,
                              ctx.rng.randbytes(512)))
    return ctx.answer.copy(body=ctx.answer.body + garbage)


def _disconnect(where: str, ending: str) -> MutationFn:
    """End the connection (@ending: close or reset) @where: before the
    head, in the head, in the body."""
    def apply(ctx: Context) -> Reply:
        head = ctx.answer.body_start()
        if where == 'before-head':
            cut = 0
        elif where == 'in-head':
            cut = ctx.rng.randrange(1, head)
        else:
            cut = head + ctx.rng.randrange(len(ctx.answer.body))
        return ctx.answer.copy(cut=cut, ending=ending, detail=f'at {cut}')
    return apply


def _stall(ctx: Context) -> Reply:
    """Send nothing for STALL_SECONDS somewhere in the answer."""
    cut = ctx.rng.randrange(len(ctx.answer.wire()))
    return ctx.answer.copy(cut=cut, ending='stall', detail=f'at {cut}')


def _trickle(ctx: Context) -> Reply:
    """Send the first few hundred bytes one at a time."""
    count = ctx.rng.randrange(200, 400)
    return ctx.answer.copy(trickle=count, detail=f'{count} bytes')


# -- encodings and framing

def _encoded(codings: Sequence[str], compress: bool = False) -> MutationFn:
    """A Content-Encoding header, one of @codings; the body gzipped if
    @compress, else as it was."""
    def apply(ctx: Context) -> Reply:
        reply = ctx.answer.copy()
        if compress:
            reply.body = gzip.compress(reply.body, compresslevel=1, mtime=0)
            reply.set_header('Content-Length', [str(len(reply.body))])
        reply.headers.append(('Content-Encoding', ctx.rng.choice(codings)))
        return reply
    return apply


#: The smallest chunk of a chunked body, but for a shorter body
MIN_CHUNK = 16


def _chunked(size_error: int = 0, extensions: bool = False,
             final: bool = True, with_length: bool = False) -> MutationFn:
    """Transfer-Encoding: chunked, in chunks of random sizes.  Every chunk
    size line says k bytes more (@size_error 1) or fewer (-1) than the
    chunk holds, the same random k < MIN_CHUNK for all; chunk extensions
    if @extensions; the last chunk unless not @final; Content-Length kept
    if @with_length."""
    def apply(ctx: Context) -> Optional[Reply]:
        reply = ctx.answer.copy()
        body = reply.body
        sizes: List[int] = []
        rest = len(body)
        while rest:
            count = ctx.rng.randrange(min(MIN_CHUNK, rest),
                                      min(rest, 256 * 1024) + 1)
            if rest - count < MIN_CHUNK:
                count = rest    # (no chunk shorter than MIN_CHUNK is left)
            sizes.append(count)
            rest -= count
        error = size_error * ctx.rng.randrange(1, MIN_CHUNK)
        if min(sizes) + error < 1:
            return None
        ext = ';fuzz=1;x' if extensions else ''
        chunks = []
        start = 0
        for count in sizes:
            chunks += [f'{count + error:x}{ext}\r\n'.encode(),
                       body[start:start + count], b'\r\n']
            start += count
        if final:
            chunks.append(f'0{ext}\r\n\r\n'.encode())
        reply.body = b''.join(chunks)
        if not with_length:
            reply.set_header('Content-Length', [])
        reply.headers.append(('Transfer-Encoding', 'chunked'))
        if error or not final:
            reply.ending = 'close'
        reply.detail = f'size error {error:+d}' if error else ''
        return reply
    return apply


def _interim(misleading: bool) -> MutationFn:
    """One to three 1xx answers before the answer; if @misleading, one
    103 whose headers name another range, version and length."""
    def apply(ctx: Context) -> Reply:
        answers: List[Reply] = []
        if misleading:
            span = ctx.answer.span or (0, 0)
            answers.append(Reply(103, [
                ('Content-Range',
                 f'bytes {span[0] + 1}-{span[1] + 1}/{ctx.size}'),
                ('ETag', ctx.versions.b.etag),
                ('Last-Modified', ctx.versions.b.last_modified),
                ('Content-Length', '0')]))
        else:
            for _ in range(ctx.rng.randrange(1, 4)):
                answers.append(ctx.rng.choice((
                    Reply(100, []), Reply(102, []),
                    Reply(103, [('Link', '</x>; rel=preload')]))))
        return ctx.answer.copy(interim=b''.join(a.head() for a in answers),
                               detail=' '.join(str(a.status)
                                               for a in answers))
    return apply


def _http10(ctx: Context) -> Reply:
    """An HTTP/1.0 answer whose body ends when the connection closes."""
    reply = ctx.answer.copy(protocol='HTTP/1.0', ending='close')
    if ctx.request.method == 'GET':
        reply.set_header('Content-Length', [])
    return reply


def _redirect(where: str) -> MutationFn:
    """Redirect, with a random 3xx, to the file (@where 'same', under
    another query string), a path that does not exist ('missing') or the
    first of two paths that redirect to each other ('loop')."""
    def apply(ctx: Context) -> Reply:
        if where == 'same':
            path = f'{IMAGE_PATH}?fuzz={ctx.rng.randrange(10**6)}'
        elif where == 'missing':
            path = f'/missing-{ctx.rng.randrange(10**6)}'
        else:
            path = LOOP_PATHS[0]
        host = ctx.request.headers.get('host')
        location = (f'http://{host}{path}' if host and ctx.rng.random() < 0.5
                    else path)
        code = ctx.rng.choice((301, 302, 307, 308))
        reply = text_reply(ctx.request, code, [('Location', location)])
        reply.detail = f'to {path}'
        return reply
    return apply


# -- odd header lines

def _with_header(make: Callable[[random.Random], List[Header]]
                 ) -> MutationFn:
    """Insert the header lines @make(rng) at a random place."""
    def apply(ctx: Context) -> Reply:
        reply = ctx.answer.copy()
        where = ctx.rng.randrange(len(reply.headers) + 1)
        reply.headers[where:where] = make(ctx.rng)
        return reply
    return apply


def _odd_case(ctx: Context) -> Reply:
    """Header names in random case."""
    reply = ctx.answer.copy()
    reply.headers = [(''.join(c.upper() if ctx.rng.random() < 0.5
                              else c.lower() for c in n), v)
                     for n, v in reply.headers]
    return reply


def _reworded(change: Callable[[random.Random, str], str],
              validators: bool) -> MutationFn:
    """Reword the value of one random header with @change(rng, value);
    a validator too only if @validators."""
    def apply(ctx: Context) -> Reply:
        reply = ctx.answer.copy()
        candidates = [i for i, (n, v) in enumerate(reply.headers)
                      if v and (validators or n.lower() not in
                                ('etag', 'last-modified'))]
        where = ctx.rng.choice(candidates)
        name, value = reply.headers[where]
        reply.headers[where] = (name, change(ctx.rng, value or ''))
        reply.detail = name
        return reply
    return apply


def _with_nul(rng: random.Random, value: str) -> str:
    """@value with a NUL byte somewhere."""
    where = rng.randrange(len(value) + 1)
    return value[:where] + '\0' + value[where:]


# -- validators

HeaderChange = Callable[[Context, Reply], bool]


def _validators(change: HeaderChange) -> MutationFn:
    """Change the validator headers with @change(ctx, reply) (False: it
    does not apply); if the answer no longer carries exactly the validator
    a client pins at open, it carries version B's bytes."""
    def apply(ctx: Context) -> Optional[Reply]:
        reply = ctx.answer.copy()
        if not change(ctx, reply):
            return None
        pinned = ctx.versions.pinned()
        if pinned is not None and not carries(reply.headers, pinned):
            reply.body = ctx.render('B', reply.span).body
            reply.data = 'B'
        return reply
    return apply


def _other_etag(ctx: Context, reply: Reply) -> bool:
    """Another ETag, weak if it was: B's, or C's weak one."""
    weak = any(v.startswith('W/') for v in reply.values('ETag'))
    reply.set_header('ETag', [ctx.versions.c.weak_etag if weak
                              else ctx.versions.b.etag])
    return True


def _removed(*names: str) -> HeaderChange:
    """No header @names, if there was one."""
    def change(_ctx: Context, reply: Reply) -> bool:
        if not any(reply.values(name) for name in names):
            return False
        for name in names:
            reply.set_header(name, [])
        return True
    return change


def _weakened(_ctx: Context, reply: Reply) -> bool:
    """The strong ETag made weak, if there is one."""
    etags = reply.values('ETag')
    if not etags or etags[0].startswith('W/'):
        return False
    reply.set_header('ETag', ['W/' + etags[0]])
    return True


def _two_etags(ctx: Context, reply: Reply) -> bool:
    """Two different ETags, the answer's (if any) and B's (or C's)."""
    etags = [*reply.values('ETag'), ctx.versions.b.etag, ctx.versions.c.etag]
    pair = etags[:2]
    ctx.rng.shuffle(pair)
    reply.set_header('ETag', pair)
    return True


def _other_date(ctx: Context, reply: Reply) -> bool:
    """B's Last-Modified."""
    reply.set_header('Last-Modified', [ctx.versions.b.last_modified])
    return True


def _added(ctx: Context, reply: Reply) -> bool:
    """B's strong ETag and Last-Modified, where there were none."""
    added = False
    for name, value in ctx.versions.b.validators('strong'):
        if not reply.values(name):
            reply.headers.append((name, value))
            added = True
    return added


def _overlong(length: int) -> HeaderChange:
    """The pinned validator (an ETag if none) made @length characters
    long, or one longer if it is that long already: what it says stays a
    prefix of what it becomes."""
    def change(ctx: Context, reply: Reply) -> bool:
        pinned = ctx.versions.pinned()
        name, value = pinned or ('ETag', ctx.versions.a.etag)
        pad = 'x' * max(length - len(value), 1)
        if value.endswith('"'):
            value = value[:-1] + pad + '"'
        else:
            value = value + ' ' + pad
        reply.set_header(name, [value])
        return True
    return change


def _catalogue() -> List[Mutation]:
    """Every mutation, each with its kind."""
    def cr(kind: str, values: RangeValues) -> Mutation:
        return Mutation(kind, 'range', _content_range(values))

    def cl(kind: str, values: LengthValues) -> Mutation:
        return Mutation(kind, 'any', _content_length(values))

    def validators(kind: str, change: HeaderChange) -> Mutation:
        return Mutation(kind, 'data', _validators(change))

    return [
        # statuses
        Mutation('status-2xx', 'any', _status((201, 202, 203, 204, 205),
                                              keep=True)),
        Mutation('status-3xx-no-location', 'any',
                 _status((300, 301, 302, 303, 304, 307, 308), keep=False)),
        Mutation('status-4xx', 'any', _status((400, 401, 403, 404, 405,
                                               410, 416, 429), keep=False)),
        Mutation('status-5xx', 'any', _status((500, 502, 503, 504),
                                              keep=False)),
        Mutation('status-5xx-retry-after', 'any',
                 _status((503, 429), keep=False, retry_after=True), 0.5),
        Mutation('status-odd', 'any', _status((299, 600, 999), keep=True)),
        Mutation('status-200-whole', 'body', _whole_file('A')),
        Mutation('status-200-other-size', 'data', _whole_file('C')),
        # Content-Range
        cr('cr-sign', lambda rng, first, last, size: [rng.choice((
            f'bytes +{first}-{last}/{size}', f'bytes {first}-+{last}/{size}',
            f'bytes {first}-{last}/+{size}',
            f'bytes -{first}-{last}/{size}'))]),
        cr('cr-spaces', lambda rng, first, last, size: [rng.choice((
            f'bytes {first} -{last}/{size}', f'bytes {first}- {last}/{size}',
            f'bytes {first}-{last} /{size}', f'bytes {first}-{last}/ {size}',
            f'bytes  {first}-{last}/{size}',
            f'bytes\t{first}-{last}/{size}'))]),
        cr('cr-leading-zeros', lambda rng, first, last, size: [
            f'bytes 0{first}-00{last}/000{size}']),
        cr('cr-overflow', lambda rng, first, last, size: [rng.choice((
            f'bytes {first + 2**64}-{last + 2**64}/{size}',
            f'bytes {first}-{2**64 - 1}/{size}',
            f'bytes {first}-{last}/{size + 2**64}',
            f'bytes {first}-{last}/{10**40}'))]),
        cr('cr-star', lambda rng, first, last, size: [rng.choice((
            f'bytes */{size}', f'bytes {first}-{last}/*', 'bytes */*'))]),
        cr('cr-unit', lambda rng, first, last, size: [rng.choice((
            f'items {first}-{last}/{size}', f'{first}-{last}/{size}',
            f'bytes={first}-{last}/{size}', f'BYTES {first}-{last}/{size}'))]),
        cr('cr-reversed', lambda rng, first, last, size: [
            f'bytes {last + 1}-{first}/{size}']),
        cr('cr-past-end', lambda rng, first, last, size: [rng.choice((
            f'bytes {first}-{size}/{size}',
            f'bytes {size + first}-{size + last}/{size}'))]),
        cr('cr-negative-total', lambda rng, first, last, size: [
            f'bytes {first}-{last}/-1']),
        cr('cr-huge-total', lambda rng, first, last, size: [
            f'bytes {first}-{last}/{2**63 + rng.randrange(2**63)}']),
        cr('cr-missing', lambda rng, first, last, size: []),
        cr('cr-duplicated-same', lambda rng, first, last, size: [
            f'bytes {first}-{last}/{size}'] * 2),
        Mutation('cr-duplicated-different', 'range', _duplicated_range),
        Mutation('cr-shifted', 'range', _shifted),
        Mutation('cr-shorter', 'range', _shorter),
        Mutation('cr-other-size', 'data', _other_size),
        # Content-Length, and the length of the body
        Mutation('cl-missing', 'any', _no_length),
        Mutation('cl-short', 'body', _disconnect('in-body', 'close')),
        Mutation('cl-long', 'body', _longer),
        Mutation('body-overrun', 'any', _overrun),
        cl('cl-duplicated-same', lambda rng, length: [str(length)] * 2),
        cl('cl-duplicated-different', _two_lengths),
        cl('cl-signed', lambda rng, length: [rng.choice((f'+{length}',
                                                         f'-{length}'))]),
        cl('cl-spaces', _spaced),
        # encodings and framing
        Mutation('ce-gzip', 'body', _encoded(('gzip',), compress=True)),
        Mutation('ce-br', 'body', _encoded(('br',))),
        Mutation('ce-garbage', 'body', _encoded(('x-fuzz', 'gzip, x-fuzz',
                                                 'compress', 'deflate',
                                                 ',,'))),
        Mutation('te-chunked', 'body', _chunked()),
        Mutation('te-chunk-size-more', 'body', _chunked(size_error=1)),
        Mutation('te-chunk-size-fewer', 'body', _chunked(size_error=-1)),
        Mutation('te-chunk-extensions', 'body', _chunked(extensions=True)),
        Mutation('te-no-final-chunk', 'body', _chunked(final=False)),
        Mutation('te-chunked-and-cl', 'body', _chunked(with_length=True)),
        Mutation('interim', 'any', _interim(misleading=False)),
        Mutation('interim-misleading', 'any', _interim(misleading=True)),
        Mutation('http10-close', 'any', _http10),
        # redirects
        Mutation('redirect-same', 'any', _redirect('same')),
        Mutation('redirect-missing', 'any', _redirect('missing')),
        Mutation('redirect-loop', 'any', _redirect('loop')),
        # the connection
        Mutation('close-before-head', 'any', _disconnect('before-head',
                                                         'close')),
        Mutation('close-in-head', 'any', _disconnect('in-head', 'close')),
        Mutation('reset-before-head', 'any', _disconnect('before-head',
                                                         'reset')),
        Mutation('reset-in-head', 'any', _disconnect('in-head', 'reset')),
        Mutation('reset-in-body', 'body', _disconnect('in-body', 'reset')),
        Mutation('stall', 'any', _stall, 0.2),
        Mutation('trickle', 'any', _trickle, 0.2),
        # odd header lines
        Mutation('header-10k', 'any', _with_header(
            lambda r: [('X-Fuzz-Long', 'x' * 10240)])),
        Mutation('headers-200', 'any', _with_header(
            lambda r: [(f'X-Fuzz-{i}', str(r.randrange(10**9)))
                       for i in range(200)])),
        Mutation('header-name-case', 'any', _odd_case),
        Mutation('header-obs-fold', 'any', _reworded(
            lambda r, v: '\n ' + v, validators=True)),
        Mutation('header-no-colon', 'any', _with_header(
            lambda r: [('X-Fuzz this line has no colon', None)])),
        Mutation('header-nul', 'any', _reworded(_with_nul,
                                                validators=False)),
        Mutation('bare-lf', 'any', lambda ctx: ctx.answer.copy(eol='\n')),
        # validators
        validators('etag-changed', _other_etag),
        validators('etag-removed', _removed('ETag')),
        validators('etag-weakened', _weakened),
        validators('etag-duplicated', _two_etags),
        validators('lm-changed', _other_date),
        validators('lm-removed', _removed('Last-Modified')),
        validators('validators-removed', _removed('ETag', 'Last-Modified')),
        validators('validators-added', _added),
        *(validators(f'validator-overlong-{n}', _overlong(n))
          for n in (200, 1000, 10000)),
    ]


MUTATIONS: Dict[str, Mutation] = {m.kind: m for m in _catalogue()}
#: The kind of the deliberately wrong answer of a lying server
LIE = 'lie'


# ---------------------------------------------------------------------------
# Choosing answers
# ---------------------------------------------------------------------------

class Fuzzer:  # pylint: disable=too-many-instance-attributes
    """Decides how each request is answered.

    A request is answered with a mutation with probability @rate (a
    probe: HEAD or GET bytes=0-0, with @probe_rate, by default @rate),
    chosen among @kinds (default: all) by a generator seeded with @seed,
    the method, target and Range of the request, and how many times the
    same was asked before: a run with the same seed answers the same
    requests the same way, in whatever order they come.  Only requests
    for the file are fuzzed; HEAD is refused if @refuse_head.  A @lie
    server answers the first request for bytes (not a probe) with version
    B's bytes under A's validators, which no client can detect.
    """

    def __init__(self, versions: Versions, seed: int, rate: float,
                 kinds: Optional[Sequence[str]] = None, lie: bool = False,
                 probe_rate: Optional[float] = None,
                 refuse_head: bool = False) -> None:
        # pylint: disable=too-many-arguments
        unknown = set(kinds or ()) - set(MUTATIONS)
        if unknown:
            raise ValueError(f'unknown mutation kinds: {sorted(unknown)}')
        self.versions = versions
        self.seed = seed
        self.rate = rate
        self.probe_rate = rate if probe_rate is None else probe_rate
        self.refuse_head = refuse_head
        self.mutations = [MUTATIONS[k] for k in kinds or MUTATIONS]
        self._lie = lie
        self._lock = threading.Lock()
        self._asked: Dict[Tuple[str, str, Optional[str]], int] = {}

    def rng_for(self, request: Request) -> random.Random:
        """The generator of the answer to @request."""
        key = (request.method, request.target, request.range)
        with self._lock:
            count = self._asked.get(key, 0)
            self._asked[key] = count + 1
        return random.Random(f'{self.seed}/{request.method}/'
                             f'{request.target}/{request.range}/{count}')

    def answer(self, request: Request) -> Tuple[Optional[str], Reply]:
        """The kind of mutation (None: the correct answer) and the answer
        to send to @request."""
        ctx = Context(self.versions, request,
                      correct_reply(self.versions, request, self.refuse_head),
                      self.rng_for(request))
        if request.path != IMAGE_PATH:
            return None, ctx.answer
        if self._lie and SCOPES['data'](ctx):
            with self._lock:
                lie, self._lie = self._lie, False
            if lie:
                return LIE, ctx.answer.copy(
                    body=ctx.render('B', ctx.answer.span).body, data='B')
        if ctx.rng.random() >= (self.probe_rate if request.probe
                                else self.rate):
            return None, ctx.answer
        candidates = [m for m in self.mutations if SCOPES[m.scope](ctx)]
        while candidates:
            mutation = ctx.rng.choices(
                candidates, [m.weight for m in candidates])[0]
            reply = mutation.apply(ctx)
            if reply is not None:
                return mutation.kind, reply
            candidates.remove(mutation)
        return None, ctx.answer


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Exchange:  # pylint: disable=too-many-instance-attributes
    """One request and the answer it got, as logged."""

    seq: int
    time: float                 # seconds since the server started
    connection: int
    method: str
    target: str
    range: Optional[str]
    probe: bool
    kind: Optional[str]         # the mutation; None: the correct answer
    detail: str
    data: str                   # whose bytes the body held
    span: Optional[Span]        # and which of them (None: all)
    status: int
    length: int                 # bytes of the answer
    sent: int                   # of which were sent

    def line(self) -> str:
        """The exchange in one line."""
        what = self.kind or 'correct'
        if self.detail:
            what += f' ({self.detail})'
        return (f'#{self.seq} {self.time:7.3f} c{self.connection} '
                f'{self.method} {self.target} {self.range or "-"} -> '
                f'{self.status} {what}, {self.data} bytes, sent '
                f'{self.sent}/{self.length}')


def read_request(reader: BinaryIO) -> Optional[Request]:
    """Read one request head; None at the end of the connection."""
    line = reader.readline(MAX_LINE)
    while line in (b'\r\n', b'\n'):
        line = reader.readline(MAX_LINE)
    if not line:
        return None
    parts = line.decode('latin-1').split()
    if len(parts) != 3 or not parts[2].startswith('HTTP/'):
        raise NotHttp(f'not an HTTP request: {line!r}')
    headers: Dict[str, str] = {}
    while True:
        line = reader.readline(MAX_LINE)
        if line in (b'', b'\r\n', b'\n'):
            break
        name, _, value = line.decode('latin-1').partition(':')
        headers[name.strip().lower()] = value.strip()
    return Request(parts[0], parts[1], headers)


class FuzzServer:  # pylint: disable=too-many-instance-attributes
    """The fuzzing server: one thread per connection, on 127.0.0.1.

    @on_exchange, if given, is called with each Exchange as it is logged.
    A failure of the server itself (not of a connection) ends the
    connection, and its traceback is kept in ``errors``.
    """

    def __init__(self, fuzzer: Fuzzer,
                 on_exchange: Optional[Callable[[Exchange], None]] = None
                 ) -> None:
        self.fuzzer = fuzzer
        self.on_exchange = on_exchange
        self.port = 0
        self.errors: List[str] = []
        self._listener: Optional[socket.socket] = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._log: List[Exchange] = []
        self._connections: Set[socket.socket] = set()
        self._threads: List[threading.Thread] = []
        self._started = 0.0

    def __enter__(self) -> 'FuzzServer':
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The URL of the file."""
        return f'http://{HOST}:{self.port}{IMAGE_PATH}'

    def start(self) -> None:
        """Listen on a free port, and serve in threads."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((HOST, 0))
        # The driver opens up to 16 connections at once
        listener.listen(128)
        listener.settimeout(0.1)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._started = time.monotonic()
        self._spawn(self._accept_loop)

    def stop(self) -> None:
        """Close every connection, and wait for the threads to end."""
        self._stopping.set()
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
        if self._listener is not None:
            self._listener.close()

    def log(self) -> List[Exchange]:
        """The exchanges so far, in the order they were answered."""
        with self._lock:
            return list(self._log)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        """Run @target(@args) in a thread of the server."""
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        number = 0
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            number += 1
            conn.settimeout(IDLE_TIMEOUT)
            with self._lock:
                self._connections.add(conn)
            self._spawn(self._serve, conn, number)

    def _serve(self, conn: socket.socket, number: int) -> None:
        """Answer the requests of one connection until it ends."""
        reader = conn.makefile('rb')
        ending = 'close'
        try:
            while not self._stopping.is_set():
                request = read_request(reader)
                if request is None:
                    break
                kind, reply = self.fuzzer.answer(request)
                wire = reply.wire()
                sent = self._send(conn, wire, reply)
                self._record(number, request, kind, reply, len(wire), sent)
                ending = reply.ending
                if ending != 'keep' or sent < len(wire) or \
                        'close' in request.headers.get('connection', ''):
                    break
        except (OSError, NotHttp):
            pass
        except Exception:  # pylint: disable=broad-except
            with self._lock:
                self.errors.append(traceback.format_exc())
        finally:
            self._end(conn, reader, ending)

    def _record(self, number: int, request: Request, kind: Optional[str],
                reply: Reply, length: int, sent: int) -> None:
        """Log the answer to @request on connection @number: @sent of the
        @length bytes of @reply, mutated by @kind."""
        # pylint: disable=too-many-arguments
        with self._lock:
            exchange = Exchange(
                len(self._log) + 1, time.monotonic() - self._started, number,
                request.method, request.target, request.range, request.probe,
                kind, reply.detail, reply.data, reply.span, reply.status,
                length, sent)
            self._log.append(exchange)
        if self.on_exchange is not None:
            self.on_exchange(exchange)

    def _send(self, conn: socket.socket, wire: bytes, reply: Reply) -> int:
        """Send the bytes @wire of @reply, up to its cut, trickling first;
        return how many were sent."""
        end = len(wire) if reply.cut is None else reply.cut
        sent = 0
        try:
            while sent < min(reply.trickle, end):
                conn.sendall(wire[sent:sent + 1])
                sent += 1
                if self._stopping.wait(TRICKLE_INTERVAL):
                    return sent
            conn.sendall(wire[sent:end])
            return end
        except OSError:
            return sent

    def _end(self, conn: socket.socket, reader: BinaryIO,
             ending: str) -> None:
        """End the connection: after STALL_SECONDS for a stall, with a TCP
        RST for a reset (once the client has what was sent), else with a
        FIN."""
        if ending == 'stall':
            self._stopping.wait(STALL_SECONDS)
        elif ending == 'reset':
            deadline = time.monotonic() + RESET_ACK_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    # Linux: bytes sent but not acknowledged yet
                    unacked = struct.unpack('i', fcntl.ioctl(
                        conn.fileno(), termios.TIOCOUTQ, b'\0' * 4))[0]
                except OSError:
                    break
                if unacked == 0 or self._stopping.wait(0.001):
                    break
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            struct.pack('ii', 1, 0))
        with self._lock:
            self._connections.discard(conn)
        reader.close()
        conn.close()


def main(argv: Optional[List[str]] = None) -> int:
    """Serve a file until interrupted, printing each exchange."""
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('file', type=Path, help='the file to serve (A)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--rate', type=float, default=0.2,
                        help='share of answers mutated (default: 0.2)')
    parser.add_argument('--mode', choices=MODES, default='strong',
                        help='the validators answers carry')
    parser.add_argument('--etag-length', type=int, default=0,
                        help='length of the strong ETags (0: short)')
    parser.add_argument('--kinds', default='',
                        help='only these mutations, comma-separated')
    parser.add_argument('--probe-rate', type=float,
                        help='share of probe answers mutated (default: '
                             'the rate)')
    parser.add_argument('--refuse-head', action='store_true',
                        help='answer HEAD with 405')
    parser.add_argument('--lie', action='store_true',
                        help='send B bytes with A validators once')
    args = parser.parse_args(argv)
    versions = Versions.make(args.file.read_bytes(), args.mode, args.seed,
                             args.etag_length)
    fuzzer = Fuzzer(versions, args.seed, args.rate,
                    [k for k in args.kinds.split(',') if k], args.lie,
                    args.probe_rate, args.refuse_head)
    with FuzzServer(fuzzer, lambda e: print(e.line(), flush=True)) as server:
        print(f'serving {args.file} at {server.url}', flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
