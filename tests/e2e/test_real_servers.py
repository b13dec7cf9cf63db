# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: qemu-img and qemu-io read images from real servers of Debian's
# packages: Apache over HTTPS (HTTP/1.1, and HTTP/2 with mod_http2),
# lighttpd over HTTP and HTTPS, Varnish as a caching reverse proxy, and
# Squid as a forward proxy (http_proxy, https_proxy), with and without
# basic authentication.
#
# Every class runs the cases of server_cases.ServerCases (convert of the
# raw image and of the qcow2 one, random reads with qemu-io, the raw
# image inside a tar file read with file.offset; every byte compared
# with the file) and test_validators (a 206 carries the strong ETag or
# the Last-Modified that a HEAD gave, which the driver pins the file
# by).  Certificates are verified: the test CA of scripts/with-test-ca.sh
# is in the trust store, and a fixtures.PrivateCA, that nothing trusts,
# is given with a tls-creds-x509 object.  Besides:
#
# * ApacheHttpsTest.test_http1_only: every request Apache logged was
#   HTTP/1.1.
# * ApacheHttp2Test: with file.http-version=http2 the driver's requests
#   are HTTP/2 (negotiated by ALPN); test_http1_by_default: without it,
#   HTTP/1.1, though Apache offers h2.
# * ApacheHttp2Test.test_untrusted_without_creds: without tls-creds the
#   private CA's certificate is refused (verification is real).
# * ApacheFreshFileTest: a file modified less than a second before the
#   open.  Apache then sends a weak ETag (it cannot tell two changes in
#   one second apart), so the driver pins the file by Last-Modified and
#   sends that date as If-Range; Apache answers such a date with the
#   whole file (200) while the file is that new (RFC 9110 13.1.5: a date
#   validator is weak unless at least a second before the answer's
#   Date).  The convert must still give the file's bytes.
# * ApacheNoEtagTest, LighttpdNoEtagTest: servers that send no ETag
#   (FileETag None; static-file.etags disabled): the driver pins the files
#   by Last-Modified and sends it as If-Range.  Apache 2.4 takes an
#   If-Range date only for a file at least 60 s older than its answer
#   (ap_condition_if_range()) and answers 200 with the whole file
#   otherwise: the day-old images get 206 answers (checked in Apache's
#   log), and test_recent_file converts a file modified 10 s before,
#   which must give its bytes too.
# * LighttpdHttpsTest.test_http2: with file.http-version=http2, the
#   requests are HTTP/2.
# * VarnishTest: each of the cases through Varnish in front of Apache;
#   the backend served the files whole (Varnish asks it for no range).
# * SquidHttpTest, SquidHttpsTest: every request went through the proxy
#   (its access log: GETs, or CONNECT tunnels).
# * SquidAuthTest: proxy-username and proxy-password-secret; without
#   them, and with a wrong password, the proxy's 407 is the error, which
#   names the proxy and 407 (over http:// and, as the answer to CONNECT,
#   over https://).
"""Apache, lighttpd, Varnish and Squid in front of the curl driver."""

from __future__ import annotations

import json
import os
import time
import unittest
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional

import fixtures
import server_cases
from e2e_case import E2ETestCase
from fixtures import CertPair, PrivateCA
from servers import (Apache, Lighttpd, Squid, Varnish, open_to_all,
                     served_images)

PROXY_USER, PROXY_PASSWORD = 'qemu-e2e', 'proxy secret 24'


def test_ca_cert(ca_dir: Any) -> CertPair:
    """The certificate for 127.0.0.1 of the test CA (trusted)."""
    return CertPair(ca_dir / 'server.pem', ca_dir / 'server.key')


class ApacheHttpsTest(server_cases.HttpServerCases):
    """Apache over HTTPS, HTTP/1.1 only, a certificate of the test CA."""

    apache: ClassVar[Apache]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.apache = cls.start_server(Apache(cls.images.directory,
                                             test_ca_cert(cls.ca_dir)))

    def file_options(self, name: str) -> Dict[str, Any]:
        return {'driver': 'https', 'url': self.apache.url(name)}

    def test_http1_only(self) -> None:
        """Every request Apache logged for the driver was HTTP/1.1."""
        self.test_convert_raw()
        protocols = {line.split()[0] for line in
                     self.apache.access_log().splitlines() if line}
        self.assertEqual(protocols, {'HTTP/1.1'})


class ApacheHttp2Test(server_cases.HttpServerCases):
    """Apache over HTTPS offering h2 (mod_http2), the certificate of a
    private CA given with tls-creds; the driver with http-version=http2."""

    apache: ClassVar[Apache]
    ca: ClassVar[PrivateCA]
    creds: ClassVar[Path]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.ca = PrivateCA(cls.class_tmp / 'ca')
        cls.creds = cls.ca.tls_creds_dir(cls.class_tmp / 'creds')
        cert = cls.ca.server_cert('apache', ['IP:127.0.0.1'])
        cls.apache = cls.start_server(Apache(cls.images.directory, cert,
                                             http2=True))

    def file_options(self, name: str) -> Dict[str, Any]:
        return {'driver': 'https', 'url': self.apache.url(name),
                'tls-creds': 'tls0', 'http-version': 'http2'}

    def objects(self) -> List[str]:
        return [f'tls-creds-x509,id=tls0,dir={self.creds},endpoint=client']

    def curl_options(self) -> List[str]:
        return ['--cacert', str(self.ca.cert), '--http2']

    def protocols(self) -> List[str]:
        """The protocol of each request Apache logged so far."""
        return [line.split()[0] for line in
                self.apache.access_log().splitlines() if line]

    def test_http2(self) -> None:
        """With http-version=http2, the requests are HTTP/2."""
        before = len(self.protocols())
        self.test_convert_raw()
        self.assertEqual(set(self.protocols()[before:]), {'HTTP/2.0'})

    def test_http1_by_default(self) -> None:
        """Without http-version, HTTP/1.1, though Apache offers h2."""
        before = len(self.protocols())
        options = {k: v for k, v in self.file_options(
            self.images.raw.name).items() if k != 'http-version'}
        out = self.tmp / 'out.raw'
        result = self.convert('json:' + json.dumps(
            {'driver': 'raw', 'file': options}), out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, self.images.raw)
        self.assertEqual(set(self.protocols()[before:]), {'HTTP/1.1'})

    def test_untrusted_without_creds(self) -> None:
        """Without tls-creds, the private CA's certificate is refused."""
        result = fixtures.run([self.bins.qemu_img, 'info',
                               self.apache.url(self.images.raw.name)],
                              timeout=60)
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, 'certificate', 'SSL')


class ApacheFreshFileTest(E2ETestCase):
    """Apache serving a file modified just before the driver opens it."""

    apache: ClassVar[Apache]
    root: ClassVar[Path]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.root = cls.class_tmp / 'www'
        cls.root.mkdir()
        open_to_all(cls.class_tmp)
        cls.apache = cls.start_server(Apache(cls.root,
                                             test_ca_cert(cls.ca_dir)))

    def test_convert_fresh_file(self) -> None:
        """A convert right after the file was written gives its bytes."""
        source = served_images().raw
        path = self.root / 'fresh.raw'
        path.write_bytes(source.path.read_bytes())
        open_to_all(self.root)
        out = self.tmp / 'out.raw'
        url = self.apache.url(path.name)
        result = fixtures.run([self.bins.qemu_img, 'convert', '-O', 'raw',
                               url, out])
        age = time.time() - path.stat().st_mtime
        self.assertSucceeded(result, f'convert of a file modified '
                             f'{age:.1f} s before the convert ended; '
                             f'Apache logged\n'
                             f'{self.apache.access_log()[-2000:]}')
        self.assertFileHasImageData(out, source)


class ApacheNoEtagTest(server_cases.RecentFileCases):
    """Apache over HTTPS without ETags (FileETag None): the files are
    pinned by Last-Modified."""

    apache: ClassVar[Apache]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.apache = cls.start_server(Apache(cls.images.directory,
                                             test_ca_cert(cls.ca_dir),
                                             etags=False))

    def file_options(self, name: str) -> Dict[str, Any]:
        return {'driver': 'https', 'url': self.apache.url(name)}

    def setUp(self) -> None:
        super().setUp()
        self.log_start = len(self.apache.settled_log())

    def after_each(self) -> None:
        """Apache answered every GET of this case with 206: it took the
        If-Range date (the files are a day old)."""
        log = self.apache.settled_log()[self.log_start:]
        gets = [line.split()[1] for line in log.splitlines()
                if ' GET ' in line]
        self.assertTrue(gets, 'Apache logged no GET')
        self.assertEqual(set(gets), {'206'})

    def test_recent_file(self) -> None:
        """A file modified 10 s before the open (Apache answers an
        If-Range date of a file younger than 60 s with all of it)."""
        self.check_recent_file(10)


class LighttpdNoEtagTest(server_cases.RecentFileCases):
    """lighttpd over HTTP without ETags (static-file.etags disabled):
    the files are pinned by Last-Modified."""

    lighttpd: ClassVar[Lighttpd]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.lighttpd = cls.start_server(Lighttpd(cls.images.directory,
                                                 test_ca_cert(cls.ca_dir),
                                                 etags=False))

    def file_options(self, name: str) -> Dict[str, Any]:
        return {'driver': 'http', 'url': self.lighttpd.url(name, 'http')}

    def test_recent_file(self) -> None:
        """A file modified 10 s before the open."""
        self.check_recent_file(10)


class LighttpdHttpTest(server_cases.HttpServerCases):
    """lighttpd over plain HTTP."""

    lighttpd: ClassVar[Lighttpd]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.lighttpd = cls.start_server(Lighttpd(cls.images.directory,
                                                 test_ca_cert(cls.ca_dir)))

    def file_options(self, name: str) -> Dict[str, Any]:
        return {'driver': 'http', 'url': self.lighttpd.url(name, 'http')}


class LighttpdHttpsTest(server_cases.HttpServerCases):
    """lighttpd over HTTPS, the certificate of a private CA given with
    tls-creds (lighttpd 1.4.69 offers h2 too; the driver asks for
    HTTP/1.1)."""

    lighttpd: ClassVar[Lighttpd]
    ca: ClassVar[PrivateCA]
    creds: ClassVar[Path]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.ca = PrivateCA(cls.class_tmp / 'ca')
        cls.creds = cls.ca.tls_creds_dir(cls.class_tmp / 'creds')
        cert = cls.ca.server_cert('lighttpd', ['IP:127.0.0.1'])
        cls.lighttpd = cls.start_server(Lighttpd(cls.images.directory, cert))

    def file_options(self, name: str) -> Dict[str, Any]:
        return {'driver': 'https', 'url': self.lighttpd.url(name),
                'tls-creds': 'tls0'}

    def objects(self) -> List[str]:
        return [f'tls-creds-x509,id=tls0,dir={self.creds},endpoint=client']

    def curl_options(self) -> List[str]:
        return ['--cacert', str(self.ca.cert)]

    def test_http2(self) -> None:
        """With http-version=http2, the requests are HTTP/2 (lighttpd
        offers h2 by ALPN)."""
        # A name of its own, to tell its requests in lighttpd's log
        name = 'h2-disk.raw'
        link = self.images.directory / name
        os.link(self.images.raw.path, link)
        self.addCleanup(link.unlink)
        options = {**self.file_options(name), 'http-version': 'http2'}
        out = self.tmp / 'out.raw'
        result = self.convert('json:' + json.dumps(
            {'driver': 'raw', 'file': options}), out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, self.images.raw)
        # lighttpd writes its log out every few seconds
        gets = fixtures.wait_for(
            lambda: [line for line in self.lighttpd.settled_log()
                     .splitlines() if f' GET /{name} ' in line],
            10, 'lighttpd to log the GETs')
        self.assertEqual({line.split()[0] for line in gets}, {'HTTP/2.0'})


class VarnishTest(server_cases.HttpServerCases):
    """Varnish as a caching reverse proxy in front of Apache (HTTP)."""

    apache: ClassVar[Apache]
    varnish: ClassVar[Varnish]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.apache = cls.start_server(Apache(cls.images.directory,
                                             test_ca_cert(cls.ca_dir)))
        cls.varnish = cls.start_server(Varnish(cls.apache.http_port))

    def file_options(self, name: str) -> Dict[str, Any]:
        return {'driver': 'http', 'url': self.varnish.url(name)}

    def after_each(self) -> None:
        """The backend was asked for whole files only: Varnish cached
        them and answered the ranges itself."""
        lines = [line for line in self.apache.access_log().splitlines()
                 if line]
        self.assertTrue(lines, 'Apache logged no request from Varnish')
        ranged = [line for line in lines if '"-"' not in line.split(' ', 4)[4]]
        self.assertEqual(ranged, [], 'ranges the backend was asked for')


class SquidHttpTest(server_cases.HttpServerCases):
    """http:// through Squid as the forward proxy (http_proxy) to Apache,
    no authentication."""

    apache: ClassVar[Apache]
    squid: ClassVar[Squid]
    scheme: ClassVar[str] = 'http'
    credentials: ClassVar[Optional[Any]] = None

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.apache = cls.start_server(Apache(cls.images.directory,
                                             test_ca_cert(cls.ca_dir)))
        cls.squid = cls.start_server(Squid(cls.credentials))

    def file_options(self, name: str) -> Dict[str, Any]:
        return {'driver': self.scheme,
                'url': self.apache.url(name, self.scheme)}

    def environment(self) -> Optional[Dict[str, str]]:
        return self.squid.proxy_env()

    def after_each(self) -> None:
        """Every request went through Squid."""
        log = self.squid.access_log()
        method = 'CONNECT' if self.scheme == 'https' else 'GET'
        self.assertIn(f' {method} ', log, 'Squid logged no request')


class SquidHttpsTest(SquidHttpTest):
    """https:// tunnelled through Squid (https_proxy, CONNECT)."""

    scheme = 'https'


class SquidAuthTest(SquidHttpTest):
    """http:// through Squid demanding basic authentication, with
    file.proxy-username and file.proxy-password-secret."""

    credentials = (PROXY_USER, PROXY_PASSWORD)

    def file_options(self, name: str) -> Dict[str, Any]:
        return {**super().file_options(name),
                'proxy-username': PROXY_USER,
                'proxy-password-secret': 'proxy0'}

    def objects(self) -> List[str]:
        return [f'secret,id=proxy0,data={PROXY_PASSWORD}']

    def curl_options(self) -> List[str]:
        return ['--proxy-user', f'{PROXY_USER}:{PROXY_PASSWORD}']

    def info(self, scheme: str, password: Optional[str]) -> Any:
        """qemu-img info of the raw image over @scheme through the proxy,
        with @password, or without credentials if None."""
        options: Dict[str, Any] = {
            'driver': scheme,
            'url': self.apache.url(self.images.raw.name, scheme)}
        objects = []
        if password is not None:
            options.update({'proxy-username': PROXY_USER,
                            'proxy-password-secret': 'wrong0'})
            objects = ['--object', f'secret,id=wrong0,data={password}']
        return fixtures.run([self.bins.qemu_img, 'info', *objects,
                             'json:' + json.dumps({'driver': 'raw',
                                                   'file': options})],
                            env=self.environment(), timeout=90)

    def test_https_convert(self) -> None:
        """https:// through the proxy, with its credentials (CONNECT)."""
        out = self.tmp / 'out.raw'
        options = {**self.file_options(self.images.raw.name),
                   'driver': 'https',
                   'url': self.apache.url(self.images.raw.name)}
        result = self.convert('json:' + json.dumps({'driver': 'raw',
                                                    'file': options}), out)
        self.assertSucceeded(result)
        self.assertFileHasImageData(out, self.images.raw)
        self.assertIn(' CONNECT ', self.squid.access_log())

    def test_407_without_credentials(self) -> None:
        """Without credentials the proxy's 407 is the error (http)."""
        self.assertProxyRefused(self.info('http', None))

    def test_407_without_credentials_https(self) -> None:
        """... and the answer to CONNECT (https)."""
        self.assertProxyRefused(self.info('https', None))

    def test_407_wrong_password(self) -> None:
        """A wrong password gets the proxy's 407 too."""
        self.assertProxyRefused(self.info('http', 'not the password'))


if __name__ == '__main__':
    unittest.main()
