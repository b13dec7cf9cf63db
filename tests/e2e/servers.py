# SPDX-License-Identifier: GPL-2.0-or-later
#
# Real servers from Debian's packages for the e2e tests of QEMU's curl
# block driver: Apache (HTTPS with HTTP/1.1 or HTTP/2, and plain HTTP),
# lighttpd (HTTP and HTTPS), Varnish (a caching reverse proxy), Squid (a
# forward proxy, with or without basic authentication) and vsftpd with
# TLS (explicit FTPS with AUTH TLS, and implicit FTPS).
#
# Each runs in the foreground as a child of the test, with its own
# configuration, logs and pid file in a private temporary directory, on
# free ports of 127.0.0.1; nothing of the system's service (its unit,
# its configuration in /etc, its directories in /var) is used, so the
# packages' own services may stay stopped and disabled.
# scripts/install-deps.sh installs the packages (TEST_PKGS).
"""Apache, lighttpd, Varnish, Squid and vsftpd with TLS, for the tests."""

from __future__ import annotations

import dataclasses
import os
import pwd
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from fixtures import (HOST, START_TIMEOUT, CertPair, MiB, MissingPrerequisite,
                      TarMember, TestImage, free_port, make_qcow2, make_tar,
                      make_tempdir, make_test_image, port_open, remove_tree,
                      wait_for)
from vsftpd import Vsftpd

APACHE = '/usr/sbin/apache2'
APACHE_MODULES = Path('/usr/lib/apache2/modules')
LIGHTTPD = '/usr/sbin/lighttpd'
LIGHTTPD_MODULES = Path('/usr/lib/lighttpd')
VARNISHD = '/usr/sbin/varnishd'
SQUID = '/usr/sbin/squid'
SQUID_BASIC_AUTH = '/usr/lib/squid/basic_ncsa_auth'

#: What a process was given to stop before it is killed
STOP_TIMEOUT = 10.0


class _PortInUse(Exception):
    """The server could not bind one of its ports."""


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(encoding='utf-8', errors='replace')[-limit:]
    except OSError:
        return ''


def _user_ids(name: str) -> Optional[Tuple[int, int]]:
    """(uid, gid) of user @name, or None if there is none."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def open_to_all(path: Path) -> None:
    """Let any user read the files under @path and pass through it.

    Servers started as root serve files as an unprivileged user (Apache
    as www-data); the directories made by make_tempdir are private to
    root.  Only the test's own directories are changed: the caller
    passes the directory it made.
    """
    path.chmod(0o755)
    for parent, dirs, files in os.walk(path):
        for name in dirs:
            (Path(parent) / name).chmod(0o755)
        for name in files:
            (Path(parent) / name).chmod(0o644)


class Daemon:
    """A server in the foreground with its files in a private directory.

    Subclasses give :attr:`name`, :attr:`binary`, :attr:`package`, the
    names of their ports (:attr:`port_names`), and write their
    configuration (:meth:`_write_config`) and command (:meth:`_command`).
    The process runs in a session of its own: :meth:`stop` ends its
    process group, whose leader the test started.

    Use it as a context manager, or call start() and stop().
    """

    name = 'daemon'
    binary = ''
    package = ''
    port_names: Sequence[str] = ('port',)

    def __init__(self) -> None:
        self.dir: Optional[Path] = None
        self.ports: Dict[str, int] = {}
        self._proc: Optional['subprocess.Popen[bytes]'] = None

    def __enter__(self) -> 'Daemon':
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT, attempts: int = 5) -> None:
        """Start the server and wait until it is ready.

        If one of its ports was taken in the meantime, retry with others.
        """
        if self._proc is not None:
            raise RuntimeError(f'{self.name} already started')
        if not os.access(self.binary, os.X_OK):
            raise MissingPrerequisite(
                f'{self.binary} not found: apt-get install {self.package} '
                '(scripts/install-deps.sh)')
        self.dir = make_tempdir(self.name)
        try:
            self._prepare()
        except BaseException:
            self.stop()
            raise
        for attempt in range(attempts):
            self.ports = {}
            for port_name in self.port_names:
                port = free_port()
                while port in self.ports.values():
                    port = free_port()
                self.ports[port_name] = port
            try:
                self._write_config()
                self._launch(timeout)
                return
            except _PortInUse:
                self._end_process()
                if attempt == attempts - 1:
                    self.stop()
                    raise RuntimeError(f'{self.name}: no free port '
                                       'found') from None
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        self._end_process()
        remove_tree(self.dir)
        self.dir = None

    def _end_process(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                continue
            # Its children (workers, helpers) leave with it, or now
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return

    # -- for subclasses

    def _prepare(self) -> None:
        """Make what every attempt uses (files in :attr:`dir`)."""

    def _write_config(self) -> None:
        raise NotImplementedError

    def _command(self) -> List[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        """Whether the server is ready (default: every port accepts)."""
        return all(port_open(port) for port in self.ports.values())

    def _port_taken(self, errors: str) -> bool:
        """Whether @errors say that a port could not be bound."""
        return 'Address already in use' in errors

    def _logs(self) -> str:
        """The end of the server's own logs."""
        return ''

    # -- common

    def _launch(self, timeout: float) -> None:
        assert self.dir is not None
        with open(self.dir / 'output.log', 'wb') as output:
            # Reaped in stop()  # pylint: disable=consider-using-with
            self._proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=output,
                stderr=output, cwd=self.dir, start_new_session=True)

        def died() -> Optional[str]:
            assert self._proc is not None
            if self._proc.poll() is None:
                return None
            errors = self.errors()
            if self._port_taken(errors):
                raise _PortInUse()
            return (f'{self.name} exited with {self._proc.returncode}:\n'
                    f'{errors}')

        wait_for(self._ready, timeout, f'{self.name} to listen', abort=died)

    @property
    def running(self) -> bool:
        """Whether the server's main process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def errors(self) -> str:
        """What the server printed, and the end of its logs."""
        if self.dir is None:
            return ''
        return (_tail(self.dir / 'output.log') + self._logs()).strip()


class WebServer(Daemon):
    """A web server of @root over HTTPS and plain HTTP.

    HTTPS uses @cert, a CertPair for 127.0.0.1 (from fixtures.PrivateCA
    or the test CA of scripts/with-test-ca.sh).
    """

    port_names = ('https', 'http')

    def __init__(self, root: Union[str, Path], cert: CertPair) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.cert = cert

    @property
    def https_port(self) -> int:
        """The HTTPS port."""
        return self.ports['https']

    @property
    def http_port(self) -> int:
        """The plain HTTP port."""
        return self.ports['http']

    def url(self, name: str, scheme: str = 'https') -> str:
        """The URL of file @name for @scheme ('http' or 'https')."""
        port = self.https_port if scheme == 'https' else self.http_port
        return f'{scheme}://{HOST}:{port}/{name.lstrip("/")}'

    def access_log(self) -> str:
        """The access log so far."""
        if self.dir is None:
            return ''
        return _tail(self.dir / 'access.log', 1 << 24)

    def settled_log(self, quiet: float = 0.2, timeout: float = 10.0) -> str:
        """The access log once it has not grown for @quiet seconds: a
        server logs a request after its answer, which its client may have
        read already."""
        deadline = time.monotonic() + timeout
        log = self.access_log()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            again = self.access_log()
            if again == log:
                break
            log = again
        return log


class Apache(WebServer):
    """Debian's Apache 2.4 (event MPM) serving @root.

    HTTPS with mod_ssl; with @http2, mod_http2 offers h2 by ALPN on the
    HTTPS port (``Protocols h2 http/1.1``), else only HTTP/1.1 is
    offered.  Files get Apache's default ETag (FileETag MTime Size:
    weak in the second the file was modified, strong after) and
    Last-Modified; without @etags, no ETag (``FileETag None``).  Apache
    2.4 takes an If-Range date only if the file is at least 60 s older
    than the answer (ap_condition_if_range()); for a newer file it sends
    all of it, with 200.  Started as root, Apache serves as www-data:
    @root must be readable by all (see :func:`open_to_all`).  The access
    log has one line per request: protocol, status, Range and the ETag
    sent.
    """

    name = 'apache2'
    binary = APACHE
    package = 'apache2'

    def __init__(self, root: Union[str, Path], cert: CertPair,
                 http2: bool = False, etags: bool = True) -> None:
        super().__init__(root, cert)
        self.http2 = http2
        self.etags = etags

    def _command(self) -> List[str]:
        assert self.dir is not None
        return [self.binary, '-d', str(self.dir), '-f',
                str(self.dir / 'apache2.conf'), '-DFOREGROUND']

    def _port_taken(self, errors: str) -> bool:
        return 'Address already in use' in errors or \
            'could not bind' in errors

    def _logs(self) -> str:
        assert self.dir is not None
        return _tail(self.dir / 'error.log')

    def _write_config(self) -> None:
        assert self.dir is not None
        d = self.dir
        modules = ['mpm_event', 'authz_core', 'mime', 'socache_shmcb',
                   'ssl'] + (['http2'] if self.http2 else [])
        loads = '\n'.join(f'LoadModule {m}_module '
                          f'{APACHE_MODULES}/mod_{m}.so' for m in modules)
        user = ''
        if os.geteuid() == 0:
            # Apache refuses to serve as root: its children drop to this
            user = 'User www-data\nGroup www-data'
        protocols = 'h2 http/1.1' if self.http2 else 'http/1.1'
        config = f'''# Apache configuration for the curl block driver e2e tests
{loads}
ServerRoot {d}
ServerName 127.0.0.1
DefaultRuntimeDir {d}
PidFile {d}/apache2.pid
ErrorLog {d}/error.log
LogLevel warn
LogFormat "%H %>s %m %U \\"%{{Range}}i\\" %B \\"%{{ETag}}o\\"" e2e
CustomLog {d}/access.log e2e
{user}
Listen {HOST}:{self.https_port}
Listen {HOST}:{self.http_port}
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 120
FileETag {'MTime Size' if self.etags else 'None'}
TypesConfig /dev/null
AddType application/octet-stream .raw .qcow2 .tar
DocumentRoot {self.root}
<Directory />
    Require all denied
</Directory>
<Directory {self.root}>
    Require all granted
</Directory>
SSLSessionCache shmcb:{d}/ssl_scache(512000)
<VirtualHost {HOST}:{self.https_port}>
    Protocols {protocols}
    SSLEngine on
    SSLCertificateFile {self.cert.cert}
    SSLCertificateKeyFile {self.cert.key}
</VirtualHost>
'''
        (d / 'apache2.conf').write_text(config, encoding='utf-8')


class Lighttpd(WebServer):
    """Debian's lighttpd serving @root over HTTPS (mod_openssl) and HTTP.

    ETags are on (``static-file.etags``, lighttpd's default), or off
    without @etags.  It runs as whoever starts it; started as root it
    stays root, as lighttpd does without ``server.username``.  It writes
    its access log out every few seconds, not after each request.
    """

    name = 'lighttpd'
    binary = LIGHTTPD
    package = 'lighttpd'

    def __init__(self, root: Union[str, Path], cert: CertPair,
                 etags: bool = True) -> None:
        super().__init__(root, cert)
        self.etags = etags

    def _command(self) -> List[str]:
        assert self.dir is not None
        return [self.binary, '-D', '-f', str(self.dir / 'lighttpd.conf'),
                '-m', str(LIGHTTPD_MODULES)]

    def _port_taken(self, errors: str) -> bool:
        return 'Address already in use' in errors

    def _logs(self) -> str:
        assert self.dir is not None
        return _tail(self.dir / 'error.log')

    def _write_config(self) -> None:
        assert self.dir is not None
        d = self.dir
        config = f'''# lighttpd configuration for the curl driver's e2e tests
server.modules = ("mod_openssl", "mod_accesslog")
server.document-root = "{self.root}"
server.bind = "{HOST}"
server.port = {self.http_port}
server.pid-file = "{d}/lighttpd.pid"
server.errorlog = "{d}/error.log"
server.max-keep-alive-requests = 10000
server.max-keep-alive-idle = 120
accesslog.filename = "{d}/access.log"
accesslog.format = "%H %>s %r \\"%{{Range}}i\\" %b"
mimetype.assign = ("" => "application/octet-stream")
static-file.etags = "{'enable' if self.etags else 'disable'}"
$SERVER["socket"] == "{HOST}:{self.https_port}" {{
    ssl.engine = "enable"
    ssl.pemfile = "{self.cert.cert}"
    ssl.privkey = "{self.cert.key}"
}}
'''
        (d / 'lighttpd.conf').write_text(config, encoding='utf-8')


class Varnish(Daemon):
    """Debian's Varnish Cache as a caching reverse proxy of a plain HTTP
    backend on 127.0.0.1:@backend_port.

    Varnish's builtin VCL, with objects kept in memory (``-s malloc``):
    a range request misses, Varnish fetches the whole file from the
    backend and answers the range from the object as it streams in;
    later ones hit.  No jail (``-j none``): it runs as whoever starts
    it.  Its working directory (-n) is the private one, so varnishadm
    and varnishlog find it as ``-n DIR/varnish``.
    """

    name = 'varnish'
    binary = VARNISHD
    package = 'varnish'
    port_names = ('http',)

    def __init__(self, backend_port: int, storage: str = '256m') -> None:
        super().__init__()
        self.backend_port = backend_port
        self.storage = storage

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return self.ports['http']

    def url(self, name: str) -> str:
        """The http:// URL of file @name of the backend, through Varnish."""
        return f'http://{HOST}:{self.port}/{name.lstrip("/")}'

    def _write_config(self) -> None:
        assert self.dir is not None
        vcl = f'''vcl 4.1;
# Varnish configuration for the curl block driver e2e tests
backend default {{
    .host = "{HOST}";
    .port = "{self.backend_port}";
}}
'''
        (self.dir / 'default.vcl').write_text(vcl, encoding='utf-8')

    def _command(self) -> List[str]:
        assert self.dir is not None
        return [self.binary, '-F', '-j', 'none', '-n',
                str(self.dir / 'varnish'), '-a', f'{HOST}:{self.port}',
                '-T', f'{HOST}:0', '-f', str(self.dir / 'default.vcl'),
                '-s', f'malloc,{self.storage}',
                '-p', 'vcc_allow_inline_c=off']

    def _port_taken(self, errors: str) -> bool:
        return 'Address already in use' in errors or \
            'Could not get socket' in errors


class Squid(Daemon):
    """Debian's Squid as a forward proxy for clients of 127.0.0.1.

    Plain http:// requests are forwarded, https:// ones tunnelled with
    CONNECT (to any port).  Nothing is cached (``cache deny all``): every
    request reaches the origin.  With @credentials (user, password), the
    proxy demands basic authentication (basic_ncsa_auth with an
    htpasswd file) and answers 407 without it.  Started as root, Squid
    drops to its user "proxy", which gets its directory.
    """

    name = 'squid'
    binary = SQUID
    package = 'squid'
    port_names = ('http',)

    def __init__(self, credentials: Optional[Tuple[str, str]] = None
                 ) -> None:
        super().__init__()
        self.credentials = credentials

    @property
    def port(self) -> int:
        """The proxy's port."""
        return self.ports['http']

    @property
    def proxy_url(self) -> str:
        """The proxy's URL, for http_proxy and https_proxy."""
        return f'http://{HOST}:{self.port}'

    def proxy_env(self) -> Dict[str, str]:
        """Environment variables that send a client (libcurl) through
        this proxy, for every host (no_proxy empty)."""
        return {'http_proxy': self.proxy_url, 'https_proxy': self.proxy_url,
                'HTTPS_PROXY': self.proxy_url, 'no_proxy': '',
                'NO_PROXY': '', 'all_proxy': '', 'ALL_PROXY': ''}

    def _prepare(self) -> None:
        assert self.dir is not None
        if self.credentials is not None:
            if not os.access(SQUID_BASIC_AUTH, os.X_OK):
                raise MissingPrerequisite(f'{SQUID_BASIC_AUTH} not found: '
                                          'apt-get install squid')
            user, password = self.credentials
            hashed = subprocess.run(
                ['openssl', 'passwd', '-apr1', password], check=True,
                capture_output=True, text=True).stdout.strip()
            (self.dir / 'passwd').write_text(f'{user}:{hashed}\n',
                                             encoding='utf-8')

    def _write_config(self) -> None:
        assert self.dir is not None
        d = self.dir
        auth = ''
        if self.credentials is not None:
            auth = (f'auth_param basic program {SQUID_BASIC_AUTH} '
                    f'{d}/passwd\n'
                    'auth_param basic children 2 startup=1 idle=1\n'
                    'auth_param basic realm qemu-curl e2e proxy\n'
                    'acl e2e_users proxy_auth REQUIRED\n'
                    'http_access deny !e2e_users\n')
        config = f'''# Squid configuration for the curl block driver e2e tests
http_port {HOST}:{self.port}
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log stdio:{d}/access.log squid
cache_store_log none
logfile_rotate 0
coredump_dir {d}
cache deny all
cache_mem 8 MB
pinger_enable off
shutdown_lifetime 0 seconds
max_filedescriptors 1024
acl e2e_clients src {HOST}/32
http_access deny !e2e_clients
{auth}http_access allow e2e_clients
http_access deny all
'''
        (d / 'squid.conf').write_text(config, encoding='utf-8')
        ids = _user_ids('proxy') if os.geteuid() == 0 else None
        if ids is not None:
            # Squid's children work as "proxy": its logs, its pid file
            for path in [d, *d.iterdir()]:
                os.chown(path, *ids)

    def _command(self) -> List[str]:
        assert self.dir is not None
        return [self.binary, '-N', '-f', str(self.dir / 'squid.conf')]

    def _port_taken(self, errors: str) -> bool:
        return 'Address already in use' in errors or \
            'Cannot open HTTP Port' in errors

    def _logs(self) -> str:
        assert self.dir is not None
        return _tail(self.dir / 'cache.log')

    def access_log(self) -> str:
        """Squid's access log (native format) so far."""
        if self.dir is None:
            return ''
        return _tail(self.dir / 'access.log', 1 << 22)


class VsftpdTls(Vsftpd):
    """vsftpd (see vsftpd.Vsftpd) with TLS on the control and data
    connections, with the certificate @cert.

    Explicit FTPS by default: clients say AUTH TLS on the ftp port, and
    anonymous ones must (``force_anon_logins_ssl``, and
    ``force_anon_data_ssl`` for the data connections).  With @implicit,
    every connection starts with a TLS handshake (``implicit_ssl``, the
    ftps:// scheme).  vsftpd's own default ``require_ssl_reuse=YES`` is
    kept: a data connection must resume the control connection's TLS
    session.  vsftpd 3.0.3's default ciphers (DES-CBC3-SHA) are replaced
    by OpenSSL's HIGH set.
    """

    def __init__(self, root: Union[str, Path], cert: CertPair,
                 implicit: bool = False) -> None:
        super().__init__(root)
        self.cert = cert
        self.implicit = implicit

    def _write_config(self) -> None:
        super()._write_config()
        assert self.dir is not None
        tls = f'''ssl_enable=YES
implicit_ssl={'YES' if self.implicit else 'NO'}
allow_anon_ssl=YES
force_anon_logins_ssl=YES
force_anon_data_ssl=YES
ssl_ciphers=HIGH
rsa_cert_file={self.cert.cert}
rsa_private_key_file={self.cert.key}
'''
        with open(self.dir / 'vsftpd.conf', 'a', encoding='utf-8') as conf:
            conf.write(tls)

    def _greets(self) -> bool:
        if not self.implicit:
            return super()._greets()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection((HOST, self.port),
                                          timeout=5) as raw:
                with context.wrap_socket(raw) as sock:
                    sock.settimeout(5)
                    greeting = b''
                    while not greeting.endswith(b'\n'):
                        chunk = sock.recv(256)
                        if not chunk:
                            break
                        greeting += chunk
        except (OSError, ssl.SSLError):
            return False
        return greeting.decode(errors='replace').startswith(
            f'220 {self._banner}')

    def url(self, name: str) -> str:
        """The anonymous URL of file @name: ftps:// if implicit, else
        ftp:// (TLS is then the client's choice: the driver's tls
        option)."""
        scheme = 'ftps' if self.implicit else 'ftp'
        return f'{scheme}://{HOST}:{self.port}/{name.lstrip("/")}'


# ---------------------------------------------------------------------------
# Images for the real servers
# ---------------------------------------------------------------------------

#: The images' virtual size: small, so that every server's tests are quick
IMAGE_SIZE = 32 * MiB
IMAGE_SEED = 20261207
#: The tar file, and what comes before the raw image in it: a member of
#: odd size, so that the image's data starts at no multiple of 4 KiB
TAR_NAME = 'images.tar'
TAR_LEAD = ('notes.txt', b'qemu-curl e2e: a raw image follows\n' * 37)
#: How old the files claim to be.  Apache sends a weak ETag for a file
#: modified in the last second (and Last-Modified is then the validator
#: the driver pins): images a day old are pinned by their strong ETag, as
#: most files a server holds.
IMAGE_AGE = 86400


@dataclasses.dataclass(frozen=True)
class ServedImages:
    """What the real servers serve: a raw image, the same data as qcow2,
    and a tar file with the raw image as its member @member."""

    directory: Path
    raw: TestImage
    qcow2: TestImage
    tar: Path
    member: TarMember


_SERVED: List[ServedImages] = []


def served_images() -> ServedImages:
    """The images of :class:`ServedImages`, made once per process in a
    directory every user can read (Apache serves as www-data)."""
    if not _SERVED:
        directory = make_tempdir('served-images')
        raw = make_test_image(directory / 'disk.raw', IMAGE_SIZE, IMAGE_SEED)
        qcow2 = make_qcow2(raw, directory / 'disk.qcow2')
        members = make_tar(directory / TAR_NAME,
                           [TAR_LEAD, ('disk.raw', raw.path)])
        old = time.time() - IMAGE_AGE
        for path in (raw.path, qcow2.path, directory / TAR_NAME):
            os.utime(path, (old, old))
        open_to_all(directory)
        _SERVED.append(ServedImages(directory, raw, qcow2,
                                    directory / TAR_NAME,
                                    members['disk.raw']))
    return _SERVED[0]
