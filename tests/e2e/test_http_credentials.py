# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: the driver's cookie, HTTP authentication and proxy options.
#
# The range server (tests/qemu-iotests/range_server.py) can require header
# values; a file request without them gets 401 (or 407 for the proxy's).
# It also serves requests whose target is a whole URL, as a proxy would,
# so a proxy test points http_proxy at it and the image URL at a port where
# nothing listens: the image can only be read through the proxy.  Every
# request the server logged must carry the credentials, and the outputs are
# compared with the source.
"""cookie, cookie-secret, username/password-secret, proxy credentials."""

from __future__ import annotations

import base64
from typing import ClassVar, Dict, List, Optional, Tuple

import fixtures
from e2e_case import E2ETestCase
from fixtures import CmdResult, ImageSet, RangeServer

COOKIE = 'session=e2e-0123; theme=dark'
USER, PASSWORD = 'e2e-user', 'pa:ss w0rd'
PROXY_USER, PROXY_PASSWORD = 'proxy-user', 'proxy-secret'


def basic(user: str, password: str) -> str:
    """The Authorization value of HTTP basic authentication."""
    token = base64.b64encode(f'{user}:{password}'.encode()).decode()
    return f'Basic {token}'


class HttpCredentialsTest(E2ETestCase):
    """Credentials reach the server on every request, or reads fail."""

    images: ClassVar[ImageSet]
    range_server: ClassVar[RangeServer]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = fixtures.shared_images()
        cls.range_server = cls.start_range_server(cls.images.directory)

    def setUp(self) -> None:
        super().setUp()
        self.range_server.reset()

    def convert(self, options: str, objects: List[str],
                env: Optional[Dict[str, str]] = None) -> CmdResult:
        """Convert the qcow2 image with these driver @options to raw."""
        out = self.tmp / 'out.raw'
        args: List[str] = [str(self.bins.qemu_img), 'convert']
        for obj in objects:
            args += ['--object', obj]
        args += ['--image-opts', f'driver=qcow2,{options}', '-O', 'raw',
                 str(out)]
        return fixtures.run(args, env=env)

    def check_output(self) -> None:
        self.assertFileHasImageData(self.tmp / 'out.raw', self.images.raw)

    def logged(self) -> List[Dict[str, object]]:
        log: List[Dict[str, object]] = self.range_server.stats()['log']
        self.assertTrue(log)
        return log

    def url(self) -> str:
        return self.range_server.url(self.images.qcow2.name)

    def test_cookie(self) -> None:
        """file.cookie is sent with the probe and every range request."""
        self.range_server.require(cookie=COOKIE)
        result = self.convert(f'file.driver=http,file.url={self.url()},'
                              f'file.cookie={COOKIE}', [])
        self.assertSucceeded(result)
        self.check_output()
        log = self.logged()
        self.assertEqual({r['cookie'] for r in log}, {COOKIE})
        self.assertEqual({r['status'] for r in log}, {200, 206})

    def test_cookie_secret(self) -> None:
        """file.cookie-secret: the same, the cookie from a secret."""
        self.range_server.require(cookie=COOKIE)
        result = self.convert(f'file.driver=http,file.url={self.url()},'
                              'file.cookie-secret=c0',
                              [f'secret,id=c0,data={COOKIE}'])
        self.assertSucceeded(result)
        self.check_output()
        self.assertEqual({r['cookie'] for r in self.logged()}, {COOKIE})

    def test_no_cookie_refused(self) -> None:
        """Without the cookie the server's 401 is the error."""
        self.range_server.require(cookie=COOKIE)
        result = self.convert(f'file.driver=http,file.url={self.url()}', [])
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, '401')

    def test_username_password_secret(self) -> None:
        """file.username and file.password-secret: HTTP basic auth."""
        self.range_server.require(authorization=basic(USER, PASSWORD))
        result = self.convert(f'file.driver=http,file.url={self.url()},'
                              f'file.username={USER},'
                              'file.password-secret=p0',
                              [f'secret,id=p0,data={PASSWORD}'])
        self.assertSucceeded(result)
        self.check_output()
        self.assertEqual({r['authorization'] for r in self.logged()},
                         {basic(USER, PASSWORD)})

    def test_wrong_password_refused(self) -> None:
        """A wrong password gets the server's 401 as the error."""
        self.range_server.require(authorization=basic(USER, PASSWORD))
        result = self.convert(f'file.driver=http,file.url={self.url()},'
                              f'file.username={USER},'
                              'file.password-secret=p0',
                              ['secret,id=p0,data=not-it'])
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, '401')

    def convert_through_proxy(self, password: str) -> Tuple[str, CmdResult]:
        """Convert with http_proxy at the range server, which requires
        proxy credentials, giving it @password.

        Returns the image's URL, whose port has no server, and the result.
        """
        self.range_server.require(
            proxy_authorization=basic(PROXY_USER, PROXY_PASSWORD))
        nowhere = (f'http://{fixtures.HOST}:{fixtures.free_port()}/'
                   f'{self.images.qcow2.name}')
        proxy = f'http://{fixtures.HOST}:{self.range_server.port}'
        env = {'http_proxy': proxy, 'no_proxy': '', 'NO_PROXY': ''}
        return nowhere, self.convert(f'file.driver=http,file.url={nowhere},'
                                     f'file.proxy-username={PROXY_USER},'
                                     'file.proxy-password-secret=x0',
                                     [f'secret,id=x0,data={password}'],
                                     env=env)

    def test_proxy_credentials(self) -> None:
        """http_proxy with file.proxy-username and proxy-password-secret.

        The URL's port has no server: every request must go through the
        proxy, with its credentials, and ask for the URL.
        """
        nowhere, result = self.convert_through_proxy(PROXY_PASSWORD)
        self.assertSucceeded(result)
        self.check_output()
        log = self.logged()
        self.assertEqual({r['target'] for r in log}, {nowhere})
        self.assertEqual({r['proxy_authorization'] for r in log},
                         {basic(PROXY_USER, PROXY_PASSWORD)})
        self.assertEqual({r['method'] for r in log} - {'HEAD'}, {'GET'})

    def test_proxy_wrong_password_refused(self) -> None:
        """The proxy's 407 is the error when its password is wrong."""
        result = self.convert_through_proxy('not-it')[1]
        self.assertFailedCleanly(result)
        self.assertOutputMentions(result, '407')
