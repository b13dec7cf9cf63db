# SPDX-License-Identifier: GPL-2.0-or-later
"""The contenders of the curl driver benchmark, and how each is measured.

tests/bench/run compares, on the same file through the same emulated
network, the contenders of :data:`CONTENDERS`: the new driver, QEMU
10.0's stock driver, nbdkit's curl plugin read over NBD, aria2c, the
aria2c download + local convert pipeline, and curl.  This module holds:

* :class:`Ctx` -- the context of one benchmark run: copies of the
  binaries, the log and output directories, nbdkit.
* :func:`qemu_source`, :func:`aria2c_argv`, :func:`env_opts` -- the
  command lines the contenders run.
* :func:`run_one` -- one contender on one image through a fresh proxy:
  wall time, CPU time and peak RSS, what nginx and the proxy saw, and
  whether the output is right.
* :class:`QemuIo`, :func:`random_offsets`, :func:`random_reads_one` --
  random reads with qemu-io (new and stock drivers).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import benchlib as bl
from benchlib import GiB, KiB, log

HERE = Path(__file__).resolve().parent

fx = bl.fx

CONTENDERS = ('new', 'stock', 'nbdkit', 'aria2c', 'pipeline', 'curl')
CONTENDER_DESC = {
    'new': 'new driver, defaults',
    'stock': 'stock driver (QEMU 10.0)',
    'nbdkit': 'nbdkit curl connections=16 + qemu-img over NBD',
    'aria2c': 'aria2c -x16 -s16 -k1M (download)',
    'pipeline': 'aria2c download, then qemu-img convert of the local file '
                '(what importers do today)',
    'curl': 'curl (one stream, download)',
    'link': 'link limit (file size / link rate)',
}

#: Variants of the new driver that only some parts run (not contenders of
#: the main comparison): name -> the driver options they add
VARIANTS: Dict[str, Dict[str, str]] = {
    'new-h2': {'http-version': 'http2'},
}
VARIANT_DESC = {
    'new-h2': 'new driver, http-version=http2: the transfers as streams '
              'over one connection',
}


# ---------------------------------------------------------------------------
# The context of one benchmark run
# ---------------------------------------------------------------------------

class Ctx:
    """Paths, binaries and settings shared by every measurement."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.build = fx.build_dir()
        self.work = bl.work_dir()
        self.ca_dir = fx.get_ca_dir()
        self.ca_pem = self.ca_dir / 'ca.pem'
        # The driver may be rebuilt while we run: work on copies (QEMU is
        # built without modules, so a binary stands alone)
        self.bin = self.work / f'bin-{os.getpid()}'
        self.built = {}
        for name, rel in (('new_img', 'qemu-img'), ('new_io', 'qemu-io'),
                          ('stock_img', 'stock/qemu-img'),
                          ('stock_io', 'stock/qemu-io')):
            src = self.build / rel
            self.built[name] = src
            deadline = time.monotonic() + 600
            while not os.access(src, os.X_OK):
                if time.monotonic() > deadline:
                    raise SystemExit(f'bench: {src} missing: run make (or '
                                     f'scripts/build.sh) first')
                log(f'{src} missing (being rebuilt?), waiting')
                time.sleep(10)
            # (same base name: qemu-io's prompt is its program name)
            dst = self.bin / ('stock' if 'stock' in name else 'new') / \
                Path(rel).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(src), dst)
            setattr(self, name, dst)
        self.logs = self.work / 'logs' / 'latest'
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        # Outputs go to tmpfs, so that no contender waits for the disk
        base = '/dev/shm' if os.path.isdir('/dev/shm') and \
            shutil.disk_usage('/dev/shm').free > 6 * GiB else None
        self.out = Path(tempfile.mkdtemp(prefix='qcurl-bench-', dir=base))
        self.out_is_tmpfs = base is not None
        self.wanproxy = bl.build_wanproxy()
        self.nbdkit: Optional[Path] = None
        self.nbdkit_error = ''
        self.counter = 0
        self.started = time.monotonic()

    def log_base(self, label: str) -> Path:
        self.counter += 1
        return self.logs / f'{self.counter:04d}-{label}'

    def rundir(self, label: str) -> Path:
        d = self.log_base(label)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def find_nbdkit(self) -> None:
        res = bl.run_measured([HERE / 'build-nbdkit.sh'], timeout=900,
                              log_base=self.logs / 'build-nbdkit')
        path = res.stdout.strip().splitlines()[-1:] if res.ok else []
        if path and os.access(path[0], os.X_OK):
            self.nbdkit = Path(path[0])
        else:
            self.nbdkit_error = f'build-nbdkit.sh failed: {res.why()}'
            log(self.nbdkit_error)

    def cleanup(self) -> None:
        shutil.rmtree(self.bin, ignore_errors=True)
        if not self.args.keep:
            shutil.rmtree(self.out, ignore_errors=True)
        else:
            log(f'outputs kept in {self.out}')


def timeout_for(nbytes: int) -> float:
    """Anything slower than 1.5 MB/s counts as a hang."""
    return max(120.0, nbytes / 1.5e6 + 30)


def qemu_source(image: bl.Image, file_node: Dict[str, Any],
                tar_driver_offset: bool) -> List[str]:
    """The qemu-img arguments naming the source image.

    @file_node is the protocol node (https with options, or nbd).  A tar
    member is read through a raw node of the member's size: at the
    driver's own 'offset' if @tar_driver_offset, else at the raw node's.
    """
    if image.key == 'tar':
        node = dict(file_node)
        raw: Dict[str, Any] = {'driver': 'raw', 'size': image.member_size}
        if tar_driver_offset:
            node['offset'] = str(image.member_offset)
            raw['offset'] = 0
        else:
            raw['offset'] = image.member_offset
        raw['file'] = node
        return ['json:' + json.dumps(raw, separators=(',', ':'))]
    if set(file_node) == {'driver', 'url'}:
        return ['-f', image.fmt, file_node['url']]
    top = {'driver': image.fmt, 'file': file_node}
    return ['json:' + json.dumps(top, separators=(',', ':'))]


# ---------------------------------------------------------------------------
# One measured run
# ---------------------------------------------------------------------------

def env_opts() -> Dict[str, str]:
    """QCURL_BENCH_OPTS=blocksize=512k,...: options for the new driver
    instead of its defaults, to try other defaults."""
    return dict(kv.split('=', 1) for kv in os.environ.get(
        'QCURL_BENCH_OPTS', '').split(',') if '=' in kv)


def aria2c_argv(ctx: Ctx, url: str, out: Path) -> List[Any]:
    """aria2c downloading @url to @out, as the benchmark runs it."""
    return ['aria2c', '-x16', '-s16', '-k1M',
            f'--ca-certificate={ctx.ca_pem}', f'--dir={out.parent}',
            f'--out={out.name}', '--allow-overwrite=true',
            '--auto-file-renaming=false', '--file-allocation=none',
            '--auto-save-interval=0', '--console-log-level=error',
            '--summary-interval=0', '--show-console-readout=false',
            '--download-result=hide', '--max-tries=3', url]


def run_one(ctx: Ctx, nginx: bl.BenchNginx, scenario: str, image: bl.Image,
            contender: str, tag: str = '', opts: Optional[Dict[str, str]]
            = None, url_path: Optional[str] = None,
            timeout: Optional[float] = None) -> Dict[str, Any]:
    """Run one contender on one image through a fresh proxy.

    Returns a dict with the timings, what the server and proxy saw, and
    whether the output was right.  Failures are recorded, not raised.
    @contender may be a variant of the new driver (:data:`VARIANTS`).  In
    the scenario bl.DIRECT, the client talks to nginx without a proxy.
    """
    label = f'{scenario}-{image.key}-{contender}{tag}'
    # A variant runs as the new driver, with its options
    kind = 'new' if contender in VARIANTS else contender
    rec: Dict[str, Any] = {
        'scenario': scenario, 'image': image.key, 'contender': contender,
        'file_bytes': image.size, 'opts': opts or {}, 'ok': False,
        'verified': None, 'error': None, 'started': time.time(),
        'load_start': os.getloadavg()[0],
    }
    rundir = ctx.rundir(label)
    out = ctx.out / f'{contender}.out'
    for stale in ctx.out.iterdir():
        if stale.is_file():
            stale.unlink()
    nginx.reset_log()
    proxy = None
    cpu_before = bl.host_cpu_times()
    try:
        if scenario == bl.DIRECT:
            url = nginx.https_url(url_path or image.name)
        else:
            proxy = bl.WanProxy(ctx.wanproxy, nginx.https_port, scenario,
                                rundir)
            url = proxy.url(url_path or image.name)
        if timeout is None:
            timeout = timeout_for(image.size)
        rec['timeout'] = timeout
        whole_file = contender in ('aria2c', 'curl')
        if kind in ('new', 'stock'):
            qemu_img = ctx.new_img if kind == 'new' else ctx.stock_img
            node: Dict[str, Any] = {'driver': 'https', 'url': url}
            if kind == 'new' and not opts:
                node.update(env_opts())
            node.update(VARIANTS.get(contender, {}))
            node.update(opts or {})
            rec['driver_opts'] = {k: v for k, v in node.items()
                                  if k not in ('driver', 'url')}
            argv: List[Any] = [qemu_img]
            if kind == 'new':
                argv += bl.trace_args()
            argv += ['convert'] + qemu_source(image, node, kind ==
                                               'new') + ['-O', 'raw', out]
            res = bl.run_measured(argv, timeout, rundir / 'cmd',
                                  stamp_stderr=kind == 'new')
            rec.update(wall=res.wall, cpu=res.cpu, maxrss_kb=res.maxrss_kb,
                       rusage_from=res.rusage_from)
            if kind == 'new':
                rec['trace'] = bl.parse_trace(res.stderr)
        elif contender == 'nbdkit':
            if ctx.nbdkit is None:
                raise RuntimeError(ctx.nbdkit_error or 'nbdkit not built')
            sock = fx.short_socket_dir(rundir) / 'nbd.sock'
            pid_file = rundir / 'nbdkit.pid'
            start = time.monotonic()
            server = bl.Background(
                'nbdkit', [ctx.nbdkit, '-f', '-r', '--exit-with-parent',
                           '-P', pid_file, '-U', sock, 'curl', f'url={url}',
                           'connections=16', f'cainfo={ctx.ca_pem}'],
                rundir / 'nbdkit.log', pid_file=pid_file)
            try:
                fx.wait_for(sock.exists, 30, 'the nbdkit socket',
                            interval=0.01, abort=server.exited)
                node = {'driver': 'nbd',
                        'server': {'type': 'unix', 'path': str(sock)}}
                if image.key == 'tar':
                    src = qemu_source(image, node, False)
                else:
                    src = ['-f', image.fmt, fx.nbd_unix_uri('', sock)]
                res = bl.run_measured([ctx.new_img, 'convert'] + src +
                                      ['-O', 'raw', out], timeout,
                                      rundir / 'cmd')
                wall = time.monotonic() - start
            finally:
                server.stop()
            rec.update(wall=wall, cpu=res.cpu + server.cpu,
                       maxrss_kb=res.maxrss_kb + server.maxrss_kb,
                       rusage_from=res.rusage_from,
                       server_process={'cpu': server.cpu,
                                       'maxrss_kb': server.maxrss_kb})
        elif contender == 'aria2c':
            res = bl.run_measured(aria2c_argv(ctx, url, out), timeout,
                                  rundir / 'cmd')
            rec.update(wall=res.wall, cpu=res.cpu, maxrss_kb=res.maxrss_kb,
                       rusage_from=res.rusage_from)
        elif contender == 'pipeline':
            local = ctx.out / 'download'
            res = bl.run_measured(aria2c_argv(ctx, url, local), timeout,
                                  rundir / 'download')
            rec.update(download_wall=res.wall, wall=res.wall, cpu=res.cpu,
                       maxrss_kb=res.maxrss_kb, rusage_from=res.rusage_from)
            if res.ok:
                node = {'driver': 'file', 'filename': str(local)}
                conv = bl.run_measured(
                    [ctx.new_img, 'convert'] +
                    qemu_source(image, node, False) + ['-O', 'raw', out],
                    timeout, rundir / 'cmd')
                rec.update(convert_wall=conv.wall,
                           wall=res.wall + conv.wall,
                           cpu=res.cpu + conv.cpu,
                           maxrss_kb=max(res.maxrss_kb, conv.maxrss_kb))
                res = conv
        elif contender == 'curl':
            res = bl.run_measured(['curl', '-q', '-sS', '--fail',
                                   '--cacert', ctx.ca_pem, '-o', out, url],
                                  timeout, rundir / 'cmd')
            rec.update(wall=res.wall, cpu=res.cpu, maxrss_kb=res.maxrss_kb,
                       rusage_from=res.rusage_from)
        else:
            raise ValueError(contender)
        rec['timed_out'] = res.timed_out
        rec['host_busy'] = bl.host_busy(cpu_before, bl.host_cpu_times())
        if not res.ok:
            rec['error'] = res.why()
        else:
            ok, how = bl.verify_output(image, out, ctx.new_img,
                                       rundir / 'verify', whole_file)
            rec['verified'] = ok
            rec['verify_method'] = how
            rec['ok'] = ok
            if not ok:
                rec['error'] = f'WRONG OUTPUT ({how})'
    except Exception as err:  # pylint: disable=broad-except
        rec['error'] = f'{type(err).__name__}: {err}'
    finally:
        if proxy is not None:
            rec['proxy'] = proxy.stop()
        for stale in ctx.out.iterdir():
            if stale.is_file():
                stale.unlink()
    rec['server'] = bl.summarize_log(nginx.settled_log())
    rec['load_end'] = os.getloadavg()[0]
    if rec.get('wall'):
        rec['throughput'] = image.size / rec['wall']
    state = 'ok' if rec['ok'] else f'FAILED: {rec["error"]}'
    extra = ''
    if rec.get('trace', {}).get('retries'):
        extra = f', {rec["trace"]["retries"]} retries'
    log(f'  {label}: {rec.get("wall", 0):.2f} s, '
        f'{rec.get("throughput", 0) / 1e6:.1f} MB/s, '
        f'{rec["server"]["requests"]} requests{extra} -- {state}')
    return rec



# ---------------------------------------------------------------------------
# Random reads with qemu-io
# ---------------------------------------------------------------------------

class QemuIo:
    """qemu-io reading commands from a pipe, one at a time.

    qemu-io reads a line only when stdin is readable and prints a prompt
    when it is ready for the next one, so each command is sent after the
    previous prompt; the time between two prompts is the command's.
    """

    PROMPT = b'qemu-io> '

    def __init__(self, argv: List[Any], log_path: Path) -> None:
        self.log_path = log_path
        # pylint: disable=consider-using-with
        self.err_path = log_path.with_suffix('.err')
        self.time_path = log_path.with_suffix('.time')
        argv = bl.with_time([str(a) for a in argv], self.time_path)
        with open(self.err_path, 'wb') as err:
            self.proc = subprocess.Popen(argv,
                                         stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE,
                                         stderr=err, start_new_session=True)
        bl._BACKGROUND[self.proc.pid] = 'qemu-io'  # pylint: disable=W0212
        self.buf = bytearray()
        self.prompts: List[int] = []     # buffer offsets after each prompt
        self.cond = threading.Condition()
        self.eof = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.cpu: Optional[float] = None
        self.maxrss_kb: Optional[int] = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            with self.cond:
                if not chunk:
                    self.eof = True
                    self.cond.notify_all()
                    return
                # A prompt may straddle two reads; never find one twice
                start = max(self.prompts[-1] if self.prompts else 0,
                            len(self.buf) - len(self.PROMPT) + 1)
                self.buf += chunk
                while True:
                    i = self.buf.find(self.PROMPT, start)
                    if i < 0:
                        break
                    start = i + len(self.PROMPT)
                    self.prompts.append(start)
                self.cond.notify_all()

    def wait_prompt(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.prompts) < count:
                if self.eof:
                    raise RuntimeError('qemu-io exited: ' +
                                       self.buf[-500:].decode(errors='replace'))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f'qemu-io: no prompt after {timeout} s')
                self.cond.wait(left)

    def cmd(self, line: str, timeout: float) -> str:
        """Run one command; return what it printed."""
        n = len(self.prompts)
        if n == 0:
            self.wait_prompt(1, timeout)
            n = 1
        start = self.prompts[n - 1]
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b'\n')
        self.proc.stdin.flush()
        self.wait_prompt(n + 1, timeout)
        end = self.prompts[n] - len(self.PROMPT)
        return self.buf[start:end].decode(errors='replace')

    def close(self, timeout: float = 60) -> None:
        """Quit (or kill) it, and collect its rusage."""
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(b'quit\n')
                self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                bl._kill_group(self.proc.pid)  # pylint: disable=W0212
                pid, status, usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.02)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        timed = bl.read_time(self.time_path)
        self.cpu, self.maxrss_kb = timed if timed else (
            usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
        bl._BACKGROUND.pop(self.proc.pid, None)  # pylint: disable=W0212
        bl._kill_group(self.proc.pid)  # pylint: disable=W0212
        self.thread.join(5)
        self.log_path.write_bytes(bytes(self.buf[-200000:]))


def random_offsets(manifest: Dict[str, Any], count: int, length: int,
                   seed: int) -> List[int]:
    """@count offsets, 4 KiB aligned, spread uniformly over the data."""
    rng = random.Random(seed)
    extents = manifest['extents']
    virtual = manifest['params']['virtual']
    weights = [n for _, n in extents]
    offs = []
    for off, n in rng.choices(extents, weights, k=count):
        o = off + rng.randrange(0, max(1, n - length + 1))
        o = min(o - o % (4 * KiB), virtual - length)
        offs.append(o)
    return offs


def random_reads_one(ctx: Ctx, nginx: bl.BenchNginx, scenario: str,
                     image: bl.Image, which: str, offsets: List[int],
                     length: int, depth: int) -> Dict[str, Any]:
    label = f'{scenario}-random-{length // KiB}k-{which}'
    rundir = ctx.rundir(label)
    rec: Dict[str, Any] = {'scenario': scenario, 'contender': which,
                           'reads': len(offsets), 'length': length,
                           'depth': depth, 'ok': False, 'error': None}
    nginx.reset_log()
    proxy = bl.WanProxy(ctx.wanproxy, nginx.https_port, scenario, rundir)
    qio = None
    try:
        url = proxy.url(image.name)
        argv: List[Any] = [ctx.new_io if which == 'new' else ctx.stock_io]
        if which == 'new':
            argv += bl.trace_args()
        if which == 'new' and env_opts():
            node = {'driver': 'https', 'url': url, **env_opts()}
            argv += ['-r'] + qemu_source(image, node, True)
        else:
            argv += ['-r', '-f', 'qcow2', url]
        start = time.monotonic()
        qio = QemuIo(argv, rundir / 'qemu-io.log')
        qio.wait_prompt(1, 60)
        rec['open_seconds'] = time.monotonic() - start
        timeout = 120 if ctx.quick else 300
        for name in ('cold', 'warm'):
            t0 = time.monotonic()
            for i in range(0, len(offsets), depth):
                for o in offsets[i:i + depth]:
                    out = qio.cmd(f'aio_read -q {o} {length}', timeout)
                    if out.strip():
                        raise RuntimeError(f'aio_read: {out.strip()[:200]}')
                out = qio.cmd('aio_flush', timeout)
                if 'fail' in out or 'error' in out.lower():
                    raise RuntimeError(f'aio_flush: {out.strip()[:200]}')
            rec[f'{name}_seconds'] = time.monotonic() - t0
        # Spot-check data: some of the same reads, dumped and compared
        checked = 0
        assert image.ref is not None
        for o in offsets[::max(1, len(offsets) // 6)][:6]:
            dump = fx.parse_hexdump(qio.cmd(f'read -v {o} {length}', 120))
            want = fx.read_bytes(image.ref, o, length)
            got = bytes(dump.get(o + i, -1) & 0xff if (o + i) in dump else 0
                        for i in range(length))
            if len(dump) != length or got != want:
                raise RuntimeError(f'WRONG DATA at offset {o}')
            checked += 1
        rec['spot_checked'] = checked
        rec['ok'] = True
    except Exception as err:  # pylint: disable=broad-except
        rec['error'] = f'{type(err).__name__}: {err}'
    finally:
        if qio is not None:
            qio.close()
            rec['cpu'] = qio.cpu
            rec['maxrss_kb'] = qio.maxrss_kb
            if which == 'new':
                rec['trace'] = bl.parse_trace(
                    qio.err_path.read_text(errors='replace'))
        rec['proxy'] = proxy.stop()
    rec['server'] = bl.summarize_log(nginx.settled_log())
    log(f'  {label}: open {rec.get("open_seconds", 0):.2f} s, cold '
        f'{rec.get("cold_seconds", 0):.2f} s, warm '
        f'{rec.get("warm_seconds", 0):.2f} s, '
        f'{rec["server"]["requests"]} requests -- '
        f'{"ok" if rec["ok"] else "FAILED: " + str(rec["error"])}')
    return rec
