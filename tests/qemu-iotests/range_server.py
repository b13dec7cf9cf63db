#!/usr/bin/env python3
#
# HTTP(S) server with byte-range support and fault injection
#
# Copyright (C) 2026 The QEMU curl series authors
#
# SPDX-License-Identifier: GPL-2.0-or-later
"""A small HTTP/1.1 file server for testing QEMU's curl block driver.

It serves the files of one directory with correct single byte-range
support (RFC 9110), records every request it answers, and can be told
to misbehave (error codes, truncated or stalled bodies, wrong ranges,
redirects, ...) through a control interface under /_control/.  Run it
as a script, or use the RangeServer class to run it as a subprocess.
"""

import argparse
import contextlib
import dataclasses
import email.utils
import fcntl
import gzip
import http.client
import http.server
import itertools
import json
import os
import re
import shutil
import socket
import ssl
import stat
import string
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.parse
from http import HTTPStatus
from typing import (Any, Dict, Iterable, List, Optional, Set, TextIO,
                    Tuple, Union)

CONTROL_PREFIX = '/_control/'
CHUNK_SIZE = 64 * 1024
LENGTH_MISMATCH_EXTRA = 4096

LONG_EXTRA = 4096
TRICKLE_INTERVAL = 0.01
# How long a 'reset' waits for the client to acknowledge what was sent
RESET_ACK_TIMEOUT = 5.0
# Default data bytes per chunk of "chunked" and "bad-chunks" answers
CHUNKED_BYTES = 4096
# Default excess that "bad-chunks" claims for each chunk
BAD_CHUNKS_EXTRA = 3

# Actions whose effect is on a response body: unless a rule names a
# method, they apply to GET only, so that a HEAD does not use them up.
BODY_ACTIONS = ('short', 'stall', 'wrong-range', 'reset', 'trickle', 'long',
                'gzip', 'chunked', 'bad-chunks')

# Actions that only change the headers of a file answer, once it has been
# worked out (If-Range included): the fixed changes of each, as
# "header" rules would make them (see FaultRule.header_changes())
HEADER_PRESETS: Dict[str, Tuple[Tuple[str, Optional[str]], ...]] = {
    'strip-validators': (('ETag', None), ('Last-Modified', None)),
    'weak-etag': (('ETag', 'W/"fixed"'),),
}

# Actions after which the rules that follow decide how to answer
PASS_ON_ACTIONS = ('delay', 'no-etag', 'header', *HEADER_PRESETS)

ACTIONS = ('status', 'no-head', 'ignore-range', 'ignore-if-range',
           'no-accept-ranges', 'wrong-range', 'short', 'close', 'stall',
           'delay', 'redirect', 'length-mismatch', 'reset', 'trickle',
           'long', 'gzip', 'no-etag', 'header', 'strip-validators',
           'weak-etag', 'chunked', 'bad-chunks')

# Members of a rule that only one action takes, and that action
OWN_MEMBERS = {'retry-after': 'status', 'name': 'header', 'value': 'header',
               'extra': 'bad-chunks'}

# Headers whose change leaves the body framed otherwise than the answer
# says: the connection closes after such an answer, so that what the
# client misreads of one cannot spill into the next
FRAMING_HEADERS = ('content-length', 'transfer-encoding')

_RANGE_RE = re.compile(r'bytes\s*=\s*(\d*)\s*-\s*(\d*)', re.IGNORECASE)
# RFC 9110 field-name
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

# A "header" rule's value: sent once, several times (a list), or removed
HeaderValue = Union[None, str, List[str]]

# What the $placeholders of a "header" value stand for (see FaultRule)
ANSWER_FIELDS = ('first', 'last', 'next', 'length', 'size', 'version')


_RULE_IDS = itertools.count(1)


def wrong_range_start(start: int, length: int, size: int,
                      shift: int) -> int:
    """Where a "wrong-range" answer to a range of @length bytes from
    @start starts instead, in a file of @size bytes: @shift bytes later,
    or earlier if later does not fit (each kept inside the file); @start
    only if @length is @size."""
    for moved in (start + shift, start - shift):
        moved = min(max(moved, 0), size - length)
        if moved != start:
            return moved
    return start


class UnsatisfiableRange(Exception):
    """A syntactically valid Range that selects no byte of the file."""


def parse_range(value: str, size: int) -> Optional[Tuple[int, int]]:
    """Parse a Range header value for a file of @size bytes.

    Return the selected (first, last) byte positions, inclusive, or None
    if the header must be ignored (it is invalid, uses another unit or
    asks for several ranges): the whole file is then sent with 200.
    Raise UnsatisfiableRange if a 416 answer is due.
    """
    match = _RANGE_RE.fullmatch(value.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None
        if start >= size:
            raise UnsatisfiableRange()
        return start, min(end, size - 1)
    if not last:
        return None
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise UnsatisfiableRange()
    return max(size - suffix, 0), size - 1


def range_first(value: Optional[str]) -> int:
    """The first byte a Range header value asks for, as far as fault rules
    are concerned: 0 without a header, or for one that does not start
    with a byte position."""
    match = _RANGE_RE.fullmatch((value or '').strip())
    return int(match.group(1)) if match and match.group(1) else 0


def range_end(value: Optional[str]) -> Optional[int]:
    """The last byte a Range header value asks for, as far as "per-range"
    fault rules are concerned: None (the end of the file) without a
    header, or for one that does not end with a byte position."""
    match = _RANGE_RE.fullmatch((value or '').strip())
    if match and match.group(1) and match.group(2):
        return int(match.group(2))
    return None


def _json_int(obj: Dict[str, Any], key: str, default: Optional[int],
              minimum: Optional[int] = None) -> Optional[int]:
    """Fetch an optional integer member of a JSON fault rule."""
    value = obj.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'"{key}" must be an integer')
    if minimum is not None and value < minimum:
        raise ValueError(f'"{key}" must be at least {minimum}')
    return value


def _json_header_change(obj: Dict[str, Any]) -> Tuple[str, HeaderValue]:
    """Fetch the required "name" and "value" members of a JSON "header"
    rule."""
    name = obj.get('name')
    if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name):
        raise ValueError('"header" needs a "name" that is a header field '
                         'name')
    if 'value' not in obj:
        raise ValueError('"header" needs a "value": a string, a list of '
                         'strings or null')
    value: HeaderValue = obj['value']
    values = [value] if isinstance(value, str) else value
    if values is not None and (not isinstance(values, list) or not values or
                               not all(isinstance(v, str) and
                                       '\r' not in v and '\n' not in v
                                       for v in values)):
        raise ValueError('"header" "value" must be a string, a non-empty '
                         'list of strings or null, without line breaks')
    for template in values or ():
        try:
            string.Template(template).substitute(
                dict.fromkeys(ANSWER_FIELDS, 0))
        except (KeyError, ValueError) as err:
            raise ValueError(f'"header" "value" {template!r}: the '
                             f'placeholders are ${", $".join(ANSWER_FIELDS)} '
                             f'(and $$ is $)') from err
    return name, value


def change_headers(headers: Dict[str, str],
                   changes: Iterable[Tuple[str, HeaderValue]],
                   answer: Dict[str, Any]) -> List[Tuple[str, str]]:
    """@headers with @changes made in turn, as a list of header lines.

    Each change (name, value) replaces all the headers of that name (in
    any case) where the first of them was, or adds it at the end; a value
    None removes them, a list sends the header once for each item.  The
    $placeholders of the values are filled in from @answer, which has
    each of ANSWER_FIELDS.
    """
    fields = {name.lower(): [(name, value)]
              for name, value in headers.items()}
    for name, value in changes:
        if value is None:
            fields.pop(name.lower(), None)
        else:
            values = [value] if isinstance(value, str) else value
            fields[name.lower()] = [
                (name, string.Template(v).substitute(answer))
                for v in values]
    return [field for group in fields.values() for field in group]


def answer_fields(start: int, length: int, size: int,
                  version: str) -> Dict[str, Any]:
    """The values of ANSWER_FIELDS for an answer that carries @length
    bytes from @start of a file of @size bytes known as @version."""
    return {'first': start, 'last': start + length - 1,
            'next': start + length, 'length': length, 'size': size,
            'version': version}


@dataclasses.dataclass
class RuleCount:
    """What a "per-range" fault rule still has to do for one range."""

    skip: int
    times: Optional[int]
    seen: int = 0


@dataclasses.dataclass
class FaultRule:  # pylint: disable=too-many-instance-attributes
    """One fault injection rule, as set through POST /_control/faults.

    In JSON, a rule is an object with these members:

    action     what to do, see below (required)
    path       apply only to this URL path (exact match after decoding)
    method     apply only to "GET" or "HEAD".  By default both, except
               that no-head applies to HEAD only, and the actions on a
               body (short, stall, wrong-range, reset, trickle, long,
               gzip, chunked and bad-chunks) to GET only
    from       apply only to requests whose Range starts at or past this
               byte (a request without one starts at byte 0)
    skip       first let this many matching requests through (default 0)
    every      then apply to one matching request in this many, the last
               one of each run (default 1: to every one), and let the
               others through
    times      apply to this many requests in all (default: no limit)
    per-range  if true, count "skip", "every" and "times" on their own
               for each range end asked for (the last byte of the
               Range; none for a request without one, or an open-ended
               one): a request for the rest of a range that was cut short
               counts as the same range, so with "times" 1 each range
               fails once, however it is asked for again

    The actions, with their own members:

    status            answer with error "code" (400 to 599), with a
                      Retry-After header if "retry-after" (seconds, or
                      an HTTP date) is given
    no-head           answer HEAD with 405 Method Not Allowed
    ignore-range      answer 200 with the whole file, no Accept-Ranges
    ignore-if-range   serve the range asked for even when If-Range does
                      not match, as a cache in front of a server that
                      was not told about a new file would
    no-accept-ranges  answer normally but without Accept-Ranges
    wrong-range       send the range asked for moved by "shift" bytes
                      (default 1), or back by as many when that would
                      pass the end of the file, kept inside the file; a
                      request without a valid range, or for all of the
                      file, is answered normally (and not logged as hit)
    short             send only the first "bytes" body bytes, then close
                      the connection
    reset             send only the first "bytes" (default 0) body bytes,
                      wait until the client has acknowledged them (5 s at
                      most), then reset the connection (TCP RST)
    close             close the connection without answering
    stall             send the first "bytes" (default 0) body bytes, wait
                      "seconds", then send the rest
    trickle           send the first "bytes" body bytes one at a time,
                      "seconds" (default 0.01) apart, then the rest
    long              send "bytes" (default 4096) more body bytes than
                      asked for, counted in Content-Length: those that
                      follow in the file, zeroes past its end
    gzip              answer with the body compressed by gzip and
                      Content-Encoding: gzip (Content-Range and the rest
                      unchanged; a HEAD only gets the header)
    delay             wait "seconds", then answer as the rules after
                      this one say (normally if none matches)
    no-etag           answer without an ETag header, as the rules after
                      this one say (normally if none matches); the file is
                      then known by its Last-Modified date only
    header            set header "name" of the answer to "value": a
                      string, a list of strings (the header is sent once
                      with each), or null (the header is removed); then
                      answer as the rules after this one say.  The change
                      is made to the file answer (200, 206 or 416) that
                      the server worked out, If-Range included, and only
                      to its headers: a changed Content-Range or
                      Content-Length leaves the body as it was.  After a
                      change of Content-Length or Transfer-Encoding, the
                      connection closes.  Several changes are made in the
                      order of their rules.  In a value, $first and $last
                      are the first and last byte of the range that the
                      answer carries (0 and the size - 1 for a 200, 0 and
                      -1 for a 416), $next is $last + 1, $length the
                      number of bytes of the range, $size the size of the
                      file as Content-Range gives it, $version what the
                      file's own ETag holds between its quotes (so that a
                      tag made with it changes with the file), and $$ is
                      a $; write ${name} where a letter, a digit or _
                      follows
    strip-validators  answer without ETag and Last-Modified, as a cache
                      that drops them would (If-Range is still checked
                      against them), as the rules after this one say
    weak-etag         answer with ETag: W/"fixed", the same weak tag for
                      every version of the file (If-Range is still checked
                      against the real validators, and Last-Modified still
                      changes with the file), as the rules after this one
                      say
    chunked           send the body with Transfer-Encoding: chunked and
                      without Content-Length, in chunks of "bytes"
                      (default 4096) bytes
    bad-chunks        like chunked, but each chunk-size line says "extra"
                      (default 3) bytes more than its chunk holds; the
                      connection closes after the body
    redirect          redirect to "location" with "code" (default 302);
                      never applies to a request for the target's path
    length-mismatch   report a size 4096 bytes too large in Content-Range
                      and in the Content-Length of a HEAD

    The first rule that matches a request decides alone: it either lets
    the request through (while skipping, or between two "every"), or
    applies to it.  Only after a delay, a no-etag, a header, a
    strip-validators or a weak-etag do the rules that follow it have
    their say as well.  POST /_control/release ends the
    waits of delays and stalls in progress at once.
    """

    action: str
    path: Optional[str] = None
    method: Optional[str] = None
    first: int = 0
    skip: int = 0
    times: Optional[int] = None
    code: int = 0
    shift: int = 1
    nbytes: int = 0
    seconds: float = 0.0
    location: str = ''
    retry_after: Optional[str] = None
    every: int = 1
    per_range: bool = False
    header_name: str = ''
    header_value: HeaderValue = None
    extra: int = 0
    hits: int = 0
    # Matching requests counted towards "every" (per range: in counts)
    seen: int = 0
    # For per-range rules: the "skip", "times" and seen of each range end
    counts: Dict[Optional[int], 'RuleCount'] = dataclasses.field(
        default_factory=dict)
    rule_id: int = dataclasses.field(default_factory=lambda: next(_RULE_IDS))

    @classmethod
    def from_json(cls, obj: Any) -> 'FaultRule':
        """Build a rule from its JSON form, raising ValueError if bad."""
        if not isinstance(obj, dict):
            raise ValueError('a fault rule must be a JSON object')
        known = {'action', 'path', 'method', 'from', 'skip', 'times', 'code',
                 'shift', 'bytes', 'seconds', 'location', 'retry-after',
                 'every', 'per-range', 'name', 'value', 'extra'}
        unknown = set(obj) - known
        if unknown:
            raise ValueError(f'unknown fault rule keys: {sorted(unknown)}')
        action = obj.get('action')
        if action not in ACTIONS:
            raise ValueError(f'"action" must be one of {list(ACTIONS)}')
        path = obj.get('path')
        if path is not None and not isinstance(path, str):
            raise ValueError('"path" must be a string')
        method = obj.get('method')
        if method not in (None, 'GET', 'HEAD'):
            raise ValueError('"method" must be "GET" or "HEAD"')
        per_range = obj.get('per-range', False)
        if not isinstance(per_range, bool):
            raise ValueError('"per-range" must be true or false')
        for key, owner in OWN_MEMBERS.items():
            if key in obj and action != owner:
                raise ValueError(f'"{key}" is for "{owner}" rules only')

        rule = cls(action=action, path=path, method=method,
                   first=_json_int(obj, 'from', 0, 0) or 0,
                   skip=_json_int(obj, 'skip', 0, 0) or 0,
                   times=_json_int(obj, 'times', None, 0),
                   shift=_json_int(obj, 'shift', 1) or 0,
                   nbytes=_json_int(obj, 'bytes', 0, 0) or 0,
                   every=_json_int(obj, 'every', 1, 1) or 1,
                   per_range=per_range)
        rule._read_action_members(obj)
        return rule

    def _read_action_members(self, obj: Dict[str, Any]) -> None:
        """Set the members that the rule's action takes from @obj, its
        JSON form, raising ValueError if bad."""
        # pylint: disable=too-many-branches
        action = self.action
        if action == 'status':
            self.code = _json_int(obj, 'code', None, 400) or 0
            if not 400 <= self.code <= 599:
                raise ValueError('"status" needs a "code" from 400 to 599')
            retry_after = obj.get('retry-after')
            if retry_after is not None:
                if isinstance(retry_after, bool) or not isinstance(
                        retry_after, (int, str)):
                    raise ValueError('"retry-after" must be a number of '
                                     'seconds or an HTTP date')
                self.retry_after = str(retry_after)
        elif action == 'redirect':
            self.code = _json_int(obj, 'code', 302) or 0
            if self.code not in (301, 302, 303, 307, 308):
                raise ValueError('"redirect" "code" must be 301, 302, 303, '
                                 '307 or 308')
            location = obj.get('location')
            if not isinstance(location, str) or not location:
                raise ValueError('"redirect" needs a "location" string')
            self.location = location
        elif action in ('stall', 'delay'):
            seconds = obj.get('seconds')
            if (isinstance(seconds, bool) or
                    not isinstance(seconds, (int, float)) or seconds < 0):
                raise ValueError(f'"{action}" needs "seconds" >= 0')
            self.seconds = float(seconds)
        elif action == 'trickle':
            if 'bytes' not in obj:
                raise ValueError('"trickle" needs "bytes"')
            seconds = obj.get('seconds', TRICKLE_INTERVAL)
            if (isinstance(seconds, bool) or
                    not isinstance(seconds, (int, float)) or seconds < 0):
                raise ValueError('"trickle" "seconds" must be >= 0')
            self.seconds = float(seconds)
        elif action == 'long':
            self.nbytes = _json_int(obj, 'bytes', LONG_EXTRA, 1) or 0
        elif action == 'short' and 'bytes' not in obj:
            raise ValueError('"short" needs "bytes"')
        elif action == 'header':
            self.header_name, self.header_value = _json_header_change(obj)
        elif action in ('chunked', 'bad-chunks'):
            self.nbytes = _json_int(obj, 'bytes', CHUNKED_BYTES, 1) or 0
            if action == 'bad-chunks':
                self.extra = _json_int(obj, 'extra', BAD_CHUNKS_EXTRA,
                                       1) or 0

    def to_json(self) -> Dict[str, Any]:
        """Return the JSON form of the rule, with its remaining counts."""
        obj: Dict[str, Any] = {'action': self.action, 'path': self.path,
                               'method': self.method, 'from': self.first,
                               'skip': self.skip,
                               'times': self.times, 'hits': self.hits,
                               'every': self.every,
                               'per-range': self.per_range}
        if self.per_range:
            obj['ranges'] = len(self.counts)
        if self.action in ('status', 'redirect'):
            obj['code'] = self.code
        if self.retry_after is not None:
            obj['retry-after'] = self.retry_after
        if self.action == 'redirect':
            obj['location'] = self.location
        if self.action == 'wrong-range':
            obj['shift'] = self.shift
        if self.action in ('short', 'stall', 'reset', 'trickle', 'long',
                           'chunked', 'bad-chunks'):
            obj['bytes'] = self.nbytes
        if self.action in ('stall', 'delay', 'trickle'):
            obj['seconds'] = self.seconds
        if self.action == 'header':
            obj['name'] = self.header_name
            obj['value'] = self.header_value
        if self.action == 'bad-chunks':
            obj['extra'] = self.extra
        return obj

    def header_changes(self) -> Tuple[Tuple[str, HeaderValue], ...]:
        """The changes that the rule makes to the headers of an answer
        (see change_headers()): none unless it is a "header" or one of
        the HEADER_PRESETS."""
        if self.action == 'header':
            return ((self.header_name, self.header_value),)
        return HEADER_PRESETS.get(self.action, ())

    def count(self, end: Optional[int]) -> Any:
        """What counts the requests for a range ending at byte @end: the
        rule itself, or for a "per-range" rule, a RuleCount of @end."""
        if not self.per_range:
            return self
        if end not in self.counts:
            self.counts[end] = RuleCount(self.skip, self.times)
        return self.counts[end]

    def matches(self, method: str, path: str, first: int = 0) -> bool:
        """Tell whether the rule (still) concerns this request, whose
        Range starts at byte @first."""
        if (self.times == 0 and not self.per_range) or first < self.first:
            return False
        if self.path is not None and self.path != path:
            return False
        if self.action == 'redirect':
            target = urllib.parse.urlsplit(self.location).path
            if path == urllib.parse.unquote(target):
                return False
        if self.method is not None:
            return self.method == method
        if self.action == 'no-head':
            return method == 'HEAD'
        if self.action in BODY_ACTIONS:
            return method == 'GET'
        return True


@dataclasses.dataclass
class RequestRecord:  # pylint: disable=too-many-instance-attributes
    """What the statistics remember about one file request.

    @target is the request line's target: a path, or a whole URL when the
    client used us as its proxy.  @range, @cookie, @authorization and
    @proxy_authorization are those headers as received, @headers all the
    request's headers (names in lower case), @status is None
    if no answer
    was sent, @served is the (first, last) byte positions that the body
    of a GET answer carries (with a "long" answer, more than the file
    may have), or None if it has no body, and @fault is the action of
    the fault rule applied to the request, if any ("delay+status" and the
    like when one of the PASS_ON_ACTIONS let the rules after it decide
    too).
    """

    seq: int
    method: str
    path: str
    range: Optional[str]
    client_port: int
    time: float
    target: str = ''
    cookie: Optional[str] = None
    authorization: Optional[str] = None
    proxy_authorization: Optional[str] = None
    headers: Dict[str, str] = dataclasses.field(default_factory=dict)
    status: Optional[int] = None
    bytes_sent: int = 0
    served: Optional[Tuple[int, int]] = None
    fault: Optional[str] = None


class ServerState:
    """Statistics and fault rules, shared by all connections."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: List[RequestRecord] = []
        self.bytes_sent = 0
        self.counted_connections: Set[int] = set()
        self.faults: List[FaultRule] = []
        self.required: Dict[str, str] = {}
        self.last_connection_id = 0

    def new_connection_id(self) -> int:
        """Return a number identifying a new connection."""
        with self.lock:
            self.last_connection_id += 1
            return self.last_connection_id

    def reset(self) -> None:
        """Forget all statistics, fault rules and required headers."""
        with self.lock:
            self.log = []
            self.bytes_sent = 0
            self.counted_connections = set()
            self.faults = []
            self.required = {}

    def set_required(self, required: Dict[str, str]) -> None:
        """Answer file requests without these header values with an error.

        Keys are header names; a request without 'proxy-authorization'
        is answered with 407, one without any other with 401.
        """
        with self.lock:
            self.required = dict(required)

    def missing_header(self, headers: Any) -> Optional[str]:
        """The first required header that @headers lack, or None."""
        with self.lock:
            for name, value in self.required.items():
                if headers.get(name) != value:
                    return name
        return None

    def begin_request(self, connection: int, method: str, path: str,
                      range_header: Optional[str],
                      client_port: int) -> RequestRecord:
        """Record a new file request that arrived on @connection."""
        with self.lock:
            self.counted_connections.add(connection)
            record = RequestRecord(seq=len(self.log) + 1, method=method,
                                   path=path, range=range_header,
                                   client_port=client_port,
                                   time=time.time())
            self.log.append(record)
            return record

    def update(self, record: RequestRecord, **changes: Any) -> None:
        """Change fields of @record under the lock."""
        with self.lock:
            for name, value in changes.items():
                setattr(record, name, value)

    def add_bytes(self, record: RequestRecord, count: int) -> None:
        """Account @count body bytes (negative to take them back)."""
        with self.lock:
            record.bytes_sent += count
            self.bytes_sent += count

    def stats(self) -> Dict[str, Any]:
        """Return a JSON-ready snapshot of the statistics.

        That is the number of file requests, of body bytes sent, and of
        connections that carried at least one file request, all since
        the last reset, and the list of RequestRecords as dicts.
        """
        with self.lock:
            return {'requests': len(self.log),
                    'bytes_sent': self.bytes_sent,
                    'connections': len(self.counted_connections),
                    'log': [dataclasses.asdict(r) for r in self.log]}

    def set_faults(self, rules: List[FaultRule]) -> None:
        """Replace the fault rules."""
        with self.lock:
            self.faults = rules

    def faults_json(self) -> List[Dict[str, Any]]:
        """Return the fault rules in JSON form."""
        with self.lock:
            return [rule.to_json() for rule in self.faults]

    def take_fault(self, method: str, path: str, first: int = 0,
                   after: Optional[FaultRule] = None,
                   end: Optional[int] = None) -> Optional[FaultRule]:
        """Find the first rule matching a request (whose Range starts at
        byte @first and ends at byte @end) and count it down.

        Return the rule if it is to be applied, or None if the request
        is to be answered normally (no rule matches, or the first one
        that does still has requests to skip, or lets this one through
        until its "every").  With @after, a rule returned before for the
        same request, only the rules that follow it are considered.
        """
        with self.lock:
            rules = self.faults
            if after is not None:
                index = next((i for i, r in enumerate(rules)
                              if r.rule_id == after.rule_id), len(rules))
                rules = rules[index + 1:]
            for rule in rules:
                if not rule.matches(method, path, first):
                    continue
                count = rule.count(end)
                if count.times == 0:
                    continue        # (per range) done with this range
                if count.skip > 0:
                    count.skip -= 1
                    return None
                count.seen += 1
                if count.seen % rule.every:
                    return None
                if count.times is not None:
                    count.times -= 1
                rule.hits += 1
                return dataclasses.replace(rule)
            return None


class RangeRequestHandler(http.server.BaseHTTPRequestHandler):
    """Answers file requests and control requests of one connection."""

    protocol_version = 'HTTP/1.1'
    # Headers and body go out in separate writes: with Nagle's algorithm,
    # the body of every answer on a reused connection would wait 40 ms
    # for the client's delayed ACK of the headers.
    disable_nagle_algorithm = True
    server: 'RangeHTTPServer'
    close_connection = True
    connection_id = 0
    release_generation = 0

    def setup(self) -> None:
        super().setup()
        self.connection_id = self.server.state.new_connection_id()

    def log_message(self, format: str,  # pylint: disable=redefined-builtin
                    *args: Any) -> None:
        self.server.log(f'{self.address_string()} - '
                        f'[{self.log_date_time_string()}] {format % args}')

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        """Answer a GET request."""
        self._dispatch()

    def do_HEAD(self) -> None:  # pylint: disable=invalid-name
        """Answer a HEAD request."""
        self._dispatch()

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        """Answer a POST request (control interface only)."""
        self._dispatch()

    def _dispatch(self) -> None:
        # Read any request body so that the connection stays in sync
        try:
            length = int(self.headers.get('Content-Length') or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.send_error(400, 'Bad Content-Length')
            return
        body = self.rfile.read(length)
        raw_path = urllib.parse.urlsplit(self.path).path
        if raw_path.startswith(CONTROL_PREFIX):
            self._handle_control(raw_path[len(CONTROL_PREFIX):], body)
        elif self.command == 'POST':
            self.send_error(501, 'Unsupported method (POST)')
        else:
            self._handle_file(urllib.parse.unquote(raw_path))

    def _send_simple(self, code: int, body: bytes = b'',
                     content_type: str = 'text/plain',
                     headers: Optional[Dict[str, str]] = None) -> None:
        """Send a complete response with a small in-memory body."""
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body:
            self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self._end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def _end_headers(self) -> None:
        if self.close_connection:
            self.send_header('Connection', 'close')
        self.end_headers()

    def _handle_control(self, name: str, body: bytes) -> None:
        """Answer a request under /_control/; all answers are JSON.

        GET  /_control/stats     the statistics, see ServerState.stats()
        GET  /_control/faults    the fault rules, with remaining counts
        POST /_control/faults    replace the fault rules by the JSON list
                                 in the body (see FaultRule)
        POST /_control/require   answer file requests that lack the header
                                 values of the JSON object in the body with
                                 401 or 407 (see ServerState.set_required)
        POST /_control/reset     clear the statistics, the fault rules and
                                 the required headers
        POST /_control/release   end the waits of the delays and stalls in
                                 progress now: they go on as if their time
                                 was up
        POST /_control/shutdown  stop the server
        """
        state = self.server.state
        result: Any = {}
        if (self.command, name) == ('GET', 'stats'):
            result = state.stats()
        elif (self.command, name) == ('GET', 'faults'):
            result = state.faults_json()
        elif (self.command, name) == ('POST', 'faults'):
            try:
                rules = json.loads(body or b'[]')
                if not isinstance(rules, list):
                    raise ValueError('the fault rules must be a JSON list')
                state.set_faults([FaultRule.from_json(r) for r in rules])
            except ValueError as err:
                self._send_json(400, {'error': str(err)})
                return
            result = state.faults_json()
        elif (self.command, name) == ('POST', 'require'):
            try:
                required = json.loads(body or b'{}')
                if not isinstance(required, dict) or not all(
                        isinstance(k, str) and re.fullmatch(r'[\w-]+', k) and
                        isinstance(v, str) for k, v in required.items()):
                    raise ValueError('required headers: a JSON object of '
                                     'header names and string values')
            except ValueError as err:
                self._send_json(400, {'error': str(err)})
                return
            state.set_required(required)
        elif (self.command, name) == ('POST', 'reset'):
            state.reset()
        elif (self.command, name) == ('POST', 'release'):
            self.server.release()
        elif (self.command, name) == ('POST', 'shutdown'):
            self.close_connection = True
            self._send_json(200, {})
            self.wfile.flush()
            self.server.stop()
            return
        else:
            self._send_json(404, {'error': f'no control {name!r}'})
            return
        self._send_json(200, result)

    def _send_json(self, code: int, obj: Any) -> None:
        self._send_simple(code, json.dumps(obj).encode() + b'\n',
                          'application/json')

    def _open_file(self, path: str) -> Optional[int]:
        """Open the regular file under the root for a decoded URL path.

        Return its file descriptor, or None if there is no such file.
        """
        parts = [p for p in path.split('/') if p not in ('', '.')]
        if not parts or '..' in parts or any('\0' in p for p in parts):
            return None
        try:
            fd = os.open(os.path.join(self.server.root, *parts), os.O_RDONLY)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def _handle_file(self, path: str) -> None:
        # pylint: disable=too-many-branches
        state = self.server.state
        # A release after this request is logged ends its delay or stall,
        # even one that has not begun to wait yet
        self.release_generation = self.server.release_generation
        range_header = self.headers.get('Range')
        record = state.begin_request(self.connection_id, self.command, path,
                                     range_header, self.client_address[1])
        state.update(record, target=self.path,
                     cookie=self.headers.get('Cookie'),
                     authorization=self.headers.get('Authorization'),
                     proxy_authorization=self.headers.get(
                         'Proxy-Authorization'),
                     headers={k.lower(): v for k, v in self.headers.items()})
        missing = state.missing_header(self.headers)
        if missing is not None:
            code = 407 if missing == 'proxy-authorization' else 401
            state.update(record, status=code)
            self._send_simple(code, f'{missing} required\n'.encode(),
                              headers={'Proxy-Authenticate'
                                       if code == 407 else
                                       'WWW-Authenticate': 'Basic realm="t"'})
            return
        first = range_first(range_header)
        end = range_end(range_header)
        rule = state.take_fault(self.command, path, first, end=end)
        send_etag = True
        header_changes: List[Tuple[str, HeaderValue]] = []
        if rule is not None:
            applied = [rule.action]
            state.update(record, fault=rule.action)
            self.log_message('fault %r applied', rule.to_json())
            if rule.action == 'close':
                self.close_connection = True
                return
            while rule is not None and rule.action in PASS_ON_ACTIONS:
                if rule.action == 'delay':
                    if self.server.pause(rule.seconds,
                                         self.release_generation):
                        self.close_connection = True
                        return
                elif rule.action == 'no-etag':
                    send_etag = False
                else:
                    header_changes += rule.header_changes()
                rule = state.take_fault(self.command, path, first,
                                        after=rule, end=end)
                if rule is not None:
                    applied.append(rule.action)
                    state.update(record, fault='+'.join(applied))
                    self.log_message('fault %r applied', rule.to_json())
            if rule is None:
                pass
            elif rule.action == 'close':
                self.close_connection = True
                return
            elif rule.action in ('status', 'redirect', 'no-head'):
                self._send_fault_response(record, rule)
                return

        fd = self._open_file(path)
        if fd is None:
            state.update(record, status=404)
            self._send_simple(404, b'Not Found\n')
            return
        try:
            self._send_file(fd, record, rule, range_header, send_etag,
                            header_changes)
        finally:
            os.close(fd)

    def _fault_without(self, record: RequestRecord,
                       action: str) -> Optional[str]:
        """The fault logged for @record, but for @action."""
        left = [a for a in (record.fault or '').split('+') if a != action]
        return '+'.join(left) or None

    def _send_fault_response(self, record: RequestRecord,
                             rule: FaultRule) -> None:
        """Answer with the status, redirection or 405 of @rule."""
        if rule.action == 'redirect':
            self.server.state.update(record, status=rule.code)
            self._send_simple(rule.code,
                              headers={'Location': rule.location})
        elif rule.action == 'no-head':
            self.server.state.update(record, status=405)
            self._send_simple(405, b'Method Not Allowed\n',
                              headers={'Allow': 'GET'})
        else:
            try:
                phrase = HTTPStatus(rule.code).phrase
            except ValueError:
                phrase = 'Injected fault'
            self.server.state.update(record, status=rule.code)
            self._send_simple(rule.code, f'{rule.code} {phrase}\n'.encode(),
                              headers={'Retry-After': rule.retry_after}
                              if rule.retry_after is not None else None)

    def _send_file(self, fd: int, record: RequestRecord,
                   rule: Optional[FaultRule],
                   range_header: Optional[str],
                   send_etag: bool = True,
                   header_changes: Iterable[Tuple[str, HeaderValue]] = ()
                   ) -> None:
        """Send the headers and body for the open file @fd, with an ETag
        if @send_etag, and the headers changed by @header_changes."""
        # pylint: disable=too-many-locals,too-many-branches
        # pylint: disable=too-many-arguments,too-many-statements
        action = rule.action if rule else None
        info = os.fstat(fd)
        size = info.st_size
        total = size + (LENGTH_MISMATCH_EXTRA
                        if action == 'length-mismatch' else 0)
        # A new file (os.replace) has a new inode, hence a new ETag
        version = f'{size:x}-{info.st_mtime_ns:x}-{info.st_ino:x}'
        etag = f'"{version}"'
        last_modified = email.utils.formatdate(info.st_mtime, usegmt=True)

        headers = {'Last-Modified': last_modified}
        validators: Tuple[Optional[str], ...] = (None, last_modified)
        if send_etag:
            headers['ETag'] = etag
            validators += (etag,)
        if action not in ('ignore-range', 'no-accept-ranges'):
            headers['Accept-Ranges'] = 'bytes'

        if_range = self.headers.get('If-Range')
        if (range_header is None or action == 'ignore-range' or
                (action != 'ignore-if-range' and
                 if_range not in validators)):
            byte_range = None
        else:
            try:
                byte_range = parse_range(range_header, size)
            except UnsatisfiableRange:
                headers['Content-Range'] = f'bytes */{total}'
                headers['Content-Length'] = '0'
                self.server.state.update(record, status=416)
                self._send_head(416, headers, header_changes,
                                answer_fields(0, 0, total, version))
                return

        if byte_range is None:
            code = 200
            start, length = 0, size
            headers['Content-Length'] = str(
                total if self.command == 'HEAD' else size)
        else:
            code = 206
            start, end = byte_range
            length = end - start + 1
            if rule is not None and action == 'wrong-range':
                moved = wrong_range_start(start, length, size, rule.shift)
                if moved == start:
                    # All of the file: no other range to send instead
                    self.server.state.update(
                        record, fault=self._fault_without(record, action))
                start = moved
            last = start + length - 1
            headers['Content-Range'] = f'bytes {start}-{last}/{total}'
            headers['Content-Length'] = str(length)
        headers['Content-Type'] = 'application/octet-stream'

        extra = 0
        if action == 'long':
            extra = rule.nbytes if rule is not None else 0
            headers['Content-Length'] = str(length + extra)
        encoded = None
        if action == 'gzip':
            headers['Content-Encoding'] = 'gzip'
            if self.command == 'GET':
                encoded = gzip.compress(os.pread(fd, length, start),
                                        compresslevel=1)
                headers['Content-Length'] = str(len(encoded))
        if action in ('chunked', 'bad-chunks'):
            del headers['Content-Length']
            headers['Transfer-Encoding'] = 'chunked'

        served = None
        if self.command == 'GET' and length > 0:
            served = (start, start + length + extra - 1)
        self.server.state.update(record, status=code, served=served)
        self._send_head(code, headers, header_changes,
                        answer_fields(start, length, total, version))
        if self.command == 'HEAD':
            length = extra = 0

        if encoded is not None:
            self.server.state.add_bytes(record, len(encoded))
            self.wfile.write(encoded)
            return
        limit = None
        stall = None
        trickle = None
        chunks = None
        if rule is not None and action in ('short', 'reset'):
            limit = rule.nbytes
        elif rule is not None and action == 'stall':
            stall = (rule.nbytes, rule.seconds)
        elif rule is not None and action == 'trickle':
            trickle = (rule.nbytes, rule.seconds)
        elif (rule is not None and action in ('chunked', 'bad-chunks') and
              self.command == 'GET'):
            chunks = (rule.nbytes, rule.extra)
        # What the file does not have past its end of a long body is zeroes
        in_file = min(length + extra, max(size - start, 0))
        complete = self._send_body(fd, start, in_file, record, limit, stall,
                                   trickle, chunks)
        if complete and length + extra > in_file:
            zeroes = length + extra - in_file
            self.server.state.add_bytes(record, zeroes)
            self.wfile.write(bytes(zeroes))
        if action == 'reset':
            self._reset_connection()
        elif not complete or action in ('short', 'bad-chunks'):
            # Nothing the client reads after a broken body is to be trusted
            self.close_connection = True

    def _send_head(self, code: int, headers: Dict[str, str],
                   changes: Iterable[Tuple[str, HeaderValue]],
                   answer: Dict[str, Any]) -> None:
        """Send the status line and @headers, with @changes made to them
        (see change_headers())."""
        changes = list(changes)
        if any(name.lower() in FRAMING_HEADERS for name, _ in changes):
            self.close_connection = True
        self.send_response(code)
        for name, value in change_headers(headers, changes, answer):
            self.send_header(name, value)
        self._end_headers()

    def _reset_connection(self) -> None:
        """Abort the connection with a TCP RST, once the client has
        acknowledged what was sent (so that it gets those bytes)."""
        sock = self.connection
        deadline = time.monotonic() + RESET_ACK_TIMEOUT
        while time.monotonic() < deadline:
            try:
                # Linux: bytes sent but not acknowledged yet (SIOCOUTQ)
                unacked = struct.unpack('i', fcntl.ioctl(
                    sock.fileno(), termios.TIOCOUTQ, b'\0' * 4))[0]
            except OSError:
                break
            if unacked == 0 or self.server.stopping.wait(0.001):
                break
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack('ii', 1, 0))
        # The socket really closes, with a RST rather than a FIN, once
        # the reader made of it is closed too
        sock.close()
        self.rfile.close()
        self.close_connection = True

    def _send_body(self, fd: int, start: int, length: int,
                   record: RequestRecord, limit: Optional[int],
                   stall: Optional[Tuple[int, float]],
                   trickle: Optional[Tuple[int, float]] = None,
                   chunks: Optional[Tuple[int, int]] = None) -> bool:
        """Send @length bytes of @fd from offset @start.

        Stop after @limit bytes if it is given.  If @stall is given as
        (nbytes, seconds), wait that many seconds after the first nbytes
        bytes.  If @trickle is given as (nbytes, seconds), send the first
        nbytes bytes one at a time, that many seconds apart.  If @chunks
        is given as (nbytes, extra), send the bytes in the chunked
        transfer coding, nbytes at most in each chunk, whose size line
        says extra bytes more than it holds, and the last chunk after
        them.  Return whether the whole body was sent.
        """
        # pylint: disable=too-many-arguments,too-many-locals
        # pylint: disable=too-many-branches
        state = self.server.state
        end = length if limit is None else min(limit, length)
        pause_at, pause = (None, 0.0) if stall is None else stall
        if pause_at is not None:
            pause_at = min(pause_at, length)
        slow, interval = (0, 0.0) if trickle is None else trickle
        chunk_size, overstated = (CHUNK_SIZE, 0) if chunks is None else chunks
        sent = 0
        while True:
            if pause_at is not None and sent >= pause_at:
                self.wfile.flush()
                if self.server.pause(pause, self.release_generation):
                    return False
                pause_at = None
            if sent >= end:
                if chunks is not None and sent == length:
                    self.wfile.write(b'0\r\n\r\n')
                return sent == length
            if 0 < sent < slow and self.server.stopping.wait(interval):
                return False
            count = min(chunk_size, end - sent)
            if pause_at is not None:
                count = min(count, pause_at - sent)
            if sent < slow:
                count = 1
            data = os.pread(fd, count, start + sent)
            if not data:
                # The file shrank; the client must not wait for more
                return False
            # Count first, so that a client which got the data also sees
            # it in the statistics
            state.add_bytes(record, len(data))
            try:
                if chunks is None:
                    self.wfile.write(data)
                else:
                    self.wfile.write(b'%x\r\n%s\r\n' %
                                     (len(data) + overstated, data))
            except OSError:
                state.add_bytes(record, -len(data))
                raise
            sent += len(data)


class RangeHTTPServer(http.server.ThreadingHTTPServer):
    """The HTTP server: one thread per connection, optionally TLS."""

    # pylint: disable=too-many-instance-attributes

    daemon_threads = True
    # Do not wait for idle keep-alive connections when closing
    block_on_close = False
    # Clients open many connections at once; with the default backlog of
    # 5 the kernel drops SYNs, and each costs a 1 s retransmission.
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], root: str,
                 ssl_context: Optional[ssl.SSLContext] = None,
                 log_file: Optional[TextIO] = None) -> None:
        if ':' in address[0]:
            self.address_family = socket.AF_INET6
        self.root = root
        self.ssl_context = ssl_context
        self.log_file = log_file
        self.log_lock = threading.Lock()
        self.state = ServerState()
        self.stopping = threading.Event()
        # Delays and stalls in progress end when the generation changes
        self.release_cond = threading.Condition()
        self.release_generation = 0
        super().__init__(address, RangeRequestHandler)

    def log(self, message: str) -> None:
        """Write a line to the log file, if there is one."""
        if self.log_file is not None:
            with self.log_lock:
                self.log_file.write(message + '\n')
                self.log_file.flush()

    def pause(self, seconds: float, generation: int) -> bool:
        """Wait @seconds, or until stop() is called, or release() is or
        was since release_generation was @generation.

        Return whether the server is stopping.
        """
        deadline = time.monotonic() + seconds
        with self.release_cond:
            while (not self.stopping.is_set() and
                   self.release_generation == generation):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.release_cond.wait(remaining)
        return self.stopping.is_set()

    def release(self) -> None:
        """End the pause() of every delay and stall in progress now."""
        with self.release_cond:
            self.release_generation += 1
            self.release_cond.notify_all()

    def stop(self) -> None:
        """Make serve_forever() return and abort pending stalls."""
        self.stopping.set()
        self.release()
        threading.Thread(target=self.shutdown, daemon=True).start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        # The TLS handshake happens here, in the connection's own thread
        request.settimeout(10)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except OSError as err:
            self.log(f'TLS handshake with {client_address} failed: {err}')
            return
        try:
            tls.settimeout(None)
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, (ConnectionError, ssl.SSLError, TimeoutError)):
            self.log(f'connection {client_address} lost: {err!r}')
            return
        super().handle_error(request, client_address)


class RangeServer:
    """Runs range_server.py as a subprocess and talks to its control API.

    Usage::

        with RangeServer(root_dir) as server:
            server.set_faults([{'action': 'status', 'code': 503}])
            url = server.url('disk.img')
            ...
            print(server.stats()['requests'])
    """

    host = '127.0.0.1'

    def __init__(self, root: str, tls_cert: Optional[str] = None,
                 tls_key: Optional[str] = None,
                 log_path: Optional[str] = None) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError('tls_cert and tls_key go together')
        self.root = os.path.abspath(root)
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.log_path = log_path
        self.port = 0
        self._proc: Optional['subprocess.Popen[bytes]'] = None
        self._tmpdir: Optional[str] = None

    @property
    def tls(self) -> bool:
        """Whether the server speaks HTTPS."""
        return self.tls_cert is not None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        if self._proc is not None:
            raise RuntimeError('range server already started')
        self._tmpdir = tempfile.mkdtemp(prefix='range-server-')
        port_file = os.path.join(self._tmpdir, 'port')
        stderr_path = os.path.join(self._tmpdir, 'stderr')
        cmd = [sys.executable, os.path.abspath(__file__),
               '--root', self.root, '--bind', self.host, '--port', '0',
               '--port-file', port_file]
        if self.tls_cert and self.tls_key:
            cmd += ['--tls-cert', self.tls_cert, '--tls-key', self.tls_key]
        if self.log_path:
            cmd += ['--log', self.log_path]
        with open(stderr_path, 'wb') as stderr:
            # The server outlives this function; stop() reaps it
            # pylint: disable=consider-using-with
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL,
                                          stderr=stderr)
        deadline = time.monotonic() + timeout
        while not os.path.exists(port_file):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._kill()
                with open(stderr_path, encoding='utf-8',
                          errors='replace') as stderr_file:
                    errors = stderr_file.read().strip()
                self._cleanup()
                raise RuntimeError(f'range server did not start: {errors}')
            time.sleep(0.01)
        with open(port_file, encoding='ascii') as port:
            self.port = int(port.read())

    def stop(self) -> None:
        """Stop the server; does nothing if it is not running."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                self._control('POST', 'shutdown')
            except (OSError, http.client.HTTPException, RuntimeError):
                pass
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
        self._cleanup()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _cleanup(self) -> None:
        self._proc = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> 'RangeServer':
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def url(self, name: str, scheme: Optional[str] = None) -> str:
        """Return the URL of file @name (relative to the root)."""
        if scheme is None:
            scheme = 'https' if self.tls else 'http'
        path = urllib.parse.quote(name.lstrip('/'))
        return f'{scheme}://{self.host}:{self.port}/{path}'

    def set_faults(self, rules: List[Dict[str, Any]]) -> None:
        """Replace the server's fault rules with @rules."""
        self._control('POST', 'faults', rules)

    def faults(self) -> List[Dict[str, Any]]:
        """Return the fault rules with their remaining counts."""
        result: List[Dict[str, Any]] = self._control('GET', 'faults')
        return result

    def stats(self) -> Dict[str, Any]:
        """Return the request statistics."""
        result: Dict[str, Any] = self._control('GET', 'stats')
        return result

    def reset(self) -> None:
        """Clear the statistics, the fault rules and required headers."""
        self._control('POST', 'reset')

    def release(self) -> None:
        """End the delays and stalls in progress now (see FaultRule)."""
        self._control('POST', 'release')

    def require(self, **headers: str) -> None:
        """Refuse file requests without these header values (see
        ServerState.set_required; proxy_authorization for
        Proxy-Authorization)."""
        self._control('POST', 'require',
                      {k.replace('_', '-'): v for k, v in headers.items()})

    def _control(self, method: str, name: str, data: Any = None) -> Any:
        """Make a control request and return its decoded JSON answer."""
        conn: http.client.HTTPConnection
        if self.tls:
            # Only the control connection skips certificate checks
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(self.host, self.port,
                                               timeout=10, context=context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port,
                                              timeout=10)
        try:
            body = None if data is None else json.dumps(data).encode()
            headers = {'Content-Type': 'application/json'} if body else {}
            conn.request(method, CONTROL_PREFIX + name, body, headers)
            response = conn.getresponse()
            answer = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f'range server control {name}: '
                               f'{response.status} {answer.decode()}')
        return json.loads(answer)


def write_port_file(path: str, port: int) -> None:
    """Write @port to @path atomically."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='ascii') as port_file:
        port_file.write(f'{port}\n')
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the server until it is told to shut down."""
    parser = argparse.ArgumentParser(
        description='HTTP range server with fault injection for tests')
    parser.add_argument('--root', required=True,
                        help='directory whose files are served')
    parser.add_argument('--bind', default='127.0.0.1',
                        help='address to listen on (default: %(default)s)')
    parser.add_argument('--port', type=int, default=0,
                        help='port to listen on (default: any free one)')
    parser.add_argument('--port-file', help='write the port number here')
    parser.add_argument('--tls-cert', help='certificate file, enables TLS')
    parser.add_argument('--tls-key', help='private key file for --tls-cert')
    parser.add_argument('--log', help='append a request log to this file')
    args = parser.parse_args(argv)

    if not os.path.isdir(args.root):
        parser.error(f'--root {args.root}: not a directory')
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error('--tls-cert and --tls-key go together')

    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)

    with contextlib.ExitStack() as stack:
        log_file = None
        if args.log:
            log_file = stack.enter_context(
                open(args.log, 'a', encoding='utf-8'))
        server = RangeHTTPServer((args.bind, args.port),
                                 os.path.abspath(args.root), ssl_context,
                                 log_file)
        stack.callback(server.server_close)
        port = int(server.server_address[1])
        if args.port_file:
            write_port_file(args.port_file, port)
        print(f'listening on {port}', flush=True)
        try:
            server.serve_forever(poll_interval=0.1)
        except KeyboardInterrupt:
            pass
        server.stopping.set()
    return 0


if __name__ == '__main__':
    sys.exit(main())
