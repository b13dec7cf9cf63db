# SPDX-License-Identifier: GPL-2.0-or-later
"""The sweep of the new driver's options, and its analysis.

Part "sweep" of tests/bench/run (alone: tests/bench/run --sweep).

* :data:`DEFAULT_POINT` -- the driver's defaults as a setting.
* :func:`point_key`, :func:`point_opts`, :func:`point_label` -- a setting
  as a key, as driver options, as text.
* :func:`sweep_grid` -- the settings to try (the full grid, or a handful
  with --quick).
* :func:`sweep` -- runs them in the first scenario (the best few again in
  the full mode), a reduced set in the others, and recommends the best
  setting whose cache is at most 64 MiB.
* :func:`score_points` -- the analysis: median throughput per setting
  and (scenario, image), and a score.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any, Dict, List, Tuple

import benchlib as bl
from benchlib import KiB, MiB, log
from contenders import Ctx, run_one

DEFAULT_POINT = {'blocksize': 64 * KiB, 'blockcount': 896, 'connections': 16,
                 'readahead': 48 * MiB}


def point_key(p: Dict[str, int]) -> Tuple[int, int, int, int]:
    return (p['blocksize'], p['blockcount'], p['connections'],
            p['readahead'])


def point_opts(p: Dict[str, int]) -> Dict[str, str]:
    return {'blocksize': bl.size_opt(p['blocksize']),
            'blockcount': str(p['blockcount']),
            'connections': str(p['connections']),
            # (the window itself: 'readahead' only makes it larger)
            'x-readahead-window': bl.size_opt(p['readahead'])}


def point_label(p: Dict[str, int]) -> str:
    return (f'bs {bl.size_opt(p["blocksize"])} x {p["blockcount"]} '
            f'(= {bl.size_opt(p["blocksize"] * p["blockcount"])}), '
            f'conns {p["connections"]}, ra {bl.size_opt(p["readahead"])}')


def sweep_grid(quick: bool) -> List[Dict[str, int]]:
    """The settings to try.

    Full: blocksize 64K-2M x cache 32M/64M x connections 8/16/32 x
    readahead 16M and 32M (at most the room: (blockcount - 1) x
    blocksize), and the whole room for the 64M cache.  Quick: a handful
    around the default.  (Since reads wait only for their own bytes and
    fetches no longer follow blocks, blocks larger than 2M only cost the
    cache places.)
    """
    points = []

    def add(bs: int, bc: int, conns: int, ra: int) -> None:
        points.append({'blocksize': bs, 'blockcount': bc,
                       'connections': conns, 'readahead': ra})

    if quick:
        for bs, conns in ((64 * KiB, 16), (256 * KiB, 16), (2 * MiB, 16),
                          (256 * KiB, 8), (256 * KiB, 32)):
            add(bs, 64 * MiB // bs, conns, 32 * MiB)
        add(256 * KiB, 256, 16, 255 * 256 * KiB)  # readahead = the room
    else:
        for bs in (64 * KiB, 256 * KiB, 1 * MiB, 2 * MiB):
            for mem in (32 * MiB, 64 * MiB):
                bc = mem // bs
                room = (bc - 1) * bs
                ras = {min(16 * MiB, room), min(32 * MiB, room)}
                if mem == 64 * MiB:
                    ras.add(room)
                for conns in (8, 16, 32):
                    for ra in sorted(ras):
                        add(bs, bc, conns, ra)
    if point_key(DEFAULT_POINT) not in {point_key(p) for p in points}:
        points.append(dict(DEFAULT_POINT))
    return points


def score_points(runs: List[Dict[str, Any]], combos: List[Tuple[str, str]]
                 ) -> List[Dict[str, Any]]:
    """Per point: median throughput per (scenario, image) and a score:
    the mean over @combos of throughput / best throughput of that combo
    (points missing a combo get no score)."""
    table: Dict[Tuple[int, ...], Dict[Tuple[str, str], List[float]]] = {}
    points: Dict[Tuple[int, ...], Dict[str, int]] = {}
    failures: Dict[Tuple[int, ...], int] = {}
    for r in runs:
        k = point_key(r['point'])
        points[k] = r['point']
        if r['ok']:
            thr = r['throughput']
        elif r.get('timed_out'):
            # At most this fast: it did not finish in time
            thr = r['file_bytes'] / r['timeout']
        else:
            failures[k] = failures.get(k, 0) + 1
            continue
        table.setdefault(k, {}).setdefault(
            (r['scenario'], r['image']), []).append(thr)
    best: Dict[Tuple[str, str], float] = {}
    for per in table.values():
        for combo, vals in per.items():
            best[combo] = max(best.get(combo, 0), statistics.median(vals))
    ranked = []
    for k, p in points.items():
        per = table.get(k, {})
        thr = {f'{s}/{i}': statistics.median(v) for (s, i), v in per.items()}
        counts = {f'{s}/{i}': len(v) for (s, i), v in per.items()}
        spreads = [(max(v) - min(v)) / statistics.median(v)
                   for v in per.values() if len(v) > 1]
        have = [c for c in combos if c in per]
        score = None
        if have and len(have) == len(combos) and not failures.get(k):
            score = statistics.mean(statistics.median(per[c]) / best[c]
                                    for c in combos)
        slow = sorted({f'{r["scenario"]}/{r["image"]}' for r in runs
                       if point_key(r['point']) == k and r.get('timed_out')})
        ranked.append({'point': p, 'label': point_label(p),
                       'timed_out': slow, 'runs': counts,
                       'spreads': spreads,
                       'memory': p['blocksize'] * p['blockcount'],
                       'throughput': thr, 'score': score,
                       'failures': failures.get(k, 0),
                       'is_default': k == point_key(DEFAULT_POINT)})
    ranked.sort(key=lambda x: -(x['score'] or -1))
    return ranked


def sweep_run(ctx: Ctx, nginx: bl.BenchNginx, images: Dict[str, bl.Image],
              scenario: str, points: List[Dict[str, int]], keys: List[str],
              runs: List[Dict[str, Any]], tag: str = '') -> None:
    """Run @points on images @keys in @scenario (shuffled, seeded)."""
    jobs = [(p, k) for p in points for k in keys]
    random.Random(len(runs) + len(jobs)).shuffle(jobs)
    rate = bl.SCENARIOS[scenario][3] or 100e6
    for n, (p, key) in enumerate(jobs):
        # A setting slower than a fraction of the link is a bad one: do
        # not wait for it to finish
        link_time = images[key].size / rate
        timeout = max(30.0, 5 * link_time) if ctx.quick else \
            max(60.0, 8 * link_time)
        rec = run_one(ctx, nginx, scenario, images[key], 'new',
                      tag=f'-sweep{tag}{n}', opts=point_opts(p),
                      timeout=timeout)
        rec['point'] = p
        runs.append(rec)


def sweep(ctx: Ctx, nginx: bl.BenchNginx, images: Dict[str, bl.Image],
          scenarios: List[str]) -> Dict[str, Any]:
    keys = [k for k in ('qcow2', 'qcow2c') if k in ctx.args.images] or \
        ['qcow2']
    grid = sweep_grid(ctx.quick)
    runs: List[Dict[str, Any]] = []
    stages = []
    first = scenarios[0]
    t0 = time.monotonic()
    log(f'sweep: {len(grid)} settings x {len(keys)} images in {first}')
    sweep_run(ctx, nginx, images, first, grid, keys, runs)
    stages.append({'scenario': first, 'points': len(grid),
                   'seconds': time.monotonic() - t0})
    ranked = score_points(runs, [(first, k) for k in keys])
    within = [r for r in ranked if r['score'] is not None and
              r['memory'] <= 64 * MiB]
    if not ctx.quick and within:
        # Measure the best few (and the default) twice more: one run each
        # is noisy on a shared machine
        again = [r['point'] for r in within[:3]]
        if point_key(DEFAULT_POINT) not in {point_key(p) for p in again}:
            again.append(dict(DEFAULT_POINT))
        t0 = time.monotonic()
        log(f'sweep: confirming {len(again)} settings in {first}')
        for i in range(2):
            sweep_run(ctx, nginx, images, first, again, keys, runs,
                      tag=f'c{i}-')
        stages.append({'scenario': first, 'confirm': len(again),
                       'seconds': time.monotonic() - t0})
        ranked = score_points(runs, [(first, k) for k in keys])
        within = [r for r in ranked if r['score'] is not None and
                  r['memory'] <= 64 * MiB]
    for scen in scenarios[1:]:
        # A reduced grid elsewhere: the best settings of the first
        # scenario, the default, and the best one above 64 MiB
        pick = [r['point'] for r in within[:2 if ctx.quick else 6]]
        above = [r for r in ranked if r['score'] is not None and
                 r['memory'] > 64 * MiB]
        if above and not ctx.quick:
            pick.append(above[0]['point'])
        if not ctx.quick:
            for extra in ({'blocksize': 1 * MiB, 'blockcount': 64,
                           'connections': 8, 'readahead': 32 * MiB},
                          {'blocksize': 4 * MiB, 'blockcount': 16,
                           'connections': 8, 'readahead': 32 * MiB}):
                pick.append(extra)
        if point_key(DEFAULT_POINT) not in {point_key(p) for p in pick}:
            pick.append(dict(DEFAULT_POINT))
        pick = list({point_key(p): p for p in pick}.values())
        t0 = time.monotonic()
        log(f'sweep: {len(pick)} settings x {len(keys)} images in {scen}')
        sweep_run(ctx, nginx, images, scen, pick, keys, runs)
        stages.append({'scenario': scen, 'points': len(pick),
                       'seconds': time.monotonic() - t0})
    combos_all = [(s, k) for s in scenarios for k in keys]
    ranked_all = score_points(runs, combos_all)
    ranked_first = score_points(runs, [(first, k) for k in keys])
    best = next((r for r in ranked_all if r['score'] is not None and
                 r['memory'] <= 64 * MiB), None)
    spreads = [x for r in ranked_all for x in r['spreads']]
    noise = statistics.median(spreads) if spreads else None
    return {'scenarios': scenarios, 'images': keys, 'noise': noise,
            'image_sizes': {k: images[k].size for k in keys},
            'grid_points': len(grid), 'stages': stages, 'runs': runs,
            'ranking_all': ranked_all, 'ranking_first': ranked_first,
            'recommendation': best}
