#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Read-only FTP / implicit-FTPS server for the curl block driver e2e tests.
#
# A small launcher around pyftpdlib (Debian: python3-pyftpdlib; FTPS also
# needs python3-openssl).  The e2e fixtures (fixtures.FtpServer) run it as
# a subprocess; it can also be run by hand:
#
#   tests/e2e/ftpd.py --root DIR [--port N] [--port-file FILE]
#                     [--user U --password P] [--tls-cert PEM --tls-key KEY]
#                     [--passive-ports LOW-HIGH]
#
# With --tls-cert the server speaks *implicit* FTPS: TLS starts with the
# first byte of the control connection (as on port 990), before the 220
# greeting, which is what libcurl (and so QEMU) means by ftps://.  Data
# connections are protected as soon as the client asks for PROT P, which
# libcurl does for ftps://; with --tls-data-required plain data
# connections are refused.
"""Serve a directory over FTP or implicit FTPS, read-only."""

import argparse
import logging
import os
import signal
import sys
from typing import List, Optional, Type

from pyftpdlib.authorizers import DummyAuthorizer  # type: ignore[import]
from pyftpdlib.handlers import FTPHandler  # type: ignore[import]
from pyftpdlib.servers import FTPServer  # type: ignore[import]

READ_ONLY_PERMS = 'elr'  # change directory, list, retrieve


def make_implicit_tls_handler(cert: str, key: str,
                              data_required: bool) -> Type[FTPHandler]:
    """Return an FTP handler class that speaks implicit FTPS.

    pyftpdlib's TLS_FTPHandler implements explicit FTPS (AUTH TLS on a
    plain connection).  Implicit FTPS is the same protocol with the
    control connection secured from the start: the handler starts the
    TLS server handshake as soon as the connection is accepted, and only
    then queues the 220 greeting, which pyftpdlib's SSL layer sends once
    the handshake is done.  AUTH is refused, as on a real implicit
    server; PBSZ and PROT work as usual since the control connection is
    a TLS one, and data connections are secured after PROT P.
    """
    # pylint: disable=import-outside-toplevel
    from OpenSSL import SSL
    from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_options(SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3 |
                        SSL.OP_NO_COMPRESSION)
    context.use_certificate_chain_file(cert)
    context.use_privatekey_file(key)
    context.check_privatekey()

    class ImplicitTLSDTPHandler(TLS_DTPHandler):  # type: ignore[misc]
        """A data connection that may start its TLS handshake at once.

        pyftpdlib closes a data connection that becomes readable before
        a transfer command arrived; but libcurl starts the TLS handshake
        of a protected data connection as soon as it is connected, so
        the connection must stay readable while that handshake runs.
        """

        def readable(self) -> bool:
            if self._ssl_accepting:
                return True
            return bool(super().readable())

    class ImplicitTLSHandler(TLS_FTPHandler):  # type: ignore[misc]
        """Implicit FTPS: TLS from the first byte of the connection."""

        ssl_context = context
        dtp_handler = ImplicitTLSDTPHandler
        tls_control_required = True
        tls_data_required = data_required
        _greeted = False

        def handle(self) -> None:
            # The greeting waits for the handshake: handle_ssl_established
            self.secure_connection(self.ssl_context)

        def handle_ssl_established(self) -> None:
            if not self._greeted:
                self._greeted = True
                super().handle()

        def ftp_AUTH(self, line: str) -> None:  # pylint: disable=invalid-name
            self.respond('503 Already using TLS (implicit FTPS).')

    return ImplicitTLSHandler


def parse_port_range(text: str) -> List[int]:
    """Parse 'LOW-HIGH' into the list of ports it spans."""
    low, _, high = text.partition('-')
    first, last = int(low), int(high or low)
    if not 0 < first <= last < 65536:
        raise argparse.ArgumentTypeError(f'bad port range {text!r}')
    return list(range(first, last + 1))


def refusing_rest(base: Type[FTPHandler]) -> Type[FTPHandler]:
    """A handler that answers the first REST to each position (over all
    connections) with 450, a transient error in RFC 959."""
    refused = set()

    class RefusingRestHandler(base):  # type: ignore[misc,valid-type]
        """Refuses a REST the first time."""

        def ftp_REST(self, line: str) -> None:
            if line not in refused:
                refused.add(line)
                self.respond('450 REST refused for the test.')
                self.log(f'REST {line} refused for the test.')
                return
            super().ftp_REST(line)

    return RefusingRestHandler


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the options and serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--root', required=True, help='directory to serve')
    parser.add_argument('--bind', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=0,
                        help='control port (default: any free one)')
    parser.add_argument('--port-file',
                        help='write the control port number here when ready')
    parser.add_argument('--user', help='account name (default: anonymous)')
    parser.add_argument('--password', help='password of --user')
    parser.add_argument('--tls-cert', help='certificate: serve implicit FTPS')
    parser.add_argument('--tls-key', help='private key of --tls-cert')
    parser.add_argument('--tls-data-required', action='store_true',
                        help='refuse unprotected data connections')
    parser.add_argument('--passive-ports', type=parse_port_range,
                        help='LOW-HIGH range for passive data connections '
                             '(default: any free port)')
    parser.add_argument('--refuse-rest', action='store_true',
                        help='answer the first REST to each position with '
                             'a transient 450 error (a fault for the tests)')
    parser.add_argument('--log', help='append the server log to this file')
    parser.add_argument('--verbose', action='store_true',
                        help='log debug messages, too')
    args = parser.parse_args(argv)

    if not os.path.isdir(args.root):
        parser.error(f'--root {args.root}: not a directory')
    if (args.user is None) != (args.password is None):
        parser.error('--user and --password go together')
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error('--tls-cert and --tls-key go together')

    logging.basicConfig(filename=args.log,
                        level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(asctime)s %(levelname)s %(message)s')

    authorizer = DummyAuthorizer()
    root = os.path.abspath(args.root)
    if args.user is not None:
        authorizer.add_user(args.user, args.password, root,
                            perm=READ_ONLY_PERMS)
    else:
        authorizer.add_anonymous(root, perm=READ_ONLY_PERMS)

    handler: Type[FTPHandler] = FTPHandler
    if args.tls_cert:
        handler = make_implicit_tls_handler(args.tls_cert, args.tls_key,
                                            args.tls_data_required)

    # A subclass, so that the class attributes of pyftpdlib stay untouched
    handler = type('E2EHandler', (handler,), {
        'authorizer': authorizer,
        'passive_ports': args.passive_ports,
        'permit_foreign_addresses': False,
        'banner': 'qemu-curl e2e ftpd ready.',
    })
    if args.refuse_rest:
        handler = refusing_rest(handler)

    server = FTPServer((args.bind, args.port), handler)
    server.max_cons = 256
    port = server.address[1]

    def terminate(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    if args.port_file:
        tmp = f'{args.port_file}.tmp'
        with open(tmp, 'w', encoding='ascii') as port_file:
            port_file.write(f'{port}\n')
        os.replace(tmp, args.port_file)
    try:
        server.serve_forever(timeout=0.5, handle_exit=False)
    except KeyboardInterrupt:
        pass
    finally:
        server.close_all()
    return 0


if __name__ == '__main__':
    sys.exit(main())
