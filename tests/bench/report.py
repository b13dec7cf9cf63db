#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The report of the curl driver benchmark: results.md from results.json.

Everything here is a function of the results data (the dict that
tests/bench/run writes to results.json), so that a saved run is rendered
again without measuring anything:

    tests/bench/report.py [RESULTS_JSON] [--out DIR] [--plot]

reads RESULTS_JSON (default tests/bench/results/results.json) and writes
DIR/results.md (default: next to RESULTS_JSON), with the section of the
guest boots from the guest.json next to RESULTS_JSON.

* :func:`evaluate_targets`, :func:`observations` -- what the numbers say:
  the targets met or missed, the failures worth a look (tests/bench/run
  stores both in results.json, and the report shows them).
* :func:`render` -- the text of results.md; :func:`write_md` writes it
  with the guest boot section of tests/bench/guest.py.
* :func:`print_tables` -- the summary tests/bench/run prints at the end.
* :func:`plot_sweep` -- sweep.png, with gnuplot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# pylint: disable=wrong-import-position
import benchlib as bl  # noqa: E402
import guest as bench_guest  # noqa: E402
from benchlib import KiB, MiB  # noqa: E402
from contenders import CONTENDER_DESC, VARIANT_DESC  # noqa: E402
from sweep import DEFAULT_POINT, point_key, point_label  # noqa: E402

DOCS = HERE / 'results'


# ---------------------------------------------------------------------------
# Targets and report
# ---------------------------------------------------------------------------

def row_of(summary: List[Dict[str, Any]], image: str,
           contender: str) -> Optional[Dict[str, Any]]:
    for row in summary:
        if row['image'] == image and row['contender'] == contender:
            return row
    return None


def evaluate_targets(main: Dict[str, Any]) -> List[Dict[str, Any]]:
    targets = []

    def add(scen: str, image: str, what: str, value: Optional[float],
            limit: float, kind: str) -> None:
        t: Dict[str, Any] = {'scenario': scen, 'image': image, 'target': what,
                             'value': value, 'limit': limit, 'kind': kind}
        if value is None:
            t['met'] = None
            t['text'] = 'not measured (a contender failed or was skipped)'
        elif kind == 'max':
            t['met'] = value <= limit
            pct = (value / limit - 1) * 100
            t['text'] = (f'{value:.3f} (≤ {limit:g}): met' if t['met'] else
                         f'{value:.3f} vs ≤ {limit:g}: missed by '
                         f'{pct:.{1 if pct < 10 else 0}f}%')
        else:
            t['met'] = value >= limit
            pct = (1 - value / limit) * 100
            t['text'] = (f'{value:.3f} (≥ {limit:g}): met' if t['met'] else
                         f'{value:.3f} vs ≥ {limit:g}: missed by '
                         f'{pct:.{1 if pct < 10 else 0}f}%')
        targets.append(t)

    for scen, data in sorted(main.items()):
        summ = data.get('summary', [])
        for image in dict.fromkeys(r['image'] for r in summ):
            new = row_of(summ, image, 'new')
            aria = row_of(summ, image, 'aria2c')
            stock = row_of(summ, image, 'stock')
            nbd = row_of(summ, image, 'nbdkit')
            nw = new.get('wall') if new else None
            aw = aria.get('wall') if aria else None
            if (scen, image) in (('S1', 'qcow2'), ('S2', 'qcow2')):
                add(scen, image, 'time / aria2c time',
                    nw / aw if nw and aw else None, 1.0, 'max')
            if (scen, image) == ('S1', 'qcow2c'):
                add(scen, image, 'time / aria2c time',
                    nw / aw if nw and aw else None, 1.1, 'max')
            if (scen, image) == ('S3', 'qcow2'):
                add(scen, image, 'throughput / aria2c throughput',
                    aw / nw if nw and aw else None, 0.9, 'min')
            pipe = row_of(summ, image, 'pipeline')
            pw = pipe.get('wall') if pipe else None
            if pipe is not None:
                add(scen, image, 'time / (aria2c download + convert) time',
                    nw / pw if nw and pw else None, 0.8, 'max')
            sw = stock.get('wall') if stock else None
            if stock is not None:
                add(scen, image, 'stock time / new time (speed-up)',
                    sw / nw if sw and nw else None, 3.0, 'min')
            bw = nbd.get('wall') if nbd else None
            if nbd is not None:
                add(scen, image, 'nbdkit time / new time (> 1: faster)',
                    bw / nw if bw and nw else None, 1.0, 'min')
            if new is not None:
                sb = new.get('server_bytes')
                add(scen, image, 'bytes served / bytes needed',
                    sb / new['needed_bytes'] if sb else None, 1.02, 'max')
    return targets


def fmt(v: Optional[float], spec: str = '.2f') -> str:
    return '—' if v is None else format(v, spec)


def main_table(scen: str, data: Dict[str, Any]) -> List[str]:
    lines = [
        '| image | contender | wall s | MB/s | × aria2c time | peak RSS MiB '
        '| CPU s | host CPU busy | server MB (× needed) | requests | conns '
        '| verified | notes |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|']
    for row in data['summary']:
        img = data['images'][row['image']]
        c = row['contender']
        name = f'{row["image"]} ({bl.human_size(img["size"])})'
        if row.get('computed'):
            lines.append(f'| {name} | *link limit* | {fmt(row["wall"])} | '
                         f'{fmt(row["throughput"] / 1e6, ".1f")} | '
                         f'{fmt(row["ratio_aria"])} | — | — | — | — | — | — '
                         f'| — | computed |')
            continue
        notes = []
        if row.get('runs', 1) > 1 or row.get('walls'):
            if row.get('runs', 1) > 1:
                notes.append('median of ' + ', '.join(
                    f'{w:.2f}' for w in row.get('walls', [])))
        tr = row.get('trace')
        tl = (tr or {}).get('timeline')
        if tl:
            notes.append(f'open at {tl["open_s"]} s, 1st read done at '
                         f'{tl.get("first_read_done_s")} s, 1st transfer '
                         f'at {tl["first_transfer_done_s"]} s, 16th at '
                         f'{tl["sixteenth_transfer_done_s"]} s, '
                         f'{tl.get("most_in_flight_by_0.5s")} in flight '
                         f'within 0.5 s of open, '
                         f'{tl["mean_transfers_in_flight"]} transfers in '
                         f'flight on average, fetching at '
                         f'{tl["fetch_rate_MBps"]} MB/s')
        if tr:
            notes.append(f'{tr.get("transfers", "?")} transfers, '
                         f'{tr.get("retries", 0)} retries, '
                         f'{tr.get("waits", "?")} waits, '
                         f'{tr.get("readahead_fetches", "?")} readahead '
                         f'fetches, {tr.get("readahead_unread", "?")} '
                         f'blocks dropped unread, reads waited '
                         f'{tr.get("read_wait_s", "?")} s in all')
        if row.get('errors'):
            notes.append('FAILED: ' + '; '.join(row['errors'])[:300])
        if row.get('ok_runs'):
            verified = 'yes' if row['ok_runs'] == row['runs'] else \
                f'{row["ok_runs"]}/{row["runs"]}'
        else:
            verified = ('**WRONG OUTPUT**' if row.get('wrong_output') else
                        'failed')
        sb = row.get('server_bytes')
        lines.append(
            f'| {name} | {c} | {fmt(row.get("wall"))} | '
            f'{fmt(row["throughput"] / 1e6 if row.get("throughput") else None, ".1f")}'
            f' | {fmt(row.get("ratio_aria"))} | '
            f'{fmt(row["maxrss_kb"] / 1024 if row.get("maxrss_kb") else None, ".0f")}'
            f' | {fmt(row.get("cpu"))} | '
            + (f'{row["host_busy"] * 100:.0f}%' if row.get('host_busy')
               is not None else '—') + ' | '
            + (f'{sb / 1e6:.1f} ({sb / row["needed_bytes"]:.3f})' if sb
               else '—')
            + f' | {fmt(row.get("requests"), ".0f")} | '
            f'{fmt(row.get("connections"), ".0f")} | {verified} | '
            f'{"; ".join(notes)} |')
    return lines


def section_note(section: Dict[str, Any], top: Dict[str, Any]) -> str:
    m = section.get('meta', {})
    if m and m.get('date') != top.get('date'):
        return (f'*(from the run of {m.get("date")}, '
                f'{m.get("mode")} mode, commit '
                f'{m.get("git", {}).get("commit", "")[:12]})*\n\n')
    return ''


def render(res: Dict[str, Any]) -> str:
    m = res['meta']
    g = m['git']
    out = ['# curl block driver benchmark', '',
           f'- date: {m["date"]}; mode: **{m["mode"]}** '
           f'(`tests/bench/run {" ".join(m["argv"])}`); '
           f'runtime {m.get("runtime_seconds", 0) / 60:.1f} min',
           f'- repository: {g["commit"][:12]} ({g["describe"]})'
           + (' + uncommitted changes' if g['dirty'] else ''),
           f'- QEMU base: {m["qemu_base"]}']
    for name, b in m['binaries'].items():
        out.append(f'- {name}: `{b["path"]}` built {b.get("mtime")} '
                   f'(sha256 {b.get("sha256")}…)')
    out.append(f'- machine: {m["machine"]["cpus"]} CPUs (shared), kernel '
               f'{m["machine"]["kernel"]}, load at start '
               f'{m["machine"]["load_at_start"][0]:.2f}')
    out.append('- tools: ' + '; '.join(f'{k}: {v}' for k, v in
                                       m['tools'].items()))
    out.append('- outputs written to ' + ('tmpfs' if m['outputs_on_tmpfs']
                                          else 'disk') +
               '; every run gets a fresh proxy; nginx (2 workers) serves '
               'HTTP/1.1 over TLS unless said otherwise')
    out.append('')
    out.append('## Images')
    out.append('')
    for prof, im in m['images'].items():
        f = im['files']
        out.append(
            f'- {prof} set: guest {bl.human_size(im["virtual"])} virtual, '
            f'{bl.human_size(im["allocated"])} allocated in scattered '
            f'extents; `disk.qcow2` {f["disk.qcow2"]["size"] / 1e6:.1f} MB '
            f'(64 KiB clusters), `disk-c.qcow2` '
            f'{f["disk-c.qcow2"]["size"] / 1e6:.1f} MB (compressed), '
            f'`appliance.tar` {f["appliance.tar"]["size"] / 1e6:.1f} MB '
            f'(raw member of {bl.human_size(im["tar"]["member_size"])} at '
            f'offset {im["tar"]["offset_data"]})')
    out.append('')
    pa = res.get('proxy')
    if pa and pa.get('error'):
        out += failed_section('Proxy accuracy', pa)
    elif pa:
        out += ['## Proxy accuracy in this run', '', section_note(pa, m) +
                '| scenario | RTT ms (expected) | TLS connect ms | one curl '
                'download MB/s (expected) |', '|---|---:|---:|---:|']
        for scen, r in pa['scenarios'].items():
            if 'error' in r:
                out.append(f'| {scen} | failed: {r["error"]} | | |')
                continue
            exp = r['download_expected_MBps']
            out.append(f'| {scen} | {r["rtt_ms"]:.1f} ({r["rtt_expected_ms"]})'
                       f' | {r["tls_connect_ms"]:.0f} | '
                       f'{r["download_MBps"]:.2f} '
                       f'({exp if exp else "unlimited"}) |')
        if pa.get('wanproxy_check'):
            out += ['', f'wanproxy-check: {pa["wanproxy_check"]["verdict"]}']
        out.append('')
    out += ['## Method', '',
            '- Each run starts a fresh `tests/bench/wanproxy --preset SN` in '
            'front of nginx (HTTPS, test CA, verified by every client), so '
            'no connection survives from one run to the next.',
            '- aria2c gets `-k1M` (min-split-size) besides `-x16 -s16`: '
            'with its default of 20M it opens only file size / 40M '
            'connections (8 for a 300 MB file), which would make it a weak '
            'reference.',
            '- Order: contenders rotate (and reverse every other turn) '
            'between images and repetitions.  In the full mode the cases '
            'with a target (S1 qcow2, S1 qcow2c, S2 qcow2, S3 qcow2) are '
            f'run {m.get("reps", 3)} times and the median is shown; curl '
            '(one stream) runs once, and a contender that took over 3× '
            'aria2c\'s time in the first repetition is not repeated.  The '
            'quick mode runs everything once and curl only on the qcow2.',
            '- A failure (exit code, timeout, wrong output) is reported in '
            'its row; a timeout counts as anything slower than 1.5 MB/s.',
            '- The new driver runs with `--trace` of its summary events '
            '(curl_close, curl_close_cache, curl_transfer_done...); the '
            'notes quote them.', '']
    main = res.get('main', {})
    if main:
        out += ['## Side by side', '',
                'Contenders: ' + '; '.join(f'**{k}**: {v}' for k, v in
                                           CONTENDER_DESC.items()) + '.',
                'Wall time includes starting the process (and nbdkit); '
                'MB/s = file bytes / wall time (for the tar, the whole tar); '
                'RSS and CPU are of the process tree (nbdkit: server + '
                'qemu-img, summed); server MB and requests from the nginx '
                'access log, conns = distinct TCP connections; "× needed" '
                'is relative to the bytes a reader needs (the file, or the '
                'tar member).  Converts are checked with qemu-img compare '
                'against the raw source (tar: sha256 of the member), '
                'downloads with the sha256 of the file.', '']
        for scen in sorted(main):
            data = main[scen]
            if data.get('error'):
                out += [f'### {scen}: {bl.SCENARIOS[scen][0]}', '',
                        f'**Failed:** {data["error"]}', '']
                continue
            out += [f'### {scen}: {bl.SCENARIOS[scen][0]}', '',
                    section_note(data, m) + '\n'.join(main_table(scen, data)),
                    '']
    targets = res.get('targets')
    if targets:
        out += ['## Targets', '', '| scenario | image | target | result |',
                '|---|---|---|---|']
        for t in targets:
            mark = {True: '✅', False: '❌', None: '—'}[t['met']]
            out.append(f'| {t["scenario"]} | {t["image"]} | {t["target"]} | '
                       f'{mark} {t["text"]} |')
        out.append('')
    out += render_extras(res, m)
    out += render_sweep(res, m)
    notes = res.get('observations')
    if notes:
        out += ['## Observations', ''] + [f'- {n}' for n in notes] + ['']
    return '\n'.join(out) + '\n'


def failed_section(title: str, section: Dict[str, Any]) -> List[str]:
    return [f'## {title}', '', f'**This part failed:** {section["error"]}',
            '']


def render_extras(res: Dict[str, Any], m: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    for key, title in (('http2', 'HTTP/2'), ('redirect', 'Redirect'),
                       ('random', 'Random reads')):
        if res.get(key, {}).get('error'):
            out += failed_section(title, res[key])
            res = {k: v for k, v in res.items() if k != key}
    h2 = res.get('http2')
    if h2 and 'sides' in h2:
        table = http2_tables(h2)
        out += ['## HTTP/2', '', section_note(h2, m) + table[0]] + \
            table[1:] + ['']
    elif h2:
        # (results of before the option http-version: defaults, nginx
        # with and without http2)
        out += ['## HTTP/2', '', section_note(h2, m) +
                f'New driver, defaults, {h2["image"]}; nginx with and '
                'without `http2` (negotiated with ALPN; libcurl prefers '
                'HTTP/2 over TLS when offered).', '',
                '| scenario | offered | wall s | MB/s | protocol seen | '
                'requests | TCP connections | verified | notes |',
                '|---|---|---:|---:|---|---:|---:|---|---|']
        for r in h2['runs']:
            out.append(
                f'| {r["scenario"]} | {r["offered"]} | {fmt(r.get("wall"))} | '
                f'{fmt(r.get("throughput", 0) / 1e6, ".1f")} | '
                f'{", ".join(r["server"]["protocols"])} | '
                f'{r["server"]["requests"]} | {r["server"]["connections"]} | '
                f'{"yes" if r["ok"] else "NO"} | {r["error"] or ""} |')
        out.append('')
    rd = res.get('redirect')
    if rd:
        out += ['## Redirect (302 in front of the file)', '',
                section_note(rd, m) +
                f'`/r/{rd["image"]}` answers 302 to the file, '
                f'{rd["scenario"]}.', '',
                '| driver | wall s | MB/s | requests | of which 302 | '
                'server MB | verified | notes |',
                '|---|---:|---:|---:|---:|---:|---|---|']
        for r in rd['runs']:
            st = r['server']['statuses']
            out.append(
                f'| {r["contender"]} | {fmt(r.get("wall"))} | '
                f'{fmt(r.get("throughput", 0) / 1e6, ".1f")} | '
                f'{r["server"]["requests"]} | {st.get("302", 0)} | '
                f'{r["server"]["bytes"] / 1e6:.1f} | '
                f'{"yes" if r["ok"] else "NO"} | {r["error"] or ""} |')
        out.append('')
    rr = res.get('random')
    if rr:
        out += ['## Random reads', '', section_note(rr, m) +
                f'qemu-io on the qcow2 (`{rr["image"]}`): {rr["reads"]} reads '
                f'of {" and of ".join(f"{n // KiB} KiB" for n in rr["lengths"])}'
                f' at random 4 KiB-aligned '
                f'offsets in the allocated data (seed {rr["seed"]}), '
                f'{rr["depth"]} `aio_read` then `aio_flush` (depth '
                f'{rr["depth"]}); cold = first pass, warm = the same reads '
                'again in the same process.  `qemu-img bench` has no random '
                'pattern, hence qemu-io.  Data spot-checked with `read -v` '
                'against the source.  × read: what the server sent over '
                'what the cold pass read.', '',
                '| scenario | read | driver | open s | cold s | cold reads/s '
                '| warm s | warm reads/s | requests | server MB | × read | '
                'peak RSS MiB | verified | notes |',
                '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|'
                '---|---|']
        for r in rr['runs']:
            n = r['reads']
            cold, warm = r.get('cold_seconds'), r.get('warm_seconds')
            tr = r.get('trace') or {}
            note = r['error'] or ''
            if tr.get('transfers') is not None:
                note = (f'{tr["transfers"]} transfers, {tr.get("hits")} '
                        f'hits, {tr.get("misses")} misses ' + note)
            length = r.get('length') or rr.get('length', 0)
            out.append(
                f'| {r["scenario"]} | {length // KiB} KiB | '
                f'{r["contender"]} | '
                f'{fmt(r.get("open_seconds"))} | {fmt(cold)} | '
                f'{fmt(n / cold if cold else None, ".0f")} | {fmt(warm)} | '
                f'{fmt(n / warm if warm else None, ".0f")} | '
                f'{r["server"]["requests"]} | '
                f'{r["server"]["bytes"] / 1e6:.1f} | '
                f'{fmt(r["server"]["bytes"] / (n * length) if length else None, ".1f")} | '
                f'{fmt(r["maxrss_kb"] / 1024 if r.get("maxrss_kb") else None, ".0f")}'
                f' | {"yes (" + str(r.get("spot_checked")) + " reads)" if r["ok"] else "NO"}'
                f' | {note} |')
        out.append('')
    return out


def http2_summary(h2: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per scenario and side of the HTTP/2 part: the medians of the
    verified runs, and the time of each side over the first's."""
    rows: List[Dict[str, Any]] = []
    for scen in h2['scenarios']:
        base: Optional[float] = None
        for side in h2['sides']:
            rs = [r for r in h2['runs']
                  if r['scenario'] == scen and r['contender'] == side]
            good = [r for r in rs if r['ok']]
            row: Dict[str, Any] = {'scenario': scen, 'side': side,
                                   'runs': len(rs), 'ok_runs': len(good),
                                   'errors': sorted({str(r['error'])
                                                     for r in rs
                                                     if not r['ok']})}
            if good:
                def med(key: str) -> Optional[float]:
                    vals = [r[key] for r in good if r.get(key) is not None]
                    return statistics.median(vals) if vals else None

                def med_srv(key: str) -> float:
                    return statistics.median(r['server'][key] for r in good)
                row.update(
                    wall=med('wall'), walls=[r['wall'] for r in good],
                    throughput=good[0]['file_bytes'] / med('wall'),
                    cpu=med('cpu'), maxrss_kb=med('maxrss_kb'),
                    host_busy=med('host_busy'),
                    server_bytes=med_srv('bytes'),
                    requests=med_srv('requests'),
                    connections=med_srv('connections'),
                    protocols=sorted({p for r in good
                                      for p in r['server']['protocols']}),
                    load=[x for r in good for x in
                          (r.get('load_start'), r.get('load_end'))
                          if x is not None])
                if base is None:
                    base = row['wall']
                row['ratio'] = row['wall'] / base
            rows.append(row)
    return rows


def http2_tables(h2: Dict[str, Any]) -> List[str]:
    """The HTTP/2 part: medians and ratios, then every run."""
    sides = h2['sides']
    desc = {**CONTENDER_DESC, **VARIANT_DESC,
            'new': 'new driver, defaults: HTTP/1.1, a connection per '
                   'transfer'}
    out = [f'New driver, {h2["image"]}, from nginx with `http2` on (ALPN): '
           f'{" against ".join(f"`{s}` ({desc[s]})" for s in sides)}'
           f', side by side, median of {h2["reps"]}; × = wall time over '
           f'`{sides[0]}`\'s.  {bl.DIRECT}: straight to nginx, without the '
           'proxy.', '',
           '| scenario | side | wall s | × | MB/s | CPU s | peak RSS MiB | '
           'host CPU busy | load (1 min) | server MB | requests | '
           'TCP connections | protocol seen | verified | notes |',
           '|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|'
           '---|---|']
    for row in http2_summary(h2):
        notes = []
        if row.get('walls') and len(row['walls']) > 1:
            notes.append('median of ' + ', '.join(
                f'{w:.2f}' for w in row['walls']))
        if row['errors']:
            notes.append('FAILED: ' + '; '.join(row['errors'])[:300])
        load = row.get('load') or []
        out.append(
            f'| {row["scenario"]} | {row["side"]} | {fmt(row.get("wall"))} '
            f'| {fmt(row.get("ratio"))} | '
            f'{fmt(row["throughput"] / 1e6 if row.get("throughput") else None, ".1f")}'
            f' | {fmt(row.get("cpu"))} | '
            f'{fmt(row["maxrss_kb"] / 1024 if row.get("maxrss_kb") else None, ".0f")}'
            ' | ' + (f'{row["host_busy"] * 100:.0f}%' if
                     row.get('host_busy') is not None else '—') + ' | ' +
            (f'{min(load):.2f}–{max(load):.2f}' if load else '—') + ' | ' +
            (f'{row["server_bytes"] / 1e6:.1f}' if row.get('server_bytes')
             else '—') +
            f' | {fmt(row.get("requests"), ".0f")} | '
            f'{fmt(row.get("connections"), ".0f")} | '
            f'{", ".join(row.get("protocols", []))} | '
            f'{row["ok_runs"]}/{row["runs"]} | {"; ".join(notes)} |')
    return out


def render_sweep(res: Dict[str, Any], m: Dict[str, Any]) -> List[str]:
    sw = res.get('sweep')
    if not sw:
        return []
    if sw.get('error'):
        return failed_section('Sweep of the driver options', sw)
    out = ['## Sweep of the driver options', '', section_note(sw, m) +
           f'New driver, `qemu-img convert -O raw`, scenarios '
           f'{", ".join(sw["scenarios"])}, images '
           + ', '.join(f'{k} ({bl.human_size(v)})'
                       for k, v in sw['image_sizes'].items()) +
           f' (the quick set, so that a run takes seconds).  '
           f'{sw["grid_points"]} settings in {sw["scenarios"][0]}'
           + ('; the best three and the default measured twice more '
              '(median)' if any(s.get('confirm') for s in sw['stages'])
              else '') +
           (f'; a reduced set in {", ".join(sw["scenarios"][1:])} (the best '
            f'of {sw["scenarios"][0]}, the default and a few others)'
            if len(sw['scenarios']) > 1 else '') +
           '.  Memory = blocksize × blockcount.  Score = mean over '
           '(scenario, image) of throughput / best throughput there.', '',
           '![sweep](sweep.png)', '']
    rec = sw.get('recommendation')
    if rec:
        out += [f'**Recommended (memory ≤ 64 MiB): {rec["label"]}** — '
                f'`blocksize={bl.size_opt(rec["point"]["blocksize"])},'
                f'blockcount={rec["point"]["blockcount"]},'
                f'connections={rec["point"]["connections"]},'
                f'readahead={bl.size_opt(rec["point"]["readahead"])}`, '
                f'score {rec["score"]:.3f}.', '']
        default = next((r for r in sw['ranking_all'] if r['is_default']),
                       None)
        noise = sw.get('noise')
        if noise is not None:
            close = [r for r in sw['ranking_all']
                     if r['score'] is not None and r['memory'] <= 64 * MiB
                     and r['score'] >= rec['score'] * (1 - noise)]
            text = (f'Noise: a setting measured several times varied by '
                    f'{noise * 100:.1f}% (median of (max - min) / median); '
                    f'{len(close)} settings with memory ≤ 64 MiB score '
                    f'within that of the best')
            if default and default['score'] is not None:
                text += (f', and the default scores {default["score"]:.3f}'
                         + (' (within the noise: not distinguishable)'
                            if default['score'] >= rec['score'] * (1 - noise)
                            else ''))
            out += [text + '.', '']
    combos = [f'{s}/{k}' for s in sw['scenarios'] for k in sw['images']]
    out += ['| setting | memory | ' + ' | '.join(f'{c} MB/s' for c in combos)
            + ' | score |', '|---|---:|' + '---:|' * len(combos) + '---:|']
    ranking = sw['ranking_all']
    shown = [r for r in ranking if r['score'] is not None][:10]
    shown += [r for r in ranking if r['is_default'] and r not in shown]
    if not [r for r in ranking if r['score'] is not None]:
        shown = ranking[:10]
    for r in shown:
        label = r['label'] + (' **(default)**' if r['is_default'] else '')
        out.append(f'| {label} | {bl.human_size(r["memory"])} | ' +
                   ' | '.join(('≤ ' if c in r.get('timed_out', []) else '') +
                              fmt(r['throughput'].get(c, 0) / 1e6 if
                                  r['throughput'].get(c) else None, '.1f') +
                              (f' (×{r["runs"][c]})'
                               if r.get('runs', {}).get(c, 1) > 1 else '')
                              for c in combos) +
                   f' | {fmt(r["score"], ".3f")} |')
    out.append('')
    first = sw['scenarios'][0]
    rf = [r for r in sw['ranking_first'] if r['score'] is not None]
    if len(sw['scenarios']) > 1 and rf:
        out += [f'Best in {first} alone, all memory sizes '
                f'({min(10, len(rf))} best of {len(rf)} settings):', '',
                '| setting | memory | ' + ' | '.join(
                    f'{first}/{k} MB/s' for k in sw['images']) + ' | score |',
                '|---|---:|' + '---:|' * len(sw['images']) + '---:|']
        for r in rf[:10]:
            out.append(f'| {r["label"]} | {bl.human_size(r["memory"])} | ' +
                       ' | '.join(fmt(r['throughput'].get(f'{first}/{k}', 0)
                                      / 1e6, '.1f') for k in sw['images']) +
                       f' | {r["score"]:.3f} |')
        out.append('')
    fails = [r for r in sw['runs'] if not r['ok']]
    if fails:
        out.append(f'{len(fails)} sweep runs failed: ' + '; '.join(
            f'{point_label(r["point"])} {r["scenario"]}/{r["image"]}: '
            f'{r["error"]}' for r in fails[:10]))
        out.append('')
    return out


def observations(res: Dict[str, Any]) -> List[str]:
    """Things worth a look, found in the numbers."""
    notes = []
    for scen, data in sorted(res.get('main', {}).items()):
        if data.get('error'):
            notes.append(f'{scen}: the main comparison failed: '
                         f'{data["error"]}')
        for r in data.get('runs', []):
            if r['verified'] is False:
                notes.append(f'{scen} {r["image"]} {r["contender"]}: WRONG '
                             f'OUTPUT ({r.get("verify_method")})')
            elif not r['ok']:
                notes.append(f'{scen} {r["image"]} {r["contender"]} failed: '
                             f'{r["error"]}')
            tr = r.get('trace') or {}
            if tr.get('retries') or tr.get('failed_fetches'):
                notes.append(f'{scen} {r["image"]} new driver: '
                             f'{tr.get("retries")} retries, '
                             f'{tr.get("failed_fetches")} failed fetches')
            if r['contender'] == 'new' and tr.get('fetched') and \
                    tr.get('served') is not None and \
                    tr['fetched'] > 1.02 * (r['file_bytes']):
                notes.append(f'{scen} {r["image"]} new driver fetched '
                             f'{tr["fetched"] / 1e6:.1f} MB for a '
                             f'{r["file_bytes"] / 1e6:.1f} MB file')
    for sec in ('http2', 'redirect'):
        for r in (res.get(sec) or {}).get('runs', []):
            if not r['ok']:
                notes.append(f'{sec}: {r["contender"]} failed: {r["error"]}')
    for r in (res.get('random') or {}).get('runs', []):
        if not r['ok']:
            notes.append(f'random reads {r["scenario"]} {r["contender"]} '
                         f'failed: {r["error"]}')
    sw = res.get('sweep') or {}
    nfail = len([r for r in sw.get('runs', []) if not r['ok']])
    if nfail:
        notes.append(f'sweep: {nfail} runs failed')
    counted: Dict[str, int] = {}
    for n in notes:
        counted[n] = counted.get(n, 0) + 1
    return [n + (f' ({k} runs)' if k > 1 else '') for n, k in
            counted.items()]


def print_tables(res: Dict[str, Any]) -> None:
    for scen, data in sorted(res.get('main', {}).items()):
        print(f'\n{scen}: {bl.SCENARIOS[scen][0]}')
        if data.get('error'):
            print(f'  FAILED: {data["error"]}')
            continue
        rows = [('image', 'contender', 'wall s', 'MB/s', 'x aria2c',
                 'RSS MiB', 'CPU s', 'host%', 'srv MB', 'reqs', 'conns',
                 'ok')]
        for r in data['summary']:
            if r.get('computed'):
                rows.append((r['image'], 'link', f'{r["wall"]:.2f}',
                             f'{r["throughput"] / 1e6:.1f}',
                             fmt(r['ratio_aria']), '', '', '', '', '', '',
                             ''))
                continue
            rows.append((
                r['image'], r['contender'], fmt(r.get('wall')),
                fmt(r['throughput'] / 1e6 if r.get('throughput') else None,
                    '.1f'), fmt(r.get('ratio_aria')),
                fmt(r['maxrss_kb'] / 1024 if r.get('maxrss_kb') else None,
                    '.0f'), fmt(r.get('cpu')),
                fmt(r['host_busy'] * 100 if r.get('host_busy') is not None
                    else None, '.0f'),
                fmt(r['server_bytes'] / 1e6 if r.get('server_bytes')
                    else None, '.1f'),
                fmt(r.get('requests'), '.0f'), fmt(r.get('connections'),
                                                   '.0f'),
                'yes' if r.get('ok_runs') == r.get('runs') else
                ('WRONG' if r.get('wrong_output') else 'FAILED')))
        widths = [max(len(str(row[i])) for row in rows)
                  for i in range(len(rows[0]))]
        for row in rows:
            print('  ' + '  '.join(str(c).rjust(w) if i >= 2 else
                                   str(c).ljust(w)
                                   for i, (c, w) in enumerate(zip(row,
                                                                  widths))))
    for t in res.get('targets', []):
        mark = {True: 'met   ', False: 'MISSED', None: '  -   '}[t['met']]
        print(f'  {mark} {t["scenario"]} {t["image"]}: {t["target"]}: '
              f'{t["text"]}')
    rec = (res.get('sweep') or {}).get('recommendation')
    if rec:
        print(f'\nsweep recommendation (memory <= 64 MiB): {rec["label"]} '
              f'(score {rec["score"]:.3f})')


# ---------------------------------------------------------------------------
# The plot of the sweep
# ---------------------------------------------------------------------------

def plot_sweep(data: Dict[str, Any], png: Path, pdir: Path,
               log_base: Path) -> Optional[str]:
    """throughput vs blocksize, one panel per (scenario, image).

    @data is the sweep's section of the results; gnuplot's script and
    data files go to @pdir (made anew), its output to @log_base.out/.err.
    Returns why there is no plot, or None.
    """
    if not shutil.which('gnuplot'):
        return 'gnuplot not installed'
    shutil.rmtree(pdir, ignore_errors=True)
    pdir.mkdir(parents=True)
    combos = [(s, k) for s in data['scenarios'] for k in data['images']]
    # Median throughput per (point, combo)
    vals: Dict[Tuple[Any, ...], List[float]] = {}
    points: Dict[Tuple[int, ...], Dict[str, int]] = {}
    bounds: Dict[Tuple[str, str], List[Tuple[int, float]]] = {}
    for r in data['runs']:
        k = point_key(r['point'])
        if r['ok']:
            points[k] = r['point']
            vals.setdefault(k + (r['scenario'], r['image']), []).append(
                r['throughput'] / 1e6)
        elif r.get('timed_out'):
            bounds.setdefault((r['scenario'], r['image']), []).append(
                (r['point']['blocksize'] // KiB,
                 r['file_bytes'] / r['timeout'] / 1e6))
    colors = {4: '#999999', 8: '#1f77b4', 16: '#d62728', 32: '#2ca02c',
              64: '#9467bd'}
    ra_dash = {'16M': 1, '32M': 2, '48M': 5, 'max': 3, 'other': 4}
    cmds = [f'set terminal pngcairo size 1600,{560 * ((len(combos) + 1) // 2)}'
            ' font "sans,10"', f'set output "{png}"',
            f'set multiplot layout {(len(combos) + 1) // 2},2 title '
            '"New curl driver, qemu-img convert: throughput vs blocksize\\n'
            'lines: best blockcount with cache (blocksize x blockcount) '
            '<= 64 MiB, per connections and readahead (max = whole cache '
            'but one block); open circles: cache > 64 MiB; x: timed out '
            '(upper bound); star: default"',
            'set logscale x 2', 'set xlabel "blocksize"',
            'set xtics ("64K" 64, "128K" 128, "256K" 256, "512K" 512, '
            '"1M" 1024, "2M" 2048, "4M" 4096, "8M" 8192, "16M" 16384)',
            'set xrange [45:11600]',
            'set ylabel "MB/s"', 'set grid',
            'set key outside right top font ",9" spacing 0.9',
            'set yrange [0:*]']
    for scen, key in combos:
        series: Dict[Tuple[int, str], Dict[int, float]] = {}
        over: List[Tuple[int, float, int]] = []
        default = None
        for pk, p in points.items():
            v = vals.get(pk + (scen, key))
            if not v:
                continue
            thr = statistics.median(v)
            mem = p['blocksize'] * p['blockcount']
            room = (p['blockcount'] - 1) * p['blocksize']
            ra = ('max' if p['readahead'] == room else
                  bl.size_opt(p['readahead'])
                  if p['readahead'] in (16 * MiB, 32 * MiB, 48 * MiB)
                  else 'other')
            if pk == point_key(DEFAULT_POINT):
                default = (p['blocksize'] // KiB, thr)
            if mem > 64 * MiB:
                over.append((p['blocksize'] // KiB, thr, p['connections']))
                continue
            s = series.setdefault((p['connections'], ra), {})
            s[p['blocksize'] // KiB] = max(s.get(p['blocksize'] // KiB, 0),
                                           thr)
        plots = []
        for (conns, ra), pts in sorted(series.items()):
            f = pdir / f'{scen}-{key}-{conns}-{ra}.dat'
            f.write_text(''.join(f'{x} {y:.3f}\n' for x, y in sorted(
                pts.items())))
            plots.append(f'"{f}" using 1:2 with linespoints lw 2 pt 7 ps 1 '
                         f'dt {ra_dash[ra]} lc rgb "{colors.get(conns, "#000")}"'
                         f' title "conns {conns}, ra {ra}"')
        for conns in sorted({c for _, _, c in over}):
            f = pdir / f'{scen}-{key}-over-{conns}.dat'
            f.write_text(''.join(f'{x} {y:.3f}\n' for x, y, c in over
                                 if c == conns))
            plots.append(f'"{f}" using 1:2 with points pt 6 ps 1.5 lc rgb '
                         f'"{colors.get(conns, "#000")}" title "conns {conns},'
                         f' cache > 64 MiB"')
        if bounds.get((scen, key)):
            f = pdir / f'{scen}-{key}-timedout.dat'
            f.write_text(''.join(f'{x} {y:.3f}\n'
                                 for x, y in bounds[(scen, key)]))
            plots.append(f'"{f}" using 1:2 with points pt 2 ps 1.5 lc rgb '
                         '"#444444" title "timed out (<=)"')
        if default:
            f = pdir / f'{scen}-{key}-default.dat'
            f.write_text(f'{default[0]} {default[1]:.3f}\n')
            plots.append(f'"{f}" using 1:2 with points pt 3 ps 3 lw 2 lc '
                         f'rgb "black" title "default '
                         f'({point_label(DEFAULT_POINT)})"')
        link = bl.SCENARIOS[scen][3]
        title = (f'{scen} {bl.SCENARIOS[scen][0].split(":")[0]}, '
                 f'{bl.IMAGE_DESC[key]} '
                 f'({bl.human_size(data["image_sizes"][key])})')
        cmds.append(f'set title "{title}"')
        cmds.append(f'set yrange [0:{link / 1e6 * 1.15:.1f}]' if link
                    else 'set yrange [0:*]')
        if link:
            plots.append(f'{link / 1e6} with lines lc rgb "#777777" dt 2 '
                         'title "link limit"')
        if not plots:
            plots = ['NaN notitle']
        cmds.append('plot ' + ', \\\n  '.join(plots))
    cmds.append('unset multiplot')
    script = pdir / 'sweep.gp'
    script.write_text('\n'.join(cmds) + '\n')
    res = bl.run_measured(['gnuplot', script], 120, log_base)
    if not res.ok:
        return f'gnuplot failed: {res.why()}'
    return None


# ---------------------------------------------------------------------------
# results.md
# ---------------------------------------------------------------------------

def write_md(res: Dict[str, Any], docs: Path,
             guest_json: Optional[Path] = None) -> None:
    """Write @docs/results.md: :func:`render` of @res, and the section of
    the guest boots from @guest_json (default @docs/guest.json), if
    there is one."""
    (docs / 'results.md').write_text(render(res))
    # The guest boots have their own file (tests/bench/guest.py)
    bench_guest.update_results_md(docs, guest_json)


def main() -> int:
    p = argparse.ArgumentParser(
        prog='tests/bench/report.py', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('results', nargs='?', default=str(DOCS / 'results.json'),
                   help='the results.json of a run (default: '
                   'tests/bench/results/results.json)')
    p.add_argument('--out', help='where results.md (and sweep.png) go '
                   '(default: the directory of RESULTS)')
    p.add_argument('--guest', help='the guest.json whose section goes into '
                   'results.md (default: the one next to RESULTS)')
    p.add_argument('--no-guest', action='store_true',
                   help='no section of the guest boots')
    p.add_argument('--plot', action='store_true',
                   help='draw sweep.png again too (needs gnuplot)')
    p.add_argument('--tables', action='store_true',
                   help='print the summary tables as tests/bench/run does')
    args = p.parse_args()
    src = Path(args.results)
    try:
        res = json.loads(src.read_text())
    except (OSError, ValueError) as err:
        p.error(f'{src}: {err}')
    out = Path(args.out) if args.out else src.parent
    out.mkdir(parents=True, exist_ok=True)
    if args.no_guest:
        (out / 'results.md').write_text(render(res))
    else:
        write_md(res, out, Path(args.guest) if args.guest else
                 src.parent / 'guest.json')
    print(out / 'results.md')
    rc = 0
    sw = res.get('sweep')
    if args.plot and sw and not sw.get('error'):
        with tempfile.TemporaryDirectory(prefix='qcurl-plot-') as tmp:
            err = plot_sweep(sw, out / 'sweep.png', Path(tmp) / 'plot',
                             Path(tmp) / 'gnuplot')
        if err:
            print(f'report: no plot: {err}', file=sys.stderr)
            rc = 1
        else:
            print(out / 'sweep.png')
    if args.tables:
        print_tables(res)
    return rc


if __name__ == '__main__':
    sys.exit(main())
