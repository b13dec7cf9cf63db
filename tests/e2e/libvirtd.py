# SPDX-License-Identifier: GPL-2.0-or-later
#
# Debian's libvirtd as a private daemon for the libvirt test of QEMU's
# curl block driver (test_libvirt.py).
#
# Debian 12's libvirt-daemon, libvirt-daemon-driver-qemu and
# libvirt-clients (scripts/install-deps.sh) bring the daemon and virsh
# without any service: libvirt-daemon-system, which would add the
# libvirt-qemu user, /etc/libvirt/qemu.conf, the state directories and an
# init script, is not installed.  The test starts its own libvirtd, in
# system mode (it runs as root), in a private mount namespace in which
# libvirt's own paths are private directories of a temporary directory:
#
#   /etc/libvirt                  <tmp>/etc (libvirtd.conf, qemu.conf)
#   /run/libvirt                  <tmp>/run (the sockets, the domains'
#                                 state and QEMU's pid files)
#   /var/lib/libvirt              <tmp>/lib (secrets, QEMU's monitor)
#   /var/log/libvirt              <tmp>/log (libvirtd.log, qemu/DOM.log)
#   /var/cache/libvirt            <tmp>/cache (QEMU's capabilities)
#   /etc/passwd, /etc/group       copies with a "libvirt-qemu" user and
#                                 group: libvirt's QEMU driver looks up
#                                 the user it was built for (Debian's
#                                 libvirt-qemu) before it reads
#                                 qemu.conf, and fails without it.
#
# Nothing of the host's libvirt is touched, and a libvirtd the host may
# run is not seen: only the mount points /run/libvirt, /var/lib/libvirt,
# /var/log/libvirt and /var/cache/libvirt are made (empty) if missing,
# as libvirt-daemon-system would.  The namespace is made inside the
# test's own, so it has the test CA in /etc/ssl/certs (scripts/
# with-test-ca.sh): QEMU, which libvirtd starts with an environment of
# its own, trusts the test CA through the trust store it finds there.
#
# qemu.conf has QEMU run as root, with no security driver, no cgroups, no
# private /dev, and its output in the domain's log file rather than
# through virtlogd, so that no other daemon is needed.
"""A private libvirtd and virsh for the e2e tests."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, List, Optional, Union

from fixtures import (START_TIMEOUT, CmdResult, CommandFailed,
                      MissingPrerequisite, make_tempdir, remove_tree, run,
                      wait_for)

LIBVIRTD = '/usr/sbin/libvirtd'
VIRSH = '/usr/bin/virsh'
UNSHARE = '/usr/bin/unshare'

#: libvirt's directories, and the one of the private directory that
#: takes the place of each in the daemon's mount namespace
PRIVATE_DIRS = [('/etc/libvirt', 'etc'), ('/run/libvirt', 'run'),
                ('/var/lib/libvirt', 'lib'), ('/var/log/libvirt', 'log'),
                ('/var/cache/libvirt', 'cache')]

#: The user and group Debian's libvirt is built to run QEMU as
QEMU_USER = 'libvirt-qemu'

LIBVIRTD_CONF = '''# libvirtd.conf of the e2e tests (tests/e2e/libvirtd.py)
# Only root can reach the socket, in a private directory: no polkit
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
'''

QEMU_CONF = '''# qemu.conf of the e2e tests (tests/e2e/libvirtd.py)
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
# QEMU's output goes to /var/log/libvirt/qemu/DOMAIN.log without virtlogd
stdio_handler = "file"
'''

# Runs in the new mount namespace: $1 is the private directory
SETUP_SCRIPT = '''set -e
d=$1
while [ $# -gt 1 ]; do
    shift
    [ -d "${1%%=*}" ] || mkdir -p "${1%%=*}"
    mount --bind "$d/${1#*=}" "${1%%=*}"
done
mount --bind "$d/passwd" /etc/passwd
mount --bind "$d/group" /etc/group
exec "$LIBVIRTD"
'''


class Libvirtd:
    """A private libvirtd in system mode; see the module's comment.

    :attr:`uri` is the connection URI of its socket; :meth:`virsh` runs
    virsh on it.  stop() destroys every domain that is still there,
    removes every secret, stops the daemon, kills whatever it left in
    its mount namespace (QEMU) and removes the private directory.  Use
    it as a context manager, or call start() and stop().
    """

    def __init__(self) -> None:
        self.dir: Optional[Path] = None
        self._proc: Optional['subprocess.Popen[bytes]'] = None
        self._mount_ns: Optional[str] = None

    def __enter__(self) -> 'Libvirtd':
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def uri(self) -> str:
        """The URI that reaches this daemon (and no other)."""
        assert self.dir is not None
        return f'qemu:///system?socket={self.dir}/run/libvirt-sock'

    @property
    def log_dir(self) -> Path:
        """What the daemon sees as /var/log/libvirt."""
        assert self.dir is not None
        return self.dir / 'log'

    def domain_log(self, name: str) -> str:
        """The log of domain @name: QEMU's command line and output."""
        try:
            return (self.log_dir / 'qemu' / f'{name}.log').read_text(
                errors='replace')
        except OSError:
            return ''

    def errors(self) -> str:
        """The end of the daemon's log and output."""
        if self.dir is None:
            return ''
        text = ''
        for path in (self.log_dir / 'libvirtd.log', self.dir / 'output.log'):
            try:
                text += path.read_text(errors='replace')[-4000:]
            except OSError:
                pass
        return text.strip()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the daemon and wait until it answers virsh."""
        if self._proc is not None:
            raise RuntimeError('libvirtd already started')
        for path, package in ((LIBVIRTD, 'libvirt-daemon'),
                              (VIRSH, 'libvirt-clients'),
                              (UNSHARE, 'util-linux')):
            if not os.access(path, os.X_OK):
                raise MissingPrerequisite(
                    f'{path} not found: apt-get install {package} '
                    '(scripts/install-deps.sh)')
        if not Path('/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/'
                    'libvirt_driver_qemu.so').exists():
            raise MissingPrerequisite(
                "libvirt's QEMU driver not found: apt-get install "
                'libvirt-daemon-driver-qemu (scripts/install-deps.sh)')
        if os.geteuid() != 0:
            raise MissingPrerequisite(
                'the libvirt test runs libvirtd in system mode, as root '
                '(or root in a user namespace): run it as root')
        self.dir = make_tempdir('libvirtd')
        # If the test process exits without stop(), the daemon and its
        # QEMU go with it all the same
        atexit.register(self.stop)
        try:
            self._write_config()
            self._launch(timeout)
        except BaseException:
            self.stop()
            raise

    def _write_config(self) -> None:
        assert self.dir is not None
        for _, sub in PRIVATE_DIRS:
            (self.dir / sub).mkdir()
        etc = self.dir / 'etc'
        (etc / 'libvirtd.conf').write_text(LIBVIRTD_CONF, encoding='utf-8')
        (etc / 'qemu.conf').write_text(QEMU_CONF, encoding='utf-8')
        for name, line in (('passwd', f'{QEMU_USER}:x:{{id}}:{{id}}:'
                            'Libvirt Qemu:/var/lib/libvirt:'
                            '/usr/sbin/nologin'),
                           ('group', f'{QEMU_USER}:x:{{id}}:')):
            text = Path('/etc', name).read_text(encoding='utf-8')
            if not any(entry.startswith(QEMU_USER + ':')
                       for entry in text.splitlines()):
                used = {int(entry.split(':')[2])
                        for entry in text.splitlines()
                        if entry.count(':') >= 3 and
                        entry.split(':')[2].isdigit()}
                free = next(i for i in range(64055, 1 << 20)
                            if i not in used)
                text = text.rstrip('\n') + '\n' + line.format(id=free) + '\n'
            (self.dir / name).write_text(text, encoding='utf-8')

    def _launch(self, timeout: float) -> None:
        assert self.dir is not None
        env = dict(os.environ, LIBVIRTD=LIBVIRTD)
        with open(self.dir / 'output.log', 'wb') as output:
            # Reaped in stop()  # pylint: disable=consider-using-with
            self._proc = subprocess.Popen(
                [UNSHARE, '--mount', '--propagation', 'private', 'sh', '-c',
                 SETUP_SCRIPT, 'libvirtd', str(self.dir)] +
                [f'{path}={sub}' for path, sub in PRIVATE_DIRS],
                stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                env=env, start_new_session=True)

        def died() -> Optional[str]:
            assert self._proc is not None
            if self._proc.poll() is None:
                return None
            return (f'libvirtd exited with {self._proc.returncode}:\n'
                    f'{self.errors()}')

        def answers() -> bool:
            assert self.dir is not None and self._proc is not None
            if not (self.dir / 'run' / 'libvirt-sock').exists():
                return False
            if self._mount_ns is None:
                # The socket is there: libvirtd (unshare and sh exec it)
                # runs in its namespace, where what it starts runs too
                theirs = os.readlink(f'/proc/{self._proc.pid}/ns/mnt')
                if theirs == os.readlink('/proc/self/ns/mnt'):
                    raise RuntimeError('libvirtd runs in the mount '
                                       'namespace of the tests')
                self._mount_ns = theirs
            return self.virsh('uri', timeout=10).returncode == 0

        wait_for(answers, timeout, 'libvirtd to answer', interval=0.2,
                 abort=died)

    def virsh(self, *args: Union[str, Path], check: bool = False,
              timeout: float = 60.0) -> CmdResult:
        """Run virsh @args on this daemon."""
        result = run([VIRSH, '--quiet', '-c', self.uri, *args],
                     timeout=timeout)
        if check and result.returncode != 0:
            raise CommandFailed(f'virsh failed\n{result.describe()}\n'
                                f'--- libvirtd ---\n{self.errors()}')
        return result

    def names(self, what: str) -> List[str]:
        """The domains (what='list') or secrets (what='secret-list') there
        are, by name or UUID."""
        if what == 'list':
            result = self.virsh('list', '--all', '--name')
            return [w for w in result.stdout.split() if w]
        result = self.virsh('secret-list')
        return [line.split()[0] for line in result.stdout.splitlines()
                if line.strip()]

    def stop(self) -> None:
        """Destroy every domain and secret, stop the daemon, and remove
        its directory."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                for name in self.names('list'):
                    self.virsh('destroy', name, timeout=30)
                    self.virsh('undefine', name, timeout=30)
                for uuid in self.names('secret-list'):
                    self.virsh('secret-undefine', uuid, timeout=30)
            except CommandFailed:
                pass
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
            self._proc = None
        self._kill_leftovers()
        remove_tree(self.dir)
        self.dir = None
        atexit.unregister(self.stop)

    def _kill_leftovers(self) -> None:
        """Kill what is left in the daemon's mount namespace: a QEMU that
        it did not stop, or the -daemonize'd QEMU of a capabilities probe
        that hung."""
        if self._mount_ns is None:
            return
        for entry in Path('/proc').iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / 'ns' / 'mnt') != self._mount_ns:
                    continue
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue
        self._mount_ns = None
