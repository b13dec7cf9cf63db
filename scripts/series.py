#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Write the overlay as a patch series against the QEMU base tree
#
# Copyright (C) 2026 The QEMU curl series authors
"""Turn the overlay into a git-am-able patch series.

    scripts/series.py [--build BUILD] [--out DIR]

patches/NNNN-*.txt say what each patch carries: "Files:" header lines
(overlay paths: plain files, and FILE.patch for a file QEMU owns),
"Maintainers: yes" when the patch adds the lines of MAINTAINERS.patch that
concern the files there are so far, then a blank line and the commit
message.  patches/0000-cover-letter.txt is the
cover letter, its @BENCH@ replaced by the benchmark table of
tests/bench/results/results.md.

The patches are made as commits in a git repository of the base tree
(BUILD/series-git), written with git format-patch under DIR
(BUILD/series), then checked: every overlay file is in exactly one patch,
the last commit's tree is the overlay build's tree (BUILD/src), git am
applies the series onto the base, and QEMU's
checkpatch passes every patch with no error and no warning.  Exits 1 if a
check fails.

MAINTAINERS.patch changes QEMU's CURL section, so that a patch adding a
file of the driver would leave checkpatch asking whether MAINTAINERS needs
updating until the patch that carries MAINTAINERS.patch.  A step with
"Maintainers: yes" puts that section in early, without the F: lines that
match no file yet; the step that carries MAINTAINERS.patch completes it.
"""

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

TOP = Path(__file__).resolve().parent.parent
PATCHES = TOP / 'patches'
PYTHON = '/usr/bin/python3'
#: A fixed date, so that the same tree gives the same patches
DATE = '2026-12-03T00:00:00+00:00'
MAINTAINERS_PATCH = 'MAINTAINERS.patch'


class SeriesError(Exception):
    pass


def run(args: List[str], cwd: Path, env: Dict[str, str] = None,
        check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and result.returncode != 0:
        raise SeriesError(f'{" ".join(args)} (in {cwd}) failed:\n'
                          f'{result.stdout}')
    return result


def overlay_files() -> List[str]:
    """What scripts/overlay.sh lays over the base, as overlay paths."""
    out = run([str(TOP / 'scripts' / 'overlay.sh'), '--list', str(TOP)],
              TOP).stdout
    return sorted(out.splitlines())


def read_step(path: Path) -> Tuple[List[str], bool, str]:
    """The files, the MAINTAINERS flag and the message of a step file."""
    files: List[str] = []
    maintainers = False
    lines = path.read_text().splitlines()
    while lines and lines[0].strip():
        key, _, value = lines.pop(0).partition(':')
        if key == 'Files':
            files += value.split()
        elif key == 'Maintainers':
            maintainers = value.strip() == 'yes'
        else:
            raise SeriesError(f'{path.name}: unknown header {key!r}')
    message = '\n'.join(lines).strip() + '\n'
    if not files or not message.strip():
        raise SeriesError(f'{path.name}: no files or no message')
    return files, maintainers, message


def curl_lines(lines: List[str]) -> Tuple[int, int]:
    """Where the CURL section of a MAINTAINERS file's @lines starts and
    ends (the blank line after it)."""
    if 'CURL' not in lines:
        raise SeriesError('a MAINTAINERS file without a CURL section')
    start = lines.index('CURL')
    end = start
    while end < len(lines) and lines[end].strip():
        end += 1
    return start, end


def curl_section(base: Path) -> List[str]:
    """The CURL section of MAINTAINERS once MAINTAINERS.patch is applied
    to the base tree @base's."""
    patched = run(['patch', '-F0', '-s', '-o', '-',
                   str(base / 'MAINTAINERS'), str(TOP / MAINTAINERS_PATCH)],
                  TOP).stdout
    lines = patched.splitlines()
    start, end = curl_lines(lines)
    return lines[start:end]


def update_maintainers(repo: Path, section: List[str]) -> None:
    """Put the CURL @section into @repo's MAINTAINERS, with the F: lines
    that match a file of @repo."""
    path = repo / 'MAINTAINERS'
    lines = path.read_text().splitlines()
    start, end = curl_lines(lines)
    tracked = run(['git', 'ls-files'], repo).stdout.splitlines()
    tracked += run(['git', 'ls-files', '--others'], repo).stdout.splitlines()
    lines[start:end] = [line for line in section
                        if not line.startswith('F: ') or
                        fnmatch.filter(tracked, line[3:].strip())]
    path.write_text('\n'.join(lines) + '\n')


def apply_file(repo: Path, name: str, section: List[str]) -> None:
    """Lay overlay file @name over @repo (@section: the CURL section that
    MAINTAINERS.patch gives)."""
    if name == MAINTAINERS_PATCH:
        # An earlier step may have put in part of it already
        update_maintainers(repo, section)
    elif name.endswith('.patch'):
        run(['patch', '-p1', '-F0', '--no-backup-if-mismatch', '-s',
             '-i', str(TOP / name)], repo)
    else:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(TOP / name, repo / name)


def git_env() -> Dict[str, str]:
    """The patches' author and committer: the maintainer that
    MAINTAINERS.patch adds (not whoever runs this), at a fixed date."""
    env = dict(os.environ)
    patch = (TOP / MAINTAINERS_PATCH).read_text().splitlines()
    maintainer = next((line[4:] for line in patch
                       if line.startswith('+M: ')), '')
    match = re.fullmatch(r'(.+?)\s*<([^>]+)>', maintainer.strip())
    if not match:
        raise SeriesError(f'{MAINTAINERS_PATCH} adds no maintainer (M:)')
    name, email = match.groups()
    env.update(GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email,
               GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email,
               GIT_AUTHOR_DATE=DATE, GIT_COMMITTER_DATE=DATE)
    return env


def make_repo(base: Path, repo: Path) -> None:
    """A git repository of the pristine base tree at @repo."""
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    tar = subprocess.Popen(['tar', '-C', str(base), '--exclude=./.git',
                            '--exclude=./build', '-cf', '-', '.'],
                           stdout=subprocess.PIPE)
    subprocess.run(['tar', '-C', str(repo), '-xf', '-'], stdin=tar.stdout,
                   check=True)
    if tar.wait() != 0:
        raise SeriesError(f'could not copy {base}')
    env = git_env()
    run(['git', 'init', '-q', '-b', 'series'], repo)
    # The base's own .gitignore would leave some of its files out
    run(['git', 'add', '-A', '-f', '.'], repo)
    run(['git', 'commit', '-q', '--no-verify', '-m',
         f'QEMU {(base / "VERSION").read_text().strip()} base tree'],
        repo, env)
    run(['git', 'tag', 'base'], repo)


def bench_table() -> str:
    """The S1 and S2 rows of the last benchmark run, as plain text."""
    results = TOP / 'tests' / 'bench' / 'results' / 'results.md'
    rows = [('scenario', 'image', 'driver', 'wall s', 'MB/s', 'x aria2c')]
    scenario = None
    for line in results.read_text().splitlines():
        match = re.match(r'### (S\d): (.*)', line)
        if match:
            scenario = match.group(1)
            continue
        if line.startswith('## '):
            scenario = None
        cells = [c.strip() for c in line.strip('|').split('|')]
        if (scenario in ('S1', 'S2') and len(cells) > 5 and
                cells[1] in ('new', 'stock', 'aria2c', 'pipeline')):
            image = cells[0].split(' ')[0]
            rows.append((scenario, image, cells[1], cells[2], cells[3],
                         cells[4]))
    if len(rows) == 1:
        raise SeriesError(f'no S1/S2 table in {results}')
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = ['  '.join(c.ljust(w) if i < 3 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]
    text.insert(1, '  '.join('-' * w for w in widths))
    legend = ('new: this series; stock: QEMU 10.0; pipeline: aria2c, then '
              'qemu-img convert of\nthe local file.  S1: RTT 40 ms, 10 MB/s '
              'per connection, 125 MB/s link;\nS2: RTT 150 ms, 25 MB/s.')
    return '\n'.join(text) + '\n\n' + legend


def write_cover(out: Path) -> None:
    cover = next(out.glob('0000-cover-letter.patch'))
    text = (PATCHES / '0000-cover-letter.txt').read_text()
    subject, _, blurb = text.partition('\n')
    blurb = blurb.strip().replace('@BENCH@', bench_table())
    letter = cover.read_text()
    letter = letter.replace('*** SUBJECT HERE ***', subject.strip())
    letter = letter.replace('*** BLURB HERE ***', blurb)
    cover.write_text(letter)


def compare_trees(repo: Path, src: Path, files: List[str]) -> List[str]:
    """The files of the series whose content differs from the build's."""
    differ = []
    for name in files:
        target = name[:-len('.patch')] if name.endswith('.patch') else name
        ours, built = repo / target, src / target
        if not built.is_file() or ours.read_bytes() != built.read_bytes():
            differ.append(target)
    return differ


def check_am(repo: Path, out: Path, patches: List[Path]) -> None:
    """git am of the series onto the base gives the same tree."""
    applied = repo.parent / 'series-am'
    run(['git', 'worktree', 'prune'], repo)
    if applied.exists():
        shutil.rmtree(applied)
    run(['git', 'worktree', 'add', '-q', '--detach', str(applied), 'base'],
        repo)
    try:
        run(['git', 'am', '-q', '--whitespace=error-all',
             *map(str, patches)], applied, git_env())
        ours = run(['git', 'rev-parse', 'HEAD^{tree}'], repo).stdout
        theirs = run(['git', 'rev-parse', 'HEAD^{tree}'], applied).stdout
        if ours != theirs:
            raise SeriesError('git am of the series does not give the tree '
                              'it was made from')
    finally:
        run(['git', 'worktree', 'remove', '--force', str(applied)], repo,
            check=False)


#: The one warning a patch may get: an iotest's expected output (.out) is
#: compared byte for byte with what the test prints, so it cannot carry a
#: license line (none of QEMU's own does)
ALLOWED_WARNING = re.compile(r"WARNING: Does new file '[^']*\.out' need "
                             r"'SPDX-License-Identifier'\?")


def checkpatch(repo: Path, patches: List[Path]) -> List[str]:
    """The patches that checkpatch does not pass cleanly."""
    bad = []
    for patch in patches:
        result = run(['perl', 'scripts/checkpatch.pl', str(patch)], repo,
                     check=False)
        problems = [line for line in result.stdout.splitlines()
                    if re.match(r'(ERROR|WARNING):', line)]
        allowed = [line for line in problems if ALLOWED_WARNING.match(line)]
        clean = not set(problems) - set(allowed)
        note = f' ({len(allowed)} .out files without SPDX)' if allowed else ''
        print(f'series: checkpatch {patch.name}: '
              f'{"clean" if clean else "NOT CLEAN"}{note}')
        if not clean:
            print(result.stdout)
            bad.append(patch.name)
    return bad


class Tap:
    """Test Anything Protocol output for scripts/check.py."""

    def __init__(self, plan: int) -> None:
        self.number = 0
        self.failed = 0
        print(f'1..{plan}', flush=True)

    def result(self, ok: bool, what: str, detail: str = '') -> bool:
        self.number += 1
        self.failed += not ok
        if not ok and detail:
            for line in detail.rstrip().splitlines():
                print(f'# {line}')
        print(f'{"ok" if ok else "not ok"} {self.number} - {what}',
              flush=True)
        return ok


def make_series(build: Path, out: Path, steps: List[Path]) -> Path:
    """Commit the steps onto the base, check that they carry the overlay,
    and write the patches under @out; returns the repository."""
    src = build / 'src'
    stamp = src / '.overlay-base'
    if not stamp.is_file():
        raise SeriesError(f'{src} has no overlay build: run make build')
    base = Path(stamp.read_text().splitlines()[0])
    repo = build / 'series-git'
    make_repo(base, repo)
    env = git_env()
    section = curl_section(base)
    placed: List[str] = []
    for step in steps:
        files, maintainers, message = read_step(step)
        for name in files:
            if name in placed:
                raise SeriesError(f'{step.name}: {name} is in two patches')
            if not (TOP / name).is_file():
                raise SeriesError(f'{step.name}: no such file {name}')
            apply_file(repo, name, section)
            placed.append(name)
        if maintainers:
            update_maintainers(repo, section)
        run(['git', 'add', '-A', '-f', '.'], repo)
        subprocess.run(['git', 'commit', '-q', '-s', '--no-verify', '-F',
                        '-'], cwd=repo, env=env, input=message, text=True,
                       check=True)
    missing = sorted(set(overlay_files()) - set(placed))
    if missing:
        raise SeriesError(f'in no patch: {" ".join(missing)}')
    differ = compare_trees(repo, src, placed)
    if differ:
        raise SeriesError(f'differ from {src}: {" ".join(differ)}')
    if out.exists():
        shutil.rmtree(out)
    run(['git', 'format-patch', '-q', '--cover-letter', '--numbered',
         '--no-signature', '-o', str(out), 'base..HEAD'], repo, env)
    write_cover(out)
    return repo


#: What each step of the bisection builds: the tools, and the unit test of
#: the cache once there is one
BISECT_TARGETS = ('qemu-img', 'qemu-io')
UNIT_TEST = 'tests/unit/test-range-cache'


def meson_path() -> str:
    """Where a meson >= 1.5 is, if the system's is older (as scripts/build.sh
    finds it), else ''."""
    probe = ('import mesonbuild.coredata as c, sys; '
             'v = tuple(int(x) for x in c.version.split(".")[:2]); '
             'sys.exit(0 if v >= (1, 5) else 1)')
    if subprocess.run([PYTHON, '-c', probe], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).returncode == 0:
        return ''
    return run([str(TOP / 'scripts' / 'fetch-base.sh'), 'meson'],
               TOP).stdout.strip().splitlines()[-1]


def configure(tree: Path, objdir: Path) -> None:
    """Configure @objdir to build the tools of @tree."""
    if objdir.exists():
        shutil.rmtree(objdir)
    objdir.mkdir(parents=True)
    env = dict(os.environ)
    mpath = meson_path()
    if mpath:
        env['PYTHONPATH'] = ':'.join(filter(None, (mpath,
                                                   env.get('PYTHONPATH'))))
    result = run([str(tree / 'configure'), f'--python={PYTHON}',
                  '--enable-curl', '--enable-tools', '--disable-system',
                  '--disable-user', '--disable-docs', '--disable-werror',
                  '--disable-download', '--disable-install-blobs'],
                 objdir, env, check=False)
    if result.returncode != 0:
        shutil.rmtree(objdir)
        raise SeriesError(f'configure of {tree} failed:\n'
                          f'{result.stdout[-3000:]}')
    # So that meson can run again from ninja without our PYTHONPATH
    for site in (objdir / 'pyvenv' / 'lib').glob('python3*/site-packages'):
        if mpath:
            (site / 'qemu-curl-meson.pth').write_text(mpath + '\n')


def bisect(repo: Path, build: Path, patches: List[Path], tap: Tap) -> None:
    """git am the patches one by one onto a clean clone of the base, and
    build and run the unit tests after each."""
    tree = build / 'series-bisect'
    objdir = build / 'series-bisect-build'
    env = git_env()
    if not (tree / '.git').is_dir():
        if tree.exists():
            shutil.rmtree(tree)
        run(['git', 'clone', '-q', '--no-checkout', str(repo), str(tree)],
            build)
    run(['git', 'fetch', '-q', '-f', str(repo),
         'refs/tags/base:refs/tags/base'],
        tree)
    # Only the files that differ are rewritten: ninja rebuilds what they touch
    run(['git', 'am', '--abort'], tree, check=False)
    run(['git', 'checkout', '-q', '-f', '--detach', 'refs/tags/base'], tree)
    run(['git', 'clean', '-q', '-fdx'], tree)
    if not (objdir / 'build.ninja').is_file():
        configure(tree, objdir)
    jobs = str(os.cpu_count() or 1)
    for patch in patches:
        name = patch.name[:4]
        result = run(['git', 'am', '-q', '--whitespace=error-all',
                      str(patch)], tree, env, check=False)
        if not tap.result(result.returncode == 0,
                          f'patch {name} applies with git am', result.stdout):
            run(['git', 'am', '--abort'], tree, check=False)
            raise SeriesError(f'{patch.name} does not apply')
        targets = list(BISECT_TARGETS)
        if (tree / (UNIT_TEST + '.c')).is_file():
            targets.append(UNIT_TEST)
        result = run(['ninja', '-j', jobs, *targets], objdir, check=False)
        built = tap.result(result.returncode == 0,
                           f'patch {name} builds {" ".join(targets)}',
                           result.stdout[-3000:])
        if built and UNIT_TEST in targets:
            result = run([str(objdir / UNIT_TEST), '--tap', '-k'], objdir,
                         check=False)
            tap.result(result.returncode == 0,
                       f'patch {name}: the unit tests of the cache pass',
                       result.stdout[-3000:])
        else:
            tap.result(False, f'patch {name}: the unit tests of the cache '
                       'pass', 'not built' if not built else
                       f'no {UNIT_TEST}.c after this patch')
    ours = run(['git', 'rev-parse', 'HEAD^{tree}'], repo).stdout
    theirs = run(['git', 'rev-parse', 'HEAD^{tree}'], tree).stdout
    tap.result(ours == theirs, 'git am of the series gives the tree it was '
               'made from')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--build', default=str(TOP / 'build'))
    parser.add_argument('--out')
    parser.add_argument('--bisect', action='store_true',
                        help='also apply the patches one by one, building '
                        'and running the unit tests after each; report '
                        'in TAP')
    args = parser.parse_args()
    build = Path(args.build).resolve()
    out = Path(args.out).resolve() if args.out else build / 'series'
    steps = sorted(p for p in PATCHES.glob('[0-9][0-9][0-9][0-9]-*.txt')
                   if not p.name.startswith('0000-'))
    if not args.bisect:
        repo = make_series(build, out, steps)
        patches = sorted(out.glob('[0-9][0-9][0-9][0-9]-*.patch'))[1:]
        check_am(repo, out, patches)
        bad = checkpatch(repo, patches)
        print(f'series: {len(patches)} patches and a cover letter in {out}')
        if bad:
            print(f'series: checkpatch does not pass: {" ".join(bad)}')
            return 1
        return 0

    # One result for making the series, four per patch, one for the end
    tap = Tap(1 + 4 * len(steps) + 1)
    try:
        repo = make_series(build, out, steps)
    except SeriesError as err:
        tap.result(False, 'the series carries every file of the overlay, '
                   'and gives the overlay build\'s tree', str(err))
        print('Bail out! the series could not be made')
        return 1
    tap.result(True, 'the series carries every file of the overlay, and '
               'gives the overlay build\'s tree')
    patches = sorted(out.glob('[0-9][0-9][0-9][0-9]-*.patch'))[1:]
    for patch in patches:
        bad = checkpatch(repo, [patch])
        tap.result(not bad, f'patch {patch.name[:4]} passes checkpatch')
    try:
        bisect(repo, build, patches, tap)
    except SeriesError as err:
        print(f'Bail out! {err}')
        return 1
    return 1 if tap.failed else 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except SeriesError as err:
        print(f'series: error: {err}', file=sys.stderr)
        sys.exit(1)
