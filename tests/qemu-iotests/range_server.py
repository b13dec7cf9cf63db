#!/usr/bin/env python3
#
# HTTP(S) server with byte-range support and fault injection
#
# Copyright (C) 2026 The QEMU curl series authors
#
# This program is free software; you can redistribute it and/or modify
# it under the terms of the GNU General Public License as published by
# the Free Software Foundation; either version 2 of the License, or
# (at your option) any later version.
#
# This program is distributed in the hope that it will be useful,
# but WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
# GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License
# along with this program.  If not, see <http://www.gnu.org/licenses/>.
#
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
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http import HTTPStatus
from typing import Any, Dict, List, Optional, Set, TextIO, Tuple

CONTROL_PREFIX = '/_control/'
CHUNK_SIZE = 64 * 1024
LENGTH_MISMATCH_EXTRA = 4096

# Actions whose effect is on a response body: unless a rule names a
# method, they apply to GET only, so that a HEAD does not use them up.
BODY_ACTIONS = ('short', 'stall', 'wrong-range')

ACTIONS = ('status', 'no-head', 'ignore-range', 'ignore-if-range',
           'no-accept-ranges', 'wrong-range', 'short', 'close', 'stall',
           'delay', 'redirect', 'length-mismatch')

_RANGE_RE = re.compile(r'bytes\s*=\s*(\d*)\s*-\s*(\d*)', re.IGNORECASE)


_RULE_IDS = itertools.count(1)


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


@dataclasses.dataclass
class FaultRule:  # pylint: disable=too-many-instance-attributes
    """One fault injection rule, as set through POST /_control/faults.

    In JSON, a rule is an object with these members:

    action     what to do, see below (required)
    path       apply only to this URL path (exact match after decoding)
    method     apply only to "GET" or "HEAD".  By default both, except
               that no-head applies to HEAD only, and short, stall and
               wrong-range to GET only
    from       apply only to requests whose Range starts at or past this
               byte (a request without one starts at byte 0)
    skip       first let this many matching requests through (default 0)
    times      then apply to this many requests (default: no limit)

    The actions, with their own members:

    status            answer with error "code" (400 to 599)
    no-head           answer HEAD with 405 Method Not Allowed
    ignore-range      answer 200 with the whole file, no Accept-Ranges
    ignore-if-range   serve the range asked for even when If-Range does
                      not match, as a cache in front of a server that
                      was not told about a new file would
    no-accept-ranges  answer normally but without Accept-Ranges
    wrong-range       send the range asked for moved by "shift" bytes
                      (default 1, kept inside the file); a request
                      without a valid range is answered normally
    short             send only the first "bytes" body bytes, then close
                      the connection
    close             close the connection without answering
    stall             send the first "bytes" (default 0) body bytes, wait
                      "seconds", then send the rest
    delay             wait "seconds", then answer as the rules after
                      this one say (normally if none matches)
    redirect          redirect to "location" with "code" (default 302);
                      never applies to a request for the target's path
    length-mismatch   report a size 4096 bytes too large in Content-Range
                      and in the Content-Length of a HEAD

    The first rule that matches a request decides alone: it either lets
    the request through (while skipping) or applies to it.
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
    hits: int = 0
    rule_id: int = dataclasses.field(default_factory=lambda: next(_RULE_IDS))

    @classmethod
    def from_json(cls, obj: Any) -> 'FaultRule':
        """Build a rule from its JSON form, raising ValueError if bad."""
        if not isinstance(obj, dict):
            raise ValueError('a fault rule must be a JSON object')
        known = {'action', 'path', 'method', 'from', 'skip', 'times', 'code',
                 'shift', 'bytes', 'seconds', 'location'}
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

        rule = cls(action=action, path=path, method=method,
                   first=_json_int(obj, 'from', 0, 0) or 0,
                   skip=_json_int(obj, 'skip', 0, 0) or 0,
                   times=_json_int(obj, 'times', None, 0),
                   shift=_json_int(obj, 'shift', 1) or 0,
                   nbytes=_json_int(obj, 'bytes', 0, 0) or 0)
        if action == 'status':
            rule.code = _json_int(obj, 'code', None, 400) or 0
            if not 400 <= rule.code <= 599:
                raise ValueError('"status" needs a "code" from 400 to 599')
        elif action == 'redirect':
            rule.code = _json_int(obj, 'code', 302) or 0
            if rule.code not in (301, 302, 303, 307, 308):
                raise ValueError('"redirect" "code" must be 301, 302, 303, '
                                 '307 or 308')
            location = obj.get('location')
            if not isinstance(location, str) or not location:
                raise ValueError('"redirect" needs a "location" string')
            rule.location = location
        elif action in ('stall', 'delay'):
            seconds = obj.get('seconds')
            if (isinstance(seconds, bool) or
                    not isinstance(seconds, (int, float)) or seconds < 0):
                raise ValueError(f'"{action}" needs "seconds" >= 0')
            rule.seconds = float(seconds)
        elif action == 'short' and 'bytes' not in obj:
            raise ValueError('"short" needs "bytes"')
        return rule

    def to_json(self) -> Dict[str, Any]:
        """Return the JSON form of the rule, with its remaining counts."""
        obj: Dict[str, Any] = {'action': self.action, 'path': self.path,
                               'method': self.method, 'from': self.first,
                               'skip': self.skip,
                               'times': self.times, 'hits': self.hits}
        if self.action in ('status', 'redirect'):
            obj['code'] = self.code
        if self.action == 'redirect':
            obj['location'] = self.location
        if self.action == 'wrong-range':
            obj['shift'] = self.shift
        if self.action in ('short', 'stall'):
            obj['bytes'] = self.nbytes
        if self.action in ('stall', 'delay'):
            obj['seconds'] = self.seconds
        return obj

    def matches(self, method: str, path: str, first: int = 0) -> bool:
        """Tell whether the rule (still) concerns this request, whose
        Range starts at byte @first."""
        if self.times == 0 or first < self.first:
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
    @proxy_authorization are those headers as received, @status is None
    if no answer
    was sent, @served is the (first, last) byte positions that the body
    of a GET answer carries, or None if it has no body, and @fault is the
    action of the fault rule applied to the request, if any.
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

        Keys are 'cookie', 'authorization' (answered with 401) and
        'proxy-authorization' (407).
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
                   after: Optional[FaultRule] = None) -> Optional[FaultRule]:
        """Find the first rule matching a request (whose Range starts at
        byte @first) and count it down.

        Return the rule if it is to be applied, or None if the request
        is to be answered normally (no rule matches, or the first one
        that does still has requests to skip).  With @after, a rule
        returned before for the same request, only the rules that follow
        it are considered.
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
                if rule.skip > 0:
                    rule.skip -= 1
                    return None
                if rule.times is not None:
                    rule.times -= 1
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
                if not isinstance(required, dict) or not set(required) <= {
                        'cookie', 'authorization', 'proxy-authorization'}:
                    raise ValueError('required headers: a JSON object with '
                                     'cookie, authorization or '
                                     'proxy-authorization')
            except ValueError as err:
                self._send_json(400, {'error': str(err)})
                return
            state.set_required(required)
        elif (self.command, name) == ('POST', 'reset'):
            state.reset()
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
        state = self.server.state
        range_header = self.headers.get('Range')
        record = state.begin_request(self.connection_id, self.command, path,
                                     range_header, self.client_address[1])
        state.update(record, target=self.path,
                     cookie=self.headers.get('Cookie'),
                     authorization=self.headers.get('Authorization'),
                     proxy_authorization=self.headers.get(
                         'Proxy-Authorization'))
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
        rule = state.take_fault(self.command, path, first)
        if rule is not None:
            state.update(record, fault=rule.action)
            self.log_message('fault %r applied', rule.to_json())
            if rule.action == 'close':
                self.close_connection = True
                return
            while rule is not None and rule.action == 'delay':
                if self.server.stopping.wait(rule.seconds):
                    self.close_connection = True
                    return
                rule = state.take_fault(self.command, path, first,
                                        after=rule)
                if rule is not None:
                    state.update(record, fault=f'delay+{rule.action}')
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
            self._send_file(fd, record, rule, range_header)
        finally:
            os.close(fd)

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
            self._send_simple(rule.code, f'{rule.code} {phrase}\n'.encode())

    def _send_file(self, fd: int, record: RequestRecord,
                   rule: Optional[FaultRule],
                   range_header: Optional[str]) -> None:
        """Send the headers and body for the open file @fd."""
        action = rule.action if rule else None
        info = os.fstat(fd)
        size = info.st_size
        total = size + (LENGTH_MISMATCH_EXTRA
                        if action == 'length-mismatch' else 0)
        etag = f'"{size:x}-{info.st_mtime_ns:x}-{info.st_ino:x}"'
        last_modified = email.utils.formatdate(info.st_mtime, usegmt=True)

        headers = {'ETag': etag, 'Last-Modified': last_modified}
        if action not in ('ignore-range', 'no-accept-ranges'):
            headers['Accept-Ranges'] = 'bytes'

        if_range = self.headers.get('If-Range')
        if (range_header is None or action == 'ignore-range' or
                (action != 'ignore-if-range' and
                 if_range not in (None, etag, last_modified))):
            byte_range = None
        else:
            try:
                byte_range = parse_range(range_header, size)
            except UnsatisfiableRange:
                headers['Content-Range'] = f'bytes */{total}'
                self.server.state.update(record, status=416)
                self._send_simple(416, headers=headers)
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
                start = min(max(start + rule.shift, 0), size - length)
            last = start + length - 1
            headers['Content-Range'] = f'bytes {start}-{last}/{total}'
            headers['Content-Length'] = str(length)
        headers['Content-Type'] = 'application/octet-stream'

        served = None
        if self.command == 'GET' and length > 0:
            served = (start, start + length - 1)
        self.server.state.update(record, status=code, served=served)
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self._end_headers()
        if self.command == 'HEAD':
            length = 0

        limit = None
        stall = None
        if rule is not None and action == 'short':
            limit = rule.nbytes
        elif rule is not None and action == 'stall':
            stall = (rule.nbytes, rule.seconds)
        complete = self._send_body(fd, start, length, record, limit, stall)
        if not complete or action == 'short':
            self.close_connection = True

    def _send_body(self, fd: int, start: int, length: int,
                   record: RequestRecord, limit: Optional[int],
                   stall: Optional[Tuple[int, float]]) -> bool:
        """Send @length bytes of @fd from offset @start.

        Stop after @limit bytes if it is given.  If @stall is given as
        (nbytes, seconds), wait that many seconds after the first nbytes
        bytes.  Return whether the whole body was sent.
        """
        state = self.server.state
        end = length if limit is None else min(limit, length)
        pause_at, pause = (None, 0.0) if stall is None else stall
        if pause_at is not None:
            pause_at = min(pause_at, length)
        sent = 0
        while True:
            if pause_at is not None and sent >= pause_at:
                self.wfile.flush()
                if self.server.stopping.wait(pause):
                    return False
                pause_at = None
            if sent >= end:
                return sent == length
            count = min(CHUNK_SIZE, end - sent)
            if pause_at is not None:
                count = min(count, pause_at - sent)
            data = os.pread(fd, count, start + sent)
            if not data:
                # The file shrank; the client must not wait for more
                return False
            # Count first, so that a client which got the data also sees
            # it in the statistics
            state.add_bytes(record, len(data))
            try:
                self.wfile.write(data)
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
        super().__init__(address, RangeRequestHandler)

    def log(self, message: str) -> None:
        """Write a line to the log file, if there is one."""
        if self.log_file is not None:
            with self.log_lock:
                self.log_file.write(message + '\n')
                self.log_file.flush()

    def stop(self) -> None:
        """Make serve_forever() return and abort pending stalls."""
        self.stopping.set()
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
