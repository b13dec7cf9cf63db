# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: qemu-img and qemu-io read images over FTP with TLS from Debian's
# vsftpd: explicit FTPS (AUTH TLS on the ftp port, the ftp driver's tls
# option) and implicit FTPS (ftps://, vsftpd's implicit_ssl).
#
# vsftpd demands TLS from anonymous clients for the login and for every
# data connection (force_anon_logins_ssl, force_anon_data_ssl), and, by
# its default, that a data connection resumes the control connection's
# TLS session (require_ssl_reuse).  Certificates are verified: the test
# CA of scripts/with-test-ca.sh is trusted, a fixtures.PrivateCA is given
# with a tls-creds-x509 object.
#
# Every class runs the cases of server_cases.ServerCases (convert of the
# raw and the qcow2 image, random reads with qemu-io, the raw image in a
# tar file with file.offset; every byte compared with the file), and
# checks in vsftpd's log that the transfers were protected (PROT P).
# Besides:
#
# * ExplicitFtpsTest.test_without_tls_refused: without file.tls, vsftpd
#   refuses the anonymous login (530), and the open fails cleanly.
# * ExplicitFtpsCredsTest: file.tls-creds (a private CA) without
#   file.tls, which it implies; test_untrusted_refused: file.tls=on
#   without the private CA fails on the certificate.
#
# From 7.87.0 to 8.6.0 (Debian 12 has 7.88.1), libcurl's multi-socket
# interface stops watching the control connection while an FTPS data
# connection waits for TLS, which vsftpd starts only after RETR (curl
# issue 12901): without the driver's workaround (CURL_FTPS_POLL_MS in
# block/curl.c), a transfer stalled unless vsftpd's answers came fast
# enough, 2 of 8 converts here.  Every case must pass with Debian 12's
# libcurl (make check) and with libcurl 8.14 (its curl8 layer).
"""Explicit and implicit FTPS from vsftpd."""

from __future__ import annotations

import unittest
from pathlib import Path
from typing import Any, ClassVar, Dict, List

import server_cases
from fixtures import CertPair, PrivateCA
from servers import VsftpdTls


def test_ca_cert(ca_dir: Any) -> CertPair:
    """The certificate for 127.0.0.1 of the test CA (trusted)."""
    return CertPair(ca_dir / 'server.pem', ca_dir / 'server.key')


class ExplicitFtpsTest(server_cases.FtpsCases):
    """ftp:// with file.tls=on: AUTH TLS, a certificate of the test CA."""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.ftp = cls.start_server(VsftpdTls(cls.images.directory,
                                             test_ca_cert(cls.ca_dir)))

    def file_options(self, name: str) -> Dict[str, Any]:
        return {'driver': 'ftp', 'url': self.ftp.url(name), 'tls': True}

    def after_each(self) -> None:
        """The client asked for TLS (libcurl tries AUTH SSL first)."""
        super().after_each()
        self.assertRegex(self.ftp.log()[:20000], r'"AUTH (TLS|SSL)"',
                         'vsftpd logged no AUTH')

    def test_without_tls_refused(self) -> None:
        """Without file.tls, vsftpd refuses the login: a clean error."""
        result = self.open_fails({'driver': 'ftp',
                                  'url': self.ftp.url('disk.raw')}, [])
        self.assertOutputMentions(result, '530', 'denied', 'login')


class ExplicitFtpsCredsTest(server_cases.FtpsCases):
    """ftp:// with file.tls-creds (a private CA), which implies tls."""

    ca: ClassVar[PrivateCA]
    creds: ClassVar[Path]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.ca = PrivateCA(cls.class_tmp / 'ca')
        cls.creds = cls.ca.tls_creds_dir(cls.class_tmp / 'creds')
        cert = cls.ca.server_cert('vsftpd', ['IP:127.0.0.1'])
        cls.ftp = cls.start_server(VsftpdTls(cls.images.directory, cert))

    def file_options(self, name: str) -> Dict[str, Any]:
        return {'driver': 'ftp', 'url': self.ftp.url(name),
                'tls-creds': 'tls0'}

    def objects(self) -> List[str]:
        return [f'tls-creds-x509,id=tls0,dir={self.creds},endpoint=client']

    def test_untrusted_refused(self) -> None:
        """file.tls=on without the private CA: the certificate fails."""
        result = self.open_fails({'driver': 'ftp',
                                  'url': self.ftp.url('disk.raw'),
                                  'tls': True}, [])
        self.assertOutputMentions(result, 'certificate', 'SSL')


class ImplicitFtpsTest(server_cases.FtpsCases):
    """ftps:// (implicit FTPS), a certificate of the test CA."""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.ftp = cls.start_server(VsftpdTls(cls.images.directory,
                                             test_ca_cert(cls.ca_dir),
                                             implicit=True))

    def file_options(self, name: str) -> Dict[str, Any]:
        return {'driver': 'ftps', 'url': self.ftp.url(name)}


if __name__ == '__main__':
    unittest.main()
