#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Build the test guest of the curl series from Debian packages
#
# Copyright (C) 2026 The QEMU curl series authors
"""Build the test guest: a Linux kernel, an initramfs and ext4 disks.

The guest boots with -kernel/-initrd, loads the virtio modules, mounts
/dev/vda, checks the sha256 of every file on it against the SHA256SUMS
list stored on the disk, prints one result line on the serial console
(see scripts/guest/init) and powers off.

* The kernel is that of Debian 12's linux-image-cloud-amd64: ext4 and the
  8250 serial console are built in; virtio_pci, virtio_blk and the virtio
  modules they depend on (read from each module's .modinfo, in load
  order) go into the initramfs.
* The initramfs holds Debian 12's busybox-static, those modules and
  scripts/guest/init; it is an uncompressed cpio archive written here
  with fixed owners and times, so the same inputs give the same bytes.
* A disk is an ext4 image made with ``mkfs.ext4 -d`` from a directory of
  files of random bytes (deterministic: the same profile gives the same
  files), plus SHA256SUMS (and the same list in another order, see
  make_disk); no loop device, no root needed.  The profile
  ``test`` is small (for make check under TCG), ``bench`` is the
  benchmark's 150 MiB of files.

The packages are fetched with ``apt-get download`` (nothing is installed)
into $CACHE/guest/dl; their versions are remembered in
$CACHE/guest/versions.json and asked for again only with REFRESH=1, like
the QEMU base.  Results are cached in $CACHE/guest under a key of all
their inputs, so they are made again only when an input changes, and
$BUILD/guest links to them:

  vmlinuz, initramfs.cpio, boot.json     the kernel, its initramfs, and
                                         their versions and command line
  disk-PROFILE.ext4, disk-PROFILE.json   a disk and its manifest (every
                                         file's name, size and sha256)
"""

import argparse
import hashlib
import json
import lzma
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

TOP = Path(__file__).resolve().parents[1]
INIT = TOP / 'scripts' / 'guest' / 'init'

#: This script is an input of all it makes
SELF_SHA256 = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

KERNEL_META = 'linux-image-cloud-amd64'
BUSYBOX = 'busybox-static'
#: The modules the guest needs; their dependencies are added
MODULES = ('virtio_blk', 'virtio_pci')
#: What must be built into the kernel, and why
BUILTIN = {'CONFIG_EXT4_FS': 'the disk is ext4',
           'CONFIG_SERIAL_8250_CONSOLE': 'the result goes to ttyS0',
           'CONFIG_BLK_DEV_INITRD': 'the modules are in an initramfs',
           'CONFIG_DEVTMPFS': 'init finds /dev/vda in a devtmpfs'}
#: The kernel command line: serial console; a panic ends QEMU at once
#: (with -no-reboot)
CMDLINE = 'console=ttyS0 panic=-1'

KiB = 1024
MiB = 1024 * KiB

#: name -> number of files, bytes of files, file system size, seed
DISK_PROFILES: Dict[str, Dict[str, int]] = {
    'test': {'files': 96, 'bytes': 24 * MiB, 'fs_bytes': 40 * MiB,
             'seed': 20261201},
    'bench': {'files': 400, 'bytes': 150 * MiB, 'fs_bytes': 256 * MiB,
              'seed': 20261202},
}
#: Every file of a disk has this time stamp
FILE_MTIME = 1767225600


def say(msg: str) -> None:
    print(f'build-guest: {msg}', file=sys.stderr, flush=True)


def die(msg: str) -> None:
    print(f'build-guest: error: {msg}', file=sys.stderr, flush=True)
    sys.exit(1)


def cache_dir() -> Path:
    env = os.environ.get('CACHE')
    if env:
        return Path(env)
    xdg = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(xdg) / 'qemu-curl'


def digest_of(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for chunk in iter(lambda: file.read(4 * MiB), b''):
            digest.update(chunk)
    return digest.hexdigest()


def publish(tmp: Path, final: Path) -> None:
    """Move the finished directory @tmp to @final (another build may
    have got there first: then keep that one)."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------

def run(argv: List[str], cwd: Optional[Path] = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        die(f'{" ".join(argv)} failed:\n{proc.stderr.strip()}')
    return proc.stdout


def apt_candidate(package: str) -> Optional[str]:
    out = subprocess.run(['apt-cache', 'policy', package],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, check=False).stdout
    match = re.search(r'^\s*Candidate:\s*(\S+)', out, re.M)
    if not match or match.group(1) == '(none)':
        return None
    return match.group(1)


def apt_update() -> None:
    argv = ['apt-get', 'update', '-qq']
    if os.geteuid() != 0:
        if not shutil.which('sudo'):
            die('the package lists know no linux-image-cloud-amd64: run '
                'apt-get update as root')
        argv.insert(0, 'sudo')
    say('apt-get update (the package lists lack the guest packages)')
    subprocess.run(argv, check=False)


def resolve_versions() -> Dict[str, str]:
    """The kernel package and version, and busybox-static's version."""
    for attempt in range(2):
        out = subprocess.run(['apt-cache', 'depends', '--important',
                              KERNEL_META], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             check=False).stdout
        kernels = re.findall(r'^\s*Depends:\s*(linux-image-\S+)', out, re.M)
        kernel_version = apt_candidate(kernels[0]) if kernels else None
        busybox_version = apt_candidate(BUSYBOX)
        if kernel_version and busybox_version:
            return {'kernel_package': kernels[0],
                    'kernel_version': kernel_version,
                    'busybox_version': busybox_version}
        if attempt == 0:
            apt_update()
    die(f'apt knows no {KERNEL_META} or {BUSYBOX} (is this Debian 12?)')
    raise AssertionError


def versions(cache: Path) -> Dict[str, str]:
    """The package versions to use: remembered, unless REFRESH=1."""
    stamp = cache / 'versions.json'
    if os.environ.get('REFRESH') != '1' and stamp.is_file():
        try:
            return dict(json.loads(stamp.read_text()))
        except ValueError:
            pass
    found = resolve_versions()
    stamp.write_text(json.dumps(found, indent=1) + '\n')
    return found


def download(cache: Path, package: str, version: str) -> Path:
    """The .deb of @package=@version, downloaded once into cache/dl."""
    dl = cache / 'dl'
    dl.mkdir(parents=True, exist_ok=True)
    for deb in dl.glob(f'{package}_*.deb'):
        if run(['dpkg-deb', '-f', str(deb), 'Version']).strip() == version:
            return deb
    say(f'downloading {package}={version}')
    with tempfile.TemporaryDirectory(dir=dl) as tmp:
        run(['apt-get', 'download', '-qq', '-o', 'APT::Sandbox::User=root',
             f'{package}={version}'], cwd=Path(tmp))
        debs = list(Path(tmp).glob('*.deb'))
        if len(debs) != 1:
            die(f'apt-get download {package}={version} gave {debs}')
        final = dl / debs[0].name
        os.replace(debs[0], final)
    return final


# ---------------------------------------------------------------------------
# Kernel modules
# ---------------------------------------------------------------------------

def module_name(path: Path) -> str:
    return path.name.split('.ko')[0].replace('-', '_')


def module_depends(data: bytes) -> List[str]:
    """The depends= field of a module's .modinfo section."""
    match = re.search(rb'(?:^|\0)depends=([\w,-]*)\0', data)
    if not match:
        return []
    return [d.replace('-', '_') for d in match.group(1).decode().split(',')
            if d]


def read_module(path: Path) -> bytes:
    if path.name.endswith('.ko'):
        return path.read_bytes()
    if path.name.endswith('.ko.xz'):
        return lzma.decompress(path.read_bytes())
    die(f'cannot read the compressed module {path}')
    raise AssertionError


def modules_in_order(tree: Path) -> List[Tuple[str, bytes]]:
    """MODULES and what they depend on, each after its dependencies."""
    paths = {module_name(p): p for p in tree.glob('lib/modules/*/**/*.ko*')}
    order: List[Tuple[str, bytes]] = []
    seen = set()

    def visit(name: str, chain: Tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in chain:
            die(f'modules depend on each other: {" -> ".join(chain)}')
        if name not in paths:
            die(f'module {name} is not in the kernel package (built in?)')
        data = read_module(paths[name])
        for dep in module_depends(data):
            visit(dep, chain + (name,))
        seen.add(name)
        order.append((name, data))

    for name in MODULES:
        visit(name, ())
    return order


def check_kernel_config(tree: Path) -> None:
    configs = list(tree.glob('boot/config-*'))
    if len(configs) != 1:
        die(f'no kernel config in the kernel package: {configs}')
    text = configs[0].read_text()
    for option, why in BUILTIN.items():
        if not re.search(rf'^{option}=y$', text, re.M):
            die(f'the kernel lacks {option}=y ({why})')


# ---------------------------------------------------------------------------
# The initramfs
# ---------------------------------------------------------------------------

class Cpio:
    """An uncompressed cpio archive in the "newc" format the kernel reads,
    with every owner root and every time stamp 0."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ino = 0

    def _entry(self, name: str, mode: int, body: bytes = b'',
               rdev: Tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        encoded = name.encode() + b'\0'
        fields = (self.ino, mode, 0, 0, 1, 0, len(body), 0, 0, rdev[0],
                  rdev[1], len(encoded), 0)
        self.data += b'070701' + b''.join(b'%08x' % f for f in fields)
        self.data += encoded
        self.data += bytes(-len(self.data) % 4)
        self.data += body
        self.data += bytes(-len(self.data) % 4)

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, body: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, body)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry('TRAILER!!!', 0)
        return bytes(self.data)


def make_boot(cache: Path) -> Path:
    """The kernel and initramfs, made once per set of inputs."""
    found = versions(cache)
    init_text = INIT.read_text()
    key = digest_of({'script': SELF_SHA256, 'versions': found,
                     'init': init_text, 'modules': MODULES,
                     'cmdline': CMDLINE})
    final = cache / f'boot-{key}'
    if (final / 'boot.json').is_file():
        return final
    kernel_deb = download(cache, found['kernel_package'],
                          found['kernel_version'])
    busybox_deb = download(cache, BUSYBOX, found['busybox_version'])
    say(f'making the guest kernel and initramfs ({found["kernel_package"]} '
        f'{found["kernel_version"]}, busybox {found["busybox_version"]})')
    tmp = Path(tempfile.mkdtemp(prefix='boot-tmp-', dir=cache))
    tmp.chmod(0o755)
    try:
        tree = tmp / 'kernel'
        run(['dpkg-deb', '-x', str(kernel_deb), str(tree)])
        check_kernel_config(tree)
        vmlinuz = list(tree.glob('boot/vmlinuz-*'))
        if len(vmlinuz) != 1:
            die(f'no single vmlinuz in {kernel_deb}: {vmlinuz}')
        modules = modules_in_order(tree)
        bbtree = tmp / 'busybox'
        run(['dpkg-deb', '-x', str(busybox_deb), str(bbtree)])
        busybox = (bbtree / 'bin' / 'busybox').read_bytes()

        names = ' '.join(name for name, _ in modules)
        cpio = Cpio()
        for directory in ('bin', 'dev', 'lib', 'lib/modules', 'mnt', 'proc',
                          'sys', 'tmp'):
            cpio.directory(directory)
        # init's console before devtmpfs is mounted
        cpio.chardev('dev/console', 5, 1)
        cpio.file('bin/busybox', busybox, 0o755)
        # init's interpreter; init links the other applets
        cpio.symlink('bin/sh', 'busybox')
        cpio.file('init', init_text.replace('@MODULES@', names).encode(),
                  0o755)
        for name, data in modules:
            cpio.file(f'lib/modules/{name}.ko', data)
        (tmp / 'initramfs.cpio').write_bytes(cpio.finish())
        shutil.copyfile(vmlinuz[0], tmp / 'vmlinuz')
        shutil.rmtree(tree)
        shutil.rmtree(bbtree)
        info = dict(found, modules=[name for name, _ in modules],
                    cmdline=CMDLINE,
                    vmlinuz_sha256=sha256_file(tmp / 'vmlinuz'),
                    initramfs_sha256=sha256_file(tmp / 'initramfs.cpio'))
        (tmp / 'boot.json').write_text(json.dumps(info, indent=1) + '\n')
        publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------
# Disks
# ---------------------------------------------------------------------------

def file_sizes(rng: random.Random, count: int, total: int) -> List[int]:
    """@count sizes adding up to @total: mostly tens to hundreds of KiB,
    a few of several MiB, none a multiple of 4 KiB by design."""
    weights = [rng.lognormvariate(0.0, 1.3) for _ in range(count)]
    scale = total / sum(weights)
    sizes = [max(1, int(w * scale)) for w in weights]
    sizes[-1] += total - sum(sizes)
    if sizes[-1] < 1:
        die('file size plan does not add up')
    return sizes


def mke2fs_version() -> str:
    proc = subprocess.run(['mkfs.ext4', '-V'], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False,
                          env=dict(os.environ, PATH=os.environ.get(
                              'PATH', '') + ':/usr/sbin:/sbin'))
    return proc.stdout.splitlines()[0].strip() if proc.stdout else ''


def make_disk(cache: Path, profile: str) -> Path:
    """The ext4 disk of @profile, made once per set of inputs."""
    params = DISK_PROFILES[profile]
    mkfs_version = mke2fs_version()
    if not mkfs_version:
        die('mkfs.ext4 not found: apt-get install e2fsprogs')
    key = digest_of({'script': SELF_SHA256, 'params': params,
                     'mke2fs': mkfs_version})
    final = cache / f'disk-{profile}-{key}'
    if (final / 'disk.json').is_file():
        return final
    say(f'making the {profile} disk ({params["files"]} files, '
        f'{params["bytes"] // MiB} MiB on a {params["fs_bytes"] // MiB} MiB '
        'ext4)')
    rng = random.Random(params['seed'])
    tmp = Path(tempfile.mkdtemp(prefix=f'disk-{profile}-tmp-', dir=cache))
    tmp.chmod(0o755)
    try:
        root = tmp / 'root'
        root.mkdir()
        files = []
        for i, size in enumerate(file_sizes(rng, params['files'],
                                            params['bytes'])):
            name = f'd{i % 8}/f{i:03d}.bin'
            path = root / name
            path.parent.mkdir(exist_ok=True)
            data = rng.randbytes(size)
            path.write_bytes(data)
            os.utime(path, (FILE_MTIME, FILE_MTIME))
            files.append({'name': name, 'size': size,
                          'sha256': hashlib.sha256(data).hexdigest()})
        # SHA256SUMS lists the files by name, as a list made with
        # "find | sort" would, so the guest reads one directory after the
        # other; SHA256SUMS.interleaved lists them in the order they were
        # made, one from each directory in turn, which ext4 puts in
        # different block groups (init reads it with qcurl.list=)
        lists = {'SHA256SUMS': sorted(files, key=lambda f: f['name']),
                 'SHA256SUMS.interleaved': files}
        for list_name, listed in lists.items():
            (root / list_name).write_text(''.join(
                f'{f["sha256"]}  {f["name"]}\n' for f in listed))
        for path in ([root / n for n in lists] + list(root.glob('d*')) +
                     [root]):
            os.utime(path, (FILE_MTIME, FILE_MTIME))
        fs_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        image = tmp / 'disk.ext4'
        env = dict(os.environ, PATH=os.environ.get('PATH', '') +
                   ':/usr/sbin:/sbin')
        proc = subprocess.run(
            ['mkfs.ext4', '-q', '-F', '-b', '4096', '-m', '0', '-L',
             f'qcurl-{profile}', '-U', fs_uuid, '-E',
             f'hash_seed={fs_uuid},root_owner=0:0', '-d', str(root),
             str(image), f'{params["fs_bytes"] // KiB}k'],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env, check=False)
        if proc.returncode != 0:
            die(f'mkfs.ext4 failed:\n{proc.stdout}')
        shutil.rmtree(root)
        manifest = {
            'profile': profile, 'params': params, 'mke2fs': mkfs_version,
            'file_count': len(files),
            'file_bytes': sum(f['size'] for f in files),
            'image_bytes': image.stat().st_size,
            'files': files,
        }
        (tmp / 'disk.json').write_text(json.dumps(manifest, indent=1) + '\n')
        publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def link(target: Path, name: Path) -> None:
    """Make @name a symbolic link to @target."""
    tmp = name.with_name(name.name + '.new')
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n', 1)[0],
        epilog='Environment: CACHE, BUILD (default: build), REFRESH=1.')
    parser.add_argument('--disk', action='append', default=[],
                        choices=sorted(DISK_PROFILES),
                        help='also make this disk (default: test)')
    args = parser.parse_args()
    disks = args.disk or ['test']
    build = Path(os.environ.get('BUILD') or TOP / 'build')
    if not build.is_absolute():
        build = TOP / build
    cache = cache_dir() / 'guest'
    cache.mkdir(parents=True, exist_ok=True)
    out = build / 'guest'
    out.mkdir(parents=True, exist_ok=True)

    boot = make_boot(cache)
    for name in ('vmlinuz', 'initramfs.cpio', 'boot.json'):
        link(boot / name, out / name)
    for profile in disks:
        disk = make_disk(cache, profile)
        link(disk / 'disk.ext4', out / f'disk-{profile}.ext4')
        link(disk / 'disk.json', out / f'disk-{profile}.json')
    info = json.loads((boot / 'boot.json').read_text())
    say(f'guest: {info["kernel_package"]} {info["kernel_version"]}, '
        f'modules {" ".join(info["modules"])}; disks {" ".join(disks)} '
        f'in {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
