# SPDX-License-Identifier: GPL-2.0-or-later
#
# Reusable fixtures for end-to-end tests of QEMU's curl block driver.
#
# This is a library: the e2e unittest suite (tests/e2e/test_*.py), the
# demo script and the benchmark import it.  It knows where the built
# binaries are, runs the servers the driver talks to (Debian's nginx
# over HTTP and HTTPS, pyftpdlib over FTP and implicit FTPS, and the
# fault-injecting range server of tests/qemu-iotests/range_server.py),
# makes deterministic test images and certificates of private CAs (with
# the openssl CLI), runs commands with timeouts, and drives
# qemu-system-x86_64 and qemu-storage-daemon over QMP.
#
# Everything listens on 127.0.0.1 only, on free ports, and keeps its
# files in private temporary directories that are removed afterwards.
"""Fixtures for end-to-end tests of QEMU's curl block driver.

Main entry points:

* :class:`Binaries` -- the QEMU binaries under test (patched or stock).
* :func:`run` -- run a command with a timeout, capturing its output.
* :class:`Nginx`, :class:`FtpServer`, :class:`RangeServer` -- servers.
* :class:`PrivateCA`, :func:`make_tls_creds_dir` -- certificates nobody
  trusts, and directories for QEMU's tls-creds-x509 objects.
* :func:`make_test_image`, :func:`make_qcow2`, :func:`shared_images`
  -- deterministic test images and their checksums.
* :class:`QemuSystem`, :class:`StorageDaemon` -- QEMU processes driven
  over QMP.
* :class:`NbdClient` -- a minimal NBD client that puts reads in flight
  exactly when a test wants.

Environment variables:

* ``QCURL_BUILD``: the build directory (default: ``<repo>/build``).
* ``QCURL_STOCK=1``: use the stock qemu-img and qemu-io.
* ``QCURL_CA_DIR``: the test CA directory made by scripts/with-test-ca.sh.
* ``QCURL_E2E_TMP``: where temporary directories go (default:
  ``<build>/e2e-tmp``, else ``$TMPDIR``).
* ``QCURL_E2E_KEEP=1``: keep temporary directories, for debugging.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import (Any, Callable, Dict, List, Mapping, Optional,
                    Sequence, Tuple, TypeVar, Union)

REPO_DIR = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
IOTESTS_DIR = REPO_DIR / 'tests' / 'qemu-iotests'
HOST = '127.0.0.1'

KiB = 1024
MiB = 1024 * KiB

#: Default timeout for one command (qemu-img convert of a test image...)
COMMAND_TIMEOUT = 180.0
#: Default timeout for a server or a QEMU process to come up
START_TIMEOUT = 30.0
#: Default timeout for one QMP command
QMP_TIMEOUT = 60.0

if str(IOTESTS_DIR) not in sys.path:
    sys.path.insert(0, str(IOTESTS_DIR))

# Re-exported: the fault-injecting HTTP range server (another helper's
# work; see tests/qemu-iotests/range_server.py for the fault rules)
from range_server import RangeServer  # noqa: E402  pylint: disable=C0413

__all__ = [
    'COMMAND_TIMEOUT', 'HOST', 'KiB', 'MiB', 'QMP_TIMEOUT', 'START_TIMEOUT',
    'ImageSet', 'QemuProcessError', 'port_open', 'Binaries', 'CmdResult', 'CommandFailed', 'CommandTimeout', 'FtpServer',
    'CertPair', 'PrivateCA', 'make_tls_creds_dir', 'TLS_CREDS_CA_CERT',
    'TLS_CREDS_CLIENT_CERT', 'TLS_CREDS_CLIENT_KEY', 'TLS_CREDS_SERVER_CERT',
    'TLS_CREDS_SERVER_KEY',
    'MissingPrerequisite', 'Nginx', 'QemuProcess', 'QemuSystem',
    'PatternRegion', 'RangeServer', 'StorageDaemon', 'TarMember', 'TestImage',
    'binaries', 'build_dir', 'free_port', 'get_ca_dir', 'make_pattern_image',
    'make_qcow2', 'make_tar', 'make_tempdir', 'make_test_image',
    'NbdClient', 'NbdDisconnected', 'NbdReply', 'nbd_unix_uri',
    'parse_byte_range', 'parse_hexdump', 'read_bytes',
    'remove_tree', 'run', 'sha256_file', 'shared_images',
    'standard_pattern_regions', 'vm_rss', 'wait_for',
]


class MissingPrerequisite(RuntimeError):
    """Something the tests need is not installed or not built."""


class CommandFailed(AssertionError):
    """A command failed or timed out; the message has its output."""


class CommandTimeout(CommandFailed):
    """A command did not finish in time and was killed."""


# ---------------------------------------------------------------------------
# Paths, temporary directories, polling
# ---------------------------------------------------------------------------

def build_dir() -> Path:
    """Return the build directory: $QCURL_BUILD or <repo>/build."""
    env = os.environ.get('QCURL_BUILD')
    return Path(env).resolve() if env else REPO_DIR / 'build'


def get_ca_dir() -> Path:
    """Return the test CA directory exported by scripts/with-test-ca.sh.

    Raise MissingPrerequisite if the tests do not run under it.
    """
    env = os.environ.get('QCURL_CA_DIR')
    if not env or not (Path(env) / 'ca.pem').is_file():
        raise MissingPrerequisite(
            'QCURL_CA_DIR is not set: run the tests through tests/e2e/run, '
            'or under scripts/with-test-ca.sh DIR COMMAND')
    return Path(env)


_TMP_ROOT: Optional[Path] = None


def tmp_root() -> Path:
    """Return the directory under which temporary directories are made.

    That is $QCURL_E2E_TMP, else <build>/e2e-tmp if it can be created,
    else the system's temporary directory ($TMPDIR).
    """
    global _TMP_ROOT  # pylint: disable=global-statement
    if _TMP_ROOT is None:
        candidates = [os.environ.get('QCURL_E2E_TMP'),
                      str(build_dir() / 'e2e-tmp'), tempfile.gettempdir()]
        for candidate in candidates:
            if not candidate:
                continue
            try:
                os.makedirs(candidate, exist_ok=True)
            except OSError:
                continue
            if os.access(candidate, os.W_OK | os.X_OK):
                _TMP_ROOT = Path(candidate).resolve()
                break
        else:
            raise MissingPrerequisite('no writable temporary directory')
    return _TMP_ROOT


def keep_tmp() -> bool:
    """Tell whether temporary directories are kept (QCURL_E2E_KEEP=1)."""
    return os.environ.get('QCURL_E2E_KEEP', '') not in ('', '0')


def make_tempdir(prefix: str) -> Path:
    """Create a private temporary directory under :func:`tmp_root`.

    The caller removes it (see :func:`remove_tree`); directories still
    there when the process exits are removed then.
    """
    path = Path(tempfile.mkdtemp(prefix=f'{prefix}-', dir=tmp_root()))
    _CLEANUP_DIRS.append(path)
    return path


def remove_tree(path: Optional[Path]) -> None:
    """Remove a temporary directory, unless QCURL_E2E_KEEP=1."""
    if path is None:
        return
    if keep_tmp():
        print(f'e2e: keeping {path}', file=sys.stderr)
        return
    shutil.rmtree(path, ignore_errors=True)


_CLEANUP_DIRS: List[Path] = []


@atexit.register
def _cleanup_at_exit() -> None:
    for path in _CLEANUP_DIRS:
        if path.exists():
            remove_tree(path)


def short_socket_dir(base: Path) -> Path:
    """Return a directory for UNIX sockets whose paths stay short.

    UNIX socket paths are limited to 107 bytes; if @base is too deep, a
    private directory in the system's temporary directory is used.
    """
    if len(str(base)) <= 64:
        return base
    path = Path(tempfile.mkdtemp(prefix='qc-'))
    _CLEANUP_DIRS.append(path)
    return path


T = TypeVar('T')


def wait_for(predicate: Callable[[], Optional[T]], timeout: float,
             what: str, interval: float = 0.02,
             abort: Optional[Callable[[], Optional[str]]] = None) -> T:
    """Poll @predicate until it returns a true value, and return that.

    Raise TimeoutError mentioning @what after @timeout seconds.  If
    @abort is given, it is called on each round and may return a reason
    to give up at once (e.g. 'the server exited'), raised as
    RuntimeError.
    """
    deadline = time.monotonic() + timeout
    delay = min(interval, 0.005)
    while True:
        result = predicate()
        if result:
            return result
        if abort is not None:
            reason = abort()
            if reason:
                raise RuntimeError(f'while waiting for {what}: {reason}')
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out after {timeout:.0f} s waiting '
                               f'for {what}')
        time.sleep(delay)
        delay = min(delay * 2, interval)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Another process may take it before the caller binds it: servers
    that use this retry with another port if the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = HOST) -> bool:
    """Tell whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _tail(path: Path, limit: int = 4000) -> str:
    """Return the end of a text file, or '' if it cannot be read."""
    try:
        text = path.read_text(encoding='utf-8', errors='replace')
    except OSError:
        return ''
    return text[-limit:]


def _stop_process(proc: 'subprocess.Popen[Any]', sig: int = signal.SIGTERM,
                  timeout: float = 10.0) -> Optional[int]:
    """Send @sig to @proc, wait up to @timeout, then kill it.

    Return its exit code.
    """
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


# ---------------------------------------------------------------------------
# Binaries and commands
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Binaries:
    """Paths of the QEMU binaries under test.

    qemu_img and qemu_io come from <build>/stock when @stock is true
    (QCURL_STOCK=1), else from <build>; the others (qemu-nbd,
    qemu-storage-daemon, which exist only in the patched build, and
    qemu-system-x86_64) always come from there.
    """

    build: Path
    stock: bool
    qemu_img: Path
    qemu_io: Path
    qemu_nbd: Path
    qemu_storage_daemon: Path
    qemu_system: Path
    python_dir: Path

    @classmethod
    def from_env(cls, build: Optional[Path] = None,
                 stock: Optional[bool] = None) -> 'Binaries':
        """Locate the binaries; see the class docstring."""
        build = build_dir() if build is None else Path(build)
        if stock is None:
            stock = os.environ.get('QCURL_STOCK', '') not in ('', '0')
        tools = build / 'stock' if stock else build
        return cls(build=build, stock=stock,
                   qemu_img=tools / 'qemu-img', qemu_io=tools / 'qemu-io',
                   qemu_nbd=build / 'qemu-nbd',
                   qemu_storage_daemon=build / 'qemu-storage-daemon',
                   qemu_system=build / 'qemu-system-x86_64',
                   python_dir=build / 'src' / 'python')

    def missing(self) -> List[str]:
        """Return the paths of missing binaries, with what is expected."""
        result = []
        for field in ('qemu_img', 'qemu_io', 'qemu_nbd',
                      'qemu_storage_daemon', 'qemu_system'):
            path: Path = getattr(self, field)
            if not (path.is_file() and os.access(path, os.X_OK)):
                result.append(str(path))
        if not (self.python_dir / 'qemu' / 'qmp' / 'legacy.py').is_file():
            result.append(str(self.python_dir / 'qemu' / 'qmp'))
        return result

    def require(self) -> 'Binaries':
        """Return self, or raise MissingPrerequisite naming what is missing."""
        missing = self.missing()
        if missing:
            raise MissingPrerequisite(
                'missing build products: ' + ', '.join(missing) +
                ' -- build them with: make (see scripts/build.sh), or set '
                'QCURL_BUILD to a build directory')
        return self

    @property
    def flavour(self) -> str:
        """'stock' or 'patched': which qemu-img/qemu-io are in use."""
        return 'stock' if self.stock else 'patched'


_BINARIES: Optional[Binaries] = None


def binaries() -> Binaries:
    """Return the process-wide :class:`Binaries`, checked once."""
    global _BINARIES  # pylint: disable=global-statement
    if _BINARIES is None:
        _BINARIES = Binaries.from_env().require()
    return _BINARIES


@dataclasses.dataclass
class CmdResult:
    """The outcome of :func:`run`."""

    args: List[str]
    returncode: int
    stdout: str
    stderr: str
    duration: float

    def describe(self) -> str:
        """Describe the command and its output, for failure messages."""
        return (f'command: {" ".join(self.args)}\n'
                f'exit code: {self.returncode} ({self.duration:.1f} s)\n'
                f'--- stdout ---\n{self.stdout[-6000:]}'
                f'--- stderr ---\n{self.stderr[-6000:]}')

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.stdout + self.stderr


def run(args: Sequence[Union[str, Path]], timeout: float = COMMAND_TIMEOUT,
        check: bool = False, env: Optional[Mapping[str, str]] = None,
        input_text: Optional[str] = None) -> CmdResult:
    """Run a command, capture its output, and kill it after @timeout s.

    Raise CommandTimeout (an AssertionError, so a test fails rather than
    errors) with the output so far if it does not end in time, and
    CommandFailed if @check is true and it exits non-zero.
    """
    argv = [str(a) for a in args]
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    start = time.monotonic()
    # A new session, so that a timeout kills the command's children too
    with subprocess.Popen(argv, stdin=subprocess.PIPE if input_text else
                          subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=full_env,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(input_text.encode()
                                        if input_text else None,
                                        timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            result = CmdResult(argv, -9, out.decode(errors='replace'),
                               err.decode(errors='replace'),
                               time.monotonic() - start)
            raise CommandTimeout(f'timed out after {timeout:.0f} s and '
                                 f'killed\n{result.describe()}') from None
    result = CmdResult(argv, proc.returncode, out.decode(errors='replace'),
                       err.decode(errors='replace'), time.monotonic() - start)
    if check and result.returncode != 0:
        raise CommandFailed(f'command failed\n{result.describe()}')
    return result


# ---------------------------------------------------------------------------
# Test images
# ---------------------------------------------------------------------------

def libcurl_version(binary: Union[str, Path]) -> Tuple[int, int, int]:
    """The version of the libcurl that @binary loads, as ldd finds it."""
    out = subprocess.run(['ldd', str(binary)], capture_output=True,
                         text=True, check=True).stdout
    match = re.search(r'libcurl\S*\.so\S* => (\S+)', out)
    if not match:
        raise MissingPrerequisite(f'{binary} loads no libcurl')
    lib = ctypes.CDLL(match.group(1))
    lib.curl_version.restype = ctypes.c_char_p
    text = lib.curl_version().decode()
    found = re.match(r'libcurl/(\d+)\.(\d+)\.(\d+)', text)
    if not found:
        raise ValueError(f'curl_version() said {text!r}')
    return int(found.group(1)), int(found.group(2)), int(found.group(3))


def sha256_file(path: Union[str, Path]) -> str:
    """Return the hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        while True:
            chunk = file.read(4 * MiB)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class TestImage:
    """A local image file: its path, format, virtual size and checksum.

    @sha256 is the checksum of the guest-visible data (for a raw image,
    of the file itself); @extents lists the (offset, length, kind) of
    the data regions of the raw content.
    """

    __test__ = False  # not a test case, whatever unittest may think

    path: Path
    fmt: str
    size: int
    sha256: str
    extents: Tuple[Tuple[int, int, str], ...] = ()

    @property
    def name(self) -> str:
        """The file name, as served by the test servers."""
        return self.path.name


def _label_bytes(offset: int, length: int) -> bytes:
    """Bytes that spell their own offset every 16 bytes.

    Misplaced data (a shifted range, a wrong offset) is obvious in them.
    """
    first = offset - offset % 16
    count = (offset + length - first + 15) // 16
    text = b''.join(b'@%014x\n' % (first + 16 * i) for i in range(count))
    skip = offset - first
    return text[skip:skip + length]


def make_test_image(path: Union[str, Path], size: int,
                    seed: int) -> TestImage:
    """Write a deterministic raw image of @size bytes and describe it.

    The content is a sequence of extents of varied, often unaligned
    lengths: random bytes from random.Random(@seed), repeated short
    patterns, bytes spelling their offset, single-byte fills, and zero
    regions (left as holes, so the file is sparse).  The first and the
    last 64 KiB always hold random data.  The same (size, seed) always
    gives the same bytes.
    """
    if size <= 0 or size % 512:
        raise ValueError('the image size must be a positive multiple of 512')
    rng = random.Random(seed)
    path = Path(path)
    extents: List[Tuple[int, int, str]] = []
    digest = hashlib.sha256()
    edge = min(64 * KiB, size // 4)
    with open(path, 'wb') as file:
        file.truncate(size)
        offset = 0
        while offset < size:
            if offset < edge or offset >= size - edge:
                kind = 'random'
                length = edge if offset < edge else size - offset
            else:
                kind = rng.choices(
                    ('random', 'zero', 'repeat', 'label', 'fill'),
                    weights=(35, 30, 15, 10, 10))[0]
                length = rng.choice((
                    rng.randrange(1, 4 * KiB),           # small, unaligned
                    rng.randrange(1, 64) * 4 * KiB,      # page-aligned
                    rng.randrange(1, 3 * MiB),           # large, unaligned
                    rng.randrange(1, 2 * MiB)))
                length = min(length, size - edge - offset)
            if kind == 'random':
                data = rng.randbytes(length)
            elif kind == 'zero':
                data = bytes(length)
            elif kind == 'repeat':
                unit = rng.randbytes(rng.randrange(2, 33))
                data = (unit * (length // len(unit) + 1))[:length]
            elif kind == 'label':
                data = _label_bytes(offset, length)
            else:
                data = bytes([rng.randrange(1, 256)]) * length
            if kind != 'zero':
                file.seek(offset)
                file.write(data)
            digest.update(data)
            extents.append((offset, length, kind))
            offset += length
    return TestImage(path, 'raw', size, digest.hexdigest(), tuple(extents))


def make_qcow2(source: TestImage, path: Union[str, Path],
               compressed: bool = False,
               cluster_size: Optional[int] = None) -> TestImage:
    """Convert @source to qcow2 (-c for @compressed) at @path.

    The result has the guest data of @source: the same sha256.
    """
    args: List[Union[str, Path]] = [binaries().qemu_img, 'convert', '-f',
                                    source.fmt, '-O', 'qcow2']
    if compressed:
        args.append('-c')
    if cluster_size:
        args += ['-o', f'cluster_size={cluster_size}']
    run(args + [source.path, path], check=True)
    return TestImage(Path(path), 'qcow2', source.size, source.sha256,
                     source.extents)


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """The standard test images: raw, qcow2 and compressed qcow2."""

    directory: Path
    raw: TestImage
    qcow2: TestImage
    qcow2c: TestImage

    def all(self) -> Tuple[TestImage, TestImage, TestImage]:
        """The three images."""
        return (self.raw, self.qcow2, self.qcow2c)


@dataclasses.dataclass(frozen=True)
class PatternRegion:
    """A region filled with one byte value by ``qemu-io write -P``."""

    offset: int
    length: int
    pattern: int

    def read_cmd(self, pattern: Optional[int] = None) -> str:
        """The qemu-io command that reads the region and checks it."""
        value = self.pattern if pattern is None else pattern
        return f'read -P 0x{value:02x} {self.offset} {self.length}'

    @property
    def end(self) -> int:
        """The offset just past the region."""
        return self.offset + self.length


def standard_pattern_regions(size: int) -> List[PatternRegion]:
    """Pattern regions for an image of @size bytes (>= 8 MiB).

    They start at 0, are unaligned, cross 64 KiB and 1 MiB boundaries,
    span several MiB, and end at the last byte of the image.
    """
    if size < 8 * MiB:
        raise ValueError('pattern images must be at least 8 MiB')
    return [
        PatternRegion(0, 4096, 0x11),                        # aligned start
        PatternRegion(64 * KiB + 123, 7777, 0x22),           # unaligned
        PatternRegion(MiB - 100, 300, 0x33),                 # crosses 1 MiB
        PatternRegion(3 * MiB + 1, 2 * MiB + 3, 0x44),       # large
        PatternRegion(size - 70000, 60000, 0x55),            # near the end
        PatternRegion(size - 512 - 17, 512 + 17, 0x66),      # the last bytes
    ]


def make_pattern_image(path: Union[str, Path], size: int,
                       regions: Sequence[PatternRegion]) -> TestImage:
    """Make a raw image of @size bytes with @regions written by qemu-io.

    The rest of the image reads as zeroes.
    """
    path = Path(path)
    with open(path, 'wb') as file:
        file.truncate(size)
    args: List[Union[str, Path]] = [binaries().qemu_io, '-f', 'raw']
    for region in regions:
        args += ['-c', f'write -P 0x{region.pattern:02x} {region.offset} '
                 f'{region.length}']
    run(args + [path], check=True)
    extents = tuple((r.offset, r.length, f'pattern 0x{r.pattern:02x}')
                    for r in regions)
    return TestImage(path, 'raw', size, sha256_file(path), extents)


_SHARED_IMAGES: Dict[Tuple[int, int], ImageSet] = {}

#: Virtual size of the standard test images
DEFAULT_IMAGE_SIZE = 48 * MiB
DEFAULT_SEED = 20260101


def shared_images(size: int = DEFAULT_IMAGE_SIZE,
                  seed: int = DEFAULT_SEED) -> ImageSet:
    """Return the standard images, made once per process and shared.

    They are named disk.raw, disk.qcow2 and disk-c.qcow2 in a directory
    that test servers can serve as is; do not modify them.
    """
    key = (size, seed)
    if key not in _SHARED_IMAGES:
        directory = make_tempdir(f'images-{size // MiB}M-{seed}')
        raw = make_test_image(directory / 'disk.raw', size, seed)
        qcow2 = make_qcow2(raw, directory / 'disk.qcow2')
        qcow2c = make_qcow2(raw, directory / 'disk-c.qcow2', compressed=True)
        _SHARED_IMAGES[key] = ImageSet(directory, raw, qcow2, qcow2c)
    return _SHARED_IMAGES[key]


# ---------------------------------------------------------------------------
# Private certificate authorities
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, PEM files."""

    cert: Path
    key: Path


#: The file names of QEMU's tls-creds-x509 directory layout
TLS_CREDS_CA_CERT = 'ca-cert.pem'
TLS_CREDS_CLIENT_CERT = 'client-cert.pem'
TLS_CREDS_CLIENT_KEY = 'client-key.pem'
TLS_CREDS_SERVER_CERT = 'server-cert.pem'
TLS_CREDS_SERVER_KEY = 'server-key.pem'


def make_tls_creds_dir(path: Union[str, Path], ca_cert: Union[str, Path],
                       client: Optional[CertPair] = None,
                       server: Optional[CertPair] = None) -> Path:
    """Make a directory in the layout of QEMU's tls-creds-x509 object.

    It holds a copy of @ca_cert as ca-cert.pem and, if given, of @client
    as client-cert.pem and client-key.pem and of @server as
    server-cert.pem and server-key.pem: what ``--object
    tls-creds-x509,id=ID,dir=PATH,endpoint=client`` (or server) loads.
    Return its path.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_cert, path / TLS_CREDS_CA_CERT)
    if client is not None:
        shutil.copyfile(client.cert, path / TLS_CREDS_CLIENT_CERT)
        shutil.copyfile(client.key, path / TLS_CREDS_CLIENT_KEY)
    if server is not None:
        shutil.copyfile(server.cert, path / TLS_CREDS_SERVER_CERT)
        shutil.copyfile(server.key, path / TLS_CREDS_SERVER_KEY)
    return path


class PrivateCA:
    """A throwaway certificate authority, made with the openssl CLI.

    Nothing trusts it: neither the system's store nor the test CA that
    scripts/with-test-ca.sh adds to it, so a client must be told about
    it (e.g. with a tls-creds-x509 object, or ``curl --cacert``).  All
    its files live in @directory (which the caller owns and removes):
    its key and certificate (:attr:`cert`, a CA with keyCertSign),
    the database of ``openssl ca``, and every certificate it issues,
    in files named after the certificate.  Keys are ECDSA P-256, quick
    to make; private keys are readable by all (for nginx workers: these
    are test keys in private directories).

    Certificates are signed with ``openssl ca``, whose -startdate and
    -enddate set any validity, in the past too: an expired certificate
    needs no faked clock (OpenSSL 3.0's ``x509 -req`` only has -days).
    """

    _CONFIG = '''# openssl ca configuration of a private test CA
[ca]
default_ca = ca_default
[ca_default]
database = {d}/index.txt
new_certs_dir = {d}/issued
certificate = {d}/ca.pem
private_key = {d}/ca.key
serial = {d}/serial
default_md = sha256
default_days = 3650
policy = policy_any
unique_subject = no
email_in_dn = no
copy_extensions = none
[policy_any]
commonName = supplied
'''

    def __init__(self, directory: Union[str, Path],
                 name: str = 'qemu-curl private test CA') -> None:
        self.directory = Path(directory)
        self.name = name
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / 'issued').mkdir(exist_ok=True)
        (self.directory / 'ca.cnf').write_text(
            self._CONFIG.format(d=self.directory.resolve()),
            encoding='utf-8')
        (self.directory / 'index.txt').write_bytes(b'')
        (self.directory / 'serial').write_text('1000\n', encoding='ascii')
        self._openssl('req', '-x509', *self._new_key(self.key),
                      '-days', '3650', '-sha256', '-subj', f'/CN={name}',
                      '-out', self.cert,
                      '-addext', 'basicConstraints=critical,CA:TRUE',
                      '-addext', 'keyUsage=critical,keyCertSign,cRLSign')

    @property
    def cert(self) -> Path:
        """The CA's certificate (PEM)."""
        return self.directory / 'ca.pem'

    @property
    def key(self) -> Path:
        """The CA's private key (PEM)."""
        return self.directory / 'ca.key'

    @staticmethod
    def _new_key(key: Path) -> List[Union[str, Path]]:
        """The ``openssl req`` options that make a new key in @key."""
        return ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
                '-nodes', '-keyout', key]

    @staticmethod
    def _openssl(*args: Union[str, Path]) -> None:
        """Run openssl; raise CommandFailed with its output if it fails."""
        if shutil.which('openssl') is None:
            raise MissingPrerequisite('openssl not found: '
                                      'apt-get install openssl')
        run(['openssl', *args], check=True)

    def issue(self, name: str, subject_alt_names: Sequence[str] = (),
              client: bool = False, not_before: Optional[str] = None,
              not_after: Optional[str] = None) -> CertPair:
        """Issue a certificate with a new key; return both files.

        @name is the file name stem (NAME.pem, NAME.key) and the subject's
        CN.  @subject_alt_names are subjectAltName entries such as
        'IP:127.0.0.1' or 'DNS:wrong.example'.  The certificate is for a
        TLS server (extendedKeyUsage serverAuth) or, with @client, a TLS
        client (clientAuth).  @not_before and @not_after are its validity
        as YYYYMMDDHHMMSSZ (default: from now, for ten years).
        """
        lines = ['basicConstraints=critical,CA:FALSE',
                 'keyUsage=critical,digitalSignature',
                 'extendedKeyUsage=' + ('clientAuth' if client
                                        else 'serverAuth')]
        if subject_alt_names:
            lines.append('subjectAltName=' + ','.join(subject_alt_names))
        d = self.directory
        (d / f'{name}.ext').write_text('\n'.join(lines) + '\n',
                                       encoding='ascii')
        pair = CertPair(d / f'{name}.pem', d / f'{name}.key')
        self._openssl('req', *self._new_key(pair.key), '-sha256',
                      '-subj', f'/CN={name}', '-out', d / f'{name}.csr')
        dates: List[str] = []
        if not_before:
            dates += ['-startdate', not_before]
        if not_after:
            dates += ['-enddate', not_after]
        self._openssl('ca', '-batch', '-notext', '-config', d / 'ca.cnf',
                      '-in', d / f'{name}.csr', '-out', pair.cert,
                      '-extfile', d / f'{name}.ext', *dates)
        pair.key.chmod(0o644)
        return pair

    def server_cert(self, name: str, subject_alt_names: Sequence[str],
                    expired: bool = False) -> CertPair:
        """Issue a TLS server certificate for @subject_alt_names.

        With @expired, it was valid for January 2020 only.
        """
        if expired:
            return self.issue(name, subject_alt_names,
                              not_before='20200101000000Z',
                              not_after='20200201000000Z')
        return self.issue(name, subject_alt_names)

    def client_cert(self, name: str) -> CertPair:
        """Issue a TLS client certificate (extendedKeyUsage clientAuth)."""
        return self.issue(name, client=True)

    def tls_creds_dir(self, path: Union[str, Path],
                      client: Optional[CertPair] = None,
                      server: Optional[CertPair] = None) -> Path:
        """A tls-creds-x509 directory that trusts this CA: see
        :func:`make_tls_creds_dir`."""
        return make_tls_creds_dir(path, self.cert, client, server)


# ---------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------

def _in_user_namespace() -> bool:
    """Tell whether this process runs in a (non-initial) user namespace."""
    try:
        with open('/proc/self/uid_map', encoding='ascii') as uid_map:
            fields = uid_map.read().split()
    except OSError:
        return False
    return fields[:3] != ['0', '0', '4294967295']


class Nginx:
    """Debian's nginx serving a directory over HTTPS and plain HTTP.

    It runs in the foreground (``daemon off``) with all its files (the
    configuration, logs, pid and temporary directories) in a private
    temporary directory, listens on 127.0.0.1 on two free ports (HTTPS
    with ca_dir/server.pem, or untrusted.pem if @untrusted, or the
    certificate @cert with its key @key; and plain HTTP), serves @root
    with sendfile, and logs every request as JSON (see
    :meth:`access_log`).  With @http2, the HTTPS port also speaks
    HTTP/2 (negotiated with ALPN).  With @client_ca (a CA certificate
    file), HTTPS clients must present a certificate it signed
    (``ssl_verify_client on``): nginx answers a request without one
    with 400 "No required SSL certificate was sent", and one with a
    certificate it cannot verify with 400 "The SSL certificate error".

    Use it as a context manager, or call start() and stop().
    """

    #: The JSON access log format: one object per request
    LOG_FORMAT = ('{"time":$msec,"request":"$request",'
                  '"method":"$request_method","uri":"$uri",'
                  '"protocol":"$server_protocol","status":$status,'
                  '"body_bytes_sent":$body_bytes_sent,'
                  '"bytes_sent":$bytes_sent,"range":"$http_range",'
                  '"connection":$connection,'
                  '"connection_requests":$connection_requests,'
                  '"port":$server_port,"scheme":"$scheme"}')

    def __init__(self, root: Union[str, Path],
                 ca_dir: Optional[Union[str, Path]] = None,
                 http2: bool = False, untrusted: bool = False,
                 workers: int = 1, binary: str = 'nginx',
                 cert: Optional[Union[str, Path]] = None,
                 key: Optional[Union[str, Path]] = None,
                 client_ca: Optional[Union[str, Path]] = None) -> None:
        if (cert is None) != (key is None):
            raise ValueError('Nginx: give both cert and key, or neither')
        if cert is not None and untrusted:
            raise ValueError('Nginx: cert and untrusted exclude each other')
        self.root = Path(root).resolve()
        self.cert = Path(cert).resolve() if cert is not None else None
        self.key = Path(key).resolve() if key is not None else None
        self.client_ca = (Path(client_ca).resolve() if client_ca is not None
                          else None)
        # The test CA is needed only for its certificates
        self.ca_dir = Path(ca_dir) if ca_dir else (
            get_ca_dir() if cert is None else None)
        self.http2 = http2
        self.untrusted = untrusted
        self.workers = workers
        self.binary = shutil.which(binary) or shutil.which(
            binary, path='/usr/sbin:/sbin') or binary
        self.https_port = 0
        self.http_port = 0
        self.dir: Optional[Path] = None
        self._proc: Optional['subprocess.Popen[bytes]'] = None

    # -- lifecycle

    def __enter__(self) -> 'Nginx':
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT, attempts: int = 5) -> None:
        """Start nginx and wait until both ports accept connections.

        If a port was taken in the meantime, retry with other ports.
        """
        if self._proc is not None:
            raise RuntimeError('nginx already started')
        if not os.path.exists(self.binary):
            raise MissingPrerequisite(
                'nginx not found: apt-get install nginx-light')
        self.dir = make_tempdir('nginx')
        for attempt in range(attempts):
            self.https_port, self.http_port = free_port(), free_port()
            while self.http_port == self.https_port:
                self.http_port = free_port()
            self._write_config()
            try:
                self._launch(timeout)
                return
            except _PortInUse:
                if attempt == attempts - 1:
                    self.stop()
                    raise RuntimeError('nginx: no free port found') from None
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stop nginx (if running) and remove its directory."""
        if self._proc is not None:
            _stop_process(self._proc, signal.SIGTERM)
            self._proc = None
        remove_tree(self.dir)
        self.dir = None

    @property
    def running(self) -> bool:
        """Whether the nginx master process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _launch(self, timeout: float) -> None:
        assert self.dir is not None
        error_log = self.dir / 'error.log'
        error_log.write_bytes(b'')
        with open(self.dir / 'stderr.log', 'wb') as stderr:
            # Reaped in stop()  # pylint: disable=consider-using-with
            self._proc = subprocess.Popen(
                [self.binary, '-p', str(self.dir), '-c',
                 str(self.dir / 'nginx.conf'), '-e', str(error_log)],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                start_new_session=True)

        def died() -> Optional[str]:
            assert self._proc is not None
            if self._proc.poll() is None:
                return None
            errors = self.errors()
            if 'Address already in use' in errors:
                raise _PortInUse()
            return f'nginx exited with {self._proc.returncode}:\n{errors}'

        wait_for(lambda: port_open(self.https_port) and
                 port_open(self.http_port), timeout, 'nginx to listen',
                 abort=died)

    def _write_config(self) -> None:
        assert self.dir is not None
        d = self.dir
        for sub in ('body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'):
            (d / sub).mkdir(exist_ok=True)
        if self.cert is not None and self.key is not None:
            cert, key = self.cert, self.key
        else:
            assert self.ca_dir is not None
            cert, key = ((self.ca_dir / 'untrusted.pem',
                          self.ca_dir / 'untrusted.key') if self.untrusted
                         else (self.ca_dir / 'server.pem',
                               self.ca_dir / 'server.key'))
        client_auth = ''
        if self.client_ca is not None:
            client_auth = (f'ssl_verify_client on;\n'
                           f'        ssl_client_certificate {self.client_ca};')
        user = ''
        if os.geteuid() == 0:
            # As root, nginx hands its temporary directories and workers to
            # "user": keep root, for workers must read the private
            # temporary directories
            user = 'user root root;'
            if _in_user_namespace():
                # Unprivileged, "root" in a user namespace (as under
                # scripts/with-test-ca.sh): workers could not drop their
                # supplementary groups, so the master serves alone
                user += '\nmaster_process off;'
        h2 = ' http2' if self.http2 else ''
        config = f'''# nginx configuration for the curl block driver e2e tests
daemon off;
{user}
worker_processes {self.workers};
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    log_format e2e escape=json '{self.LOG_FORMAT}';
    access_log {d}/access.log e2e;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 120s;
    keepalive_requests 100000;
    server_tokens off;
    server {{
        listen {HOST}:{self.https_port} ssl{h2};
        listen {HOST}:{self.http_port};
        server_name localhost 127.0.0.1;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        {client_auth}
        root {self.root};
        location / {{ }}
    }}
}}
'''
        (d / 'nginx.conf').write_text(config, encoding='utf-8')

    # -- URLs

    def https_url(self, name: str) -> str:
        """The https:// URL of file @name under the root."""
        return f'https://{HOST}:{self.https_port}/{name.lstrip("/")}'

    def http_url(self, name: str) -> str:
        """The http:// URL of file @name under the root."""
        return f'http://{HOST}:{self.http_port}/{name.lstrip("/")}'

    def url(self, name: str, scheme: str = 'https') -> str:
        """The URL of file @name for @scheme ('http' or 'https')."""
        return self.https_url(name) if scheme == 'https' else \
            self.http_url(name)

    # -- logs

    def errors(self) -> str:
        """The end of nginx's error log and stderr."""
        if self.dir is None:
            return ''
        return (_tail(self.dir / 'error.log') +
                _tail(self.dir / 'stderr.log')).strip()

    def access_log(self) -> List[Dict[str, Any]]:
        """Parse the access log: one dict per request answered.

        Keys: time, request, method, uri, protocol, status,
        body_bytes_sent, bytes_sent, range, connection,
        connection_requests, port, scheme.  nginx writes a line when it
        is done with a request, so poll (see :meth:`wait_for_requests`)
        right after a client exits.
        """
        if self.dir is None:
            return []
        try:
            text = (self.dir / 'access.log').read_text(encoding='utf-8')
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            if line.endswith('}'):
                entries.append(json.loads(line))
        return entries

    def wait_for_requests(self, count: int,
                          timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Wait until the access log has at least @count entries."""
        def enough() -> Optional[List[Dict[str, Any]]]:
            log = self.access_log()
            return log if len(log) >= count else None

        return wait_for(enough, timeout, f'{count} nginx log entries')

    def reset_log(self) -> None:
        """Forget the requests logged so far."""
        if self.dir is not None:
            # nginx appends (O_APPEND): truncating is safe
            with open(self.dir / 'access.log', 'wb'):
                pass

    def settled_log(self, quiet: float = 0.15,
                    timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Wait until the access log stops growing, and parse it.

        nginx logs a request once it has sent the answer, a moment after
        the client may have read it: once a client has exited, the log
        is complete when it has not grown for @quiet seconds.
        """
        deadline = time.monotonic() + timeout
        log = self.access_log()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            again = self.access_log()
            if len(again) == len(log):
                return again
            log = again
        return log


class _PortInUse(Exception):
    """nginx could not bind one of its ports."""


# ---------------------------------------------------------------------------
# FTP
# ---------------------------------------------------------------------------

class FtpServer:
    """A read-only FTP server (pyftpdlib, see ftpd.py) in a subprocess.

    Anonymous by default, or with @user and @password.  With @refuse_rest,
    the first REST to each position is answered with a transient error.  With @tls it
    speaks implicit FTPS with ca_dir/server.pem, or with the certificate
    @cert and its key @key: the ftps:// of libcurl and QEMU.  Data
    connections use passive mode on free ports.
    """

    def __init__(self, root: Union[str, Path], tls: bool = False,
                 ca_dir: Optional[Union[str, Path]] = None,
                 user: Optional[str] = None,
                 password: Optional[str] = None,
                 refuse_rest: bool = False,
                 cert: Optional[Union[str, Path]] = None,
                 key: Optional[Union[str, Path]] = None) -> None:
        if (cert is None) != (key is None):
            raise ValueError('FtpServer: give both cert and key, or neither')
        self.root = Path(root).resolve()
        self.tls = tls
        self.refuse_rest = refuse_rest
        self.cert = Path(cert).resolve() if cert is not None else None
        self.key = Path(key).resolve() if key is not None else None
        self.ca_dir = Path(ca_dir) if ca_dir else (
            get_ca_dir() if tls and cert is None else None)
        self.user = user
        self.password = password
        self.port = 0
        self.dir: Optional[Path] = None
        self._proc: Optional['subprocess.Popen[bytes]'] = None

    def __enter__(self) -> 'FtpServer':
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and wait until it accepts connections."""
        if self._proc is not None:
            raise RuntimeError('FTP server already started')
        self.dir = make_tempdir('ftpd')
        port_file = self.dir / 'port'
        args = [sys.executable, str(E2E_DIR / 'ftpd.py'), '--root',
                str(self.root), '--bind', HOST, '--port-file', str(port_file),
                '--log', str(self.dir / 'ftpd.log')]
        if self.user is not None:
            args += ['--user', self.user, '--password', self.password or '']
        if self.refuse_rest:
            args += ['--refuse-rest']
        if self.tls:
            if self.cert is not None and self.key is not None:
                cert, key = self.cert, self.key
            else:
                assert self.ca_dir is not None
                cert = self.ca_dir / 'server.pem'
                key = self.ca_dir / 'server.key'
            args += ['--tls-cert', str(cert), '--tls-key', str(key),
                     '--tls-data-required']
        with open(self.dir / 'stderr.log', 'wb') as stderr:
            # Reaped in stop()  # pylint: disable=consider-using-with
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                          stdout=stderr, stderr=stderr,
                                          start_new_session=True)

        def died() -> Optional[str]:
            assert self._proc is not None
            if self._proc.poll() is None:
                return None
            return (f'ftpd exited with {self._proc.returncode}:\n'
                    f'{self.errors()}')

        try:
            wait_for(port_file.exists, timeout, 'the FTP server', abort=died)
            self.port = int(port_file.read_text(encoding='ascii'))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self._proc is not None:
            _stop_process(self._proc, signal.SIGTERM)
            self._proc = None
        remove_tree(self.dir)
        self.dir = None

    def errors(self) -> str:
        """The end of the server's stderr and log."""
        if self.dir is None:
            return ''
        return (_tail(self.dir / 'stderr.log') +
                _tail(self.dir / 'ftpd.log')).strip()

    def url(self, name: str) -> str:
        """The ftp:// (or ftps://) URL of file @name under the root."""
        scheme = 'ftps' if self.tls else 'ftp'
        auth = ''
        if self.user is not None:
            auth = f'{self.user}:{self.password}@'
        return f'{scheme}://{auth}{HOST}:{self.port}/{name.lstrip("/")}'


# ---------------------------------------------------------------------------
# QEMU processes with QMP
# ---------------------------------------------------------------------------

def _import_qmp() -> Any:
    """Import QEMUMonitorProtocol from the QEMU tree's python/ directory."""
    path = str(binaries().python_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    # pylint: disable=import-outside-toplevel
    from qemu.qmp.legacy import QEMUMonitorProtocol
    return QEMUMonitorProtocol


class QemuProcessError(AssertionError):
    """A QEMU process failed: its stderr is in the message."""


class QemuProcess:
    """A QEMU program with a QMP monitor on a UNIX socket.

    Subclasses give the binary and how to attach the monitor.  The
    process's stdout and stderr go to a log file whose end is included
    in every error raised (:class:`QemuProcessError`, an AssertionError
    so that a test fails with it).  Every wait has a timeout; a process
    that does not quit in time is killed.
    """

    name = 'qemu'

    def __init__(self, binary: Union[str, Path], args: Sequence[str] = (),
                 qmp_timeout: float = QMP_TIMEOUT) -> None:
        self.binary = str(binary)
        self.extra_args = list(args)
        self.qmp_timeout = qmp_timeout
        self.dir: Optional[Path] = None
        self.sock_dir: Optional[Path] = None
        self._proc: Optional['subprocess.Popen[bytes]'] = None
        self._qmp: Any = None
        self.exitcode: Optional[int] = None
        self.args: List[str] = [self.binary]

    def __enter__(self) -> 'QemuProcess':
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._proc is not None:
            self.shutdown(check=False)
        self.cleanup()

    def monitor_args(self, qmp_sock: Path) -> List[str]:
        """The options that create the QMP monitor at @qmp_sock."""
        raise NotImplementedError

    def socket_path(self, name: str) -> Path:
        """A path for a UNIX socket of this process (e.g. NBD)."""
        assert self.sock_dir is not None
        return self.sock_dir / name

    @property
    def log_path(self) -> Path:
        """The file with the process's stdout and stderr."""
        assert self.dir is not None
        return self.dir / 'output.log'

    def output(self, limit: Optional[int] = 8000) -> str:
        """The process's stdout and stderr so far: the last @limit
        characters, or all of them if @limit is None.

        QEMU's stdout is a file, so it is block-buffered: what QEMU
        prints with printf() (such as the output of the HMP qemu-io
        command) is there only once QEMU has exited.
        """
        if self.dir is None:
            return ''
        if limit is None:
            try:
                return self.log_path.read_text(encoding='utf-8',
                                               errors='replace')
            except OSError:
                return ''
        return _tail(self.log_path, limit)

    def fail(self, message: str) -> QemuProcessError:
        """Build an error for @message with the process's output."""
        if self._proc is not None and self._proc.poll() is None:
            state = 'running'
        elif self._proc is not None:
            state = f'exit code {self._proc.returncode}'
        else:
            state = f'exit code {self.exitcode}'
        return QemuProcessError(f'{self.name}: {message} ({state})\n'
                                f'command: {" ".join(self.args)}\n'
                                f'--- output ---\n{self.output()}')

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the process and connect to its QMP monitor."""
        qmp_class = _import_qmp()
        self.dir = make_tempdir(self.name)
        self.sock_dir = short_socket_dir(self.dir)
        qmp_sock = self.sock_dir / 'qmp.sock'
        self.args = ([self.binary] + self.monitor_args(qmp_sock) +
                     self.extra_args)
        with open(self.log_path, 'wb') as log:
            # Reaped in shutdown()  # pylint: disable=consider-using-with
            self._proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=log,
                                          start_new_session=True)
        # A QMP server socket accepts a new client when the last one has
        # gone, so a failed session setup can be tried again
        attempts = 3
        for attempt in range(1, attempts + 1):
            start = b''
            try:
                sock = self._connect(qmp_sock, timeout)
                start = sock.recv(200, socket.MSG_PEEK)
                self._qmp = qmp_class(sock)
                self._qmp.connect()
                self._qmp.settimeout(self.qmp_timeout)
                return
            except QemuProcessError:
                self.kill()
                raise
            except Exception as err:  # pylint: disable=broad-except
                self._close_qmp()
                if attempt == attempts or self.exited():
                    self.kill()
                    raise self.fail(f'could not connect to QMP: {err!r}; '
                                    f'QEMU sent first: {start!r}') from err

    def _connect(self, path: Path, timeout: float) -> socket.socket:
        """Connect to the QMP socket, and wait for the greeting."""
        assert self._proc is not None
        proc = self._proc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

        def attempt() -> bool:
            try:
                sock.connect(str(path))
                return True
            except (FileNotFoundError, ConnectionRefusedError):
                return False

        def died() -> Optional[str]:
            return None if proc.poll() is None else 'the process exited'

        try:
            wait_for(attempt, timeout, 'the QMP socket', abort=died)
            # The greeting must come in time; QMP's connect() has no timeout
            readable, _, _ = select.select([sock], [], [], timeout)
            if not readable:
                raise self.fail('no QMP greeting')
        except (TimeoutError, RuntimeError) as err:
            sock.close()
            raise self.fail(str(err)) from None
        except BaseException:
            sock.close()
            raise
        return sock

    def cmd(self, command: str, **args: Any) -> Any:
        """Run a QMP command and return its result.

        Argument names may use '_' for '-'.  A QMP error, a timeout or a
        lost connection raise QemuProcessError with the process's output.
        """
        if self._qmp is None:
            raise self.fail(f'{command}: not connected')
        arguments = {k.replace('_', '-'): v for k, v in args.items()}
        try:
            return self._qmp.cmd(command, **arguments)
        except Exception as err:  # pylint: disable=broad-except
            raise self.fail(f'QMP {command} {json.dumps(arguments)} '
                            f'failed: {err!r}') from err

    def cmd_error(self, command: str, **args: Any) -> str:
        """Run a QMP command that must fail; return its error description.

        Raise QemuProcessError if it succeeds.
        """
        arguments = {k.replace('_', '-'): v for k, v in args.items()}
        try:
            result = self._qmp.cmd_raw(command, arguments)
        except Exception as err:  # pylint: disable=broad-except
            raise self.fail(f'QMP {command} failed to run: {err!r}') from err
        if 'error' not in result:
            raise self.fail(f'QMP {command} unexpectedly succeeded: '
                            f'{result!r}')
        return str(result['error'].get('desc', result['error']))

    def cmd_or_error(self, command: str,
                     **args: Any) -> Tuple[Any, Optional[str]]:
        """Run a QMP command that may fail.

        Return (its result, None) if it succeeds, (None, the error's
        description) if QEMU refuses it.  A lost connection or a timeout
        raise QemuProcessError, as in :meth:`cmd`.
        """
        arguments = {k.replace('_', '-'): v for k, v in args.items()}
        try:
            result = self._qmp.cmd_raw(command, arguments)
        except Exception as err:  # pylint: disable=broad-except
            raise self.fail(f'QMP {command} failed to run: {err!r}') from err
        if 'error' in result:
            return None, str(result['error'].get('desc', result['error']))
        return result.get('return'), None

    def hmp(self, command_line: str) -> str:
        """Run an HMP command through QMP and return its output."""
        return str(self.cmd('human-monitor-command',
                            command_line=command_line))

    def event_wait(self, name: str, timeout: float = QMP_TIMEOUT,
                   match: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Wait for QMP event @name whose data contains @match."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(f'timed out waiting for event {name}')
            try:
                event = self._qmp.pull_event(wait=float(remaining))
            except Exception as err:  # pylint: disable=broad-except
                raise self.fail(f'waiting for event {name}: '
                                f'{err!r}') from err
            if event is None or event.get('event') != name:
                continue
            data = event.get('data', {})
            if all(data.get(k) == v for k, v in (match or {}).items()):
                return dict(event)

    def shutdown(self, timeout: float = 30.0, check: bool = True) -> int:
        """Ask the process to quit over QMP, wait, kill it if needed.

        Return its exit code.  With @check, raise QemuProcessError unless
        it quit by itself with exit code 0.
        """
        proc = self._proc
        if proc is None:
            return self.exitcode if self.exitcode is not None else -1
        quit_error = None
        if self._qmp is not None and proc.poll() is None:
            try:
                self._qmp.cmd('quit')
            except Exception as err:  # pylint: disable=broad-except
                # The connection may drop before the answer arrives
                quit_error = err
        self._close_qmp()
        killed = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            killed = True
            proc.kill()
            proc.wait(timeout=timeout)
        self.exitcode = proc.returncode
        if check and (killed or proc.returncode != 0):
            message = ('did not quit and was killed' if killed else
                       f'quit with exit code {proc.returncode}')
            if quit_error is not None:
                message += f' (quit: {quit_error!r})'
            raise self.fail(message)
        self._proc = None
        return self.exitcode

    @property
    def pid(self) -> int:
        """The process id (while the process runs)."""
        if self._proc is None:
            raise self.fail('not running')
        return self._proc.pid

    def exited(self) -> bool:
        """Tell whether the process has ended (or was never started)."""
        return self._proc is None or self._proc.poll() is not None

    def kill(self) -> None:
        """Kill the process at once."""
        self._close_qmp()
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(timeout=30)
            self.exitcode = self._proc.returncode
            self._proc = None

    def _close_qmp(self) -> None:
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self._qmp = None

    def cleanup(self) -> None:
        """Remove the process's directory (after shutdown or kill)."""
        if self._proc is not None:
            self.kill()
        remove_tree(self.dir)
        if self.sock_dir is not None and self.sock_dir != self.dir:
            remove_tree(self.sock_dir)
        self.dir = self.sock_dir = None


class QemuSystem(QemuProcess):
    """qemu-system-x86_64 -M none, no devices, no display, with QMP.

    @args are extra options, e.g. ['-drive', 'if=none,id=d0,...'].
    """

    name = 'qemu-system'

    def __init__(self, args: Sequence[str] = (),
                 binary: Optional[Union[str, Path]] = None,
                 qmp_timeout: float = QMP_TIMEOUT) -> None:
        super().__init__(binary or binaries().qemu_system, args, qmp_timeout)

    def monitor_args(self, qmp_sock: Path) -> List[str]:
        return ['-M', 'none', '-nodefaults', '-display', 'none',
                '-chardev', f'socket,id=qmp0,path={qmp_sock},server=on,'
                'wait=off', '-mon', 'chardev=qmp0,mode=control']


class StorageDaemon(QemuProcess):
    """qemu-storage-daemon with only a QMP monitor (plus @args)."""

    name = 'qemu-storage-daemon'

    def __init__(self, args: Sequence[str] = (),
                 binary: Optional[Union[str, Path]] = None,
                 qmp_timeout: float = QMP_TIMEOUT) -> None:
        super().__init__(binary or binaries().qemu_storage_daemon, args,
                         qmp_timeout)

    def monitor_args(self, qmp_sock: Path) -> List[str]:
        return ['--chardev', f'socket,id=qmp0,path={qmp_sock},server=on,'
                'wait=off', '--monitor', 'chardev=qmp0']


def nbd_unix_uri(export: str, socket_path: Union[str, Path]) -> str:
    """The NBD URI of export @export on the UNIX socket @socket_path."""
    return f'nbd+unix:///{export}?socket={socket_path}'


class NbdDisconnected(ConnectionError):
    """The NBD server closed the connection (or it broke)."""


@dataclasses.dataclass(frozen=True)
class NbdReply:
    """The answer to one NBD read: @data if @error is 0."""

    cookie: int
    offset: int
    length: int
    error: int
    data: bytes


class NbdClient:
    """A minimal NBD client on a UNIX socket, for reads only.

    The fixed newstyle handshake with NBD_OPT_GO, then NBD_CMD_READ
    requests answered with simple replies (no structured replies are
    negotiated).  Unlike qemu-img or qemu-io, it lets a test decide
    exactly when a read is sent (:meth:`send_read` only sends it) and
    when its answer is taken (:meth:`reply`), so reads can be put in
    flight in any number, on any number of connections, at a chosen
    moment.  A closed connection raises :class:`NbdDisconnected`; every
    socket operation has a timeout (socket.timeout, an OSError).
    """

    MAGIC = 0x4e42444d41474943            # "NBDMAGIC"
    OPTS_MAGIC = 0x49484156454f5054       # "IHAVEOPT"
    REP_MAGIC = 0x3e889045565a9
    REQUEST_MAGIC = 0x25609513
    SIMPLE_REPLY_MAGIC = 0x67446698
    FLAG_FIXED_NEWSTYLE = 1
    FLAG_NO_ZEROES = 2
    OPT_GO = 7
    REP_ACK = 1
    REP_INFO = 3
    INFO_EXPORT = 0
    CMD_READ = 0
    CMD_DISC = 2

    def __init__(self, path: Union[str, Path], export: str,
                 timeout: float = QMP_TIMEOUT) -> None:
        self.path = str(path)
        self.export = export
        self.timeout = timeout
        self.size = -1
        self.sock: Optional[socket.socket] = None
        self._next_cookie = 1
        self._pending: Dict[int, Tuple[int, int]] = {}

    def __enter__(self) -> 'NbdClient':
        self.connect()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _recv(self, length: int) -> bytes:
        assert self.sock is not None
        chunks = []
        while length:
            try:
                chunk = self.sock.recv(min(length, 4 * MiB))
            except (ConnectionResetError, BrokenPipeError) as err:
                raise NbdDisconnected(f'NBD connection broken: {err}') \
                    from err
            if not chunk:
                raise NbdDisconnected('the NBD server closed the connection')
            chunks.append(chunk)
            length -= len(chunk)
        return b''.join(chunks)

    def _send(self, data: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError) as err:
            raise NbdDisconnected(f'NBD connection broken: {err}') from err

    def connect(self) -> None:
        """Connect and negotiate export @export; set :attr:`size`.

        When this returns, the server has attached the connection to the
        export.
        """
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)
        magic, opts_magic, flags = struct.unpack('>QQH', self._recv(18))
        if magic != self.MAGIC or opts_magic != self.OPTS_MAGIC or \
                not flags & self.FLAG_FIXED_NEWSTYLE:
            raise ConnectionError(f'not a fixed newstyle NBD server: '
                                  f'{magic:#x} {opts_magic:#x} {flags:#x}')
        client_flags = self.FLAG_FIXED_NEWSTYLE | (flags &
                                                   self.FLAG_NO_ZEROES)
        name = self.export.encode()
        data = struct.pack('>I', len(name)) + name + struct.pack('>H', 0)
        self._send(struct.pack('>IQII', client_flags, self.OPTS_MAGIC,
                               self.OPT_GO, len(data)) + data)
        while True:
            magic, option, kind, length = struct.unpack('>QIII',
                                                        self._recv(20))
            payload = self._recv(length)
            if magic != self.REP_MAGIC or option != self.OPT_GO:
                raise ConnectionError(f'bad NBD option reply {magic:#x} '
                                      f'for option {option}')
            if kind == self.REP_ACK:
                break
            if kind & 0x80000000:
                raise ConnectionError(f'NBD_OPT_GO {self.export!r} refused '
                                      f'({kind:#x}): {payload[4:]!r}')
            if kind == self.REP_INFO and length >= 12 and \
                    struct.unpack('>H', payload[:2])[0] == self.INFO_EXPORT:
                self.size = struct.unpack('>Q', payload[2:10])[0]

    def send_read(self, offset: int, length: int) -> int:
        """Send a read of @length bytes at @offset; return its cookie."""
        cookie = self._next_cookie
        self._next_cookie += 1
        self._pending[cookie] = (offset, length)
        self._send(struct.pack('>IHHQQI', self.REQUEST_MAGIC, 0,
                               self.CMD_READ, cookie, offset, length))
        return cookie

    @property
    def pending(self) -> int:
        """How many reads sent have not been answered yet."""
        return len(self._pending)

    def reply(self) -> NbdReply:
        """Wait for the next answer to one of the reads sent."""
        magic, error, cookie = struct.unpack('>IIQ', self._recv(16))
        if magic != self.SIMPLE_REPLY_MAGIC or cookie not in self._pending:
            raise ConnectionError(f'bad NBD reply: magic {magic:#x}, '
                                  f'cookie {cookie}')
        # A read whose data is cut off stays pending
        offset, length = self._pending[cookie]
        data = b'' if error else self._recv(length)
        del self._pending[cookie]
        return NbdReply(cookie, offset, length, error, data)

    def read(self, offset: int, length: int) -> NbdReply:
        """Send one read and wait for its answer."""
        self.send_read(offset, length)
        return self.reply()

    def close(self) -> None:
        """Say goodbye (NBD_CMD_DISC) if the connection is up; close it."""
        if self.sock is None:
            return
        try:
            self.sock.sendall(struct.pack('>IHHQQI', self.REQUEST_MAGIC, 0,
                                          self.CMD_DISC, 0, 0, 0))
        except OSError:
            pass
        self.sock.close()
        self.sock = None


def vm_rss(pid: int) -> int:
    """The resident set size of process @pid in bytes (VmRSS in
    /proc/PID/status)."""
    with open(f'/proc/{pid}/status', encoding='ascii') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * KiB
    raise ValueError(f'no VmRSS in /proc/{pid}/status')


# ---------------------------------------------------------------------------
# Misc helpers for tests
# ---------------------------------------------------------------------------

def parse_hexdump(text: str) -> Dict[int, int]:
    """Parse the hex dump of ``qemu-io -c 'read -v ...'``.

    Return {offset: byte} for every byte shown.
    """
    result: Dict[int, int] = {}
    line_re = re.compile(r'^([0-9a-f]{8,16}):\s+((?:[0-9a-f]{2}\s)+)',
                         re.IGNORECASE)
    for line in text.splitlines():
        match = line_re.match(line)
        if not match:
            continue
        base = int(match.group(1), 16)
        for i, byte in enumerate(match.group(2).split()):
            result[base + i] = int(byte, 16)
    return result


def parse_byte_range(value: str) -> Tuple[int, int]:
    """Parse a Range header value 'bytes=FIRST-LAST' (one closed range).

    Return (FIRST, LAST), inclusive; raise ValueError for anything else.
    """
    match = re.fullmatch(r'bytes=(\d+)-(\d+)', value.strip())
    if not match:
        raise ValueError(f'not a closed byte range: {value!r}')
    return int(match.group(1)), int(match.group(2))


@dataclasses.dataclass(frozen=True)
class TarMember:
    """Where a member's data lies in a tar file."""

    name: str
    offset: int
    size: int


def make_tar(path: Union[str, Path],
             members: Sequence[Tuple[str, Union[Path, bytes]]]
             ) -> Dict[str, TarMember]:
    """Write an uncompressed tar file (GNU format, as GNU tar makes).

    @members are (name, a file or the bytes to store), in order.  Return
    each member's TarMember, whose offset is where its data starts.
    """
    with tarfile.open(path, 'w', format=tarfile.GNU_FORMAT) as tar:
        for name, content in members:
            if isinstance(content, bytes):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.add(str(content), arcname=name, recursive=False)
    with tarfile.open(path, 'r') as tar:
        return {m.name: TarMember(m.name, m.offset_data, m.size)
                for m in tar.getmembers()}


def read_bytes(path: Union[str, Path], offset: int, length: int) -> bytes:
    """Read @length bytes at @offset of a local file."""
    with open(path, 'rb') as file:
        file.seek(offset)
        return file.read(length)
