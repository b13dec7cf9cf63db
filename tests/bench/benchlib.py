# SPDX-License-Identifier: GPL-2.0-or-later
"""Building blocks of the curl driver benchmark (tests/bench/run).

* :func:`run_measured` -- run a command with a timeout and return its wall
  time, CPU time and peak RSS (os.wait4).
* :class:`WanProxy` -- tests/bench/wanproxy in front of nginx.
* :class:`BenchNginx` -- fixtures.Nginx with a redirect location.
* :func:`ensure_images` -- the deterministic benchmark images, made once
  and checked by checksum.
* :class:`Bench` -- runs one contender against one image through one
  proxy and collects what the server and the proxy saw.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / 'tests' / 'e2e'))

import fixtures as fx  # noqa: E402  pylint: disable=wrong-import-position

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
HOST = '127.0.0.1'


def work_dir() -> Path:
    return fx.build_dir() / 'bench'


def log(msg: str) -> None:
    print(f'bench: {msg}', file=sys.stderr, flush=True)


def human_size(n: float) -> str:
    for unit, div in (('GiB', GiB), ('MiB', MiB), ('KiB', KiB)):
        if n >= div:
            v = n / div
            return f'{v:.0f} {unit}' if v == int(v) else f'{v:.2f} {unit}'
    return f'{n:.0f} B'


def size_opt(n: int) -> str:
    """A size as QEMU options take it: 512K, 2M, ..."""
    if n % MiB == 0:
        return f'{n // MiB}M'
    if n % KiB == 0:
        return f'{n // KiB}K'
    return str(n)


def parse_size(text: str) -> int:
    """The number of bytes of a size written as QEMU options take it."""
    match = re.fullmatch(r'(\d+)([kKMG]?)', text.strip())
    if not match:
        raise ValueError(f'not a size: {text!r}')
    unit = {'': 1, 'k': KiB, 'K': KiB, 'M': MiB, 'G': GiB}[match.group(2)]
    return int(match.group(1)) * unit


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

#: Background processes to stop whatever happens: pid -> name
_BACKGROUND: Dict[int, str] = {}


# Not fixtures._stop_process: this kills the whole session (what a command
# left behind too) and does not reap, so that wait4() still gets the rusage
def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_background() -> None:
    """Kill every registered background process group (at exit)."""
    for pid in list(_BACKGROUND):
        _kill_group(pid)
        _BACKGROUND.pop(pid, None)


#: GNU time, if installed.  The peak RSS that wait4() gives for a child of
#: this (Python) process is at least this process's own RSS: Linux counts
#: the RSS of the address space that exec() replaces, and a forked (or
#: vforked) child starts with ours.  GNU time is a small process whose
#: child starts small, so its %M is the command's own peak.
GNU_TIME = '/usr/bin/time' if os.access('/usr/bin/time', os.X_OK) else None
TIME_FORMAT = 'QCURL-TIME %e %U %S %M'


def with_time(argv: List[str], time_file: Path) -> List[str]:
    """@argv run under GNU time writing to @time_file (if installed)."""
    if GNU_TIME is None:
        return argv
    if time_file.exists():
        time_file.unlink()
    return [GNU_TIME, '-o', str(time_file), '-f', TIME_FORMAT] + argv


def read_time(time_file: Path) -> Optional[Tuple[float, int]]:
    """(CPU seconds, peak RSS KiB) that GNU time wrote, or None."""
    try:
        text = time_file.read_text()
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        if line.startswith('QCURL-TIME '):
            _, _, user, system, rss = line.split()
            return float(user) + float(system), int(rss)
    return None


@dataclasses.dataclass
class Measured:
    """What :func:`run_measured` saw."""

    argv: List[str]
    rc: Optional[int]           # exit code, -N for signal N
    wall: float                 # seconds
    cpu: float                  # user + system seconds (process tree)
    maxrss_kb: int              # peak RSS of the process (tree), KiB
    timed_out: bool
    stdout: str
    stderr: str
    rusage_from: str = 'wait4'  # or 'GNU time'

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def why(self) -> str:
        if self.timed_out:
            return f'timed out after {self.wall:.0f} s'
        if self.rc != 0:
            tail = (self.stderr.strip() or self.stdout.strip())[-300:]
            return f'exit code {self.rc}: {tail}'
        return 'ok'


def run_measured(argv: Sequence[Any], timeout: float,
                 log_base: Optional[Path] = None,
                 env: Optional[Dict[str, str]] = None,
                 stamp_stderr: bool = False) -> Measured:
    """Run @argv to completion (killed after @timeout seconds).

    The command runs in its own session, so that a timeout kills its
    children too; wait4() gives its CPU time and peak RSS (with those of
    the children it waited for).  stdout and stderr go to
    @log_base.out/.err (kept for debugging) and are returned.  With
    @stamp_stderr, each line of stderr (a trace) is prefixed with the
    seconds since the start, as "@12.345678 ".
    """
    argv = [str(a) for a in argv]
    if log_base is None:
        log_base = work_dir() / 'logs' / 'cmd'
    log_base.parent.mkdir(parents=True, exist_ok=True)
    out_path = Path(str(log_base) + '.out')
    err_path = Path(str(log_base) + '.err')
    time_path = Path(str(log_base) + '.time')
    shown = argv
    argv = with_time(argv, time_path)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    timed_out = threading.Event()
    stamper = None
    with open(out_path, 'wb') as out, open(err_path, 'wb') as err:
        start = time.monotonic()
        # pylint: disable=consider-using-with
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.PIPE if stamp_stderr
                                else err, env=full_env,
                                start_new_session=True)
    if stamp_stderr:
        def stamp() -> None:
            assert proc.stderr is not None
            with open(err_path, 'wb') as err_file:
                for line in proc.stderr:
                    err_file.write(b'@%.6f ' % (time.monotonic() - start) +
                                   line)
        stamper = threading.Thread(target=stamp, daemon=True)
        stamper.start()

    def expire() -> None:
        timed_out.set()
        _kill_group(proc.pid)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        while True:
            try:
                _, status, usage = os.wait4(proc.pid, 0)
                break
            except InterruptedError:
                continue
    except BaseException:
        _kill_group(proc.pid)
        try:
            os.waitpid(proc.pid, 0)
        except ChildProcessError:
            pass
        proc.returncode = -9
        raise
    finally:
        timer.cancel()
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    _kill_group(proc.pid)        # whatever it left behind
    if stamper is not None:
        stamper.join(10)
        if proc.stderr is not None:
            proc.stderr.close()
    cpu, rss, source = usage.ru_utime + usage.ru_stime, usage.ru_maxrss, \
        'wait4'
    timed = read_time(time_path) if argv is not shown else None
    if timed is not None:
        cpu, rss, source = timed[0], timed[1], 'GNU time'
    return Measured(shown, proc.returncode, wall, cpu, rss,
                    timed_out.is_set(),
                    out_path.read_text(errors='replace'),
                    err_path.read_text(errors='replace'), source)


class Background:
    """A server process in its own session (nbdkit, wanproxy).

    stop() returns its rusage (CPU time and peak RSS) with os.wait4.
    """

    def __init__(self, name: str, argv: Sequence[Any], log_path: Path,
                 env: Optional[Dict[str, str]] = None,
                 pid_file: Optional[Path] = None) -> None:
        """Start @argv.  With @pid_file (where the server writes its
        pid), it runs under GNU time, which reports its CPU time and
        peak RSS; stop() then signals the server itself."""
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.pid_file = pid_file
        self.time_file = log_path.with_suffix('.time')
        if pid_file is not None:
            if pid_file.exists():
                pid_file.unlink()
            self.argv = with_time(self.argv, self.time_file)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with open(log_path, 'wb') as logf:
            # pylint: disable=consider-using-with
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=logf,
                                         env=full_env, start_new_session=True)
        _BACKGROUND[self.proc.pid] = name
        self.rc: Optional[int] = None
        self.cpu = 0.0
        self.maxrss_kb = 0

    def alive(self) -> bool:
        if self.rc is not None:
            return False
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._reaped(status, usage)
        return False

    def _reaped(self, status: int, usage: Any) -> None:
        self.rc = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.rc
        self.cpu = usage.ru_utime + usage.ru_stime
        self.maxrss_kb = usage.ru_maxrss
        timed = read_time(self.time_file) if self.pid_file else None
        if timed is not None:
            self.cpu, self.maxrss_kb = timed
        _BACKGROUND.pop(self.proc.pid, None)
        _kill_group(self.proc.pid)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors='replace')[-2000:]
        except OSError:
            return ''

    def exited(self) -> Optional[str]:
        """None while it runs, else that it exited and its output (an
        abort for fixtures.wait_for)."""
        if self.alive():
            return None
        return f'{self.name} exited ({self.rc}): {self.output()}'

    # Not fixtures._stop_process: it waits with Popen.wait(), which loses
    # the rusage, and cannot signal the server of @pid_file under GNU time
    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop it (@sig, then SIGKILL after @timeout); return its exit code."""
        if self.rc is not None:
            return self.rc
        if self.alive():
            target = self.proc.pid
            if self.pid_file is not None:
                try:
                    target = int(self.pid_file.read_text().strip())
                except (OSError, ValueError):
                    pass
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                _kill_group(self.proc.pid)
                _, status, usage = os.wait4(self.proc.pid, 0)
                self._reaped(status, usage)
                break
            time.sleep(0.01)
        assert self.rc is not None
        return self.rc


def host_cpu_times() -> Tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        with open('/proc/stat', encoding='ascii') as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # + iowait
    return sum(fields) - idle, sum(fields)


def host_busy(before: Tuple[float, float],
              after: Tuple[float, float]) -> Optional[float]:
    """The share of the machine's CPU time that was busy in between."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else None


# ---------------------------------------------------------------------------
# The WAN proxy
# ---------------------------------------------------------------------------

#: name -> (description, one-way delay ms, per-connection rate, link rate)
SCENARIOS = {
    'S1': ('CDN: RTT 40 ms, 10 MB/s per connection, 125 MB/s link',
           20, 10e6, 125e6),
    'S2': ('far: RTT 150 ms, 25 MB/s link', 75, 0.0, 25e6),
    'S3': ('local: no limits', 0, 0.0, 0.0),
}


#: Not a preset of the proxy: the client talks to nginx directly, without
#: wanproxy's relay (the HTTP/2 part's plain loopback)
DIRECT = 'LO'
DIRECT_DESC = 'loopback: straight to nginx, no proxy'


def scenario_desc(scenario: str) -> str:
    """The description of @scenario (a preset of the proxy, or DIRECT)."""
    return DIRECT_DESC if scenario == DIRECT else SCENARIOS[scenario][0]


def _load_wanproxy_check() -> Any:
    path = HERE / 'wanproxy-check'
    loader = importlib.machinery.SourceFileLoader('wanproxy_check', str(path))
    spec = importlib.util.spec_from_loader('wanproxy_check', loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def build_wanproxy() -> Path:
    """Build wanproxy with wanproxy-check's own build step (cached)."""
    module = _load_wanproxy_check()
    try:
        return Path(module.build())
    except SystemExit as err:
        raise RuntimeError('building wanproxy failed') from err


class WanProxy:
    """wanproxy relaying 127.0.0.1:port to a target port."""

    def __init__(self, exe: Path, target_port: int, scenario: str,
                 rundir: Path) -> None:
        self.scenario = scenario
        rundir.mkdir(parents=True, exist_ok=True)
        self.port_file = rundir / 'proxy.port'
        self.stats_file = rundir / 'proxy.stats'
        for path in (self.port_file, self.stats_file):
            if path.exists():
                path.unlink()
        self.bg = Background(
            f'wanproxy {scenario}',
            [exe, '--listen', '0', '--target', str(target_port),
             '--preset', scenario, '--port-file', self.port_file,
             '--stats-file', self.stats_file], rundir / 'proxy.log')
        try:
            text = fx.wait_for(lambda: self.port_file.exists() and
                               self.port_file.read_text().strip(), 10,
                               'wanproxy to listen', interval=0.01,
                               abort=self.bg.exited)
            self.port = int(text)
        except BaseException:
            self.bg.stop(signal.SIGKILL)
            raise
        self.idle_fds = self._fds()

    def _fds(self) -> Optional[int]:
        try:
            return len(os.listdir(f'/proc/{self.bg.proc.pid}/fd'))
        except OSError:
            return None

    def url(self, name: str) -> str:
        return f'https://{HOST}:{self.port}/{name.lstrip("/")}'

    def stop(self) -> Dict[str, Any]:
        """Let closing connections finish, stop it, return its stats."""
        deadline = time.monotonic() + 3
        while (self.bg.alive() and self._fds() != self.idle_fds and
               time.monotonic() < deadline):
            time.sleep(0.02)
        self.bg.stop()
        try:
            return dict(json.loads(self.stats_file.read_text()))
        except (OSError, ValueError):
            return {}


# ---------------------------------------------------------------------------
# nginx with a redirect location
# ---------------------------------------------------------------------------

class BenchNginx(fx.Nginx):
    """fixtures.Nginx, plus ``/r/NAME``: a 302 redirect to ``/NAME``.

    The redirect is relative (absolute_redirect off), so that the client
    follows it through the proxy it came through, like an object store
    redirecting to a signed URL on the same host.
    """

    def _write_config(self) -> None:
        super()._write_config()
        assert self.dir is not None
        conf = self.dir / 'nginx.conf'
        text = conf.read_text(encoding='utf-8')
        anchor = 'location / { }'
        if anchor not in text:
            raise RuntimeError('fixtures.Nginx config changed: cannot add '
                               'the redirect location')
        extra = ('absolute_redirect off;\n'
                 '        location /r/ { rewrite ^/r/(.*)$ /$1 redirect; }\n'
                 '        ' + anchor)
        conf.write_text(text.replace(anchor, extra, 1), encoding='utf-8')

    def settled_log(self, timeout: float = 5.0) -> List[Dict[str, Any]]:
        """The access log once no new line came for 300 ms."""
        deadline = time.monotonic() + timeout
        last = self.access_log()
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.access_log()
            if len(now) != len(last):
                last = now
                stable_since = time.monotonic()
            elif time.monotonic() - stable_since >= 0.3:
                break
        return last


def summarize_log(entries: List[Dict[str, Any]]) -> Dict[str, Any]:
    statuses: Dict[str, int] = {}
    for e in entries:
        key = str(e.get('status'))
        statuses[key] = statuses.get(key, 0) + 1
    return {
        'requests': len(entries),
        'bytes': sum(int(e.get('body_bytes_sent', 0)) for e in entries),
        'connections': len({e.get('connection') for e in entries}),
        'statuses': statuses,
        'protocols': sorted({str(e.get('protocol')) for e in entries}),
        'methods': sorted({str(e.get('method')) for e in entries}),
    }


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------

GEN_VERSION = 2

PROFILES: Dict[str, Dict[str, int]] = {
    'full': {'virtual': 4 * GiB, 'allocated': 1 * GiB,
             'member': 512 * MiB, 'seed': 20260401},
    'quick': {'virtual': 1 * GiB, 'allocated': 256 * MiB,
              'member': 128 * MiB, 'seed': 20260402},
}

IMAGE_KEYS = ('qcow2', 'qcow2c', 'tar')
IMAGE_DESC = {
    'qcow2': 'qcow2, 64 KiB clusters',
    'qcow2c': 'compressed qcow2',
    'tar': 'raw image in a tar',
}


@dataclasses.dataclass
class Image:
    """A file the server serves, and how to check what is read from it."""

    key: str                    # qcow2, qcow2c or tar
    name: str                   # file name on the server
    path: Path
    size: int                   # file size (what a download fetches)
    sha256: str                 # of the file
    fmt: str                    # the format qemu-img reads: qcow2 or raw
    guest_size: int             # virtual size of the guest data
    guest_sha256: str
    ref: Optional[Path] = None  # raw reference of the guest data, if kept
    member_offset: int = 0      # tar: where the member's data starts
    member_size: int = 0


def _text_corpus(rng: random.Random, size: int) -> bytes:
    """Text-like bytes (Zipf-distributed made-up words): compress ~3x."""
    letters = 'etaoinshrdlcumwfgypbvkjxqz'
    lweights = [26 - i for i in range(26)]
    words = [''.join(rng.choices(letters, lweights, k=rng.randrange(2, 11)))
             for _ in range(4000)]
    wweights = [1.0 / (i + 1) for i in range(len(words))]
    parts: List[str] = []
    total = 0
    while total < size:
        line = ' '.join(rng.choices(words, wweights, k=rng.randrange(4, 16)))
        if rng.random() < 0.2:
            line += f' {rng.randrange(100000)}'
        line += '.\n' if rng.random() < 0.5 else '\n'
        parts.append(line)
        total += len(line)
    return ''.join(parts).encode()[:size]


def _content(rng: random.Random, corpus: bytes, length: int,
             zeros: bool) -> bytes:
    """Image data: random, text-like, repeated patterns (and zeros)."""
    pieces = []
    done = 0
    while done < length:
        n = min(length - done, rng.randrange(64, 1025) * KiB)
        k = rng.random()
        if k < 0.45:
            data = rng.randbytes(n)
        elif k < 0.85:
            start = rng.randrange(len(corpus) - n)
            data = corpus[start:start + n]
        elif k < 0.93 or not zeros:
            unit = bytes(rng.randrange(1, 256)
                         for _ in range(rng.randrange(2, 65)))
            data = (unit * (n // len(unit) + 1))[:n]
        else:
            data = bytes(n)
        pieces.append(data)
        done += n
    return b''.join(pieces)


def _plan_extents(rng: random.Random, virtual: int,
                  allocated: int) -> List[Tuple[int, int]]:
    """Scattered data extents (4 KiB aligned) adding up to @allocated."""
    lengths = []
    total = 0
    while total < allocated:
        r = rng.random()
        if r < 0.5:
            n = rng.randrange(1, 65) * 4 * KiB          # 4 KiB - 256 KiB
        elif r < 0.9:
            n = rng.randrange(64, 513) * 4 * KiB        # 256 KiB - 2 MiB
        else:
            n = rng.randrange(512, 4097) * 4 * KiB      # 2 MiB - 16 MiB
        n = min(n, allocated - total)
        lengths.append(n)
        total += n
    free = virtual - allocated
    weights = [rng.expovariate(1.0) for _ in range(len(lengths) - 1)]
    scale = sum(weights)
    gaps = [int(free * w / scale) // (4 * KiB) * (4 * KiB) for w in weights]
    gaps[-1] += free - sum(gaps)
    extents = []
    offset = 0
    for i, n in enumerate(lengths):
        extents.append((offset, n))
        offset += n
        if i < len(gaps):
            offset += gaps[i]
    assert offset == virtual
    return extents


def _make_images(directory: Path, params: Dict[str, int],
                 qemu_img: Path) -> Dict[str, Any]:
    """Generate every image of a profile into @directory."""
    rng = random.Random(params['seed'])
    corpus = _text_corpus(rng, 4 * MiB)
    t0 = time.monotonic()
    # (a) the guest data of the qcow2 images: a sparse raw file
    ref = directory / 'disk.raw'
    extents = _plan_extents(rng, params['virtual'], params['allocated'])
    with open(ref, 'wb') as f:
        f.truncate(params['virtual'])
        for offset, length in extents:
            f.seek(offset)
            f.write(_content(rng, corpus, length, zeros=False))
    log(f'  guest data written ({time.monotonic() - t0:.0f} s)')
    for name, extra in (('disk.qcow2', []), ('disk-c.qcow2', ['-c'])):
        res = run_measured([qemu_img, 'convert', '-f', 'raw', '-O', 'qcow2',
                            '-o', 'cluster_size=65536'] + extra +
                           [ref, directory / name], timeout=1800,
                           log_base=directory / f'make-{name}')
        if not res.ok:
            raise RuntimeError(f'making {name} failed: {res.why()}')
        log(f'  {name} made ({res.wall:.0f} s)')
    # (c) a raw image as a member of an uncompressed tar
    member = directory / 'appliance.raw'
    with open(member, 'wb') as f:
        done = 0
        while done < params['member']:
            n = min(16 * MiB, params['member'] - done)
            f.write(_content(rng, corpus, n, zeros=True))
            done += n
    member_sha = fx.sha256_file(member)
    tar_path = directory / 'appliance.tar'
    descr = directory / 'appliance.ovf'
    descr.write_text('<?xml version="1.0"?>\n<Envelope><!-- benchmark '
                     'appliance: disk is appliance.raw --></Envelope>\n')
    # Not fixtures.make_tar: the members get a fixed mtime and owner, so
    # that the tar is the same bytes on every machine
    with tarfile.open(tar_path, 'w', format=tarfile.GNU_FORMAT) as tar:
        for path in (descr, member):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime = 1767225600
            info.uid = info.gid = 0
            info.uname = info.gname = 'root'
            info.mode = 0o644
            with open(path, 'rb') as f:
                tar.addfile(info, f)
    with tarfile.open(tar_path, 'r') as tar:
        m = tar.getmember('appliance.raw')
        offset_data, member_size = m.offset_data, m.size
    member.unlink()
    descr.unlink()
    log(f'  appliance.tar made ({time.monotonic() - t0:.0f} s)')
    files = {}
    for name in ('disk.raw', 'disk.qcow2', 'disk-c.qcow2', 'appliance.tar'):
        p = directory / name
        files[name] = {'size': p.stat().st_size,
                       'sha256': fx.sha256_file(p)}
    return {
        'gen_version': GEN_VERSION, 'params': params, 'files': files,
        'guest_sha256': files['disk.raw']['sha256'],
        'extents': extents,
        'allocated_bytes': sum(n for _, n in extents),
        'tar': {'offset_data': offset_data, 'member_size': member_size,
                'member_sha256': member_sha},
        'generation_seconds': round(time.monotonic() - t0, 1),
    }


def ensure_images(profile: str, qemu_img: Path) -> Tuple[Dict[str, Image],
                                                         Dict[str, Any]]:
    """Make the images of @profile once; check them by checksum after.

    Returns {key: Image} and the manifest.
    """
    params = PROFILES[profile]
    directory = work_dir() / f'images-{profile}'
    manifest_path = directory / 'manifest.json'
    manifest = None
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = None
    if manifest and (manifest.get('gen_version') != GEN_VERSION or
                     manifest.get('params') != params):
        manifest = None
    if manifest:
        t0 = time.monotonic()
        for name, want in manifest['files'].items():
            p = directory / name
            if not p.exists() or p.stat().st_size != want['size'] or \
                    fx.sha256_file(p) != want['sha256']:
                log(f'{p}: missing or changed, making the images again')
                manifest = None
                break
        if manifest:
            log(f'images-{profile}: checksums ok '
                f'({time.monotonic() - t0:.1f} s)')
    if not manifest:
        log(f'making the {profile} images in {directory} '
            f'({human_size(params["virtual"])} virtual, '
            f'{human_size(params["allocated"])} allocated)')
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        manifest = _make_images(directory, params, qemu_img)
        manifest_path.write_text(json.dumps(manifest, indent=1))
    files = manifest['files']
    images = {
        'qcow2': Image('qcow2', 'disk.qcow2', directory / 'disk.qcow2',
                       files['disk.qcow2']['size'],
                       files['disk.qcow2']['sha256'], 'qcow2',
                       params['virtual'], manifest['guest_sha256'],
                       ref=directory / 'disk.raw'),
        'qcow2c': Image('qcow2c', 'disk-c.qcow2', directory / 'disk-c.qcow2',
                        files['disk-c.qcow2']['size'],
                        files['disk-c.qcow2']['sha256'], 'qcow2',
                        params['virtual'], manifest['guest_sha256'],
                        ref=directory / 'disk.raw'),
        'tar': Image('tar', 'appliance.tar', directory / 'appliance.tar',
                     files['appliance.tar']['size'],
                     files['appliance.tar']['sha256'], 'raw',
                     manifest['tar']['member_size'],
                     manifest['tar']['member_sha256'],
                     member_offset=manifest['tar']['offset_data'],
                     member_size=manifest['tar']['member_size']),
    }
    return images, manifest


# ---------------------------------------------------------------------------
# Trace of the new driver
# ---------------------------------------------------------------------------

TRACE_EVENTS = ['curl_open', 'curl_probe_perform', 'curl_transfer_submit_locked',
                'curl_transfer_done_locked', 'curl_transfer_again_locked',
                'curl_co_preadv_done', 'curl_close', 'curl_close_cache']


def trace_args() -> List[str]:
    """The qemu-img/qemu-io options that enable TRACE_EVENTS."""
    path = work_dir() / 'trace-events'
    # QCURL_BENCH_TRACE='curl_*' traces more, for debugging
    extra = os.environ.get('QCURL_BENCH_TRACE', '').split(',')
    text = '\n'.join(TRACE_EVENTS + [e for e in extra if e]) + '\n'
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return ['--trace', f'events={path}']


def parse_trace(text: str) -> Dict[str, Any]:
    """Summarize the new driver's trace (the curl_close* summaries etc.)."""
    out: Dict[str, Any] = {}

    def last_match(pattern: str) -> Optional[re.Match]:
        found = None
        for found in re.finditer(pattern, text):
            pass
        return found

    m = last_match(r'curl_close s \S+ transfers (\d+) bytes fetched '
                   r'(0x[0-9a-f]+) served (0x[0-9a-f]+) retries (\d+) '
                   r'failed fetches (\d+) reads (\d+) waited (\d+) us')
    if m:
        out.update(transfers=int(m.group(1)), fetched=int(m.group(2), 16),
                   served=int(m.group(3), 16), retries=int(m.group(4)),
                   failed_fetches=int(m.group(5)), reads=int(m.group(6)),
                   read_wait_s=round(int(m.group(7)) / 1e6, 3))
    m = last_match(r'curl_close_cache s \S+ hits (\d+) misses (\d+) '
                   r'waits (\d+) readahead fetches (\d+) blocks dropped '
                   r'unread (\d+) evictions (\d+)')
    if m:
        out.update(hits=int(m.group(1)), misses=int(m.group(2)),
                   waits=int(m.group(3)), readahead_fetches=int(m.group(4)),
                   readahead_unread=int(m.group(5)),
                   evictions=int(m.group(6)))
    done_re = (r'curl_transfer_done_locked s \S+ range (0x[0-9a-f]+)-'
               r'(0x[0-9a-f]+) got (0x[0-9a-f]+) bytes in (\d+) us, new '
               r'connections (\d+), ret (-?\d+)')
    durations = []
    new_conns = 0
    bad = 0
    for m in re.finditer(done_re, text):
        durations.append(int(m.group(4)) / 1e6)
        new_conns += int(m.group(5))
        if int(m.group(6)) != 0:
            bad += 1
    if durations:
        out.update(transfer_seconds_median=round(statistics.median(durations),
                                                 4),
                   transfer_seconds_max=round(max(durations), 4),
                   new_connections=new_conns, transfers_failed=bad)
    out['retry_events'] = len(re.findall(r'curl_transfer_again_locked',
                                         text))
    # With time stamps (run_measured(stamp_stderr=True)): a timeline
    spans = []
    for m in re.finditer(r'^@(\d+\.\d+) ' + done_re, text, re.M):
        end = float(m.group(1))
        spans.append((end - int(m.group(5)) / 1e6, end,
                      int(m.group(4), 16)))
    opened = re.search(r'^@(\d+\.\d+) curl_open ', text, re.M)
    closed = re.search(r'^@(\d+\.\d+) curl_close ', text, re.M)
    first_read = re.search(r'^@(\d+\.\d+) curl_co_preadv_done ', text, re.M)
    if spans:
        first = min(a for a, _, _ in spans)
        last = max(b for _, b, _ in spans)
        busy = sum(b - a for a, b, _ in spans)
        span = max(last - first, 1e-6)
        wave = sorted(b for _, b, _ in spans)
        start = float(opened.group(1)) if opened else first
        # How many transfers were in flight 0.5 s after open, at most
        in_flight = max((sum(1 for a, b, _ in spans if a <= t < b)
                         for t in sorted({a for a, _, _ in spans
                                          if a <= start + 0.5})),
                        default=0)
        out['timeline'] = {
            'open_s': round(start, 3),
            'first_transfer_start_s': round(first, 3),
            'first_transfer_done_s': round(wave[0], 3),
            'first_read_done_s': (round(float(first_read.group(1)), 3)
                                  if first_read else None),
            'most_in_flight_by_0.5s': in_flight,
            'sixteenth_transfer_done_s': round(wave[min(15, len(wave) - 1)],
                                               3),
            'last_transfer_done_s': round(last, 3),
            'close_s': round(float(closed.group(1)), 3) if closed else None,
            'mean_transfers_in_flight': round(busy / span, 2),
            'fetch_rate_MBps': round(sum(n for _, _, n in spans) / span /
                                     1e6, 1),
        }
    return out


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------

def verify_output(image: Image, out: Path, qemu_img: Path,
                  log_base: Path, whole_file: bool = False) -> Tuple[bool, str]:
    """Check a convert output (guest data) or a download (@whole_file)."""
    if not out.exists():
        return False, 'no output file'
    if whole_file:
        ok = out.stat().st_size == image.size and \
            fx.sha256_file(out) == image.sha256
        return ok, 'sha256 of the file' if ok else 'sha256 differs'
    if image.ref is not None:
        res = run_measured([qemu_img, 'compare', '-q', '-f', 'raw', '-F',
                            'raw', image.ref, out], timeout=600,
                           log_base=log_base)
        if res.rc == 0:
            return True, 'qemu-img compare'
        if res.rc == 1:
            return False, 'qemu-img compare: content differs'
        return False, f'qemu-img compare failed: {res.why()}'
    ok = out.stat().st_size == image.guest_size and \
        fx.sha256_file(out) == image.guest_sha256
    return ok, 'sha256 of guest data' if ok else 'guest sha256 differs'
