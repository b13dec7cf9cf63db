#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Benchmark: a real guest boots from an https:// drive over the WAN.

qemu-system-x86_64 -M q35 (TCG) boots the test guest of
scripts/build-guest.py on the benchmark disk (400 files, 150 MiB, on a
256 MiB ext4) served by nginx over HTTPS behind tests/bench/wanproxy
(S1 "CDN": RTT 40 ms, 10 MB/s per connection; S2 "far": RTT 150 ms,
25 MB/s).  The guest checks the sha256 of every file and prints one
result line on the serial console.  Measured for the new driver with its
defaults, the new driver with the blocksize that the benchmark's sweep
recommends, and the stock driver: the time from QEMU's start to the
result line, and the bytes nginx sent against the bytes of the files the
guest read.

Writes tests/bench/results/guest.json and the section "A guest boots from the
drive" of tests/bench/results/results.md (tests/bench/run keeps that section when
it writes the file again).  With --io-pattern, instead boots once with
the trace event curl_co_preadv and writes tests/bench/results/guest-io.md: the
guest's own read sizes and offsets.

Runs on its own (it re-executes itself under scripts/with-test-ca.sh) or
as the part "guest" of tests/bench/run.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DOCS = REPO / 'tests' / 'bench' / 'results'

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / 'tests' / 'e2e'))
# pylint: disable=wrong-import-position
import benchlib as bl  # noqa: E402
import qemu_guest as gst  # noqa: E402
from benchlib import KiB, MiB, log  # noqa: E402

fx = bl.fx

CONTENDERS = ('new', 'tuned', 'stock')
CONTENDER_DESC = {
    'new': 'new driver, default options',
    'tuned': 'new driver, the blocksize the sweep recommends',
    'stock': 'stock driver (QEMU 10.0)',
}
#: The orders in which the guest reads the files: the list of the disk
#: that it checks (see scripts/build-guest.py)
ORDERS = {
    'by name': 'SHA256SUMS',
    'interleaved': 'SHA256SUMS.interleaved',
}
#: A boot slower than this is a hang (stock in S2 takes minutes)
BOOT_TIMEOUT = 900.0
#: The targets of the issue: S1 time against stock, bytes against files
TIME_TARGET = 0.6
BYTES_TARGET = 2.0
#: Markers of the section in results.md
BEGIN = '<!-- guest boot: written by tests/bench/guest.py -->'
END = '<!-- guest boot: end -->'
#: The trace of the new driver's summary (benchlib parses it)
SUMMARY_EVENTS = bl.TRACE_EVENTS


def reexec_under_test_ca() -> None:
    """Run again under scripts/with-test-ca.sh unless already there."""
    if os.environ.get('QCURL_CA_DIR'):
        return
    build = Path(os.environ.get('QCURL_BUILD') or REPO / 'build').resolve()
    os.environ['QCURL_BUILD'] = str(build)
    argv = ['/bin/sh', str(REPO / 'scripts' / 'with-test-ca.sh'),
            str(build / 'test-ca'), sys.executable,
            str(Path(__file__).resolve())] + sys.argv[1:]
    os.execv(argv[0], argv)


def recommended_blocksize(docs: Path) -> Tuple[int, str]:
    """The blocksize the last sweep recommends, and where it comes from.

    A sweep of random reads (results.json's "random_sweep") wins over the
    convert sweep ("sweep"); without either, 1 MiB.
    """
    try:
        res = json.loads((docs / 'results.json').read_text())
    except (OSError, ValueError):
        res = {}
    for key in ('random_sweep', 'sweep'):
        rec = (res.get(key) or {}).get('recommendation') or {}
        point = rec.get('point') or {}
        if point.get('blocksize'):
            return int(point['blocksize']), \
                f'{key} of results.json: {rec.get("label", "")}'
    return MiB, 'no sweep in results.json: 1M'


def serve_disk(path: Path) -> Path:
    """The directory that nginx serves the guest's disk @path from, as
    disk.raw."""
    www = bl.work_dir() / 'guest-www'
    www.mkdir(parents=True, exist_ok=True)
    link = www / 'disk.raw'
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(path)
    return www


def ensure_disk(profile: str) -> None:
    """Make the guest's @profile disk (cached: quick if it exists)."""
    res = bl.run_measured([sys.executable, REPO / 'scripts' /
                           'build-guest.py', '--disk', profile],
                          timeout=900, log_base=bl.work_dir() / 'logs' /
                          'build-guest',
                          env={'BUILD': str(fx.build_dir())})
    if not res.ok:
        raise SystemExit(f'bench: scripts/build-guest.py failed: '
                         f'{res.why()}\n{res.stderr[-2000:]}')


def trace_file(events: Sequence[str], name: str) -> Path:
    path = bl.work_dir() / name
    text = '\n'.join(events) + '\n'
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def drive_for(url: str, contender: str, blocksize: int) -> str:
    drive = f'file.driver=https,file.url={url},if=virtio,format=raw,' \
        'read-only=on'
    if contender == 'tuned':
        drive += f',file.blocksize={bl.size_opt(blocksize)}'
    return drive


def boot_one(nginx: bl.BenchNginx, guest: gst.Guest, disk: gst.GuestDisk,
             case: Tuple[str, str, str], blocksize: int, rep: int,
             logs: Path) -> Dict[str, Any]:
    """One boot of @case (scenario, file order, contender) through a
    fresh proxy; failures are recorded."""
    scenario, order, contender = case
    label = f'{scenario}-{order.replace(" ", "-")}-{contender}-r{rep}'
    rec: Dict[str, Any] = {'scenario': scenario, 'contender': contender,
                           'order': order,
                           'rep': rep, 'ok': False, 'error': None,
                           'file_bytes': disk.file_bytes,
                           'file_count': disk.file_count,
                           'started': time.time()}
    if contender == 'tuned':
        rec['opts'] = {'blocksize': bl.size_opt(blocksize)}
    rundir = logs / label
    nginx.reset_log()
    cpu_before = bl.host_cpu_times()
    proxy = bl.WanProxy(bl.build_wanproxy(), nginx.https_port, scenario,
                        rundir)
    try:
        url = proxy.url('disk.raw')
        qemu = (gst.stock_qemu_system() if contender == 'stock' else
                fx.binaries().qemu_system)
        extra: List[str] = []
        if contender != 'stock':
            events = trace_file(SUMMARY_EVENTS, 'guest-trace-events')
            extra = ['-trace', f'events={events},file={rundir / "trace.log"}']
        result = gst.boot(qemu, guest, drive_for(url, contender, blocksize),
                          rundir, timeout=BOOT_TIMEOUT, extra_args=extra,
                          append=f'qcurl.list={ORDERS[order]}')
        rec.update(wall=result.wall, boot_to_verified=result.result_seconds,
                   result_line=result.result_line,
                   returncode=result.returncode, timed_out=result.timed_out)
        if result.result:
            try:
                rec['guest_check'] = (float(result.result['end']) -
                                      float(result.result['start']))
                rec['guest_uptime'] = float(result.result['uptime'])
            except (KeyError, ValueError):
                pass
        rec['ok'] = result.verified_all(disk)
        if not rec['ok']:
            line = result.result_line or 'no result line'
            late = ', timed out' if result.timed_out else ''
            rec['error'] = (f'not verified: {line} (exit '
                            f'{result.returncode}{late})')
        if contender != 'stock':
            try:
                rec['trace'] = bl.parse_trace(
                    (rundir / 'trace.log').read_text(errors='replace'))
            except OSError:
                pass
    except Exception as err:  # pylint: disable=broad-except
        rec['error'] = f'{type(err).__name__}: {err}'
    finally:
        rec['proxy'] = proxy.stop()
    rec['host_busy'] = bl.host_busy(cpu_before, bl.host_cpu_times())
    rec['server'] = bl.summarize_log(nginx.settled_log())
    rec['bytes_ratio'] = rec['server']['bytes'] / disk.file_bytes
    state = 'ok' if rec['ok'] else f'FAILED: {rec["error"]}'
    log(f'  guest {label}: {rec.get("boot_to_verified") or 0:.1f} s to '
        f'verified, server {rec["server"]["bytes"] / 1e6:.1f} MB '
        f'({rec["bytes_ratio"]:.2f} x the files) -- {state}')
    return rec


def case_of(run: Dict[str, Any]) -> Tuple[str, str, str]:
    return run['scenario'], run['order'], run['contender']


def summarize(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (scenario, order, contender): medians of the verified runs."""
    rows = []
    keys = sorted({case_of(r) for r in runs},
                  key=lambda k: (list(ORDERS).index(k[1]), k[0],
                                 CONTENDERS.index(k[2])))
    for scen, order, cont in keys:
        mine = [r for r in runs if case_of(r) == (scen, order, cont)]
        good = [r for r in mine if r['ok']]
        row: Dict[str, Any] = {'scenario': scen, 'contender': cont,
                               'order': order,
                               'runs': len(mine), 'verified': len(good),
                               'opts': mine[0].get('opts', {})}
        if good:
            for key in ('boot_to_verified', 'guest_check', 'bytes_ratio'):
                values = [r[key] for r in good if r.get(key) is not None]
                row[key] = statistics.median(values) if values else None
            row['all_boot_to_verified'] = [round(r['boot_to_verified'], 2)
                                           for r in good]
            row['server_bytes'] = statistics.median(
                r['server']['bytes'] for r in good)
            row['requests'] = statistics.median(
                r['server']['requests'] for r in good)
            row['connections'] = statistics.median(
                r['server']['connections'] for r in good)
            row['file_bytes'] = good[0]['file_bytes']
            trace = good[0].get('trace') or {}
            row['retries'] = trace.get('retries')
        else:
            row['error'] = mine[0].get('error')
        rows.append(row)
    return rows


def targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The issue's targets: S1 time new / stock, bytes / files read."""
    def row(scen: str, cont: str) -> Dict[str, Any]:
        for r in rows:
            if case_of(r) == (scen, 'by name', cont):
                return r
        return {}

    out = []
    new, stock = row('S1', 'new'), row('S1', 'stock')
    if new.get('boot_to_verified') and stock.get('boot_to_verified'):
        ratio = new['boot_to_verified'] / stock['boot_to_verified']
        out.append({'scenario': 'S1', 'target': 'new time / stock time',
                    'value': ratio, 'limit': TIME_TARGET,
                    'met': ratio <= TIME_TARGET})
    for scen in ('S1', 'S2'):
        new = row(scen, 'new')
        if new.get('bytes_ratio') is not None:
            out.append({'scenario': scen,
                        'target': 'server bytes / bytes of the files read',
                        'value': new['bytes_ratio'], 'limit': BYTES_TARGET,
                        'met': new['bytes_ratio'] <= BYTES_TARGET})
    return out


def run_bench(scenarios: Sequence[str], reps: int,
              contenders: Sequence[str] = CONTENDERS,
              docs: Path = DOCS,
              interleaved: Sequence[str] = ('S1',),
              tuned: Optional[int] = None) -> Dict[str, Any]:
    """Boot the guest for every scenario, contender and repetition, with
    the files read by name, and also interleaved in @interleaved; the
    'tuned' contender uses blocksize @tuned, or what the sweep says."""
    ensure_disk('bench')
    guest = gst.Guest.from_build()
    disk = guest.disk('bench')
    if tuned:
        blocksize, source = tuned, 'given with --blocksize'
    else:
        blocksize, source = recommended_blocksize(docs)
    logs = bl.work_dir() / 'logs' / 'guest'
    logs.mkdir(parents=True, exist_ok=True)
    www = serve_disk(disk.path)
    runs: List[Dict[str, Any]] = []
    started = time.monotonic()
    log(f'guest boots: {disk.file_count} files of {disk.file_bytes / MiB:.0f}'
        f' MiB on a {disk.image_bytes / MiB:.0f} MiB ext4; tuned blocksize '
        f'{bl.size_opt(blocksize)} ({source})')
    with bl.BenchNginx(www, workers=2) as nginx:
        turn = 0
        cases = [(scen, 'by name') for scen in scenarios] + \
            [(scen, 'interleaved') for scen in scenarios
             if scen in interleaved]
        for scen, order in cases:
            for rep in range(reps):
                who = list(contenders)
                # Alternate the order, to spread a machine's drift
                if turn % 2:
                    who.reverse()
                turn += 1
                for cont in who:
                    runs.append(boot_one(nginx, guest, disk,
                                         (scen, order, cont), blocksize,
                                         rep, logs))
    rows = summarize(runs)
    return {
        'meta': {
            'date': datetime.datetime.now().astimezone().isoformat(
                timespec='seconds'),
            'argv': sys.argv[1:], 'git': git_info(),
            'qemu_base': read_text(fx.build_dir() / 'base-version'),
            'guest': guest.info, 'disk': {
                'file_count': disk.file_count,
                'file_bytes': disk.file_bytes,
                'image_bytes': disk.image_bytes},
            'machine': {'cpus': os.cpu_count(),
                        'load_at_start': os.getloadavg()},
            'tuned_blocksize': blocksize, 'tuned_source': source,
            'runtime_seconds': round(time.monotonic() - started, 1),
            'reps': reps,
        },
        'runs': runs, 'rows': rows, 'targets': targets(rows),
    }


def read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return 'unknown'


def git_info() -> Dict[str, Any]:
    def git(*args: str) -> str:
        res = bl.run_measured(['git', '-C', REPO] + list(args), timeout=30,
                              log_base=bl.work_dir() / 'logs' / 'git')
        return res.stdout.strip()
    return {'commit': git('rev-parse', 'HEAD'),
            'describe': git('log', '-1', '--format=%h %s'),
            'dirty': bool(git('status', '--porcelain',
                              '--untracked-files=no'))}


# ---------------------------------------------------------------------------
# results.md
# ---------------------------------------------------------------------------

def fmt(value: Optional[float], spec: str = '.1f') -> str:
    return '—' if value is None else format(value, spec)


def render_section(data: Dict[str, Any]) -> List[str]:
    """The section of results.md, from guest.json's content."""
    m = data['meta']
    d = m['disk']
    g = m['guest']
    out = [BEGIN, '## A guest boots from the drive', '',
           f'- date: {m["date"]} (`tests/bench/guest.py '
           f'{" ".join(m["argv"])}`), repository '
           f'{m["git"]["commit"][:12]} ({m["git"]["describe"]})' +
           (' + uncommitted changes' if m['git']['dirty'] else '') +
           f', runtime {m["runtime_seconds"] / 60:.1f} min',
           f'- guest: {g["kernel_package"]} {g["kernel_version"]}, busybox '
           f'{g["busybox_version"]}; `qemu-system-x86_64 -M q35` (TCG, one '
           f'vCPU, {gst.GUEST_MEMORY}) with `-kernel`/`-initrd` and '
           '`-drive file.driver=https,file.url=...,if=virtio,format=raw,'
           'read-only=on` through a fresh wanproxy per boot',
           f'- disk: {d["file_count"]} files of '
           f'{d["file_bytes"] / MiB:.0f} MiB on a '
           f'{d["image_bytes"] / MiB:.0f} MiB ext4; the guest mounts it and '
           'checks the sha256 of every file against the list on the disk',
           f'- tuned: `blocksize={bl.size_opt(m["tuned_blocksize"])}`, from '
           f'the {m["tuned_source"]}',
           '- "boot to verified" = from QEMU\'s start to the result line on '
           'the serial console; "guest check" = the guest\'s own time for '
           'the checks (from its /proc/uptime); server MB from nginx\'s log; '
           '"× files" = server bytes / bytes of the files the guest read.  '
           'The guest runs under TCG on the same 2 CPUs as nginx and the '
           'proxy, so its CPU time is part of every row.', '',
           '- file order: "by name" = the guest checks the files in the '
           'order of their names, one directory after the other (the list '
           '`find | sort` would make); "interleaved" = one file from each '
           'of the 8 directories in turn, which ext4 put in different '
           'block groups, so that the guest jumps across the disk at every '
           'file.', '',
           '| scenario | file order | driver | boot to verified s | '
           'guest check s | server MB | × files | requests | conns | '
           'verified | notes |',
           '|---|---|---|---:|---:|---:|---:|---:|---:|---|---|']
    for r in data['rows']:
        desc = CONTENDER_DESC[r['contender']]
        if r.get('opts'):
            desc += ' (' + ','.join(f'{k}={v}' for k, v in
                                    r['opts'].items()) + ')'
        if r['verified'] == 0:
            out.append(f'| {r["scenario"]} | {r["order"]} | {desc} | — | — '
                       f'| — | — | — | — | no | {r.get("error")} |')
            continue
        notes = []
        if len(r['all_boot_to_verified']) > 1:
            notes.append('median of ' + ', '.join(
                f'{v:.1f}' for v in r['all_boot_to_verified']))
        if r.get('retries'):
            notes.append(f'{r["retries"]} retries')
        out.append(
            f'| {r["scenario"]} | {r["order"]} | {desc} | '
            f'{fmt(r["boot_to_verified"])} | '
            f'{fmt(r.get("guest_check"))} | '
            f'{r["server_bytes"] / 1e6:.1f} | {fmt(r["bytes_ratio"], ".2f")}'
            f' | {r["requests"]:.0f} | {r["connections"]:.0f} | '
            f'{r["verified"]}/{r["runs"]} | {"; ".join(notes)} |')
    if data.get('targets'):
        out += ['', 'Targets (files by name):', '',
                '| scenario | target | result |', '|---|---|---|']
        for t in data['targets']:
            mark = '✅' if t['met'] else '❌'
            out.append(f'| {t["scenario"]} | {t["target"]} ≤ {t["limit"]} | '
                       f'{mark} {t["value"]:.3f} |')
    out += ['', END]
    return out


def update_results_md(docs: Path = DOCS,
                      guest_json: Optional[Path] = None) -> None:
    """Put the section from guest.json (@docs/guest.json, or @guest_json)
    into results.md (replacing an older one), before the sweep if there
    is one."""
    try:
        data = json.loads((guest_json or docs / 'guest.json').read_text())
    except (OSError, ValueError):
        return
    path = docs / 'results.md'
    try:
        text = path.read_text()
    except OSError:
        text = '# curl block driver benchmark\n'
    section = '\n'.join(render_section(data)) + '\n'
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip('\n')
        text = head + section + '\n' + tail
    elif '\n## Sweep' in text:
        head, tail = text.split('\n## Sweep', 1)
        text = head + '\n' + section + '\n## Sweep' + tail
    else:
        text = text.rstrip('\n') + '\n\n' + section
    path.write_text(text)


def save(data: Dict[str, Any], docs: Path = DOCS) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    tmp = docs / 'guest.json.tmp'
    tmp.write_text(json.dumps(data, indent=1, default=str) + '\n')
    tmp.replace(docs / 'guest.json')
    update_results_md(docs)


# ---------------------------------------------------------------------------
# The guest's own I/O pattern
# ---------------------------------------------------------------------------

PREADV_RE = re.compile(r'curl_co_preadv s \S+ offset (0x[0-9a-f]+) bytes '
                       r'(0x[0-9a-f]+)')
GUEST_READ_RE = re.compile(r'virtio_blk_handle_read vdev \S+ req (\S+) '
                           r'sector (\d+) nsectors (\d+)')
GUEST_DONE_RE = re.compile(r'virtio_blk_req_complete vdev \S+ req (\S+) ')
#: The events --io-pattern traces
IO_EVENTS = ('curl_co_preadv', 'virtio_blk_handle_read',
             'virtio_blk_req_complete')
#: Upper bounds of the size bins of the histograms
SIZE_BINS = (4 * KiB, 16 * KiB, 64 * KiB, 124 * KiB, 128 * KiB, 256 * KiB,
             1 << 62)


def size_histogram(sizes: Sequence[int]) -> List[Dict[str, Any]]:
    """How many of @sizes fall in each of SIZE_BINS, and their bytes."""
    bins = [{'upto': b, 'count': 0, 'bytes': 0} for b in SIZE_BINS]
    for n in sizes:
        for b in bins:
            if n <= b['upto']:
                b['count'] += 1
                b['bytes'] += n
                break
    return bins


def sequential_share(reads: Sequence[Tuple[int, int]]) -> float:
    """The share of @reads that start where one of the 8 reads before
    them ended (the guest has several requests in flight)."""
    hits = 0
    ends: List[int] = []
    for offset, length in reads:
        if offset in ends:
            hits += 1
        ends = (ends + [offset + length])[-8:]
    return hits / max(len(reads), 1)


def io_pattern(trace: str) -> Dict[str, Any]:
    """The guest's requests (virtio-blk) and the driver's reads
    (curl_co_preadv) in @trace, with the guest's queue depth."""
    guest: List[Tuple[int, int]] = []
    depths: List[int] = []
    driver: List[Tuple[int, int]] = []
    in_flight = set()
    for line in trace.splitlines():
        m = GUEST_READ_RE.search(line)
        if m:
            in_flight.add(m.group(1))
            guest.append((int(m.group(2)) * 512, int(m.group(3)) * 512))
            depths.append(len(in_flight))
            continue
        m = GUEST_DONE_RE.search(line)
        if m:
            in_flight.discard(m.group(1))
            continue
        m = PREADV_RE.search(line)
        if m:
            driver.append((int(m.group(1), 16), int(m.group(2), 16)))
    return {
        'guest_requests': len(guest),
        'guest_bytes': sum(n for _, n in guest),
        'guest_sizes': size_histogram([n for _, n in guest]),
        'guest_top_sizes': collections.Counter(
            n for _, n in guest).most_common(6),
        'guest_sequential': sequential_share(guest),
        'depth_max': max(depths, default=0),
        'depth_mean': statistics.mean(depths) if depths else 0,
        'depth_histogram': sorted(collections.Counter(depths).items()),
        'driver_reads': len(driver),
        'driver_bytes': sum(n for _, n in driver),
        'driver_sizes': size_histogram([n for _, n in driver]),
        'driver_sequential': sequential_share(driver),
        'max_offset': max((o + n for o, n in guest), default=0),
        'first_requests': guest[:16],
    }


def record_io_pattern(docs: Path) -> Dict[str, Any]:
    """Boot once from nginx (no proxy) with curl_co_preadv traced."""
    ensure_disk('bench')
    guest = gst.Guest.from_build()
    disk = guest.disk('bench')
    logs = bl.work_dir() / 'logs' / 'guest-io'
    www = serve_disk(disk.path)
    events = trace_file(IO_EVENTS, 'guest-io-events')
    with bl.BenchNginx(www, workers=2) as nginx:
        drive = drive_for(nginx.https_url('disk.raw'), 'new', 0)
        result = gst.boot(fx.binaries().qemu_system, guest, drive, logs,
                          timeout=BOOT_TIMEOUT, extra_args=[
                              '-trace', f'events={events},file=' +
                              str(logs / 'trace.log')])
    if not result.verified_all(disk):
        raise SystemExit(f'bench: the traced boot failed\n'
                         f'{result.describe()}')
    pattern = io_pattern((logs / 'trace.log').read_text(errors='replace'))
    pattern['file_bytes'] = disk.file_bytes
    pattern['image_bytes'] = disk.image_bytes
    pattern['date'] = datetime.datetime.now().astimezone().isoformat(
        timespec='seconds')
    (docs / 'guest-io.md').write_text(render_io(pattern, disk))
    return pattern


def bin_label(index: int) -> str:
    upto = bl.human_size(SIZE_BINS[index])
    if index == 0:
        return f'up to {upto}'
    low = bl.human_size(SIZE_BINS[index - 1])
    if SIZE_BINS[index] == 128 * KiB:
        return '128 KiB'
    if index == len(SIZE_BINS) - 1:
        return f'over {low}'
    return f'over {low}, up to {upto}'


def render_io(p: Dict[str, Any], disk: gst.GuestDisk) -> str:
    greq = max(p['guest_requests'], 1)
    dreq = max(p['driver_reads'], 1)
    rows = []
    for i, (g, d) in enumerate(zip(p['guest_sizes'], p['driver_sizes'])):
        rows.append(f'| {bin_label(i)} | {g["count"]} '
                    f'({100 * g["count"] / greq:.0f}%) | '
                    f'{100 * g["bytes"] / max(p["guest_bytes"], 1):.0f}% | '
                    f'{d["count"]} ({100 * d["count"] / dreq:.0f}%) | '
                    f'{100 * d["bytes"] / max(p["driver_bytes"], 1):.0f}% |')
    depths = ', '.join(f'{d}: {n}' for d, n in p['depth_histogram'])
    top = ', '.join(f'{bl.human_size(n)} ({c})'
                    for n, c in p['guest_top_sizes'])
    first = ', '.join(f'{o // KiB}K+{bl.human_size(n)}'
                      for o, n in p['first_requests'])
    return '\n'.join([
        '# How the test guest reads its disk',
        '',
        'Recorded once by `tests/bench/guest.py --io-pattern` '
        f'({p["date"]}), so that the random-read benchmark can be checked '
        'against what a real guest does.  The test guest of '
        '`scripts/build-guest.py` boots from the benchmark disk on a local '
        'nginx (HTTPS, no WAN proxy, the driver\'s defaults) with '
        '`-trace` of `virtio_blk_handle_read` and `virtio_blk_req_complete` '
        '(the guest\'s own requests, and so its queue depth) and '
        '`curl_co_preadv` (what reaches the driver, after virtio-blk has '
        'merged adjacent requests).  The guest mounts the ext4 disk '
        f'({disk.file_count} files of {disk.file_bytes / MiB:.0f} MiB on '
        f'{disk.image_bytes / MiB:.0f} MiB) and reads every file once with '
        'busybox `sha256sum -c`, through the page cache with the kernel\'s '
        'default readahead (128 KiB).',
        '',
        f'- The guest made {p["guest_requests"]} read requests of '
        f'{p["guest_bytes"] / MiB:.1f} MiB in all '
        f'({p["guest_bytes"] / disk.file_bytes:.2f} × the files: ext4 '
        'metadata and readahead past the end of small files), up to offset '
        f'{p["max_offset"] / MiB:.0f} MiB.  Most common sizes: {top}.',
        f'- {100 * p["guest_sequential"]:.0f}% of them start where one of '
        'the 8 requests before them ended: a file is read in one sequential '
        'run, and the others jump to the next file or to metadata '
        f'({disk.file_count} files, {p["guest_requests"]} requests).',
        f'- Queue depth (requests in flight when one is submitted, itself '
        f'included): mean {p["depth_mean"]:.1f}, at most {p["depth_max"]}; '
        f'requests per depth: {depths}.',
        f'- The driver saw {p["driver_reads"]} reads of '
        f'{p["driver_bytes"] / MiB:.1f} MiB '
        f'({100 * p["driver_sequential"]:.0f}% sequential in the same '
        'sense).',
        f'- The first requests (offset+length): {first}.',
        '',
        '| size | guest requests | of the bytes | driver reads | '
        'of the bytes |',
        '|---|---:|---:|---:|---:|',
    ] + rows + [
        '',
        'Against the random-read benchmark (256 reads of 64 KiB at random '
        'offsets, 8 in flight): this guest reads mostly in requests of the '
        'readahead window (128 KiB) or smaller, in sequential runs, and '
        f'one at a time (mean depth {p["depth_mean"]:.1f}, never more than '
        f'{p["depth_max"]}).  Each request waits for the one before it, so '
        'what decides its time is whether the driver already has the next '
        'block of the stream (its readahead), and otherwise the latency of '
        'one fetch, not how many scattered misses it serves at once.  The '
        'random-read numbers speak for a guest that works on scattered '
        'data with a deep queue (a database); the boot benchmark in '
        'results.md speaks for this one.',
        ''])


def main() -> int:
    parser = argparse.ArgumentParser(
        prog='tests/bench/guest.py', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scenario', default='S1,S2',
                        help='comma-separated scenarios (default S1,S2)')
    parser.add_argument('--interleaved', default='S1',
                        help='scenarios in which the guest also reads the '
                        'files interleaved (default S1; "" for none)')
    parser.add_argument('--reps', type=int, default=1,
                        help='boots per scenario and driver (default 1)')
    parser.add_argument('--only', default='',
                        help='comma-separated drivers: ' +
                        ','.join(CONTENDERS))
    parser.add_argument('--io-pattern', action='store_true',
                        help='record the guest\'s read pattern into '
                        'tests/bench/results/guest-io.md instead')
    parser.add_argument('--blocksize', type=bl.parse_size,
                        help='the blocksize of the tuned driver (default: '
                        'what the last sweep recommends)')
    parser.add_argument('--docs', default=str(DOCS),
                        help='where guest.json and results.md are')
    args = parser.parse_args()
    docs = Path(args.docs)
    try:
        if args.io_pattern:
            pattern = record_io_pattern(docs)
            log(f'{pattern["guest_requests"]} guest requests recorded in '
                f'{docs / "guest-io.md"}')
            return 0
        scenarios = [s.strip().upper() for s in args.scenario.split(',')
                     if s.strip()]
        for scen in scenarios:
            if scen not in bl.SCENARIOS:
                parser.error(f'unknown scenario {scen}')
        contenders = [c for c in args.only.split(',') if c] or \
            list(CONTENDERS)
        for cont in contenders:
            if cont not in CONTENDERS:
                parser.error(f'unknown driver {cont}')
        interleaved = [s.strip().upper() for s in
                       args.interleaved.split(',') if s.strip()]
        data = run_bench(scenarios, args.reps, contenders, docs,
                         interleaved, args.blocksize)
        save(data, docs)
    finally:
        bl.kill_background()
    for line in render_section(data)[1:-1]:
        print(line)
    return 0 if all(r['verified'] for r in data['rows']) else 1


if __name__ == '__main__':
    reexec_under_test_ca()
    sys.exit(main())
