# SPDX-License-Identifier: GPL-2.0-or-later
#
# e2e: libvirt boots the test guest from an https network disk.
#
# Most users run QEMU through libvirt.  Debian 12's libvirtd (9.0, a
# private one: tests/e2e/libvirtd.py) runs the patched
# qemu-system-x86_64 of the build for a plain q35 domain, as virt-install
# or a user would write it: TCG, no PCI address, no <memballoon>
# override, no <qemu:commandline>, the firmware from the emulator's own
# data directory, and the virtio-rng device and qemu-ga channel (on
# virtio-serial) that virt-install adds for a Linux guest.  The guest is
# the one of test_guest.py (<os> <kernel>, <initrd>, <cmdline>): it
# checks the sha256 of every file of its disk and prints its result on
# the serial console, a file here.  Its disk is
#
#   <disk type='network'> <source protocol='https'> on nginx (the test CA,
#   <ssl verify='yes'/>), which asks for HTTP basic authentication (the
#   password in a libvirt secret) and a cookie (<cookies>), with
#   <readahead> and <timeout>.
#
# What is checked: the guest verified every file; nginx saw the user and
# the cookie on every request, and answered each with 200 or 206; virsh
# domblkstat counted the guest's reads; the QEMU command line libvirt
# wrote in the domain's log has the https -blockdev with url, sslverify,
# readahead, timeout, username, password-secret and cookie-secret, and
# neither the password nor the cookie in clear.  Then the number of range
# requests of the boot with libvirt's <readahead size='65536'/> is
# compared with the one without <readahead>: a readahead that libvirt
# users set must not cost more requests than none.
#
# Under scripts/with-sanitizers.sh (make check-asan, whose build folder is
# <build>/asan) the emulator is the unsanitized one of <build>: libvirt
# first probes an emulator with -daemonize, and the ASan runtime of GCC 12
# deadlocks in the forked child when another thread held its allocator's
# lock at the fork (seen: the probe's QEMU waits on that lock forever).
"""libvirt boots the guest from a <disk type='network'> https disk."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import unittest
import uuid
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Union
from xml.sax.saxutils import escape, quoteattr

from e2e_case import E2ETestCase
from fixtures import MissingPrerequisite, Nginx
from libvirtd import Libvirtd
import qemu_guest
from qemu_guest import Guest, GuestDisk

USER, PASSWORD = 'qcurl-e2e', 'pa:ss w0rd&<libvirt>'
COOKIE_NAME, COOKIE_VALUE = 'qcurl_session', 'e2e-c00kie-4f1b'
#: The readahead of the http disk in libvirt's documentation (formatdomain),
#: in bytes
READAHEAD = 64 * 1024
#: <timeout seconds>
TIMEOUT = 10
#: A boot under TCG takes about 15 s; libvirt adds a few
BOOT_TIMEOUT = qemu_guest.BOOT_TIMEOUT


class AuthNginx(Nginx):
    """nginx that asks for HTTP basic authentication (401 without it)
    and a cookie (403 without it), and logs both with each request."""

    LOG_FORMAT = (Nginx.LOG_FORMAT[:-1] +
                  ',"user":"$remote_user","cookie":"$http_cookie"}')

    def _write_config(self) -> None:
        super()._write_config()
        assert self.dir is not None
        # The password in nginx's "{SHA}" form (a ":" ends a "{PLAIN}" one)
        digest = base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest())
        (self.dir / 'htpasswd').write_text(
            f'{USER}:{{SHA}}{digest.decode()}\n')
        conf = self.dir / 'nginx.conf'
        text = conf.read_text()
        location = (
            'location / {\n'
            '            auth_basic "qcurl e2e";\n'
            f'            auth_basic_user_file {self.dir}/htpasswd;\n'
            f'            if ($cookie_{COOKIE_NAME} != "{COOKIE_VALUE}") '
            '{ return 403; }\n'
            '        }')
        assert 'location / { }' in text
        conf.write_text(text.replace('location / { }', location))


def domain_xml(name: str,  # pylint: disable=too-many-arguments
               qemu: Path, guest: Guest, console: Path,
               port: int, secret_usage: str,
               readahead: Optional[int]) -> str:
    """A q35 domain as virt-install would write it for @guest, with an
    https network disk on 127.0.0.1:@port."""
    readahead_xml = ('' if readahead is None else
                     f"\n          <readahead size='{readahead}'/>")
    return f'''<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{escape(str(guest.vmlinuz))}</kernel>
    <initrd>{escape(str(guest.initramfs))}</initrd>
    <cmdline>{escape(guest.cmdline)}</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{escape(str(qemu))}</emulator>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='https' name='/disk.raw'>
        <host name='127.0.0.1' port='{port}'/>
        <ssl verify='yes'/>
        <cookies>
          <cookie name='{COOKIE_NAME}'>{COOKIE_VALUE}</cookie>
        </cookies>{readahead_xml}
        <timeout seconds='{TIMEOUT}'/>
        <auth username={quoteattr(USER)}>
          <secret type='iscsi' usage={quoteattr(secret_usage)}/>
        </auth>
      </source>
      <target dev='vda' bus='virtio'/>
      <readonly/>
    </disk>
    <serial type='file'>
      <source path={quoteattr(str(console))}/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
  </devices>
</domain>
'''


def command_line_objects(log: str, option: str) -> List[Dict[str, Any]]:
    """The JSON arguments of every @option (-blockdev, -object) of the
    QEMU command line in a libvirt domain log."""
    found = []
    for match in re.finditer(option + r" '(\{[^']*\})'", log):
        found.append(json.loads(match.group(1)))
    return found


# pylint: disable-next=too-many-instance-attributes,too-few-public-methods
class Boot:
    """What one boot under libvirt showed."""

    def __init__(self) -> None:
        self.name = ''
        self.result: Optional[Dict[str, str]] = None
        self.result_line = ''
        self.console = ''
        self.seconds = 0.0
        self.live_xml = ''
        self.domain_log = ''
        self.blkstat: Dict[str, int] = {}
        self.requests: List[Dict[str, Any]] = []

    def ranges(self) -> List[Dict[str, Any]]:
        """The requests that asked for a range of the disk."""
        return [e for e in self.requests
                if e['method'] == 'GET' and e['range']]


class LibvirtTest(E2ETestCase):
    """A libvirt domain boots the guest from an https network disk."""

    guest: ClassVar[Guest]
    disk: ClassVar[GuestDisk]
    qemu: ClassVar[Path]
    nginx: ClassVar[AuthNginx]
    libvirtd: ClassVar[Libvirtd]
    secret_usage: ClassVar[str]
    boots: ClassVar[Dict[Optional[int], Boot]]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        try:
            cls.guest = Guest.from_build(cls.bins.build)
            cls.disk = cls.guest.disk('test')
        except MissingPrerequisite as err:
            raise unittest.SkipTest(str(err)) from err
        www = cls.class_tmp / 'www'
        www.mkdir()
        (www / 'disk.raw').symlink_to(cls.disk.path)
        cls.nginx = cls.start_server(AuthNginx(www, cls.ca_dir))
        cls.qemu = cls.emulator()
        cls.libvirtd = cls.start_server(Libvirtd())
        # libvirt probes a new emulator once: here, not in the first boot
        cls.libvirtd.virsh('domcapabilities', '--emulatorbin', cls.qemu,
                           '--arch', 'x86_64',
                           '--machine', 'q35', '--virttype', 'qemu',
                           check=True)
        cls.boots = {}
        cls.secret_usage = f'qcurl-e2e-{uuid.uuid4().hex[:12]}'
        secret_uuid = str(uuid.uuid4())
        secret_xml = cls.class_tmp / 'secret.xml'
        secret_xml.write_text(
            "<secret ephemeral='no' private='yes'>\n"
            f'  <uuid>{secret_uuid}</uuid>\n'
            '  <description>nginx password of the curl e2e '
            'tests</description>\n'
            f"  <usage type='iscsi'><target>{cls.secret_usage}</target>"
            '</usage>\n</secret>\n')
        cls.libvirtd.virsh('secret-define', secret_xml, check=True)
        cls.addClassCleanup(cls.libvirtd.virsh, 'secret-undefine',
                            secret_uuid)
        value = cls.class_tmp / 'password'
        value.write_text(PASSWORD)
        cls.libvirtd.virsh('secret-set-value', secret_uuid, '--file', value,
                           '--plain', check=True)
        value.unlink()

    @classmethod
    def emulator(cls) -> Path:
        """The <emulator>: the build's qemu-system-x86_64, or under the
        sanitizers the unsanitized one of the same build (see above)."""
        if not os.environ.get('QCURL_SANITIZER_LOGS'):
            return cls.bins.qemu_system
        plain = cls.bins.build.parent / 'qemu-system-x86_64'
        if cls.bins.build.name != 'asan' or not os.access(plain, os.X_OK):
            raise MissingPrerequisite(
                f'{plain} missing: under the sanitizers the libvirt test '
                'runs the unsanitized emulator of <build>, next to '
                '<build>/asan (scripts/check-asan.sh)')
        return plain

    # -- helpers

    def boot(self, readahead: Optional[int]) -> Boot:
        """Boot the guest with <readahead size=@readahead> (None: no
        <readahead>), once per class; assert that it verified every file.
        """
        if readahead in self.boots:
            return self.boots[readahead]
        boot = Boot()
        boot.name = f'qcurl-e2e-{uuid.uuid4().hex[:8]}'
        log_dir = (self.bins.build / 'guest-logs' /
                   f'libvirt-readahead-{readahead}')
        log_dir.mkdir(parents=True, exist_ok=True)
        console = log_dir / 'console.log'
        console.unlink(missing_ok=True)
        xml = self.tmp / f'{boot.name}.xml'
        xml.write_text(domain_xml(boot.name, self.qemu,
                                  self.guest, console,
                                  self.nginx.https_port, self.secret_usage,
                                  readahead))
        self.nginx.reset_log()
        start = time.monotonic()
        # A transient domain: it is gone once the guest powers off
        self.libvirtd.virsh('create', xml, check=True)
        self.addCleanup(self.destroy, boot.name)
        # (the cookie's value is security information)
        live = self.libvirtd.virsh('dumpxml', '--security-info', boot.name)
        boot.live_xml = live.stdout
        deadline = start + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            boot.console = read_text(console)
            if qemu_guest.RESULT_PREFIX in boot.console:
                break
            # The guest powers off once it has printed its result: count
            # its reads while it runs
            stat = self.libvirtd.virsh('domblkstat', boot.name, 'vda',
                                       timeout=10)
            if stat.returncode == 0:
                boot.blkstat = parse_blkstat(stat.stdout)
            time.sleep(0.5)
        boot.seconds = time.monotonic() - start
        self.wait_gone(boot.name, start + BOOT_TIMEOUT + 30)
        boot.console = read_text(console)
        boot.domain_log = self.libvirtd.domain_log(boot.name)
        (log_dir / 'domain.log').write_text(boot.domain_log)
        (log_dir / 'domain.xml').write_text(boot.live_xml)
        boot.requests = self.nginx.settled_log()
        (log_dir / 'nginx-access.json').write_text(
            json.dumps(boot.requests, indent=1))
        for line in boot.console.splitlines():
            if qemu_guest.RESULT_PREFIX in line:
                boot.result_line = line.strip()
                boot.result = qemu_guest.parse_result(line)
                break
        fields = boot.result or {}
        count = str(self.disk.file_count)
        if (fields.get('status') != 'ok' or fields.get('failed') != '0' or
                fields.get('files') != count or
                fields.get('verified') != count):
            self.fail(f'the guest did not verify all {count} files under '
                      f'libvirt after {boot.seconds:.1f} s\n'
                      f'result: {boot.result_line or "(none)"}\n'
                      f'logs kept in {log_dir}\n'
                      f'--- serial console (end) ---\n'
                      f'{boot.console[-4000:]}\n'
                      f'--- domain log (end) ---\n'
                      f'{boot.domain_log[-4000:]}\n'
                      f'--- libvirtd ---\n{self.libvirtd.errors()}')
        self.boots[readahead] = boot
        return boot

    def destroy(self, name: str) -> None:
        """Destroy domain @name if it still runs."""
        if name in self.libvirtd.names('list'):
            self.libvirtd.virsh('destroy', name)

    def wait_gone(self, name: str, deadline: float) -> None:
        """Wait until the transient domain @name is gone (the guest
        powered off), or destroy it at @deadline."""
        while time.monotonic() < deadline:
            if name not in self.libvirtd.names('list'):
                return
            time.sleep(0.2)
        self.destroy(name)

    def https_blockdev(self, boot: Boot) -> Dict[str, Any]:
        """The https -blockdev of the domain's QEMU command line."""
        nodes = [b for b in command_line_objects(boot.domain_log,
                                                 '-blockdev')
                 if b.get('driver') == 'https']
        self.assertEqual(len(nodes), 1, 'no single https -blockdev in the '
                         f'domain log:\n{boot.domain_log[-6000:]}')
        return nodes[0]

    # -- tests

    def test_https_disk(self) -> None:
        """The guest verifies its disk; libvirt's options reach nginx and
        the driver; virsh domblkstat counts the reads."""
        boot = self.boot(READAHEAD)
        # Every request had the password and the cookie, and succeeded
        self.assertTrue(boot.ranges(), 'nginx logged no range request')
        self.assertEqual({e['uri'] for e in boot.requests}, {'/disk.raw'})
        self.assertEqual({e['user'] for e in boot.requests}, {USER})
        self.assertEqual({e['cookie'] for e in boot.requests},
                         {f'{COOKIE_NAME}={COOKIE_VALUE}'})
        self.assertLessEqual({e['status'] for e in boot.requests},
                             {200, 206})
        self.assertGreaterEqual(
            sum(e['body_bytes_sent'] for e in boot.ranges()),
            self.disk.file_bytes, 'nginx sent less than the files')
        # virsh domblkstat worked while the guest ran
        self.assertGreater(boot.blkstat.get('rd_bytes', 0), 0,
                           f'domblkstat: {boot.blkstat}')
        self.assertGreater(boot.blkstat.get('rd_req', 0), 0)
        # The live XML keeps the disk's source as given
        for needle in ("protocol='https'", "<readahead size='65536'/>",
                       "<timeout seconds='10'/>", "<ssl verify='yes'/>",
                       f"<cookie name='{COOKIE_NAME}'>{COOKIE_VALUE}"
                       '</cookie>'):
            self.assertIn(needle, boot.live_xml)
        # The -blockdev libvirt made of it
        node = self.https_blockdev(boot)
        self.assertEqual(node['url'], self.nginx.https_url('disk.raw'))
        self.assertIs(node['sslverify'], True)
        self.assertEqual(node['readahead'], READAHEAD)
        self.assertEqual(node['timeout'], TIMEOUT)
        self.assertEqual(node['username'], USER)
        objects = {o['id']: o for o in
                   command_line_objects(boot.domain_log, '-object')}
        for key in ('password-secret', 'cookie-secret'):
            self.assertIn(key, node)
            self.assertEqual(objects.get(node[key], {}).get('qom-type'),
                             'secret', f'{key} is no -object secret')
        # ... with the password and the cookie encrypted
        for clear in (PASSWORD, COOKIE_VALUE,
                      base64.b64encode(PASSWORD.encode()).decode(),
                      base64.b64encode(COOKIE_VALUE.encode()).decode()):
            self.assertNotIn(clear, boot.domain_log)
        print(f'\nlibvirt: boot with <readahead size={READAHEAD}>: '
              f'{len(boot.ranges())} range requests, '
              f'{sum(e["body_bytes_sent"] for e in boot.ranges())} bytes, '
              f'result after {boot.seconds:.1f} s, domblkstat {boot.blkstat}')

    def test_without_readahead(self) -> None:
        """The same domain without <readahead>: the driver's default."""
        boot = self.boot(None)
        self.assertNotIn('readahead', self.https_blockdev(boot))
        self.assertEqual({e['user'] for e in boot.requests}, {USER})
        print(f'\nlibvirt: boot without <readahead>: '
              f'{len(boot.ranges())} range requests, '
              f'{sum(e["body_bytes_sent"] for e in boot.ranges())} bytes, '
              f'result after {boot.seconds:.1f} s')

    def test_readahead_no_more_requests(self) -> None:
        """libvirt's 64 KiB readahead costs no more range requests than
        no readahead at all."""
        with_ra = len(self.boot(READAHEAD).ranges())
        without = len(self.boot(None).ranges())
        print(f'\nlibvirt: range requests of a boot: {with_ra} with '
              f'<readahead size={READAHEAD}>, {without} without')
        self.assertLessEqual(with_ra, without,
                             f'{READAHEAD} bytes of readahead made the boot '
                             f'send {with_ra} range requests, none '
                             f'{without}')


def read_text(path: Union[str, Path]) -> str:
    """The text of @path, '' if it cannot be read."""
    try:
        return Path(path).read_text(encoding='utf-8', errors='replace')
    except OSError:
        return ''


def parse_blkstat(text: str) -> Dict[str, int]:
    """virsh domblkstat's output: {'rd_req': 12, 'rd_bytes': 4096, ...}."""
    stats = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[2].lstrip('-').isdigit():
            stats[words[1]] = int(words[2])
    return stats


if __name__ == '__main__':
    unittest.main()
