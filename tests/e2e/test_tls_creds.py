# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: the tls-creds option of the curl block driver.
#
# file.tls-creds=ID names a tls-creds-x509 object (endpoint=client) whose
# directory holds ca-cert.pem, and optionally client-cert.pem and
# client-key.pem: the driver then trusts exactly that CA, not the
# system's store, keeps verifying the server, and presents the client
# certificate when there is one (mutual TLS).
#
# A private CA made for the class (fixtures.PrivateCA: trusted by
# nobody, neither the system's store nor the test CA of
# scripts/with-test-ca.sh) issues the certificates of nginx servers: one
# valid for 127.0.0.1, one for another name only, an expired one, and
# one nginx that asks for a client certificate of the CA.  Covered, with
# qemu-img convert (the output compared byte for byte with the image):
# converting over https and ftps with tls-creds; the same URL refused
# without it; the system's store not used with it; mutual TLS with and
# without a client certificate; a wrong host name, an unknown CA and an
# expired certificate refused for libcurl's reason; the option's misuse
# (no such object, an object of another type, endpoint=server,
# sslverify=off, plain http); and object-add + blockdev-add of the same
# in qemu-storage-daemon over QMP, exported over NBD.
#
# Error messages are checked for their cause with the command's own
# echo of the options removed, so that an id or a host name found in
# the echoed options does not pass for an explanation.
"""tls-creds: a private CA, mutual TLS, certificate errors, QMP."""

from __future__ import annotations

import unittest
from pathlib import Path
from typing import ClassVar, List, Optional, Sequence

import fixtures
from e2e_case import ERROR_TIMEOUT, E2ETestCase
from fixtures import (CertPair, CmdResult, FtpServer, ImageSet, Nginx,
                      PrivateCA, StorageDaemon)

#: libcurl's reasons (7.88 and 8.14, OpenSSL 3) for refusing a server
#: certificate.  For a name that does not match, 7.88 goes on "host name
#: '127.0.0.1'" and 8.14 "ipv4 address '127.0.0.1'": the name is checked
#: on its own (WRONG_NAME_TARGET).
UNKNOWN_CA = 'SSL certificate problem: unable to get local issuer certificate'
EXPIRED = 'SSL certificate problem: certificate has expired'
WRONG_NAME = 'SSL: no alternative certificate subject name matches target '
WRONG_NAME_TARGET = " '127.0.0.1'"


class TlsCredsTest(E2ETestCase):
    """file.tls-creds with a private CA, over qemu-img and QMP."""

    images: ClassVar[ImageSet]
    ca: ClassVar[PrivateCA]
    other_ca: ClassVar[PrivateCA]
    server_cert: ClassVar[CertPair]
    client_cert: ClassVar[CertPair]
    #: tls-creds-x509 directories: the private CA and its client
    #: certificate; the private CA only; another CA only; the private CA
    #: and a server certificate (for endpoint=server)
    creds_client: ClassVar[Path]
    creds_ca_only: ClassVar[Path]
    creds_other_ca: ClassVar[Path]
    creds_server: ClassVar[Path]
    #: nginx with the private CA's certificate for 127.0.0.1; the same,
    #: asking for a client certificate of the private CA; with its
    #: certificate for another name; with its expired certificate; with
    #: the test CA's certificate (which the system's store trusts)
    private: ClassVar[Nginx]
    mutual: ClassVar[Nginx]
    wrong_name: ClassVar[Nginx]
    expired: ClassVar[Nginx]
    public: ClassVar[Nginx]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.images = fixtures.shared_images()
        tmp = cls.class_tmp
        cls.ca = PrivateCA(tmp / 'private-ca')
        cls.other_ca = PrivateCA(tmp / 'other-ca',
                                 name='qemu-curl other test CA')
        cls.server_cert = cls.ca.server_cert('server-127.0.0.1',
                                             ['IP:127.0.0.1'])
        wrong_name = cls.ca.server_cert('server-wrong-name',
                                        ['DNS:wrong.example'])
        expired = cls.ca.server_cert('server-expired', ['IP:127.0.0.1'],
                                     expired=True)
        cls.client_cert = cls.ca.client_cert('client')
        cls.creds_client = cls.ca.tls_creds_dir(tmp / 'creds-client',
                                                client=cls.client_cert)
        cls.creds_ca_only = cls.ca.tls_creds_dir(tmp / 'creds-ca-only')
        cls.creds_other_ca = cls.other_ca.tls_creds_dir(tmp /
                                                        'creds-other-ca')
        cls.creds_server = cls.ca.tls_creds_dir(tmp / 'creds-server',
                                                server=cls.server_cert)

        root = cls.images.directory
        cert = cls.server_cert
        cls.private = cls.start_server(Nginx(root, cert=cert.cert,
                                             key=cert.key))
        cls.mutual = cls.start_server(Nginx(root, cert=cert.cert,
                                            key=cert.key,
                                            client_ca=cls.ca.cert))
        cls.wrong_name = cls.start_server(Nginx(root, cert=wrong_name.cert,
                                                key=wrong_name.key))
        cls.expired = cls.start_server(Nginx(root, cert=expired.cert,
                                             key=expired.key))
        cls.public = cls.start_server(Nginx(root, cls.ca_dir))

    # -- helpers

    @staticmethod
    def creds_object(directory: Path, endpoint: str = 'client',
                     obj_id: str = 'tls0') -> str:
        """The --object option of a tls-creds-x509 object."""
        return (f'tls-creds-x509,id={obj_id},dir={directory},'
                f'endpoint={endpoint}')

    @staticmethod
    def image_opts(url: str, tls_creds: Optional[str] = 'tls0',
                   fmt: str = 'qcow2', extra: str = '') -> str:
        """The --image-opts of @url (https or ftps), with tls-creds."""
        protocol = url.split(':', 1)[0]
        opts = f'driver={fmt},file.driver={protocol},file.url={url}'
        if tls_creds is not None:
            opts += f',file.tls-creds={tls_creds}'
        return opts + extra

    def convert(self, opts: str, objects: Sequence[str] = (),
                timeout: float = fixtures.COMMAND_TIMEOUT
                ) -> CmdResult:
        """qemu-img convert --object ... --image-opts @opts to raw."""
        args: List[str] = ['convert']
        for obj in objects:
            args += ['--object', obj]
        args += ['--image-opts', opts, '-O', 'raw', str(self.tmp / 'out.raw')]
        return self.qemu_img(*args, timeout=timeout)

    def check_converted(self, opts: str, objects: Sequence[str]) -> None:
        """Convert @opts (the qcow2 image) and check the output's bytes."""
        result = self.convert(opts, objects)
        self.assertSucceeded(result)
        self.assertConvertOutput(self.tmp / 'out.raw', 'raw',
                                 self.images.qcow2)

    def check_refused(self, opts: str, objects: Sequence[str],
                      *causes: str) -> CmdResult:
        """Convert @opts, which must fail cleanly with every one of @causes
        in its message (once the echo of @opts is taken out of it)."""
        result = self.convert(opts, objects, timeout=ERROR_TIMEOUT)
        self.assertFailedCleanly(result)
        self.assertCauses(result.output.replace(opts, '<opts>'), causes,
                          result.describe())
        return result

    def assertCauses(self, message: str, causes: Sequence[str],
                     context: str = '') -> None:
        """Assert that @message holds each of @causes (any case)."""
        missing = [c for c in causes if c.lower() not in message.lower()]
        if missing:
            self.fail(f'the error does not mention {missing!r}:\n'
                      f'{message}\n{context}')

    def assertServed(self, nginx: Nginx, status: int = 206) -> None:
        """Assert that @nginx answered HTTPS requests, all with 200 or
        @status (the driver's HEAD and Range GETs)."""
        log = nginx.settled_log()
        self.assertTrue(log, 'nginx logged no request')
        self.assertEqual({e['scheme'] for e in log}, {'https'}, log)
        self.assertLessEqual({e['status'] for e in log}, {200, status}, log)

    # -- a private CA

    def test_convert_with_private_ca(self) -> None:
        """tls-creds trusts the private CA: the image converts."""
        self.private.reset_log()
        url = self.private.https_url(self.images.qcow2.name)
        self.check_converted(self.image_opts(url),
                             [self.creds_object(self.creds_ca_only)])
        self.assertServed(self.private)

    def test_convert_with_private_ca_and_client_cert(self) -> None:
        """A client certificate nobody asks for does no harm."""
        url = self.private.https_url(self.images.qcow2.name)
        self.check_converted(self.image_opts(url),
                             [self.creds_object(self.creds_client)])

    def test_private_ca_not_trusted_without_tls_creds(self) -> None:
        """Without tls-creds, the private CA is unknown: refused."""
        url = self.private.https_url(self.images.qcow2.name)
        self.check_refused(self.image_opts(url, tls_creds=None), [],
                           UNKNOWN_CA)

    def test_system_store_not_used_with_tls_creds(self) -> None:
        """With tls-creds, the CAs of the system's store are not trusted:
        a server the store vouches for is refused."""
        url = self.public.https_url(self.images.qcow2.name)
        info = self.qemu_img('info', '-f', 'qcow2', url)
        self.assertSucceeded(info, 'the system store trusts the test CA')
        self.check_refused(self.image_opts(url),
                           [self.creds_object(self.creds_ca_only)],
                           UNKNOWN_CA)

    def test_ftps_with_private_ca(self) -> None:
        """ftps:// with tls-creds: the image converts."""
        server = FtpServer(self.images.directory, tls=True,
                           cert=self.server_cert.cert,
                           key=self.server_cert.key)
        server.start()
        self.addCleanup(server.stop)
        url = server.url(self.images.qcow2.name)
        self.check_refused(self.image_opts(url, tls_creds=None), [],
                           UNKNOWN_CA)
        self.check_converted(self.image_opts(url),
                             [self.creds_object(self.creds_ca_only)])

    # -- mutual TLS

    def test_mutual_tls(self) -> None:
        """nginx asks for a client certificate: the driver presents
        client-cert.pem, and nginx accepts it."""
        self.mutual.reset_log()
        url = self.mutual.https_url(self.images.qcow2.name)
        self.check_converted(self.image_opts(url),
                             [self.creds_object(self.creds_client)])
        self.assertServed(self.mutual)

    def test_mutual_tls_without_client_cert(self) -> None:
        """Without client-cert.pem, nginx answers 400 ("No required SSL
        certificate was sent"), which the driver reports."""
        self.mutual.reset_log()
        url = self.mutual.https_url(self.images.qcow2.name)
        self.check_refused(self.image_opts(url),
                           [self.creds_object(self.creds_ca_only)],
                           'HTTP 400')
        log = self.mutual.settled_log()
        self.assertTrue(log, 'nginx logged no request')
        self.assertEqual({e['status'] for e in log}, {400}, log)

    # -- certificate errors, for libcurl's reason

    def test_wrong_host_name(self) -> None:
        """A certificate of the trusted CA for another name: refused."""
        url = self.wrong_name.https_url(self.images.qcow2.name)
        self.check_refused(self.image_opts(url),
                           [self.creds_object(self.creds_ca_only)],
                           WRONG_NAME, WRONG_NAME_TARGET)

    def test_unknown_ca(self) -> None:
        """ca-cert.pem is another CA: the server's is unknown."""
        url = self.private.https_url(self.images.qcow2.name)
        self.check_refused(self.image_opts(url),
                           [self.creds_object(self.creds_other_ca)],
                           UNKNOWN_CA)

    def test_expired_certificate(self) -> None:
        """An expired certificate of the trusted CA: refused."""
        url = self.expired.https_url(self.images.qcow2.name)
        self.check_refused(self.image_opts(url),
                           [self.creds_object(self.creds_ca_only)],
                           EXPIRED)

    # -- misuse of the option

    def test_no_such_object(self) -> None:
        """tls-creds names no object: the error names the id."""
        url = self.private.https_url(self.images.qcow2.name)
        self.check_refused(self.image_opts(url, tls_creds='no-such-creds'),
                           [], 'tls-creds', 'no-such-creds')

    def test_object_of_another_type(self) -> None:
        """tls-creds names a secret: the error names it and the type."""
        url = self.private.https_url(self.images.qcow2.name)
        self.check_refused(self.image_opts(url, tls_creds='sec0'),
                           ['secret,id=sec0,data=letmein'],
                           'sec0', 'tls-creds-x509')

    def test_server_endpoint(self) -> None:
        """endpoint=server: the error names the object and says a client
        endpoint is needed."""
        url = self.private.https_url(self.images.qcow2.name)
        self.check_refused(self.image_opts(url),
                           [self.creds_object(self.creds_server,
                                              endpoint='server')],
                           "tls-creds: object 'tls0': ", 'client endpoint')

    def test_sslverify_off_refused(self) -> None:
        """tls-creds with sslverify=off: refused, naming both."""
        url = self.private.https_url(self.images.qcow2.name)
        self.check_refused(self.image_opts(url, extra=',file.sslverify=off'),
                           [self.creds_object(self.creds_ca_only)],
                           'tls-creds', 'sslverify')

    def test_plain_http_refused(self) -> None:
        """tls-creds on an http:// URL: refused, naming the option."""
        url = self.private.http_url(self.images.qcow2.name)
        self.check_refused(self.image_opts(url),
                           [self.creds_object(self.creds_ca_only)],
                           'tls-creds')

    # -- QMP

    def check_storage_daemon(self, nginx: Nginx, creds: Path) -> None:
        """object-add of a tls-creds-x509 for @creds and blockdev-add of
        an https node of @nginx with it, in qemu-storage-daemon; export
        over NBD, compare, and tear everything down."""
        qsd = StorageDaemon()
        qsd.start()
        self.addCleanup(qsd.cleanup)
        url = nginx.https_url(self.images.qcow2.name)

        qsd.cmd('object-add', qom_type='tls-creds-x509', id='tls0',
                dir=str(creds), endpoint='client')
        error = qsd.cmd_error('blockdev-add', driver='https',
                              node_name='bad0', url=url,
                              tls_creds='no-such-creds', read_only=True)
        self.assertCauses(error, ['no-such-creds'])
        qsd.cmd('blockdev-add', driver='https', node_name='proto0', url=url,
                tls_creds='tls0', read_only=True)
        qsd.cmd('blockdev-add', driver='qcow2', node_name='fmt0',
                file='proto0', read_only=True)

        sock = qsd.socket_path('nbd.sock')
        qsd.cmd('nbd-server-start',
                addr={'type': 'unix', 'data': {'path': str(sock)}})
        qsd.cmd('block-export-add', type='nbd', id='exp0', node_name='fmt0',
                name='disk', writable=False)
        self.assertSameGuestData(fixtures.nbd_unix_uri('disk', sock), 'raw',
                                 self.images.raw)

        qsd.cmd('block-export-del', id='exp0', mode='hard')
        qsd.event_wait('BLOCK_EXPORT_DELETED', match={'id': 'exp0'})
        qsd.cmd('blockdev-del', node_name='fmt0')
        qsd.cmd('blockdev-del', node_name='proto0')
        qsd.cmd('object-del', id='tls0')
        qsd.cmd('nbd-server-stop')
        self.assertEqual(qsd.shutdown(), 0)

    def test_storage_daemon(self) -> None:
        """object-add + blockdev-add with tls-creds, over QMP."""
        self.private.reset_log()
        self.check_storage_daemon(self.private, self.creds_ca_only)
        self.assertServed(self.private)

    def test_storage_daemon_mutual_tls(self) -> None:
        """The same with a client certificate, to nginx that asks for it."""
        self.mutual.reset_log()
        self.check_storage_daemon(self.mutual, self.creds_client)
        self.assertServed(self.mutual)

    # -- the fixtures, with curl(1)

    def test_certificates_with_curl(self) -> None:
        """The servers and certificates do what the tests above assume,
        as curl(1) sees them (independently of QEMU).

        curl --cacert alone would still trust the CA directory compiled
        into libcurl (/etc/ssl/certs, which holds the test CA): an empty
        --capath makes it trust exactly the file, as tls-creds does.
        """
        name = self.images.raw.name
        empty = self.tmp / 'empty-capath'
        empty.mkdir()
        only = ['--cacert', str(self.creds_client /
                                fixtures.TLS_CREDS_CA_CERT),
                '--capath', str(empty)]
        client = ['--cert', str(self.creds_client /
                                fixtures.TLS_CREDS_CLIENT_CERT),
                  '--key', str(self.creds_client /
                               fixtures.TLS_CREDS_CLIENT_KEY)]
        head = ['curl', '-sS', '-o', '/dev/null', '-w', '%{http_code}',
                '-r', '0-0']

        def curl(*args: str) -> CmdResult:
            return fixtures.run(head + list(args), timeout=ERROR_TIMEOUT)

        ok = curl(*only, self.private.https_url(name))
        self.assertEqual((ok.returncode, ok.stdout), (0, '206'),
                         ok.describe())
        for result, reason in (
                (curl(self.private.https_url(name)), UNKNOWN_CA),
                (curl(*only, self.public.https_url(name)), UNKNOWN_CA),
                (curl(*only, self.wrong_name.https_url(name)), WRONG_NAME),
                (curl(*only, self.expired.https_url(name)), EXPIRED)):
            self.assertEqual(result.returncode, 60, result.describe())
            self.assertIn(reason, result.stderr, result.describe())
        mutual = curl(*only, *client, self.mutual.https_url(name))
        self.assertEqual((mutual.returncode, mutual.stdout), (0, '206'),
                         mutual.describe())
        anonymous = curl(*only, self.mutual.https_url(name))
        self.assertEqual((anonymous.returncode, anonymous.stdout),
                         (0, '400'), anonymous.describe())


if __name__ == '__main__':
    unittest.main()
