# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: what the driver sends where a redirect leads, and what it shows.
#
# Two range servers on two ports of 127.0.0.1 are two origins.  The first
# requires the user's cookie, password and extra header, then redirects
# the image to the second one (or to itself, under another name).  Both
# log every header they receive: the second must never see the user's.
# A TLS range server redirecting to plain http, or to file://, must be
# refused.  Traces and the driver's error messages must not show the
# password, the secrets or the query of a presigned URL.
"""Credentials, cookies and extra headers only go to the URL's origin."""

from __future__ import annotations

from typing import ClassVar, Dict, List, Sequence

import fixtures
from e2e_case import E2ETestCase
from fixtures import CmdResult, ImageSet, RangeServer
from test_http_credentials import basic

COOKIE = 'session=redirect-0123'
USER, PASSWORD = 'e2e-user', 'pw-7f3a9c'
TOKEN = 'tok-5b1e77d2'
API_KEY = 'key-90ac41'
HEADERS = f'X-Api-Key: {API_KEY}\nX-Auth-Token: {TOKEN}\n'
SIGNATURE = 'sig-c4e8a2f1'


class RedirectCredentialsTest(E2ETestCase):
    """A redirect to another origin takes none of the user's secrets."""

    images: ClassVar[ImageSet]
    origin: ClassVar[RangeServer]
    other: ClassVar[RangeServer]
    tls: ClassVar[RangeServer]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = fixtures.shared_images()
        www = cls.class_tmp / 'www'
        www.mkdir()
        for image in (cls.images.qcow2, cls.images.raw):
            (www / image.name).symlink_to(image.path)
            (www / f'moved-{image.name}').symlink_to(image.path)
        cls.origin = cls.start_server(RangeServer(
            str(www), log_path=str(cls.class_tmp / 'origin.log')))
        cls.other = cls.start_server(RangeServer(
            str(www), log_path=str(cls.class_tmp / 'other.log')))
        cls.tls = cls.start_server(RangeServer(
            str(www), tls_cert=str(cls.ca_dir / 'server.pem'),
            tls_key=str(cls.ca_dir / 'server.key'),
            log_path=str(cls.class_tmp / 'tls.log')))

    def setUp(self) -> None:
        super().setUp()
        for server in (self.origin, self.other, self.tls):
            server.reset()

    # -- helpers

    def secret_options(self) -> str:
        """Every credential option the driver has, with secrets."""
        return (f'file.cookie-secret=c0,file.username={USER},'
                'file.password-secret=p0,file.header-secret=h0')

    @staticmethod
    def secret_objects() -> List[str]:
        return ['--object', f'secret,id=c0,data={COOKIE}',
                '--object', f'secret,id=p0,data={PASSWORD}',
                '--object', f'secret,id=h0,data={HEADERS}']

    def require_credentials(self, server: RangeServer) -> None:
        server.require(cookie=COOKIE, authorization=basic(USER, PASSWORD),
                       x_api_key=API_KEY)

    def redirect(self, server: RangeServer, name: str, location: str,
                 code: int = 302) -> None:
        server.set_faults([{'action': 'redirect', 'code': code,
                            'path': '/' + name, 'location': location}])

    def convert(self, url: str, options: str = '',
                objects: Sequence[str] = (),
                trace: bool = False) -> CmdResult:
        """Convert the qcow2 image at @url to raw, with the secrets."""
        opts = f'driver=qcow2,file.driver=http,file.url={url}'
        if options:
            opts += ',' + options
        return self.qemu_img(*(['--trace', 'curl_*'] if trace else []),
                             'convert', *self.secret_objects(), *objects,
                             '--image-opts', opts, '-O', 'raw',
                             self.tmp / 'out.raw')

    def log(self, server: RangeServer) -> List[Dict[str, object]]:
        return server.stats()['log']

    def assertSentNothing(self, server: RangeServer) -> None:
        """@server got requests, and none of the user's secrets."""
        log = self.log(server)
        self.assertTrue(log)
        for record in log:
            headers = record['headers']
            self.assertNotIn('cookie', headers, record)
            self.assertNotIn('authorization', headers, record)
            self.assertNotIn('x-api-key', headers, record)
            self.assertNotIn('x-auth-token', headers, record)

    def assertNoSecret(self, text: str) -> None:
        for secret in (PASSWORD, COOKIE, TOKEN, API_KEY, SIGNATURE,
                       basic(USER, PASSWORD)):
            self.assertNotIn(secret, text)

    # -- tests

    def test_other_origin_gets_no_credentials(self) -> None:
        """A redirect to another port: the image is read from there, the
        user's cookie, password and headers stay with the origin."""
        name = self.images.qcow2.name
        self.require_credentials(self.origin)
        self.redirect(self.origin, name, self.other.url(f'moved-{name}'))
        result = self.convert(self.origin.url(name), self.secret_options())
        self.assertSucceeded(result)
        self.assertFileHasImageData(self.tmp / 'out.raw', self.images.raw)
        self.assertSentNothing(self.other)
        gets = [r for r in self.log(self.other) if r['method'] == 'GET']
        self.assertTrue(gets)
        # The origin only answered the redirect, with the credentials
        for record in self.log(self.origin):
            self.assertEqual(record['status'], 302, record)
            self.assertEqual(record['cookie'], COOKIE)
            self.assertEqual(record['authorization'], basic(USER, PASSWORD))
            self.assertEqual(record['headers']['x-api-key'], API_KEY)

    def test_same_origin_keeps_credentials(self) -> None:
        """A redirect on the same origin takes them along."""
        name = self.images.qcow2.name
        self.require_credentials(self.origin)
        self.redirect(self.origin, name, self.origin.url(f'moved-{name}'),
                      code=301)
        result = self.convert(self.origin.url(name), self.secret_options())
        self.assertSucceeded(result)
        self.assertFileHasImageData(self.tmp / 'out.raw', self.images.raw)
        moved = [r for r in self.log(self.origin)
                 if r['path'] == f'/moved-{name}']
        self.assertTrue(moved)
        self.assertEqual({r['status'] for r in moved} - {200}, {206})
        self.assertEqual({r['headers'].get('x-api-key') for r in moved},
                         {API_KEY})

    def test_expired_redirect_to_other_origin(self) -> None:
        """When the target refuses later, the origin is asked again, with
        the credentials, and the new target gets none."""
        name = self.images.qcow2.name
        self.require_credentials(self.origin)
        self.redirect(self.origin, name, self.other.url(f'moved-{name}'))
        # The target refuses the first GET of every range: each falls
        # back to the origin, which redirects there again.  (Counted per
        # range, not in all: how many are in flight at once is timing.)
        self.other.set_faults([{'action': 'status', 'code': 403,
                                'method': 'GET', 'per-range': True,
                                'times': 1}])
        result = self.convert(self.origin.url(name), self.secret_options())
        self.assertSucceeded(result)
        self.assertFileHasImageData(self.tmp / 'out.raw', self.images.raw)
        self.assertSentNothing(self.other)
        refused = [r for r in self.log(self.other) if r['status'] == 403]
        self.assertTrue(refused)
        # Each refused range asked the origin again (and so may a fetch
        # that started while no target was known)
        origin_gets = [r for r in self.log(self.origin)
                       if r['method'] == 'GET']
        self.assertGreaterEqual(len(origin_gets), len(refused))
        self.assertEqual({r['cookie'] for r in self.log(self.origin)},
                         {COOKIE})

    def test_extra_headers_reach_the_origin(self) -> None:
        """header-secret: every request carries the headers."""
        name = self.images.qcow2.name
        self.origin.require(authorization=f'Bearer {TOKEN}',
                            x_api_key=API_KEY)
        bearer = f'Authorization: Bearer {TOKEN}\nX-Api-Key: {API_KEY}'
        result = self.convert(self.origin.url(name), 'file.header-secret=b0',
                              ['--object', f'secret,id=b0,data={bearer}'])
        self.assertSucceeded(result)
        self.assertFileHasImageData(self.tmp / 'out.raw', self.images.raw)
        self.assertEqual({r['status'] for r in self.log(self.origin)} -
                         {200}, {206})

    def test_bad_extra_headers(self) -> None:
        """A header-secret that is not headers is refused, without
        showing what it holds."""
        url = self.origin.url(self.images.qcow2.name)
        for data, why in ((f'no colon {TOKEN}', 'line 1 is not a header'),
                          (f'X-Ok: 1\n{TOKEN} bad: x', 'line 2 is not a '
                           'header'),
                          ('Range: bytes=0-', 'line 1 sets Range')):
            with self.subTest(data=data):
                result = self.convert(url, 'file.header-secret=bad',
                                      ['--object', f'secret,id=bad,'
                                       f'data={data}'])
                self.assertFailedCleanly(result)
                self.assertOutputMentions(result, f'header-secret: {why}')
                self.assertNotIn(TOKEN, result.output)
        self.assertEqual(self.log(self.origin), [])

    def test_https_to_http_refused(self) -> None:
        """An https URL that redirects to plain http is not followed."""
        name = self.images.qcow2.name
        self.redirect(self.tls, name, self.other.url(f'moved-{name}'))
        result = self.qemu_img(
            'convert', '--image-opts',
            f'driver=qcow2,file.driver=https,file.url={self.tls.url(name)}',
            '-O', 'raw', self.tmp / 'out.raw')
        self.assertFailedCleanly(result)
        self.assertOutputMentions(
            result, 'refused to follow a redirect from https to plain http')
        self.assertEqual(self.log(self.other), [])

    def test_redirect_to_file_refused(self) -> None:
        """Nor is one to a file:// URL."""
        name = self.images.qcow2.name
        self.redirect(self.origin, name, f'file://{self.images.qcow2.path}')
        result = self.convert(self.origin.url(name))
        self.assertFailedCleanly(result)
        self.assertOutputMentions(
            result, 'refused to follow a redirect to file://')

    def test_redirect_loop(self) -> None:
        """A redirect to itself ends in an error, not a loop."""
        name = self.images.qcow2.name
        self.redirect(self.origin, name, self.other.url(f'moved-{name}'))
        self.redirect(self.other, f'moved-{name}', self.origin.url(name))
        result = self.convert(self.origin.url(name))
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, 'more than 16 redirects')
        self.assertLess(len(self.log(self.origin)), 20)

    def test_no_secret_in_traces_or_errors(self) -> None:
        """Traces show URLs without their query or password, and no
        secret; nor do the driver's errors."""
        name = self.images.qcow2.name
        url = self.origin.url(name) + f'?X-Amz-Signature={SIGNATURE}'
        self.redirect(self.origin, name,
                      self.other.url(f'moved-{name}') + f'?sig={SIGNATURE}')
        result = self.convert(url, self.secret_options(), trace=True)
        self.assertSucceeded(result)
        traced = [line for line in result.stderr.splitlines()
                  if 'curl_' in line]
        self.assertTrue(any('curl_open' in line for line in traced))
        self.assertTrue(any('curl_may_redirect' in line for line in traced))
        self.assertNoSecret('\n'.join(traced))

        # Reads that fail: the driver's message names the URL without
        # its query (qemu-img's own "Could not open" repeats its argument)
        self.other.set_faults([{'action': 'status', 'code': 500,
                                'method': 'GET'}])
        result = self.convert(url, self.secret_options(), trace=True)
        self.assertFailedCleanly(result)
        driver = [line for line in result.output.splitlines()
                  if 'curl: ' in line or 'curl_' in line]
        self.assertTrue(any('the server answered HTTP 500' in line
                            for line in driver), result.describe())
        self.assertNoSecret('\n'.join(driver))
        self.assertTrue(any(f'curl: {self.origin.url(name)}: reading' in line
                            for line in driver), result.describe())
