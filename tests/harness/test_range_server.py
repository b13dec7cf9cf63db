#!/usr/bin/env python3
#
# Self-test for range_server.py
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
"""Self-test for range_server.py, the HTTP test server of the curl tests.

It checks the server's range handling, statistics and every fault action
with http.client, raw sockets and the curl command line tool, over HTTP
and HTTPS.  Run it directly: python3 tests/harness/test_range_server.py
"""

import email.utils
import gzip
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', 'qemu-iotests'))
# pylint: disable=wrong-import-position
from range_server import RangeServer  # noqa: E402

# A pattern whose period (251) is not a power of two, so that a shifted
# range never looks like the right one; larger than one 64 KiB chunk
DATA = (bytes(range(251)) * 1200)[:300000]
SMALL = b'0123456789' * 10

Response = Tuple[int, Dict[str, str], bytes]


def curl(*args: str) -> bytes:
    """Run the curl tool quietly and return what it wrote to stdout."""
    proc = subprocess.run(['curl', '--silent', '--show-error',
                           '--noproxy', '*', *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=20, check=False)
    if proc.returncode != 0:
        raise AssertionError(f'curl {args} failed: {proc.stderr.decode()}')
    return proc.stdout


def raw_header_fields(data: bytes) -> List[Tuple[str, str]]:
    """The header fields of a raw HTTP response, in order, with their
    names in lower case."""
    head = data.partition(b'\r\n\r\n')[0]
    fields = []
    for line in head.decode('latin-1').split('\r\n')[1:]:
        name, _, value = line.partition(':')
        fields.append((name.strip().lower(), value.strip()))
    return fields


def parse_raw_response(data: bytes) -> Response:
    """Split a raw HTTP response into status, headers and body."""
    head, _, body = data.partition(b'\r\n\r\n')
    status = int(head.split(b' ')[1])
    return status, dict(raw_header_fields(data)), body


def chunked(data: bytes, size: int, overstated: int = 0) -> bytes:
    """@data in the chunked transfer coding, @size bytes to a chunk, each
    chunk-size line saying @overstated bytes more than its chunk holds."""
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    return b''.join(b'%x\r\n%s\r\n' % (len(chunk) + overstated, chunk)
                    for chunk in chunks) + b'0\r\n\r\n'


class ServerTestCase(unittest.TestCase):
    """Runs one server for the whole class on a directory of test files."""

    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tmpdir = ''
    root = ''
    server: RangeServer

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmpdir = tempfile.mkdtemp(prefix='range-server-selftest-')
        cls.root = os.path.join(cls.tmpdir, 'root')
        os.mkdir(cls.root)
        os.mkdir(os.path.join(cls.root, 'subdir'))
        cls.write_file('data.img', DATA)
        cls.write_file('small.img', SMALL)
        cls.write_file('empty.img', b'')
        cls.write_file('subdir/file name.img', SMALL)
        # Outside the root: must never be served
        with open(os.path.join(cls.tmpdir, 'secret.txt'), 'wb') as f:
            f.write(b'secret')
        cls.prepare()
        cls.server = RangeServer(cls.root, cls.tls_cert, cls.tls_key)
        cls.server.start()

    @classmethod
    def prepare(cls) -> None:
        """Hook for subclasses, run before the server starts."""

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        shutil.rmtree(cls.tmpdir)

    @classmethod
    def write_file(cls, name: str, data: bytes) -> str:
        """Create or replace file @name in the served directory."""
        path = os.path.join(cls.root, name)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def setUp(self) -> None:
        self.server.reset()

    def connect(self) -> http.client.HTTPConnection:
        """Open a client connection to the server."""
        conn = http.client.HTTPConnection('127.0.0.1', self.server.port,
                                          timeout=10)
        self.addCleanup(conn.close)
        return conn

    def request(self, method: str, name: str,
                headers: Optional[Dict[str, str]] = None,
                conn: Optional[http.client.HTTPConnection] = None
                ) -> Response:
        """Make a request and return status, headers and body."""
        if conn is None:
            conn = self.connect()
        conn.request(method, name, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return (resp.status,
                {k.lower(): v for k, v in resp.getheaders()}, body)

    def get_range(self, name: str, value: str) -> Response:
        """GET @name with Range: @value."""
        return self.request('GET', name, {'Range': value})

    def raw_exchange(self, request: bytes) -> bytes:
        """Send a raw request and return all the server sends until EOF."""
        with socket.create_connection(('127.0.0.1', self.server.port),
                                      timeout=10) as sock:
            sock.sendall(request)
            received = b''
            while True:
                data = sock.recv(65536)
                if not data:
                    return received
                received += data

    def raw_request(self, method: str, name: str,
                    headers: Optional[Dict[str, str]] = None,
                    close: bool = True) -> bytes:
        """Make a raw request and return all the server sends until EOF:
        the server must close the connection itself unless @close."""
        lines = [f'{method} {name} HTTP/1.1', 'Host: x']
        lines += [f'{key}: {value}' for key, value in (headers or {}).items()]
        if close:
            lines.append('Connection: close')
        return self.raw_exchange(('\r\n'.join(lines) + '\r\n\r\n').encode())

    def set_faults(self, rules: List[Dict[str, Any]]) -> None:
        self.server.set_faults(rules)


class RangeTest(ServerTestCase):
    """Plain file serving and byte ranges."""

    def test_head_headers(self) -> None:
        status, headers, body = self.request('HEAD', '/data.img')
        self.assertEqual(status, 200)
        self.assertEqual(body, b'')
        self.assertEqual(headers['content-length'], str(len(DATA)))
        self.assertEqual(headers['accept-ranges'], 'bytes')
        self.assertEqual(headers['content-type'], 'application/octet-stream')
        self.assertRegex(headers['etag'], r'^"[0-9a-f-]+"$')
        mtime = os.stat(os.path.join(self.root, 'data.img')).st_mtime
        self.assertEqual(headers['last-modified'],
                         email.utils.formatdate(mtime, usegmt=True))
        self.assertEqual(self.server.stats()['bytes_sent'], 0)

    def test_get_full(self) -> None:
        status, headers, body = self.request('GET', '/data.img')
        self.assertEqual(status, 200)
        self.assertEqual(body, DATA)
        self.assertEqual(headers['content-length'], str(len(DATA)))
        self.assertNotIn('content-range', headers)

    def test_percent_encoded_path(self) -> None:
        status, _, body = self.request('GET', '/subdir/file%20name.img')
        self.assertEqual((status, body), (200, SMALL))
        self.assertEqual(self.server.url('subdir/file name.img'),
                         f'http://127.0.0.1:{self.server.port}'
                         '/subdir/file%20name.img')

    def test_range_forms(self) -> None:
        size = len(DATA)
        cases = [('bytes=0-0', 0, 0),
                 ('bytes=100-199', 100, 199),
                 ('bytes=1000-', 1000, size - 1),
                 ('bytes=-500', size - 500, size - 1),
                 ('bytes=-999999', 0, size - 1),
                 ('bytes=299990-400000', 299990, size - 1),
                 ('Bytes = 5 - 9', 5, 9),
                 ('bytes=0-200000', 0, 200000)]
        for value, first, last in cases:
            with self.subTest(range=value):
                status, headers, body = self.get_range('/data.img', value)
                self.assertEqual(status, 206)
                self.assertEqual(headers['content-range'],
                                 f'bytes {first}-{last}/{size}')
                self.assertEqual(headers['content-length'],
                                 str(last - first + 1))
                self.assertEqual(body, DATA[first:last + 1])

    def test_head_with_range(self) -> None:
        status, headers, body = self.request('HEAD', '/data.img',
                                             {'Range': 'bytes=10-19'})
        self.assertEqual((status, body), (206, b''))
        self.assertEqual(headers['content-range'],
                         f'bytes 10-19/{len(DATA)}')
        self.assertEqual(headers['content-length'], '10')

    def test_unsatisfiable(self) -> None:
        size = len(DATA)
        for value in (f'bytes={size}-', f'bytes={size + 10}-{size + 20}',
                      'bytes=-0'):
            with self.subTest(range=value):
                status, headers, body = self.get_range('/data.img', value)
                self.assertEqual(status, 416)
                self.assertEqual(headers['content-range'], f'bytes */{size}')
                self.assertEqual(headers['content-length'], '0')
                self.assertEqual(body, b'')

    def test_ignored_ranges(self) -> None:
        for value in ('bytes=0-1,5-6', 'bytes=abc', 'bytes=9-2', 'bytes=-',
                      'items=0-1', 'bytes=1-2-3'):
            with self.subTest(range=value):
                status, headers, body = self.get_range('/data.img', value)
                self.assertEqual(status, 200)
                self.assertNotIn('content-range', headers)
                self.assertEqual(body, DATA)

    def test_if_range(self) -> None:
        etag = self.request('HEAD', '/small.img')[1]['etag']
        status, _, body = self.request(
            'GET', '/small.img', {'Range': 'bytes=0-3', 'If-Range': etag})
        self.assertEqual((status, body), (206, SMALL[:4]))
        status, _, body = self.request(
            'GET', '/small.img', {'Range': 'bytes=0-3',
                                  'If-Range': '"stale"'})
        self.assertEqual((status, body), (200, SMALL))

    def test_zero_length(self) -> None:
        status, headers, body = self.request('GET', '/empty.img')
        self.assertEqual((status, headers['content-length'], body),
                         (200, '0', b''))
        for value in ('bytes=0-0', 'bytes=0-', 'bytes=-1'):
            with self.subTest(range=value):
                status, headers, _ = self.get_range('/empty.img', value)
                self.assertEqual(status, 416)
                self.assertEqual(headers['content-range'], 'bytes */0')

    def test_not_found(self) -> None:
        for path in ('/missing.img', '/subdir', '/', '/../secret.txt',
                     '/%2e%2e/secret.txt', '/subdir/../../secret.txt'):
            with self.subTest(path=path):
                self.assertEqual(self.request('GET', path)[0], 404)
        # A raw request line, in case a client library normalises paths
        data = self.raw_exchange(b'GET /../secret.txt HTTP/1.1\r\n'
                                 b'Host: x\r\nConnection: close\r\n\r\n')
        self.assertEqual(parse_raw_response(data)[0], 404)

    def test_unknown_method(self) -> None:
        self.assertEqual(self.request('PUT', '/data.img')[0], 501)
        self.assertEqual(self.request('POST', '/data.img')[0], 501)

    def test_keep_alive(self) -> None:
        conn = self.connect()
        self.assertEqual(self.request('HEAD', '/data.img', conn=conn)[0], 200)
        for _ in range(2):
            status, _, body = self.request('GET', '/data.img',
                                           {'Range': 'bytes=0-99'}, conn)
            self.assertEqual((status, body), (206, DATA[:100]))
        stats = self.server.stats()
        self.assertEqual((stats['requests'], stats['connections']), (3, 1))
        self.assertEqual(len({e['client_port'] for e in stats['log']}), 1)

    def test_connection_close(self) -> None:
        # recv() only sees EOF if the server closes after the response
        data = self.raw_exchange(b'GET /small.img HTTP/1.1\r\nHost: x\r\n'
                                 b'Connection: close\r\n\r\n')
        status, headers, body = parse_raw_response(data)
        self.assertEqual((status, body), (200, SMALL))
        self.assertEqual(headers['connection'], 'close')

    def test_changed_file(self) -> None:
        path = self.write_file('changing.img', SMALL)
        os.utime(path, ns=(10**18, 10**18))
        first = self.request('HEAD', '/changing.img')[1]
        self.write_file('changing.img', SMALL[::-1])
        os.utime(path, ns=(10**18 + 1000, 10**18 + 1000))
        status, second, body = self.request('GET', '/changing.img')
        self.assertEqual((status, body), (200, SMALL[::-1]))
        self.assertNotEqual(first['etag'], second['etag'])
        self.write_file('changing.img', SMALL * 2)
        third = self.request('HEAD', '/changing.img')[1]
        self.assertEqual(third['content-length'], str(len(SMALL) * 2))
        self.assertNotEqual(third['etag'], second['etag'])

    def test_stats(self) -> None:
        self.request('HEAD', '/data.img')
        self.get_range('/data.img', 'bytes=0-99')
        self.get_range('/data.img', 'bytes=1000-1999')
        self.get_range('/data.img', 'bytes=-50')
        self.request('GET', '/small.img')
        stats = self.server.stats()
        self.assertEqual(stats['requests'], 5)
        self.assertEqual(stats['bytes_sent'], 100 + 1000 + 50 + len(SMALL))
        self.assertEqual(stats['connections'], 5)
        log = stats['log']
        self.assertEqual([e['seq'] for e in log], [1, 2, 3, 4, 5])
        self.assertEqual([e['method'] for e in log], ['HEAD'] + ['GET'] * 4)
        self.assertEqual(log[0]['range'], None)
        self.assertEqual(log[1]['range'], 'bytes=0-99')
        self.assertEqual([e['served'] for e in log],
                         [None, [0, 99], [1000, 1999],
                          [len(DATA) - 50, len(DATA) - 1],
                          [0, len(SMALL) - 1]])
        self.assertEqual([e['status'] for e in log], [200, 206, 206, 206, 200])
        self.assertEqual(sum(e['bytes_sent'] for e in log),
                         stats['bytes_sent'])
        self.assertTrue(all(e['fault'] is None for e in log))
        self.server.reset()
        self.assertEqual(self.server.stats(), {'requests': 0, 'bytes_sent': 0,
                                               'connections': 0, 'log': []})

    def test_reset_counts_reused_connection(self) -> None:
        conn = self.connect()
        self.request('GET', '/small.img', conn=conn)
        self.server.reset()
        self.request('GET', '/small.img', conn=conn)
        stats = self.server.stats()
        self.assertEqual((stats['requests'], stats['connections']), (1, 1))

    def test_curl_range(self) -> None:
        out = curl('-r', '10-19', self.server.url('data.img'))
        self.assertEqual(out, DATA[10:20])
        self.assertEqual(self.server.stats()['bytes_sent'], 10)

    def test_curl_reuses_connection(self) -> None:
        out = curl(self.server.url('small.img'), self.server.url('data.img'))
        self.assertEqual(out, SMALL + DATA)
        stats = self.server.stats()
        self.assertEqual((stats['requests'], stats['connections']), (2, 1))


class FaultTest(ServerTestCase):
    """The fault actions and rule matching."""

    def test_status(self) -> None:
        self.set_faults([{'action': 'status', 'code': 503, 'times': 1}])
        conn = self.connect()
        status, headers, body = self.request('GET', '/small.img', conn=conn)
        self.assertEqual(status, 503)
        self.assertEqual(headers['content-length'], str(len(body)))
        self.assertIn(b'503', body)
        # The connection stays usable
        self.assertEqual(self.request('GET', '/small.img', conn=conn)[:3:2],
                         (200, SMALL))
        stats = self.server.stats()
        self.assertEqual(stats['connections'], 1)
        self.assertEqual([e['status'] for e in stats['log']], [503, 200])
        self.assertEqual([e['fault'] for e in stats['log']], ['status', None])

    def test_status_retry_after(self) -> None:
        self.set_faults([{'action': 'status', 'code': 429,
                          'retry-after': 3}])
        status, headers, _ = self.request('GET', '/small.img')
        self.assertEqual((status, headers.get('retry-after')), (429, '3'))
        self.assertEqual(self.server.faults()[0]['retry-after'], '3')
        # Without "retry-after", no header
        self.set_faults([{'action': 'status', 'code': 503}])
        status, headers, _ = self.request('GET', '/small.img')
        self.assertEqual((status, headers.get('retry-after')), (503, None))

    def test_all_headers_logged(self) -> None:
        self.request('GET', '/small.img', {'X-Api-Key': 'k1', 'Cookie': 'c'})
        headers = self.server.stats()['log'][0]['headers']
        self.assertEqual((headers['x-api-key'], headers['cookie']),
                         ('k1', 'c'))

    def test_required_any_header(self) -> None:
        self.server.require(x_api_key='k1')
        self.assertEqual(self.request('GET', '/small.img')[0], 401)
        self.assertEqual(self.request('GET', '/small.img',
                                      {'X-Api-Key': 'k1'})[0], 200)
        with self.assertRaises(RuntimeError):
            self.server.require(**{'bad name': 'x'})

    def test_required_headers(self) -> None:
        self.server.require(cookie='a=1', proxy_authorization='Basic eA==')
        status, headers, _ = self.request('GET', '/small.img',
                                          {'Cookie': 'a=1'})
        self.assertEqual(status, 407)
        self.assertIn('proxy-authenticate', headers)
        status, headers, _ = self.request(
            'GET', '/small.img', {'Proxy-Authorization': 'Basic eA=='})
        self.assertEqual(status, 401)
        self.assertIn('www-authenticate', headers)
        # As a proxy: the target is a whole URL
        conn = self.connect()
        conn.request('GET', 'http://127.0.0.1:1/small.img',
                     headers={'Cookie': 'a=1',
                              'Proxy-Authorization': 'Basic eA=='})
        resp = conn.getresponse()
        self.assertEqual((resp.status, resp.read()), (200, SMALL))
        log = self.server.stats()['log']
        self.assertEqual([e['status'] for e in log], [407, 401, 200])
        self.assertEqual(log[2]['target'], 'http://127.0.0.1:1/small.img')
        self.assertEqual(log[2]['cookie'], 'a=1')
        self.assertEqual(log[1]['proxy_authorization'], 'Basic eA==')
        # reset() forgets the requirement
        self.server.reset()
        self.assertEqual(self.request('GET', '/small.img')[0], 200)

    def test_no_head(self) -> None:
        self.set_faults([{'action': 'no-head', 'times': 1}])
        self.assertEqual(self.request('GET', '/small.img')[0], 200)
        status, headers, _ = self.request('HEAD', '/small.img')
        self.assertEqual((status, headers['allow']), (405, 'GET'))
        self.assertEqual(self.request('HEAD', '/small.img')[0], 200)

    def test_ignore_range(self) -> None:
        self.set_faults([{'action': 'ignore-range'}])
        status, headers, body = self.get_range('/data.img', 'bytes=0-9')
        self.assertEqual((status, body), (200, DATA))
        self.assertNotIn('accept-ranges', headers)
        self.assertNotIn('accept-ranges',
                         self.request('HEAD', '/data.img')[1])

    def test_ignore_if_range(self) -> None:
        self.set_faults([{'action': 'ignore-if-range'}])
        status, headers, body = self.request(
            'GET', '/small.img', {'Range': 'bytes=0-3',
                                  'If-Range': '"stale"'})
        self.assertEqual((status, body), (206, SMALL[:4]))
        self.assertEqual(headers['content-range'], f'bytes 0-3/{len(SMALL)}')

    def test_no_accept_ranges(self) -> None:
        self.set_faults([{'action': 'no-accept-ranges'}])
        self.assertNotIn('accept-ranges',
                         self.request('HEAD', '/data.img')[1])
        status, headers, body = self.get_range('/data.img', 'bytes=0-9')
        self.assertEqual((status, body), (206, DATA[:10]))
        self.assertNotIn('accept-ranges', headers)

    def test_wrong_range(self) -> None:
        self.set_faults([{'action': 'wrong-range', 'shift': 10}])
        status, headers, body = self.get_range('/data.img', 'bytes=100-199')
        self.assertEqual(status, 206)
        self.assertEqual(headers['content-range'],
                         f'bytes 110-209/{len(DATA)}')
        self.assertEqual(body, DATA[110:210])
        # Moved back where moving on would pass the end of the file
        status, headers, body = self.get_range('/data.img', 'bytes=-100')
        self.assertEqual(headers['content-range'],
                         f'bytes {len(DATA) - 110}-{len(DATA) - 11}/'
                         f'{len(DATA)}')
        self.assertEqual(body, DATA[-110:-10])
        self.assertEqual(self.server.stats()['log'][-1]['fault'],
                         'wrong-range')
        # All of the file cannot move: answered as asked, not logged as hit
        status, headers, body = self.get_range('/data.img',
                                               f'bytes=0-{len(DATA) - 1}')
        self.assertEqual((status, body), (206, DATA))
        self.assertIsNone(self.server.stats()['log'][-1]['fault'])
        self.set_faults([{'action': 'wrong-range'}])
        status, headers, body = self.get_range('/data.img', 'bytes=0-9')
        self.assertEqual(headers['content-range'], f'bytes 1-10/{len(DATA)}')
        self.assertEqual(body, DATA[1:11])
        self.assertEqual(self.server.stats()['log'][-1]['served'], [1, 10])

    def test_short(self) -> None:
        self.set_faults([{'action': 'short', 'bytes': 100, 'times': 1}])
        # The HEAD does not use up a rule acting on bodies
        self.assertEqual(self.request('HEAD', '/data.img')[0], 200)
        # recv() sees EOF after 100 body bytes: the server closed
        data = self.raw_exchange(b'GET /data.img HTTP/1.1\r\nHost: x\r\n'
                                 b'Range: bytes=0-99999\r\n\r\n')
        status, headers, body = parse_raw_response(data)
        self.assertEqual(status, 206)
        self.assertEqual(headers['content-length'], '100000')
        self.assertEqual(body, DATA[:100])
        log = self.server.stats()['log']
        self.assertEqual((log[1]['bytes_sent'], log[1]['fault']),
                         (100, 'short'))
        # http.client notices the truncation too
        self.set_faults([{'action': 'short', 'bytes': 70000}])
        conn = self.connect()
        conn.request('GET', '/data.img')
        resp = conn.getresponse()
        with self.assertRaises(http.client.IncompleteRead) as ctx:
            resp.read()
        self.assertEqual(ctx.exception.partial, DATA[:70000])

    def test_close(self) -> None:
        self.set_faults([{'action': 'close', 'times': 1}])
        data = self.raw_exchange(b'GET /small.img HTTP/1.1\r\n'
                                 b'Host: x\r\n\r\n')
        self.assertEqual(data, b'')
        self.assertEqual(self.request('GET', '/small.img')[0], 200)
        log = self.server.stats()['log']
        self.assertEqual([(e['status'], e['fault']) for e in log],
                         [(None, 'close'), (200, None)])

    def test_stall(self) -> None:
        self.set_faults([{'action': 'stall', 'bytes': 1000,
                          'seconds': 0.5}])
        conn = self.connect()
        start = time.monotonic()
        conn.request('GET', '/data.img', headers={'Range': 'bytes=0-4999'})
        resp = conn.getresponse()
        self.assertEqual(resp.read(1000), DATA[:1000])
        log = self.server.stats()['log']
        self.assertEqual((log[0]['bytes_sent'], log[0]['fault']),
                         (1000, 'stall'))
        self.assertEqual(resp.read(), DATA[1000:5000])
        self.assertGreaterEqual(time.monotonic() - start, 0.45)
        # Then on the same connection, the next request is normal
        status, _, body = self.request('GET', '/small.img', conn=conn)
        self.assertEqual((status, body), (200, SMALL))
        self.assertEqual(self.server.stats()['bytes_sent'],
                         5000 + len(SMALL))

    def test_delay(self) -> None:
        self.set_faults([{'action': 'delay', 'seconds': 0.3}])
        start = time.monotonic()
        status, _, body = self.get_range('/small.img', 'bytes=0-4')
        self.assertGreaterEqual(time.monotonic() - start, 0.28)
        self.assertEqual((status, body), (206, SMALL[:5]))

    def test_delay_then_next_rule(self) -> None:
        # After the delay, the rules that follow decide
        self.set_faults([{'action': 'delay', 'seconds': 0, 'times': 1},
                         {'action': 'status', 'code': 503, 'times': 1}])
        self.assertEqual(self.get_range('/small.img', 'bytes=0-4')[0], 503)
        self.assertEqual(self.server.stats()['log'][-1]['fault'],
                         'delay+status')
        self.assertEqual(self.get_range('/small.img', 'bytes=0-4')[0], 206)

    def read_until_reset(self, request: bytes) -> Tuple[bytes, bool]:
        """Send a raw request; return what came before the connection
        ended, and whether it ended with a reset rather than an EOF."""
        with socket.create_connection(('127.0.0.1', self.server.port),
                                      timeout=10) as sock:
            sock.sendall(request)
            received = b''
            while True:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    return received, True
                if not data:
                    return received, False
                received += data

    def test_reset(self) -> None:
        self.set_faults([{'action': 'reset', 'bytes': 1000, 'times': 1}])
        # The HEAD does not use up a rule acting on bodies
        self.assertEqual(self.request('HEAD', '/data.img')[0], 200)
        data, reset = self.read_until_reset(
            b'GET /data.img HTTP/1.1\r\nHost: x\r\n'
            b'Range: bytes=0-99999\r\n\r\n')
        self.assertTrue(reset, 'the connection ended with a FIN')
        status, headers, body = parse_raw_response(data)
        self.assertEqual((status, headers['content-length']), (206, '100000'))
        # The bytes before the reset were acknowledged: none is lost
        self.assertEqual(body, DATA[:1000])
        log = self.server.stats()['log']
        self.assertEqual((log[1]['bytes_sent'], log[1]['fault']),
                         (1000, 'reset'))
        # Once: the next request is answered in full
        self.assertEqual(self.get_range('/data.img', 'bytes=0-99999')[2],
                         DATA[:100000])

    def test_reset_curl(self) -> None:
        self.set_faults([{'action': 'reset', 'bytes': 10}])
        proc = subprocess.run(['curl', '--silent', '--show-error',
                               '--noproxy', '*', '-r', '0-9999',
                               self.server.url('data.img')],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=20, check=False)
        self.assertEqual(proc.returncode, 56, proc.stderr)   # recv error
        self.assertIn(b'Connection reset by peer', proc.stderr)
        self.assertEqual(proc.stdout, DATA[:10])

    def test_trickle(self) -> None:
        self.set_faults([{'action': 'trickle', 'bytes': 20,
                          'seconds': 0.05, 'times': 1}])
        self.assertEqual(self.request('HEAD', '/data.img')[0], 200)
        start = time.monotonic()
        status, _, body = self.get_range('/data.img', 'bytes=10-5009')
        # 19 waits between the first 20 bytes, then the rest at once
        self.assertGreaterEqual(time.monotonic() - start, 19 * 0.05 * 0.95)
        self.assertEqual((status, body), (206, DATA[10:5010]))
        log = self.server.stats()['log']
        self.assertEqual((log[1]['bytes_sent'], log[1]['fault']),
                         (5000, 'trickle'))
        # A body shorter than the trickle is trickled whole
        self.set_faults([{'action': 'trickle', 'bytes': 100,
                          'seconds': 0}])
        self.assertEqual(self.get_range('/data.img', 'bytes=0-9')[2],
                         DATA[:10])

    def test_long(self) -> None:
        self.set_faults([{'action': 'long', 'bytes': 50}])
        status, headers, body = self.get_range('/data.img', 'bytes=100-199')
        self.assertEqual(status, 206)
        self.assertEqual(headers['content-range'],
                         f'bytes 100-199/{len(DATA)}')
        self.assertEqual(headers['content-length'], '150')
        self.assertEqual(body, DATA[100:250])
        # Past the end of the file: zeroes
        status, headers, body = self.get_range('/data.img', 'bytes=-10')
        self.assertEqual(headers['content-length'], '60')
        self.assertEqual(body, DATA[-10:] + bytes(50))
        log = self.server.stats()['log']
        self.assertEqual([(e['served'], e['bytes_sent']) for e in log],
                         [([100, 249], 150),
                          ([len(DATA) - 10, len(DATA) + 49], 60)])
        # The default is 4096 more; a HEAD is answered normally
        self.set_faults([{'action': 'long'}])
        self.assertEqual(len(self.get_range('/data.img', 'bytes=0-9')[2]),
                         4106)
        self.assertEqual(self.request('HEAD', '/data.img')[1]
                         ['content-length'], str(len(DATA)))

    def test_gzip(self) -> None:
        self.set_faults([{'action': 'gzip'}])
        status, headers, body = self.get_range('/data.img', 'bytes=100-70099')
        self.assertEqual(status, 206)
        self.assertEqual(headers['content-encoding'], 'gzip')
        self.assertEqual(headers['content-range'],
                         f'bytes 100-70099/{len(DATA)}')
        self.assertEqual(headers['content-length'], str(len(body)))
        self.assertEqual(gzip.decompress(body), DATA[100:70100])
        self.assertEqual(self.server.stats()['log'][0]['bytes_sent'],
                         len(body))
        status, headers, body = self.request('GET', '/small.img')
        self.assertEqual((status, gzip.decompress(body)), (200, SMALL))
        # A HEAD is left alone, unless the rule says HEAD
        self.assertNotIn('content-encoding',
                         self.request('HEAD', '/data.img')[1])
        self.set_faults([{'action': 'gzip', 'method': 'HEAD'}])
        status, headers, body = self.request('HEAD', '/data.img')
        self.assertEqual((status, headers['content-encoding'], body),
                         (200, 'gzip', b''))

    def test_no_etag(self) -> None:
        etag = self.request('HEAD', '/small.img')[1]['etag']
        self.set_faults([{'action': 'no-etag'}])
        status, headers, _ = self.request('HEAD', '/small.img')
        self.assertEqual(status, 200)
        self.assertNotIn('etag', headers)
        last_modified = headers['last-modified']
        # If-Range: only the date it still sends is a validator
        status, headers, body = self.request(
            'GET', '/small.img', {'Range': 'bytes=0-3',
                                  'If-Range': last_modified})
        self.assertEqual((status, body), (206, SMALL[:4]))
        self.assertNotIn('etag', headers)
        status, _, body = self.request(
            'GET', '/small.img', {'Range': 'bytes=0-3', 'If-Range': etag})
        self.assertEqual((status, body), (200, SMALL))
        self.assertEqual([e['fault'] for e in self.server.stats()['log']],
                         [None, 'no-etag', 'no-etag', 'no-etag'])

    def test_no_etag_then_next_rules(self) -> None:
        # Like a delay, the rules that follow decide
        self.set_faults([{'action': 'no-etag'},
                         {'action': 'delay', 'seconds': 0, 'times': 1},
                         {'action': 'ignore-if-range'}])
        status, headers, body = self.request(
            'GET', '/small.img', {'Range': 'bytes=0-3',
                                  'If-Range': '"stale"'})
        self.assertEqual((status, body), (206, SMALL[:4]))
        self.assertNotIn('etag', headers)
        status, headers, _ = self.request('HEAD', '/small.img')
        self.assertNotIn('etag', headers)
        self.assertEqual([e['fault'] for e in self.server.stats()['log']],
                         ['no-etag+delay+ignore-if-range',
                          'no-etag+ignore-if-range'])

    def test_every(self) -> None:
        self.set_faults([{'action': 'status', 'code': 503, 'skip': 1,
                          'every': 3, 'times': 2}])
        statuses = [self.request('GET', '/small.img')[0] for _ in range(9)]
        self.assertEqual(statuses, [200, 200, 200, 503, 200, 200, 503,
                                    200, 200])
        [rule] = self.server.faults()
        self.assertEqual((rule['every'], rule['times'], rule['hits']),
                         (3, 0, 2))

    def test_per_range(self) -> None:
        self.set_faults([{'action': 'status', 'code': 503, 'times': 1,
                          'per-range': True}])
        ranges = ['bytes=0-99', 'bytes=0-99', 'bytes=100-199',
                  # The rest of a range is the same range
                  'bytes=50-99', 'bytes=150-199', 'bytes=100-199',
                  # No range, and an open-ended one: to the end
                  None, 'bytes=10-', 'bytes=-5']
        statuses = [self.request('GET', '/data.img',
                                 {'Range': r} if r else {})[0]
                    for r in ranges]
        self.assertEqual(statuses, [503, 206, 503, 206, 206, 206, 503,
                                    206, 206])
        [rule] = self.server.faults()
        self.assertEqual((rule['per-range'], rule['ranges'], rule['times'],
                          rule['hits']), (True, 3, 1, 3))

    def test_per_range_skip_every(self) -> None:
        # After the first request of each range end, every second one is
        # cut short: "skip" and "every" count per range too
        self.set_faults([{'action': 'short', 'bytes': 10, 'skip': 1,
                          'every': 2, 'per-range': True}])
        faults = []
        for value in ('bytes=0-99', 'bytes=100-199', 'bytes=0-99',
                      'bytes=0-99', 'bytes=100-199', 'bytes=0-99'):
            self.raw_exchange(f'GET /data.img HTTP/1.1\r\nHost: x\r\n'
                              f'Range: {value}\r\nConnection: close\r\n'
                              '\r\n'.encode())
            faults.append(self.server.stats()['log'][-1]['fault'])
        self.assertEqual(faults, [None, None, None, 'short', None, None])

    def test_release(self) -> None:
        for rule in ({'action': 'delay', 'seconds': 120},
                     {'action': 'stall', 'bytes': 10, 'seconds': 120}):
            with self.subTest(action=rule['action']):
                self.server.reset()
                self.set_faults([rule])
                results: List[Response] = []
                thread = threading.Thread(target=lambda: results.append(
                    self.get_range('/data.img', 'bytes=0-99')))
                start = time.monotonic()
                thread.start()
                while not self.server.stats()['log']:
                    time.sleep(0.01)
                self.server.release()
                thread.join(timeout=60)
                self.assertLess(time.monotonic() - start, 60)
                self.assertEqual(results[0][::2], (206, DATA[:100]))
                self.assertEqual(self.server.stats()['log'][0]['fault'],
                                 rule['action'])

    def test_redirect(self) -> None:
        self.set_faults([{'path': '/alias.img', 'action': 'redirect',
                          'location': '/data.img'}])
        status, headers, body = self.request('GET', '/alias.img')
        self.assertEqual((status, headers['location'], body),
                         (302, '/data.img', b''))
        self.assertEqual(headers['content-length'], '0')
        self.assertEqual(curl('-L', '-r', '0-9',
                              self.server.url('alias.img')), DATA[:10])
        log = self.server.stats()['log']
        self.assertEqual([(e['path'], e['status']) for e in log],
                         [('/alias.img', 302), ('/alias.img', 302),
                          ('/data.img', 206)])

    def test_redirect_spares_target(self) -> None:
        target = self.server.url('data.img')
        self.set_faults([{'action': 'redirect', 'code': 301,
                          'location': target}])
        status, headers, _ = self.request('HEAD', '/small.img')
        self.assertEqual((status, headers['location']), (301, target))
        self.assertEqual(self.request('GET', '/data.img')[0], 200)

    def test_length_mismatch(self) -> None:
        self.set_faults([{'action': 'length-mismatch'}])
        total = len(DATA) + 4096
        status, headers, _ = self.request('HEAD', '/data.img')
        self.assertEqual((status, headers['content-length']),
                         (200, str(total)))
        status, headers, body = self.get_range('/data.img', 'bytes=0-9')
        self.assertEqual(headers['content-range'], f'bytes 0-9/{total}')
        self.assertEqual(body, DATA[:10])
        status, headers, body = self.request('GET', '/data.img')
        self.assertEqual(headers['content-length'], str(len(DATA)))
        self.assertEqual(body, DATA)

    def test_skip_and_times(self) -> None:
        self.set_faults([{'path': '/small.img', 'action': 'status',
                          'code': 500, 'skip': 1, 'times': 2}])
        statuses = [self.request('GET', '/small.img')[0] for _ in range(4)]
        self.assertEqual(statuses, [200, 500, 500, 200])
        [rule] = self.server.faults()
        self.assertEqual((rule['skip'], rule['times'], rule['hits']),
                         (0, 0, 2))

    def test_rule_from_byte(self) -> None:
        """A rule with "from" applies only to ranges that start there or
        later; a request without a Range starts at byte 0."""
        self.set_faults([{'action': 'status', 'code': 503, 'from': 4096}])
        statuses = [self.get_range('/data.img', value)[0]
                    for value in ('bytes=0-4095', 'bytes=4095-8191',
                                  'bytes=4096-8191', 'bytes=9000-')]
        self.assertEqual(statuses, [206, 206, 503, 503])
        self.assertEqual(self.request('GET', '/data.img')[0], 200)
        [rule] = self.server.faults()
        self.assertEqual((rule['from'], rule['hits']), (4096, 2))

    def test_rule_matching(self) -> None:
        self.set_faults([{'path': '/small.img', 'action': 'status',
                          'code': 404},
                         {'method': 'HEAD', 'action': 'status', 'code': 403},
                         {'action': 'status', 'code': 503}])
        self.assertEqual(self.request('HEAD', '/small.img')[0], 404)
        self.assertEqual(self.request('HEAD', '/data.img')[0], 403)
        self.assertEqual(self.request('GET', '/data.img')[0], 503)
        # Control requests are neither faulted nor counted
        self.assertEqual(self.server.stats()['requests'], 3)

    def test_rule_list_replaced(self) -> None:
        self.set_faults([{'action': 'status', 'code': 503}])
        self.set_faults([{'action': 'no-accept-ranges'}])
        self.assertEqual([r['action'] for r in self.server.faults()],
                         ['no-accept-ranges'])
        self.set_faults([])
        self.assertEqual(self.server.faults(), [])
        self.set_faults([{'action': 'close'}])
        self.server.reset()
        self.assertEqual(self.server.faults(), [])
        self.assertEqual(self.request('GET', '/small.img')[0], 200)

    def test_invalid_rules(self) -> None:
        bad_rules: List[Dict[str, Any]] = [
            {'action': 'explode'}, {'action': 'status'},
            {'action': 'status', 'code': 200}, {'action': 'short'},
            {'action': 'delay'}, {'action': 'redirect'},
            {'action': 'close', 'x': 1}, {'action': 'close', 'times': 'once'},
            {'action': 'close', 'times': True},
            {'action': 'close', 'method': 'PUT'},
            {'action': 'status', 'code': 503, 'retry-after': [1]},
            {'action': 'close', 'retry-after': 1},
            {'action': 'trickle'},
            {'action': 'trickle', 'bytes': 5, 'seconds': -1},
            {'action': 'long', 'bytes': 0},
            {'action': 'close', 'every': 0},
            {'action': 'close', 'per-range': 1},
            {'action': 'header', 'value': 'x'},
            {'action': 'header', 'name': 'X-A'},
            {'action': 'header', 'name': 'Bad Name', 'value': 'x'},
            {'action': 'header', 'name': 'X-A', 'value': 5},
            {'action': 'header', 'name': 'X-A', 'value': []},
            {'action': 'header', 'name': 'X-A', 'value': ['a', 1]},
            {'action': 'header', 'name': 'X-A', 'value': 'a\r\nX-B: b'},
            {'action': 'header', 'name': 'X-A', 'value': '$nothing'},
            {'action': 'header', 'name': 'X-A', 'value': ['$first', '$']},
            {'action': 'status', 'code': 503, 'name': 'X-A'},
            {'action': 'chunked', 'bytes': 0},
            {'action': 'chunked', 'extra': 3},
            {'action': 'bad-chunks', 'extra': 0}]
        for rule in bad_rules:
            with self.subTest(rule=rule):
                with self.assertRaises(RuntimeError):
                    self.set_faults([rule])
        # A bad list leaves the current rules alone
        self.set_faults([{'action': 'status', 'code': 503}])
        with self.assertRaises(RuntimeError):
            self.set_faults([{'action': 'close'}, {'action': 'bad'}])
        self.assertEqual(len(self.server.faults()), 1)


class HeaderFaultTest(ServerTestCase):
    """The actions that change the headers or the framing of answers."""

    def test_header(self) -> None:
        self.set_faults([
            {'action': 'header', 'name': 'X-Test', 'value': 'a'},
            {'action': 'header', 'name': 'content-range',
             'value': 'bytes 0-0/-1'},
            {'action': 'header', 'name': 'ETag', 'value': None}])
        # HEAD and GET alike; the body is the range asked for
        for method, body in (('HEAD', b''), ('GET', DATA[10:20])):
            with self.subTest(method=method):
                status, headers, got = self.request(method, '/data.img',
                                                    {'Range': 'bytes=10-19'})
                self.assertEqual((status, headers['x-test'],
                                  headers['content-range'],
                                  headers['content-length'], got),
                                 (206, 'a', 'bytes 0-0/-1', '10', body))
                self.assertNotIn('etag', headers)
                self.assertIn('last-modified', headers)
        self.assertEqual([e['fault'] for e in self.server.stats()['log']],
                         ['header+header+header'] * 2)

    def test_header_in_rule_order(self) -> None:
        self.set_faults([{'action': 'header', 'name': 'X-Test', 'value': 'a'},
                         {'action': 'header', 'name': 'x-test',
                          'value': None},
                         {'action': 'header', 'name': 'X-Other',
                          'value': 'b', 'method': 'HEAD'},
                         {'action': 'header', 'name': 'X-Other',
                          'value': 'c'}])
        # Later rules win; a HEAD also gets the rule for HEAD only
        for method in ('GET', 'HEAD'):
            headers = self.request(method, '/small.img')[1]
            self.assertNotIn('x-test', headers)
            self.assertEqual(headers['x-other'], 'c')
        self.assertEqual([e['fault'] for e in self.server.stats()['log']],
                         ['+'.join(['header'] * 3), '+'.join(['header'] * 4)])

    def test_header_list(self) -> None:
        self.set_faults([{'action': 'header', 'name': 'Content-Length',
                          'value': ['10', '11']}])
        data = self.raw_request('GET', '/data.img', {'Range': 'bytes=0-9'},
                                close=False)
        self.assertEqual([v for k, v in raw_header_fields(data)
                          if k == 'content-length'], ['10', '11'])
        self.assertEqual(parse_raw_response(data)[2], DATA[:10])

    def test_header_framing_closes(self) -> None:
        # The body stays the range asked for; the server closes after it,
        # even though the client did not ask it to
        for name, value in (('Content-Length', '+20'),
                            ('Transfer-Encoding', 'chunked')):
            with self.subTest(name=name):
                self.set_faults([{'action': 'header', 'name': name,
                                  'value': value}])
                status, headers, body = parse_raw_response(self.raw_request(
                    'GET', '/data.img', {'Range': 'bytes=10-29'},
                    close=False))
                self.assertEqual((status, headers[name.lower()],
                                  headers['connection'], body),
                                 (206, value, 'close', DATA[10:30]))

    def test_header_placeholders(self) -> None:
        etag = self.request('HEAD', '/data.img')[1]['etag']
        self.set_faults([
            {'action': 'header', 'name': 'Content-Range',
             'value': 'bytes +$first-$last/$size'},
            {'action': 'header', 'name': 'X-Span',
             'value': ['$length', '$next', '$$1']},
            {'action': 'header', 'name': 'ETag',
             'value': '"${version}x"'}])
        data = self.raw_request('GET', '/data.img', {'Range': 'bytes=10-19'})
        fields = raw_header_fields(data)
        self.assertEqual([v for k, v in fields if k == 'x-span'],
                         ['10', '20', '$1'])
        headers = dict(fields)
        self.assertEqual((headers['content-range'], headers['etag']),
                         (f'bytes +10-19/{len(DATA)}', etag[:-1] + 'x"'))
        # All of the file for a 200, nothing for a 416
        headers = self.request('HEAD', '/data.img')[1]
        self.assertEqual(headers['content-range'],
                         f'bytes +0-{len(DATA) - 1}/{len(DATA)}')
        status, headers, _ = self.get_range('/small.img', 'bytes=500-')
        self.assertEqual((status, headers['content-range']),
                         (416, f'bytes +0--1/{len(SMALL)}'))

    def test_header_after_if_range(self) -> None:
        etag = self.request('HEAD', '/small.img')[1]['etag']
        self.set_faults([{'action': 'header', 'name': 'ETag',
                          'value': '"other"'}])
        status, headers, body = self.request(
            'GET', '/small.img', {'Range': 'bytes=0-3', 'If-Range': etag})
        self.assertEqual((status, headers['etag'], body),
                         (206, '"other"', SMALL[:4]))
        status, _, body = self.request(
            'GET', '/small.img', {'Range': 'bytes=0-3',
                                  'If-Range': '"other"'})
        self.assertEqual((status, body), (200, SMALL))

    def test_header_unsatisfiable(self) -> None:
        self.set_faults([{'action': 'header', 'name': 'Content-Range',
                          'value': 'bytes */1'}])
        status, headers, _ = self.get_range('/small.img', 'bytes=500-')
        self.assertEqual((status, headers['content-range']),
                         (416, 'bytes */1'))

    def test_header_then_next_rules(self) -> None:
        self.set_faults([{'action': 'header', 'name': 'X-Test', 'value': 'a',
                          'times': 1},
                         {'action': 'status', 'code': 503, 'times': 1}])
        self.assertEqual(self.request('GET', '/small.img')[0], 503)
        self.assertEqual(self.server.stats()['log'][-1]['fault'],
                         'header+status')
        [header, status] = self.server.faults()
        self.assertEqual((header['name'], header['value'], status['hits']),
                         ('X-Test', 'a', 1))

    def test_strip_validators(self) -> None:
        etag = self.request('HEAD', '/small.img')[1]['etag']
        self.set_faults([{'action': 'strip-validators'}])
        for method in ('HEAD', 'GET'):
            headers = self.request(method, '/small.img')[1]
            self.assertNotIn('etag', headers)
            self.assertNotIn('last-modified', headers)
        # The server behind the cache still checks If-Range
        for if_range, answer in ((etag, (206, SMALL[:4])),
                                 ('"stale"', (200, SMALL))):
            status, _, body = self.request(
                'GET', '/small.img', {'Range': 'bytes=0-3',
                                      'If-Range': if_range})
            self.assertEqual((status, body), answer)
        self.assertEqual([e['fault'] for e in self.server.stats()['log']],
                         [None] + ['strip-validators'] * 4)

    def test_weak_etag(self) -> None:
        path = self.write_file('versions.img', SMALL)
        os.utime(path, ns=(10**18, 10**18))
        self.set_faults([{'action': 'weak-etag'}])
        first = self.request('HEAD', '/versions.img')[1]
        self.write_file('versions.img', SMALL[::-1])
        os.utime(path, ns=(2 * 10**18, 2 * 10**18))
        status, second, body = self.request('GET', '/versions.img')
        self.assertEqual((status, body), (200, SMALL[::-1]))
        # The same tag for both versions, but not the same date
        self.assertEqual((first['etag'], second['etag']),
                         ('W/"fixed"', 'W/"fixed"'))
        self.assertNotEqual(first['last-modified'], second['last-modified'])
        # A weak tag never matches If-Range; the date does
        for if_range, answer in (('W/"fixed"', (200, SMALL[::-1])),
                                 (second['last-modified'],
                                  (206, SMALL[-1:-5:-1]))):
            status, _, body = self.request(
                'GET', '/versions.img', {'Range': 'bytes=0-3',
                                         'If-Range': if_range})
            self.assertEqual((status, body), answer)

    def test_chunked(self) -> None:
        self.set_faults([{'action': 'chunked', 'bytes': 1000}])
        # http.client undoes the chunked coding
        status, headers, body = self.get_range('/data.img', 'bytes=100-70099')
        self.assertEqual((status, headers['transfer-encoding'], body),
                         (206, 'chunked', DATA[100:70100]))
        self.assertNotIn('content-length', headers)
        self.assertEqual(headers['content-range'],
                         f'bytes 100-70099/{len(DATA)}')
        data = self.raw_request('GET', '/data.img', {'Range': 'bytes=0-2499'})
        self.assertEqual(parse_raw_response(data)[2],
                         chunked(DATA[:2500], 1000))
        self.assertEqual([e['bytes_sent']
                          for e in self.server.stats()['log']],
                         [70000, 2500])
        # Chunks of 4096 bytes by default; a HEAD is left alone
        self.set_faults([{'action': 'chunked'}])
        self.assertEqual(curl('--raw', self.server.url('small.img'),
                              '-r', '0-9999', self.server.url('data.img')),
                         chunked(SMALL, 4096) + chunked(DATA[:10000], 4096))
        self.assertNotIn('transfer-encoding',
                         self.request('HEAD', '/data.img')[1])

    def test_chunked_head(self) -> None:
        self.set_faults([{'action': 'chunked', 'method': 'HEAD'}])
        status, headers, body = parse_raw_response(
            self.raw_request('HEAD', '/data.img'))
        self.assertEqual((status, headers['transfer-encoding'], body),
                         (200, 'chunked', b''))
        self.assertNotIn('content-length', headers)
        self.assertEqual(self.request('GET', '/small.img')[2], SMALL)

    def test_bad_chunks(self) -> None:
        self.set_faults([{'action': 'bad-chunks', 'bytes': 1000}])
        # The server closes the connection after a broken body
        status, headers, body = parse_raw_response(self.raw_request(
            'GET', '/data.img', {'Range': 'bytes=0-2499'}, close=False))
        self.assertEqual((status, headers['transfer-encoding'], body),
                         (206, 'chunked', chunked(DATA[:2500], 1000, 3)))
        self.assertNotIn('content-length', headers)
        self.assertEqual(self.server.stats()['log'][0]['fault'],
                         'bad-chunks')
        self.set_faults([{'action': 'bad-chunks', 'extra': 10}])
        self.assertEqual(parse_raw_response(self.raw_request(
            'GET', '/data.img', {'Range': 'bytes=0-9999'}))[2],
            chunked(DATA[:10000], 4096, 10))
        # What curl makes of it
        proc = subprocess.run(['curl', '--silent', '--show-error',
                               '--noproxy', '*', '-r', '0-9999',
                               self.server.url('data.img')],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=20, check=False)
        self.assertEqual(proc.returncode, 56, proc.stderr)   # recv error
        self.assertIn(b'chunk', proc.stderr)


class TlsTest(ServerTestCase):
    """The same server over HTTPS."""

    @classmethod
    def prepare(cls) -> None:
        cls.tls_cert = os.path.join(cls.tmpdir, 'cert.pem')
        cls.tls_key = os.path.join(cls.tmpdir, 'key.pem')
        subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec',
                        '-pkeyopt', 'ec_paramgen_curve:prime256v1',
                        '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
                        '-addext', 'subjectAltName=IP:127.0.0.1',
                        '-keyout', cls.tls_key, '-out', cls.tls_cert],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       check=True)

    def connect(self) -> http.client.HTTPConnection:
        context = ssl.create_default_context(cafile=self.tls_cert)
        conn = http.client.HTTPSConnection('127.0.0.1', self.server.port,
                                           timeout=10, context=context)
        self.addCleanup(conn.close)
        return conn

    def test_url(self) -> None:
        port = self.server.port
        self.assertEqual(self.server.url('a.img'),
                         f'https://127.0.0.1:{port}/a.img')
        self.assertEqual(self.server.url('/a.img', 'http'),
                         f'http://127.0.0.1:{port}/a.img')

    def test_range_and_keep_alive(self) -> None:
        conn = self.connect()
        status, headers, body = self.get_range('/data.img', 'bytes=7-70006')
        self.assertEqual((status, body), (206, DATA[7:70007]))
        self.assertEqual(headers['content-range'],
                         f'bytes 7-70006/{len(DATA)}')
        for _ in range(2):
            self.assertEqual(self.request('HEAD', '/data.img', conn=conn)[0],
                             200)
        stats = self.server.stats()
        self.assertEqual((stats['requests'], stats['connections'],
                          stats['bytes_sent']), (3, 2, 70000))

    def test_fault(self) -> None:
        self.set_faults([{'action': 'short', 'bytes': 10}])
        conn = self.connect()
        conn.request('GET', '/small.img')
        with self.assertRaises(http.client.IncompleteRead) as ctx:
            conn.getresponse().read()
        self.assertEqual(ctx.exception.partial, SMALL[:10])

    def test_reset(self) -> None:
        # (Python's ssl module reports a reset as a ragged EOF: curl tells)
        self.set_faults([{'action': 'reset', 'bytes': 10}])
        proc = subprocess.run(['curl', '--silent', '--show-error',
                               '--noproxy', '*', '--cacert',
                               str(self.tls_cert), '-r', '0-9999',
                               self.server.url('data.img')],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=20, check=False)
        self.assertEqual(proc.returncode, 56, proc.stderr)   # recv error
        self.assertIn(b'Connection reset by peer', proc.stderr)
        self.assertEqual(proc.stdout, DATA[:10])

    def test_curl(self) -> None:
        out = curl('--cacert', str(self.tls_cert), '-r', '10-19',
                   self.server.url('data.img'))
        self.assertEqual(out, DATA[10:20])
        out = curl('--cacert', str(self.tls_cert),
                   self.server.url('small.img'), self.server.url('small.img'))
        self.assertEqual(out, SMALL * 2)
        stats = self.server.stats()
        self.assertEqual((stats['requests'], stats['connections']), (3, 2))


class LifecycleTest(unittest.TestCase):
    """Starting and stopping the server."""

    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix='range-server-selftest-')
        self.addCleanup(shutil.rmtree, self.root)
        with open(os.path.join(self.root, 'small.img'), 'wb') as f:
            f.write(SMALL)

    def test_start_failure(self) -> None:
        server = RangeServer(os.path.join(self.root, 'missing'))
        with self.assertRaisesRegex(RuntimeError, 'not a directory'):
            server.start()
        server.stop()

    def test_script(self) -> None:
        port_file = os.path.join(self.root, 'port')
        log_file = os.path.join(self.root, 'log')
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              '..', 'qemu-iotests', 'range_server.py')
        with subprocess.Popen([sys.executable, script, '--root', self.root,
                               '--port-file', port_file, '--log', log_file],
                              stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            with open(port_file, encoding='ascii') as f:
                port = int(f.read())
            self.assertEqual(line, f'listening on {port}\n')
            conn = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
            conn.request('GET', '/small.img')
            self.assertEqual(conn.getresponse().read(), SMALL)
            conn.request('POST', '/_control/shutdown')
            self.assertEqual(conn.getresponse().status, 200)
            conn.close()
            self.assertEqual(proc.wait(timeout=5), 0)
        with open(log_file, encoding='utf-8') as f:
            self.assertIn('"GET /small.img HTTP/1.1" 200', f.read())

    def test_stop_interrupts_stall(self) -> None:
        server = RangeServer(self.root)
        server.start()
        self.addCleanup(server.stop)
        server.set_faults([{'action': 'stall', 'bytes': 3,
                            'seconds': 3600}])
        conn = http.client.HTTPConnection('127.0.0.1', server.port,
                                          timeout=10)
        self.addCleanup(conn.close)
        conn.request('GET', '/small.img')
        resp = conn.getresponse()
        self.assertEqual(resp.read(3), SMALL[:3])
        start = time.monotonic()
        server.stop()
        server.stop()
        self.assertLess(time.monotonic() - start, 5)
        with self.assertRaises(http.client.IncompleteRead):
            resp.read()

    def test_context_manager(self) -> None:
        with RangeServer(self.root) as server:
            self.assertEqual(curl(server.url('small.img')), SMALL)
            self.assertEqual(server.stats()['requests'], 1)
        with self.assertRaises(OSError):
            socket.create_connection(('127.0.0.1', server.port), timeout=5)


if __name__ == '__main__':
    unittest.main(verbosity=2)
