# SPDX-License-Identifier: GPL-2.0-or-later
#
# Boot the test guest of the curl series on a drive.
#
# A library for the e2e guest test (test_guest.py) and the guest
# benchmark (tests/bench/guest.py).  The guest is what
# scripts/build-guest.py makes under <build>/guest: a Debian kernel and a
# busybox initramfs whose init mounts /dev/vda, checks the sha256 of
# every file on it against the list stored on the disk, prints one result
# line on the serial console and powers off.  The firmware (SeaBIOS and
# the linuxboot_dma option ROM) is in <build>/firmware.
"""Boot the test guest with qemu-system-x86_64 -M q35 and read its result.

* :class:`Guest` -- the kernel, initramfs and firmware of a build.
* :class:`GuestDisk` -- one of its ext4 disks and the manifest of its
  files.
* :func:`boot` -- boot the guest on a -drive and return a
  :class:`BootResult`: the result line, the time from QEMU's start to
  it, the console log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import fixtures
from fixtures import MissingPrerequisite

#: What init prints before the result's fields
RESULT_PREFIX = 'QCURL-GUEST-RESULT '
#: A generous bound on one boot under TCG (about 15 s from a local file)
BOOT_TIMEOUT = 240.0
#: How long QEMU may take to exit once the guest printed its result
EXIT_TIMEOUT = 30.0
#: Guest memory: the kernel, the initramfs and some page cache
GUEST_MEMORY = '256M'


@dataclasses.dataclass(frozen=True)
class GuestDisk:
    """An ext4 disk of the guest and what is on it."""

    profile: str
    path: Path
    file_count: int
    file_bytes: int
    image_bytes: int
    manifest: Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Guest:
    """The kernel, initramfs and firmware made by the build."""

    directory: Path
    vmlinuz: Path
    initramfs: Path
    firmware: Path
    cmdline: str
    info: Dict[str, Any]

    @classmethod
    def from_build(cls, build: Optional[Path] = None) -> 'Guest':
        """The guest of @build (default: the build under test).

        Raise MissingPrerequisite naming what is missing.
        """
        build = fixtures.build_dir() if build is None else Path(build)
        directory = build / 'guest'
        firmware = build / 'firmware'
        needed = [directory / 'vmlinuz', directory / 'initramfs.cpio',
                  directory / 'boot.json', firmware / 'bios-256k.bin',
                  firmware / 'linuxboot_dma.bin']
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            raise MissingPrerequisite(
                'missing guest files: ' + ', '.join(missing) +
                ' -- build them with: make (scripts/build.sh runs '
                'scripts/build-guest.py)')
        info = json.loads((directory / 'boot.json').read_text())
        return cls(directory, directory / 'vmlinuz',
                   directory / 'initramfs.cpio', firmware, info['cmdline'],
                   info)

    def disk(self, profile: str = 'test') -> GuestDisk:
        """The disk of @profile; raise MissingPrerequisite if not made."""
        path = self.directory / f'disk-{profile}.ext4'
        manifest_path = self.directory / f'disk-{profile}.json'
        if not path.is_file() or not manifest_path.is_file():
            raise MissingPrerequisite(
                f'missing guest disk {path}: make it with '
                f'scripts/build-guest.py --disk {profile}')
        manifest = json.loads(manifest_path.read_text())
        return GuestDisk(profile, path.resolve(), manifest['file_count'],
                         manifest['file_bytes'], manifest['image_bytes'],
                         manifest)


def stock_qemu_system(build: Optional[Path] = None) -> Path:
    """The stock qemu-system-x86_64 (QEMU's own curl driver)."""
    build = fixtures.build_dir() if build is None else Path(build)
    path = build / 'stock' / 'qemu-system-x86_64'
    if not os.access(path, os.X_OK):
        raise MissingPrerequisite(f'{path} missing: build it with: make')
    return path


def parse_result(line: str) -> Dict[str, str]:
    """The fields of a result line: {'status': 'ok', 'files': '96', ...}."""
    words = line[line.index(RESULT_PREFIX) + len(RESULT_PREFIX):].split()
    fields = {'status': words[0] if words else ''}
    for word in words[1:]:
        key, _, value = word.partition('=')
        fields[key] = value
    return fields


@dataclasses.dataclass
class BootResult:  # pylint: disable=too-many-instance-attributes
    """What :func:`boot` saw.

    @result is the parsed result line (None if the guest printed none),
    @result_seconds the time from QEMU's start to that line, @wall the
    time until QEMU exited (or was killed), @console the serial console's
    output and @log_dir where it, QEMU's stderr and the command are kept.
    """

    argv: List[str]
    returncode: Optional[int]
    timed_out: bool
    wall: float
    console: str
    stderr: str
    log_dir: Path
    result: Optional[Dict[str, str]] = None
    result_line: str = ''
    result_seconds: Optional[float] = None

    @property
    def ok(self) -> bool:
        """Whether the guest verified every file and QEMU exited with 0."""
        return (self.result is not None and self.result['status'] == 'ok'
                and self.result.get('failed') == '0' and
                self.returncode == 0 and not self.timed_out)

    def verified_all(self, disk: GuestDisk) -> bool:
        """Whether the guest says it verified every file of @disk."""
        return (self.ok and self.result is not None and
                self.result.get('files') == str(disk.file_count) and
                self.result.get('verified') == str(disk.file_count))

    def describe(self) -> str:
        """The command, the outcome and the console, for a failure
        message."""
        state = ('timed out and was killed' if self.timed_out else
                 f'exit code {self.returncode}')
        return (f'command: {" ".join(self.argv)}\n'
                f'qemu: {state} after {self.wall:.1f} s\n'
                f'result: {self.result_line or "(no result line)"}\n'
                f'logs kept in {self.log_dir}\n'
                f'--- serial console (end) ---\n{self.console[-6000:]}\n'
                f'--- qemu stderr (end) ---\n{self.stderr[-3000:]}')


def boot_args(guest: Guest, drive: str, append: str = '') -> List[str]:
    """The qemu-system-x86_64 options that boot @guest on @drive, with
    @append added to the kernel command line."""
    cmdline = f'{guest.cmdline} {append}'.strip()
    return ['-M', 'q35', '-accel', 'tcg', '-m', GUEST_MEMORY, '-smp', '1',
            '-nodefaults', '-no-user-config', '-display', 'none',
            '-no-reboot', '-L', str(guest.firmware),
            '-kernel', str(guest.vmlinuz), '-initrd', str(guest.initramfs),
            '-append', cmdline, '-serial', 'stdio', '-drive', drive]


def boot(qemu: Union[str, Path], guest: Guest, drive: str, log_dir: Path,
         timeout: float = BOOT_TIMEOUT, extra_args: Sequence[str] = (),
         env: Optional[Mapping[str, str]] = None,
         append: str = '') -> BootResult:
    """Boot @guest with @qemu on the -drive @drive; wait for its result.

    @append goes on the kernel command line: qcurl.list=NAME makes the
    guest check the list NAME of its disk instead of SHA256SUMS.

    The serial console is QEMU's stdout, read line by line as it comes,
    so that the time of the result line is known; it is written to
    @log_dir/console.log, QEMU's stderr to @log_dir/stderr.log.  QEMU is
    killed after @timeout seconds, or @EXIT_TIMEOUT seconds after the
    result line if it does not exit by itself.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = [str(qemu)] + boot_args(guest, drive, append) + list(extra_args)
    (log_dir / 'command').write_text(' '.join(argv) + '\n')
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    lines: List[str] = []
    seen = threading.Event()
    found: Dict[str, Any] = {}
    with open(log_dir / 'stderr.log', 'wb') as stderr, \
            open(log_dir / 'console.log', 'w', encoding='utf-8') as console:
        start = time.monotonic()
        # pylint: disable=consider-using-with
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=stderr,
                                env=full_env, start_new_session=True)

        def read_console() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors='replace').rstrip('\r\n')
                lines.append(line)
                console.write(line + '\n')
                console.flush()
                if RESULT_PREFIX in line and not seen.is_set():
                    found['line'] = line.strip()
                    found['seconds'] = time.monotonic() - start
                    seen.set()

        reader = threading.Thread(target=read_console, daemon=True)
        reader.start()
        timed_out = False
        deadline = start + timeout
        while proc.poll() is None:
            now = time.monotonic()
            if seen.is_set():
                deadline = min(deadline, found['seconds'] + start +
                               EXIT_TIMEOUT)
            if now > deadline:
                timed_out = not seen.is_set()
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                break
            time.sleep(0.05)
        wall = time.monotonic() - start
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
    result = BootResult(argv, proc.returncode, timed_out, wall,
                        '\n'.join(lines) + '\n',
                        log_tail(log_dir / 'stderr.log'), log_dir)
    if 'line' in found:
        result.result_line = found['line']
        result.result = parse_result(found['line'])
        result.result_seconds = found['seconds']
    return result


def log_tail(path: Path, limit: int = 20000) -> str:
    """The end of a log file ('' if it cannot be read)."""
    try:
        return path.read_text(encoding='utf-8', errors='replace')[-limit:]
    except OSError:
        return ''
