# SPDX-License-Identifier: GPL-2.0-or-later
#
# Debian's vsftpd as a test server for the ftp:// tests of QEMU's curl
# block driver.
#
# pyftpdlib (fixtures.FtpServer) is the suite's own FTP server; vsftpd is
# a widely used one, as Debian packages it, and the driver must get along
# with it too.  It runs in the foreground with its configuration, log and
# empty directory in a private temporary directory, on a free port of
# 127.0.0.1.
"""Debian's vsftpd serving a directory read-only to anonymous clients."""

from __future__ import annotations

import os
import random
import secrets
import socket
import subprocess
from pathlib import Path
from typing import Any, Optional, Union

from fixtures import (HOST, START_TIMEOUT, MissingPrerequisite, free_port,
                      make_tempdir, remove_tree, wait_for)

VSFTPD = '/usr/sbin/vsftpd'

#: vsftpd picks the port of each passive data connection at random in
#: [base, base + PASSIVE_PORTS), and tries another if one is taken.  The
#: base is below Linux's ephemeral ports (32768 and up by default), where
#: the kernel does not put the client ends of connections.
PASSIVE_PORTS = 1000
PASSIVE_BASES = range(20000, 32768 - PASSIVE_PORTS, PASSIVE_PORTS)


class _PortInUse(Exception):
    """vsftpd could not bind its listening port."""


class Vsftpd:
    """vsftpd serving @root read-only to anonymous clients.

    No password is asked for (``no_anon_password``), every file is served
    whatever its mode (``anon_world_readable_only=NO``) and nothing can be
    written.  vsftpd runs as the user who starts it
    (``run_as_launching_user``): it needs neither root nor the "ftp" user,
    and neither chroots nor changes users, so it runs the same as root, in
    a user namespace or as anyone.  It makes no namespaces (``isolate``,
    ``isolate_network``: Debian's README says to turn them off in a
    container) and installs no seccomp filter (``seccomp_sandbox``): a
    test server on 127.0.0.1 needs no sandbox.  Its empty directory is a
    private one, not /var/run/vsftpd/empty, which only Debian's service
    creates (its unit, init script and tmpfiles.d entry).  Every FTP
    command and answer is logged (see :meth:`log`).

    Use it as a context manager, or call start() and stop().
    """

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root).resolve()
        self.port = 0
        self.dir: Optional[Path] = None
        self._proc: Optional['subprocess.Popen[bytes]'] = None
        # Greets clients with it: what answers on the port is this vsftpd
        self._banner = f'vsftpd for the e2e tests {secrets.token_hex(8)}'

    def __enter__(self) -> 'Vsftpd':
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT, attempts: int = 5) -> None:
        """Start vsftpd and wait until it accepts connections.

        If its port was taken in the meantime, retry with another one.
        """
        if self._proc is not None:
            raise RuntimeError('vsftpd already started')
        if not os.access(VSFTPD, os.X_OK):
            raise MissingPrerequisite(f'{VSFTPD} not found: apt-get install '
                                      'vsftpd (scripts/install-deps.sh)')
        self.dir = make_tempdir('vsftpd')
        (self.dir / 'empty').mkdir()
        for attempt in range(attempts):
            self.port = free_port()
            self._write_config()
            try:
                self._launch(timeout)
                return
            except _PortInUse:
                self._reap()
                if attempt == attempts - 1:
                    self.stop()
                    raise RuntimeError('vsftpd: no free port found') from None
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stop vsftpd and remove its directory.

        The session of each client still connected ends with it: vsftpd
        has them die with their parent.
        """
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc = None
        remove_tree(self.dir)
        self.dir = None

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait(timeout=10)
            self._proc = None

    def _launch(self, timeout: float) -> None:
        assert self.dir is not None
        # vsftpd writes its errors ("500 OOPS: ...") to file descriptor 0:
        # the control connection, when inetd runs it
        with open(self.dir / 'output.log', 'wb') as output:
            # Reaped in stop()  # pylint: disable=consider-using-with
            self._proc = subprocess.Popen(
                [VSFTPD, str(self.dir / 'vsftpd.conf')],
                stdin=output, stdout=output, stderr=output,
                start_new_session=True)

        def died() -> Optional[str]:
            assert self._proc is not None
            if self._proc.poll() is None:
                return None
            errors = self.errors()
            if 'could not bind listening' in errors:
                raise _PortInUse()
            return f'vsftpd exited with {self._proc.returncode}:\n{errors}'

        wait_for(self._greets, timeout, 'vsftpd to listen', abort=died)

    def _greets(self) -> bool:
        """Tell whether this vsftpd greets a new connection on its port."""
        try:
            with socket.create_connection((HOST, self.port),
                                          timeout=5) as sock:
                sock.settimeout(5)
                greeting = b''
                while not greeting.endswith(b'\n'):
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    greeting += chunk
        except OSError:
            return False
        return greeting.decode(errors='replace').startswith(
            f'220 {self._banner}')

    def _write_config(self) -> None:
        assert self.dir is not None
        passive = random.choice(PASSIVE_BASES)
        config = f'''# vsftpd configuration for the curl block driver e2e tests
listen=YES
listen_ipv6=NO
listen_address={HOST}
listen_port={self.port}
background=NO
ftpd_banner={self._banner}
run_as_launching_user=YES
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
secure_chroot_dir={self.dir / 'empty'}
anonymous_enable=YES
local_enable=NO
write_enable=NO
anon_root={self.root}
no_anon_password=YES
anon_world_readable_only=NO
pasv_enable=YES
pasv_address={HOST}
pasv_min_port={passive}
pasv_max_port={passive + PASSIVE_PORTS - 1}
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file={self.dir / 'vsftpd.log'}
'''
        (self.dir / 'vsftpd.conf').write_text(config, encoding='utf-8')

    @property
    def running(self) -> bool:
        """Whether the listening vsftpd process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def url(self, name: str) -> str:
        """The anonymous ftp:// URL of file @name under the root."""
        return f'ftp://{HOST}:{self.port}/{name.lstrip("/")}'

    def log(self) -> str:
        """The log so far: each FTP command and answer, each transfer."""
        if self.dir is None:
            return ''
        try:
            return (self.dir / 'vsftpd.log').read_text(encoding='utf-8',
                                                       errors='replace')
        except FileNotFoundError:
            return ''

    def errors(self) -> str:
        """What vsftpd printed (its "500 OOPS" messages), and the end of
        its log."""
        if self.dir is None:
            return ''
        try:
            printed = (self.dir / 'output.log').read_text(errors='replace')
        except FileNotFoundError:
            printed = ''
        return (printed + self.log()[-4000:]).strip()
