#!/usr/bin/python3
# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.
"""The Xen lab's scenario runner, run inside dom0 (issue 10).

Why this exists: tools/xenlab/lab.py boots a Xen host under QEMU and
cannot reach into it except through the serial console. This script is
put on the per-run disk with a wheel of the current checkout; dom0 runs it
at boot (dom0-entry.sh). It

* captures the QEMU command lines libxl builds for libvirt HVM guests
  (before the plugin is installed: plain libvirt) and times unrestricted
  starts for the bench;
* installs the plugin as doc/source/install says (venv, reaper user,
  directories, configuration, launcher, libvirt hook, preflight);
* runs scenarios 1-5 of issue 10 through the plugin as an orchestrator
  uses it: the ``xen-dm-restrict boot``/``render`` commands and the
  library's ``virt`` wrapper, on ``xen:///system``.

It prints, one a line, ``XENLAB-RESULT <id> PASS|FAIL <s>s <title>``,
``XENLAB-EVIDENCE <id> <ok|FAIL|info> <text>``, ``XENLAB-ARGV <label>
<argv>`` and ``XENLAB-BENCH <json>``, which lab.py parses; full command
output goes to out/detail.log on the per-run disk.

Run under /usr/bin/python3 (Debian's); the parts that need the plugin's
library re-run this file under the venv's Python (``--library``).
"""

import contextlib
import glob
import json
import os
import re
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import termios
import time
import traceback
import tty

URI = 'xen:///system'
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, 'out')
VENV = '/opt/xen-dm-restrict'
CONF = '/etc/xen-dm-restrict/xen-dm-restrict.conf'
LAUNCHER = '/usr/local/sbin/xen-dm-restrict-launch'
LAB = '/var/lib/xen-dm-restrict-lab'
# Nova's layout: an instance directory each, the base images in _base.
INSTANCES = '/var/lib/xen-dm-restrict-instances'
QEMU = '/usr/libexec/xen-qemu-system-i386'
HVMLOADER = '/usr/lib/xen-4.17/boot/hvmloader'
BRIDGE = 'xenbr0'
RANGE = (200000, 200999)
BENCH_STARTS = 3
# The size of the bench's guest disk (MiB), read whole by the guest.
DISK_MIB = 64
# Crash diagnostics (lab only): the daemon hook's stderr and calls, and
# where cores go.
HOOK_STDERR = '/var/log/xenlab-hook.stderr'
HOOK_CALLS = '/var/log/xenlab-hook.calls'
CORES = '/var/crash'
# LAB-ONLY DIAGNOSTICS (hook crash, hook timing): /etc/libvirt/hooks/libxl
# is this wrapper around the hook the install guide's step writes
# (``install-hook``, here to HOOK_INSTALLED). Cores are enabled, and it
# keeps a copy of stderr and every call with its times and exit status,
# so a crash of the hook leaves evidence and the bench can report the
# hook's time per operation (the wrapper's own date and tee included).
HOOK_INSTALLED = '/etc/libvirt/hooks/libxl.installed'
#: Where the wrapper waits while the bench times the hook without it.
HOOK_WRAPPED = '/etc/libvirt/hooks/libxl.wrapper'
HOOK_WRAPPER = '''#!/bin/bash
# The lab's wrapper of xen-dm-restrict-libvirt-hook (install-hook's shim).
ulimit -c unlimited
t0=$(date +%%s.%%N)
%s "$@" 2> >(tee -a %s >&2)
rc=$?
echo "$t0 $(date +%%s.%%N) rc=$rc $*" >> %s
exit $rc
''' % (HOOK_INSTALLED, HOOK_STDERR, HOOK_CALLS)


def emit(line):
    print(line, flush=True)


def detail(text):
    with open(os.path.join(OUT, 'detail.log'), 'a') as f:
        f.write(text if text.endswith('\n') else text + '\n')


def run(cmd, timeout=300, stdin=None, env=None):
    """Run a command; its output goes to detail.log.

    It raises only the scenario's watchdog (ScenarioTimeout).
    """
    t0 = time.monotonic()
    STEP['cmd'], STEP['t0'] = shlex.join(cmd)[:160], t0
    emit('XENLAB-STEP %s %s' % (STEP['sid'], STEP['cmd']))
    try:
        p = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                           timeout=timeout, env=env)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        # Its output is bytes even with text=True.
        out, err = [x.decode('utf-8', 'replace') if isinstance(x, bytes)
                    else (x or '') for x in (e.stdout, e.stderr)]
        rc, err = 124, err + ' TIMEOUT after %d s' % timeout
        hang_evidence(cmd)
    el = time.monotonic() - t0
    detail('$ %s\n[rc=%d, %.2f s]\n%s%s' % (
        shlex.join(cmd), rc, el, out, err))

    class R(object):
        pass
    r = R()
    r.rc, r.out, r.err, r.seconds = rc, out, err, el
    r.text = (out + err).strip()
    return r


def hang_evidence(cmd):
    """What dom0 waits on when a command hung.

    Every task in uninterruptible sleep with its kernel stack, the
    storage daemons' threads and logs, the nbd devices' servers.
    """
    emit('XENLAB-HANG %s' % shlex.join(cmd)[:160])
    lines = []
    for task in glob.glob('/proc/[0-9]*/task/[0-9]*'):
        try:
            with open(task + '/stat') as f:
                stat = f.read()
            with open(task + '/wchan') as f:
                wchan = f.read().strip()
            state = stat.rsplit(')', 1)[1].split()[0]
            comm = stat.split('(', 1)[1].rsplit(')', 1)[0]
        except (OSError, IndexError):
            continue
        if state == 'D' or comm.startswith(('qemu-storage', 'nbd')):
            stack = ''
            if state == 'D':
                with contextlib.suppress(OSError):
                    with open(task + '/stack') as f:
                        stack = ' < '.join(x.split()[-1] for x in
                                           f.read().splitlines()[:6])
            lines.append('%s %s %s %s %s' % (task.split('/')[2], comm,
                                             state, wchan, stack))
    for line in lines[:30]:
        emit('XENLAB-HANG task %s' % line[:300])
    # The process tree, waits included: which of libvirtd's children
    # (hook, hotplug script, launcher) the command is waiting for.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        tree = subprocess.run(['ps', '-eHo', 'pid,ppid,stat,wchan:24,args'],
                              capture_output=True, text=True, timeout=20)
        for line in tree.stdout.splitlines():
            fields = line.split(None, 4)
            command = fields[4].lstrip() if len(fields) == 5 else ''
            # Kernel threads' names are in brackets; a command line with
            # a bracket (the hook service's workers) is kept.
            if not command.startswith('['):
                emit('XENLAB-HANG ps %s' % line[:240])
    for path in glob.glob('/sys/block/nbd*/pid'):
        with contextlib.suppress(OSError):
            emit('XENLAB-HANG %s server pid %s' % (
                path, open(path).read().strip()))
    for path in glob.glob('/run/xen-dm-restrict/storage/*/*/daemon.log'):
        with contextlib.suppress(OSError):
            with open(path, errors='replace') as f:
                emit('XENLAB-HANG %s: %s' % (path, ' | '.join(
                    f.read().strip().splitlines()[-5:])[:400]))


def virsh(*args, **kw):
    return run(['virsh', '-c', URI] + list(args), **kw)


def cli(*args, **kw):
    return run([VENV + '/bin/xen-dm-restrict'] + list(args), **kw)


def first_line(text, n=240):
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return (lines[-1] if lines else '')[:n]


#: What the runner is doing now: the scenario and its last command, for
#: the watchdog's report (and lab.py's, when dom0 itself stops).
STEP = {'sid': '-', 'cmd': None, 't0': 0.0}
#: Seconds a scenario may take before its watchdog fails it.
SCENARIO_TIMEOUT = 900


class ScenarioTimeout(Exception):
    pass


def _watchdog(signum, frame):
    raise ScenarioTimeout('%s hung: its step %r had run %.0f s' % (
        STEP['sid'], STEP['cmd'], time.monotonic() - STEP['t0']))


class Scenario(object):
    """One PASS/FAIL item: its checks are its evidence lines."""

    def __init__(self, sid, title):
        self.sid, self.title = sid, title
        self.ok = True
        self.t0 = time.monotonic()

    def check(self, cond, text):
        self.ok &= bool(cond)
        emit('XENLAB-EVIDENCE %s %s %s' % (
            self.sid, 'ok' if cond else 'FAIL', text))
        return bool(cond)

    def info(self, text):
        emit('XENLAB-EVIDENCE %s info %s' % (self.sid, text))

    def done(self):
        emit('XENLAB-RESULT %s %s %.1fs %s' % (
            self.sid, 'PASS' if self.ok else 'FAIL',
            time.monotonic() - self.t0, self.title))
        return self.ok


def scenario(sid, title, timeout=SCENARIO_TIMEOUT):
    """A scenario: its checks, and a watchdog.

    The watchdog fails it, naming the step that hung, rather than lose
    the rest of the run. A scenario that failed while a guest
    triple-faulted runs once more (:func:`faults_since`).
    """
    def wrap(fn):
        def attempt(*a):
            s = Scenario(sid, title)
            STEP.update(sid=sid, cmd=None, t0=time.monotonic())
            old = signal.signal(signal.SIGALRM, _watchdog)
            signal.alarm(timeout)
            try:
                fn(s, *a)
            except ScenarioTimeout as err:
                s.check(False, 'watchdog after %d s: %s' % (timeout, err))
            except Exception:
                s.check(False, 'runner error: ' + ' | '.join(
                    traceback.format_exc().strip().splitlines()[-3:]))
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, old)
                STEP.update(sid='-', cmd=None)
            return s

        def call(*a):
            before = triple_faults()
            domains = set(virsh('list', '--all', '--name').out.split())
            s = attempt(*a)
            faults = [] if s.ok else faults_since(before)
            if faults:
                emit('XENLAB-EMULATION %s failed while a guest triple-'
                     'faulted (%s); its checks above are discarded and it '
                     'runs once more' % (sid, ' | '.join(faults)))
                STATE.setdefault('triple_faults', []).append(sid)
                undefine_new(domains)
                s = attempt(*a)
            return s.done()
        return call
    return wrap


def triple_faults():
    """Xen's "Triple fault" lines, as ``xl dmesg`` has them now."""
    return [line.strip() for line in run(['xl', 'dmesg']).out.splitlines()
            if re.search(r'\bd\d+v\d+ Triple fault', line)]


def faults_since(before):
    """The triple faults since ``before``.

    LAB-ONLY WORKAROUND (guest triple fault). Any guest may meet the
    emulation's fault (:func:`restart_after_fault`), firmware included:
    run 26's guest died in SeaBIOS with Xen's own CS and RIP
    (e008:ffff82d0...) and stack in its register state. A scenario that
    failed while one happened is run again, once, from a clean slate
    (:func:`undefine_new`).
    """
    seen = set(before)
    return [line for line in triple_faults() if line not in seen]


def undefine_new(domains):
    """Destroy and undefine the domains not in ``domains``.

    Through the library, as the orchestrator does: their leases go.
    """
    for name in virsh('list', '--all', '--name').out.split():
        if name in domains:
            continue
        uuid = virsh('domuuid', name).out.strip()
        virsh('destroy', name)
        r = library('undefine', uuid)
        if r.rc != 0:
            virsh('undefine', name)


# --- domains ---------------------------------------------------------------

def domain_xml(name, uuid, memory=64, kernel=False, disk=None, cdrom=None,
               vif=False, vnc=False, xen_args=(), emulator=QEMU, nics=''):
    """A libvirt HVM guest; serial and console are pty only.

    The policy allows no other chardev.
    """
    os_extra = ''
    clock = ''
    if kernel:
        os_extra = ('<kernel>%s/vmlinuz</kernel><initrd>%s/tiny.cpio.gz'
                    '</initrd><cmdline>console=ttyS0 loglevel=4 panic=-1'
                    '</cmdline>' % (LAB, LAB))
        # LAB-ONLY WORKAROUND (TSC): Linux in an HVM guest under TCG's
        # nested SVM dies on RDTSCP ("SVM Insn len emulation failed")
        # unless the TSC is native. Firmware-only guests need nothing.
        clock = "<clock offset='utc'><timer name='tsc' mode='native'/></clock>"
    else:
        os_extra = "<boot dev='hd'/>"
    devices = ''
    if disk:
        devices += disk
    if cdrom:
        devices += cdrom
    if vif:
        devices += ("<interface type='bridge'><source bridge='%s'/>"
                    "<mac address='00:16:3e:00:00:%02x'/></interface>"
                    % (BRIDGE, abs(hash(name)) % 200))
    devices += nics
    if vnc:
        devices += "<graphics type='vnc' port='-1' listen='127.0.0.1'/>"
    ns = ''
    cmdline = ''
    if xen_args:
        ns = " xmlns:xen='http://libvirt.org/schemas/domain/xen/1.0'"
        cmdline = '<xen:commandline>%s</xen:commandline>' % ''.join(
            "<xen:arg value='%s'/>" % a for a in xen_args)
    emu = '<emulator>%s</emulator>' % emulator if emulator else ''
    return """<domain type='xen'%s>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='xenfv'>hvm</type>
    <loader type='rom'>%s</loader>%s</os>
  <features><acpi/><apic/></features>
  %s
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    %s
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    %s
  </devices>
  %s
</domain>
""" % (ns, name, uuid, memory, HVMLOADER, os_extra, clock, emu, devices,
       cmdline)


def uuid_of(n):
    return '6f1c4b9e-2a7d-4c3e-9b51-%012d' % n


def write(path, text):
    with open(path, 'w') as f:
        f.write(text)
    return path


def domid(name):
    r = virsh('domid', name)
    return int(r.out.strip()) if r.rc == 0 and r.out.strip().isdigit() \
        else None


def state(name):
    return virsh('domstate', name).out.strip()


def dm_pid(dom_id):
    """The pid of the device model of domain ``dom_id``.

    With the compiled launcher front on cgroup v2, the front stays QEMU's
    parent (libxl knows its pid) and has the same command line: the
    device model is the matching process whose parent matches too.
    """
    found = {}
    for path in glob.glob('/proc/[0-9]*/cmdline'):
        try:
            with open(path, 'rb') as f:
                argv = f.read().split(b'\0')
            with open(path[:-len('cmdline')] + 'stat', 'rb') as f:
                ppid = int(f.read().rsplit(b')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b'-xen-domid' in argv:
            i = argv.index(b'-xen-domid')
            if i + 1 < len(argv) and argv[i + 1] == str(dom_id).encode():
                found[int(path.split('/')[2])] = ppid
    children = [pid for pid, ppid in found.items() if ppid in found]
    if children:
        return children[0]
    return next(iter(found), None)


def proc_argv(pid):
    with open('/proc/%d/cmdline' % pid, 'rb') as f:
        return [a.decode() for a in f.read().split(b'\0')[:-1]]


def facts(pid):
    """What /proc says about a device model."""
    f = {'pid': pid}
    with open('/proc/%d/status' % pid) as st:
        for line in st:
            k, _, v = line.partition(':')
            if k in ('Uid', 'Gid', 'Groups', 'CapEff', 'CapPrm', 'Seccomp',
                     'NoNewPrivs', 'SigIgn', 'Threads', 'VmHWM', 'VmRSS'):
                f[k] = ' '.join(v.split())
    with open('/proc/%d/cgroup' % pid) as cg:
        f['cgroups'] = [line.rstrip('\n').split(':', 2)[2] for line in cg]
    f['root'] = os.readlink('/proc/%d/root' % pid)
    for ns in ('mnt', 'ipc', 'net', 'pid'):
        f['ns_' + ns] = ('own' if os.readlink('/proc/%d/ns/%s' % (pid, ns))
                         != os.readlink('/proc/1/ns/%s' % ns) else 'host')
    with open('/proc/%d/limits' % pid) as lim:
        for line in lim:
            for key, label in (('Max file size', 'FSIZE'),
                               ('Max core file size', 'CORE'),
                               ('Max locked memory', 'MEMLOCK'),
                               ('Max file locks', 'LOCKS'),
                               ('Max msgqueue size', 'MSGQUEUE'),
                               ('Max processes', 'NPROC')):
                if line.startswith(key):
                    f[label] = line[len(key):].split()[0]
    fds = []
    for fd in sorted(os.listdir('/proc/%d/fd' % pid), key=int):
        try:
            fds.append(os.readlink('/proc/%d/fd/%s' % (pid, fd)))
        except OSError:
            pass
    f['fds'] = ','.join(sorted(set(x for x in fds
                                   if x.startswith('/dev/'))))
    f['taps'] = {}
    for fd in os.listdir('/proc/%d/fdinfo' % pid):
        try:
            with open('/proc/%d/fdinfo/%s' % (pid, fd)) as info:
                for line in info:
                    if line.startswith('iff:'):
                        f['taps'][int(fd)] = line.split()[1]
        except OSError:
            pass
    f['argv'] = proc_argv(pid)
    return f


def fact_line(f):
    return ('pid %d Uid %s Gid %s Groups [%s] CapEff %s Seccomp %s root %s '
            'mnt %s ipc %s net %s FSIZE %s CORE %s MEMLOCK %s LOCKS %s '
            'MSGQUEUE %s NPROC %s devfds %s' % (
                f['pid'], f['Uid'], f['Gid'], f.get('Groups', ''),
                f['CapEff'], f.get('Seccomp'), f['root'], f['ns_mnt'],
                f['ns_ipc'], f['ns_net'], f.get('FSIZE'), f.get('CORE'),
                f.get('MEMLOCK'), f.get('LOCKS'), f.get('MSGQUEUE'),
                f.get('NPROC'), f['fds']))


def uid_procs(uid):
    r = run(['ps', '-eo', 'pid=,uid=,args=', '--no-headers'])
    return [x.strip() for x in r.out.splitlines()
            if x.split() and len(x.split()) > 1 and x.split()[1] == str(uid)]


def libxl_spawn_argv(name=None, text=None):
    """The argv libxl logged when it spawned the device model (last one).

    From libvirt's per-domain libxl log, or from ``xl -vvv`` output.
    """
    if text is None:
        try:
            with open('/var/log/libvirt/libxl/%s.log' % name) as f:
                text = f.read()
        except OSError:
            return None
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        if re.search(r'Spawning device-model \S+ with arguments', line):
            start = i
    if start is None:
        return None
    argv = []
    for line in lines[start + 1:]:
        m = re.search(r'libxl__spawn_local_dm: (?:Domain \d+:)?\s{2}(.*)$',
                      line)
        if not m:
            break
        argv.append(m.group(1))
    return argv


def wait_state(name, want, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if state(name) == want:
            return True
        time.sleep(1)
    return False


def wait_libvirtd(timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if virsh('list', '--all', timeout=30).rc == 0:
            return True
        time.sleep(2)
    return False


def read_pty(path, marker, timeout, whole=False):
    """Read a guest's pty serial until ``marker``; return (found, text).

    The text is the marker's line, or everything read with ``whole``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        # The guest's domain, and with it its pty, went first (run 26).
        return False, '%s is gone' % path
    try:
        try:
            tty.setraw(fd)
        except termios.error:
            pass
        buf = b''
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], 2)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                m = re.search(re.escape(marker).encode() + rb'[^\r\n]*\r?\n',
                              buf)
                if m:
                    return True, (buf if whole else m.group(0)).decode(
                        'utf-8', 'replace')
        return False, buf.decode('utf-8', 'replace')
    finally:
        os.close(fd)


def pty_of(name):
    m = re.search(r"<serial type='pty'>\s*<source path='([^']+)'",
                  virsh('dumpxml', name).out)
    return m.group(1) if m else None


def guest_log(dom_id, n=3):
    """The firmware's lines (hvmloader, SeaBIOS) in Xen's console."""
    r = run(['xl', 'dmesg'])
    lines = [x for x in r.out.splitlines() if '(d%d)' % dom_id in x]
    return [x.strip()[-150:] for x in lines[-n:]], len(lines)


def triple_fault(dom_id):
    """Xen's line about a triple fault of domain ``dom_id``, or None."""
    return next((line for line in triple_faults()
                 if re.search(r'\bd%dv\d+ ' % dom_id, line)), None)


def restart_after_fault(name, dom_id, before, fault):
    """Start domain ``name`` once more after its guest triple-faulted.

    LAB-ONLY WORKAROUND (guest triple fault): an HVM guest under TCG's
    nested SVM now and then triple-faults (run 19: Linux at "AGP:
    Checking aperture", a PCI configuration access; run 24: the NIC's
    option ROM). Xen logs "dNvM Triple fault" and the domain is
    destroyed (on_reboot=destroy). That is the guest's CPU, emulated
    twice over, not the device model: the domain is started once more
    (``virsh start``, through the hook again) and the retry is reported
    (``XENLAB-EMULATION``) and counted at the end of the run.

    :returns: (domain id of the new run or None, why not).
    """
    emit('XENLAB-EMULATION %s (domid %d) triple-faulted before %s: %s; '
         'started once more' % (name, dom_id, before, fault))
    STATE.setdefault('triple_faults', []).append(name)
    virsh('destroy', name)
    r = virsh('start', name, timeout=300)
    new_id = domid(name)
    if r.rc != 0 or new_id is None:
        return None, 'the second start: exit %d %s' % (r.rc,
                                                       first_line(r.text))
    return new_id, ''


def read_guest(name, dom_id, marker, timeout=400, whole=False):
    """Read domain ``name``'s serial console until ``marker``.

    A guest that triple-faulted first is started once more
    (:func:`restart_after_fault`).

    :returns: (found, text, domain id of the run that was read).
    """
    def read():
        pty = pty_of(name)
        return (read_pty(pty, marker, timeout, whole=whole) if pty
                else (False, 'no pty'))

    found, text = read()
    fault = None if found else triple_fault(dom_id)
    if not fault:
        return found, text, dom_id
    new_id, why = restart_after_fault(name, dom_id, marker, fault)
    if new_id is None:
        return False, '%s; %s' % (first_line(text), why), dom_id
    found, text = read()
    return found, text, new_id


def halting_boot_sector(path):
    """Make ``path``'s first sector a boot sector that halts the guest.

    SeaBIOS tries the hard disk before a NIC's option ROM: a firmware-only
    guest with a NIC and a blank disk otherwise runs iPXE (run 24's guest
    triple-faulted there under the emulation). The sector writes
    XENLAB-MBR-HALT to Xen's debug port 0xe9 (Xen's own: ``xl dmesg``
    shows it as the guest's line), masks both PICs and halts with
    interrupts enabled, so the vCPU blocks for good. Xen takes a HLT with
    interrupts disabled for a power-off (``hvm_hlt``; run 26).
    """
    code = bytes.fromhex(
        'fa'          # cli
        '31c0'        # xor ax, ax
        '8ed8'        # mov ds, ax
        'be1d7c'      # mov si, 0x7c1d (the text below)
        'bae900'      # mov dx, 0xe9
        'ac'          # 0x0b: lodsb
        '84c0'        # test al, al
        '7403'        # jz 0x13
        'ee'          # out dx, al
        'ebf8'        # jmp 0x0b
        'b0ff'        # 0x13: mov al, 0xff
        'e621'        # out 0x21, al (master PIC: all masked)
        'e6a1'        # out 0xa1, al (slave PIC)
        'fb'          # sti
        'f4'          # 0x1a: hlt
        'ebfd'        # jmp 0x1a
    ) + b'XENLAB-MBR-HALT\n\0'
    sector = code.ljust(510, b'\0') + b'\x55\xaa'
    with open(path, 'r+b') as disk:
        disk.write(sector)


def boot(name, xml_path, tenant='acme', timeout=600):
    """Boot through the plugin as the orchestrator would (CLI)."""
    r = cli('boot', '-v', '--format', 'json', '--connect', URI, '--tenant',
            tenant, xml_path, timeout=timeout)
    try:
        res = json.loads(r.out[r.out.index('{'):])
    except ValueError:
        res = None
    if res and 'uid' not in res:
        # boot prints uid, gid and chroot only when it reads the record
        # back with virDomain.metadata(); when it does not, the lab reads
        # the record from the domain's XML and says so.
        rb = library('record', res.get('uuid', ''))
        emit('XENLAB-FACT boot --format json of %s has no uid/gid/chroot;'
             ' read back: %s' % (name, first_line(rb.out, 600)))
        try:
            got = json.loads(rb.out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            got = {}
        for k in ('uid', 'gid', 'chroot', 'applied'):
            if k in got:
                res[k] = got[k]
    return r, res


# --- the plain-libvirt part (before the plugin is installed) ---------------

def capture_argv():
    """libxl's QEMU command lines for libvirt HVM guests (issue 9's input)."""
    s = Scenario('argv', 'libxl device-model argv captured (plain libvirt)')
    os.makedirs(LAB, exist_ok=True)
    run(['truncate', '-s', '16M', LAB + '/disk0.img'])
    run(['truncate', '-s', '2M', LAB + '/cd0.iso'])
    loop = run(['losetup', '-f', '--show', LAB + '/disk0.img']).out.strip()
    file_disk = ("<disk type='file' device='disk'><driver name='phy'/>"
                 "<source file='%s/disk0.img'/><target dev='hda' bus='ide'/>"
                 "</disk>" % LAB)
    raw_disk = ("<disk type='file' device='disk'><driver name='qemu' "
                "type='raw'/><source file='%s/disk0.img'/>"
                "<target dev='hda' bus='ide'/></disk>" % LAB)
    block_disk = ("<disk type='block' device='disk'><driver name='phy'/>"
                  "<source dev='%s'/><target dev='hda' bus='ide'/></disk>"
                  % loop)
    cdrom = ("<disk type='file' device='cdrom'><source file='%s/cd0.iso'/>"
             "<target dev='hdc' bus='ide'/><readonly/></disk>" % LAB)
    guests = [
        ('diskless', dict()),
        ('phy-file-disk', dict(disk=file_disk)),
        ('qemu-raw-file-disk', dict(disk=raw_disk)),
        ('phy-block-disk', dict(disk=block_disk)),
        # No VNC: under network_namespace = required (the lab's
        # default) the plugin refuses <graphics type='vnc'> (scenario
        # 6), so its QEMU command line is not one the launcher runs.
        ('full', dict(disk=file_disk, cdrom=cdrom, vif=True)),
        ('restrict-arg', dict(xen_args=('-xen-domid-restrict',))),
    ]
    for i, (label, kw) in enumerate(guests):
        name = 'argv-' + label
        path = write('/root/%s.xml' % name,
                     domain_xml(name, uuid_of(900 + i), **kw))
        r = virsh('define', path)
        r = virsh('start', name, timeout=300) if r.rc == 0 else r
        if r.rc != 0:
            s.check(False, '%s: start failed: %s' % (label,
                                                     first_line(r.text)))
            virsh('undefine', name)
            continue
        time.sleep(3)
        d = domid(name)
        pid = dm_pid(d) if d else None
        logged = libxl_spawn_argv(name)
        if logged:
            emit('XENLAB-ARGV %s libxl-log: %s' % (label, shlex.join(logged)))
        if pid:
            emit('XENLAB-ARGV %s proc: %s' % (
                label, shlex.join(proc_argv(pid))))
        s.check(pid is not None, '%s: running (domid %s), device model pid '
                '%s, start %.1f s' % (label, d, pid, r.seconds))
        detail(virsh('dumpxml', name).out)
        try:
            with open('/var/log/libvirt/libxl/%s.log' % name,
                      errors='replace') as f:
                detail('--- libxl log of %s:\n%s' % (name, f.read()[-6000:]))
        except OSError as err:
            detail('--- no libxl log of %s: %s' % (name, err))
        # libxl's teardown of a loop-device disk once took more than
        # 300 s here; the capture needs only the start.
        virsh('destroy', name, timeout=60)
        virsh('undefine', name)
    if loop:
        run(['losetup', '-d', loop])
    return s.done()


def nova_image(top, marker):
    """A Nova-style disk.

    A qcow2 overlay ``top`` on a raw file in the lab's ``_base``
    directory that starts with ``marker``.
    """
    base = INSTANCES + '/_base/base.raw'
    os.makedirs(os.path.dirname(base), exist_ok=True)
    with open(base, 'wb') as f:
        f.write(marker.encode())
        f.truncate(DISK_MIB << 20)
    os.chmod(base, 0o644)
    os.makedirs(os.path.dirname(top), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(top)
    return run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                '-b', base, top])


def disk_read(text):
    """MiB/s of the guest's whole-disk read (XENLAB-GUEST-DISKREAD)."""
    m = re.search(r'XENLAB-GUEST-DISKREAD sectors=(\d+) t0=([\d.]+) '
                  r't1=([\d.]+)', text)
    if not m or float(m.group(3)) <= float(m.group(2)):
        return None
    return round(int(m.group(1)) * 512 / (1 << 20) / (
        float(m.group(3)) - float(m.group(2))), 1)


def disk_unrestricted():
    """The guest's disk read through libxl's qdisk backend.

    The same guest and image, before the plugin is installed: QEMU as
    root parses the qcow2.
    """
    marker = 'XENLABDISK-%s' % os.urandom(8).hex()
    top = LAB + '/plain-instances/disk'
    nova_image(top, marker)
    disk = ("<disk type='file' device='disk'><driver name='qemu' "
            "type='qcow2'/><source file='%s'/><target dev='xvda' "
            "bus='xen'/></disk>" % top)
    name = 'bench-qdisk'
    path = write('/root/%s.xml' % name, domain_xml(
        name, uuid_of(951), memory=256, kernel=True, disk=disk))
    r = virsh('create', path, timeout=300)
    if r.rc != 0:
        emit('XENLAB-FACT unrestricted qdisk guest: %s' % first_line(r.text))
        return None
    pty = pty_of(name)
    found, text = (read_pty(pty, 'XENLAB-GUEST-DISKREAD', 400, whole=True)
                   if pty else (False, ''))
    virsh('destroy', name)
    speed = disk_read(text) if found and marker in text else None
    emit('XENLAB-FACT unrestricted qdisk guest read its %d MiB disk: %s'
         % (DISK_MIB, '%s MiB/s' % speed if speed else first_line(text)))
    return speed


def trace_events(trace):
    """{pid: [exec time, exit time or None, program and first arguments]}
    from ``strace -f -ttt -e trace=execve`` output (a pid's first exec).
    """
    events = {}
    with contextlib.suppress(OSError):
        with open(trace, errors='replace') as f:
            for line in f:
                m = re.match(r'(\d+)\s+(\d+\.\d+)\s+(.*)', line)
                if not m:
                    continue
                tid, when, what = m.group(1), float(m.group(2)), m.group(3)
                if what.startswith('execve(') and what.endswith(' = 0'):
                    args = re.findall(r'"((?:[^"\\]|\\.)*)"',
                                      what.split('[', 1)[-1])
                    events.setdefault(tid, [when, None, ' '.join(
                        os.path.basename(a) if i == 0 else a
                        for i, a in enumerate(args[:5]))])
                elif '+++ exited' in what or '+++ killed' in what:
                    if tid in events:
                        events[tid][1] = when
    return events


def start_timeline(name, label):
    """One extra ``virsh start`` of ``name`` under strace: what libvirtd
    starts, when, and for how long (seconds from the start's beginning).

    Diagnostic only: strace slows libvirtd, so it is not one of the
    timed starts. It shows where a restricted start spends its time
    against an unrestricted one (hook calls, the emulator's ``-help``,
    the device model, hotplug scripts).
    """
    pid = run(['pidof', 'libvirtd']).out.split()
    if not pid:
        emit('XENLAB-FACT timeline %s: libvirtd not found' % label)
        return
    trace = '/root/timeline-%s.strace' % label
    tracer = subprocess.Popen(
        ['strace', '-f', '-ttt', '-q', '-s', '48', '-e', 'trace=execve',
         '-e', 'signal=none', '-o', trace, '-p', pid[0]],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    time.sleep(3)
    wait_quiet()
    t0 = time.time()
    r = virsh('start', name, timeout=300)
    t1 = time.time()
    time.sleep(1)
    tracer.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        tracer.wait(timeout=30)
    virsh('destroy', name)
    events = trace_events(trace)
    emit('XENLAB-TIMELINE %s: virsh start exit %d in %.2f s (under strace)'
         % (label, r.rc, t1 - t0))
    for start, end, what in sorted(events.values()):
        if start < t0 - 0.5 or start > t1:
            continue
        emit('XENLAB-TIMELINE %s: +%.2f s %s (%s)' % (
            label, start - t0, what[:100],
            'ran %.2f s' % (end - start) if end else 'still running'))


def cpu_times():
    """(busy, total) jiffies of all of dom0's CPUs, from /proc/stat."""
    with open('/proc/stat') as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def wait_quiet(limit=60.0, window=0.5, busy=0.15):
    """Wait until dom0's CPUs are mostly idle over ``window`` seconds;
    return the seconds waited (``limit`` at most).

    Every timed start, unrestricted or restricted, begins from a quiet
    dom0: under emulation the hook service's replacement workers, started
    after each call, take seconds of CPU (a fraction of one on a real
    host), and the previous destroy's work may still run.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        b0, a0 = cpu_times()
        time.sleep(window)
        b1, a1 = cpu_times()
        if a1 > a0 and (b1 - b0) / (a1 - a0) < busy:
            break
    return time.monotonic() - t0


def bench_unrestricted():
    name = 'bench-plain'
    path = write('/root/%s.xml' % name, domain_xml(name, uuid_of(950)))
    virsh('define', path)
    times = []
    for _ in range(BENCH_STARTS):
        time.sleep(1)
        STATE.setdefault('quiet_waits_s', []).append(round(wait_quiet(), 1))
        r = virsh('start', name, timeout=300)
        if r.rc == 0:
            times.append(r.seconds)
        virsh('destroy', name)
    start_timeline(name, 'unrestricted')
    virsh('undefine', name)
    return times


# --- installation, as doc/source/install says ------------------------------

def install():
    s = Scenario('install', 'plugin installed as doc/source/install says')
    wheels = glob.glob(os.path.join(HERE, 'wheels', '*.whl'))
    s.info('checkout %s, wheel %s' % (
        open(os.path.join(HERE, 'checkout.txt')).read().strip(),
        ' '.join(os.path.basename(w) for w in wheels)))
    # Step 2, adapted: dom0 has no network, so the venv sees Debian's
    # python3-libvirt, -lxml, -oslo.config, -stevedore and -pbr and the
    # wheel is installed without its dependencies.
    r = run(['python3', '-m', 'venv', '--system-site-packages', VENV])
    s.check(r.rc == 0, 'venv: ' + (first_line(r.text) or 'created'))
    r = run([VENV + '/bin/pip', 'install', '--quiet', '--no-index',
             '--no-deps'] + wheels)
    s.check(r.rc == 0, 'pip install: ' + (first_line(r.text) or 'ok'))
    for exe in ('xen-dm-restrict', 'xen-dm-restrict-launch',
                'xen-dm-restrict-libvirt-hook'):
        link = '/usr/local/bin/' + exe
        if not os.path.lexists(link):
            os.symlink(VENV + '/bin/' + exe, link)
    r = run([VENV + '/bin/python', '-c', 'import stevedore; print(sorted('
             'stevedore.ExtensionManager("libvirt.domain_hooks").names()))'])
    s.check('dm_restrict' in r.out, 'entry points: ' + r.out.strip())
    # Step 3: the reaper and console relay users. Step 4: directories.
    # Step 5: the config.
    for user in ('xen-dm-reaper', 'xen-dm-console'):
        run(['useradd', '--system', '--user-group', '--no-create-home',
             '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin',
             user])
        s.info('%s: %s' % (user, run(['id', user]).out.strip()))
    run(['install', '-d', '-o', 'root', '-g', 'root', '-m', '0755',
         '/etc/xen-dm-restrict'])
    run(['install', '-d', '-o', 'root', '-g', 'root', '-m', '0700',
         '/var/lib/xen-dm-restrict'])
    run(['install', '-m', '0644', os.path.join(HERE, 'dom0.conf'), CONF])
    r = cli('install-launcher', LAUNCHER)
    s.check(r.rc == 0 and os.access(LAUNCHER, os.X_OK),
            'install-launcher: rc %d %s' % (r.rc, first_line(r.text)))
    with open(LAUNCHER, 'rb') as f:
        head = f.read(64)
    s.info('launcher: %s' % ('compiled front (ELF)' if head.startswith(
        b'\x7fELF') else head.split(b'\n')[0].decode('ascii', 'replace')))
    # The guide's systemd unit starts the launcher service; dom0 here has
    # no service manager, so it is started the same way by hand.
    service = VENV + '/bin/xen-dm-restrict-launch-service'
    if os.access(service, os.X_OK):
        log = open('/root/launch-service.log', 'ab')
        subprocess.Popen([service], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=log, start_new_session=True)
        time.sleep(2)
        s.info('launcher service started: %s' % first_line(run(
            ['pgrep', '-af', 'xen-dm-restrict-launch-service']).out))
    r = cli('validate', '--tenant', 'acme',
            write('/root/validate.xml', domain_xml('v', uuid_of(1))))
    s.check(r.rc == 0, 'validate: rc %d %s' % (r.rc, first_line(r.text)))
    # Step 6: the libvirt daemon hook.
    run(['install', '-d', '-o', 'root', '-g', 'root', '-m', '0755',
         '/etc/libvirt/hooks'])
    # The guide's step writes the hook with install-hook; the lab puts it
    # beside its diagnostic wrapper (HOOK_WRAPPER).
    r = cli('install-hook', HOOK_INSTALLED)
    s.check(r.rc == 0, 'install-hook: rc %d %s' % (r.rc, first_line(r.text)))
    with open(HOOK_INSTALLED, 'rb') as f:
        s.check(f.read(4) == b'\x7fELF', 'install-hook wrote the compiled '
                'hook client')
    # The guide's systemd unit starts the hook service; started by hand
    # here, as the launcher service.
    service = VENV + '/bin/xen-dm-restrict-hook-service'
    log = open('/root/hook-service.log', 'ab')
    subprocess.Popen([service], stdin=subprocess.DEVNULL, stdout=log,
                     stderr=log, start_new_session=True)
    for _ in range(100):
        if os.path.exists('/run/xen-dm-restrict/hook.sock'):
            break
        time.sleep(0.2)
    s.check(os.path.exists('/run/xen-dm-restrict/hook.sock'),
            'hook service listening: %s' % first_line(run(
                ['pgrep', '-af', 'xen-dm-restrict-hook-service']).out))
    write('/etc/libvirt/hooks/libxl', HOOK_WRAPPER)
    os.chmod('/etc/libvirt/hooks/libxl', 0o755)
    run(['systemctl', 'restart', 'libvirtd'])
    s.check(wait_libvirtd(), 'libvirtd restarted with the hook')
    # The storage daemon's kernel side (the lab sets storage_daemon =
    # enabled; doc/source/admin/storage.rst: modprobe nbd).
    run(['modprobe', 'nbd'])
    # Step 7: preflight.
    r = cli('preflight', timeout=120)
    for line in r.out.splitlines():
        if line.strip():
            s.info('preflight: ' + line.rstrip())
    s.check(r.rc == 0, 'preflight exit %d' % r.rc)
    for name in PREFLIGHT_ISSUE11:
        lines = [x.strip() for x in r.out.splitlines()
                 if x.startswith(name + ' ')]
        s.check(len(lines) == 1 and lines[0][len(name):].split()[:1]
                == ['OK'], 'preflight "%s": %s' % (
                    name, lines[0] if lines else 'missing'))
    return s.done()


# The preflight checks of what the launcher adds (issue 11).
PREFLIGHT_ISSUE11 = ('launcher start-up', 'device-model cgroups',
                     'device-model network', 'launcher seccomp filter')


# --- the scenarios ----------------------------------------------------------

STATE = {}


def check_restricted(s, label, f, rec):
    uid, gid = rec['uid'], rec['gid']
    s.info('%s: %s' % (label, fact_line(f)))
    s.check(f['Uid'].split() == [str(uid)] * 4,
            '%s: Uid %s = leased uid %d' % (label, f['Uid'], uid))
    s.check(f['Gid'].split() == [str(gid)] * 4,
            '%s: Gid %s = leased gid %d' % (label, f['Gid'], gid))
    # /var/run is a symlink to /run: compare the resolved paths.
    s.check(f['root'] == os.path.realpath(rec['chroot']),
            '%s: root %s = chroot %s' % (
        label, f['root'], rec['chroot']))
    s.check(f['ns_mnt'] == 'own' and f['ns_ipc'] == 'own',
            '%s: own mount and IPC namespaces (mnt %s, ipc %s)' % (
                label, f['ns_mnt'], f['ns_ipc']))
    s.check(int(f['CapEff'], 16) == 0,
            '%s: CapEff %s' % (label, f['CapEff']))
    want = {'FSIZE': '262144', 'CORE': '0', 'MEMLOCK': '0', 'LOCKS': '0',
            'MSGQUEUE': '0'}
    got = {k: f.get(k) for k in want}
    s.check(got == want, '%s: rlimits %s' % (label, got))
    argv = f['argv']
    s.check('-xen-domid-restrict' in argv,
            '%s: -xen-domid-restrict in argv; dev fds %s' % (label, f['fds']))
    # Issue 11: what the launcher adds beyond libxl.
    s.check(f['ns_net'] == 'own', '%s: own network namespace (net %s)' % (
        label, f['ns_net']))
    s.check(f.get('NPROC') == '128', '%s: RLIMIT_NPROC %s' % (
        label, f.get('NPROC')))
    s.check(int(f.get('SigIgn', '0'), 16) & (1 << (25 - 1)) != 0,
            '%s: SIGXFSZ ignored (SigIgn %s)' % (label, f.get('SigIgn')))
    s.check(f.get('Seccomp') == '2', '%s: Seccomp %s (%s)' % (
        label, f.get('Seccomp'), 'QEMU\'s -sandbox' if '-sandbox' in argv
        else 'no -sandbox: the launcher\'s filter'))
    group = '/xen-dm-restrict/dm-%d' % uid
    ours = [g for g in f['cgroups'] if g.endswith(group)]
    s.check(ours and len(ours) == len(f['cgroups']),
            '%s: cgroups %s end with %s' % (label, f['cgroups'], group))
    limits = cgroup_values(group)
    s.check(limits.get('pids.max') == '128'
            and limits.get('memory.max', limits.get(
                'memory.limit_in_bytes')) == str(512 << 20),
            '%s: cgroup limits %s' % (label, limits))


def measure(s, label, pid, uid, since):
    """What a device model used: QEMU's /proc and its cgroup's counters.

    These back the defaults device_model_memory_mib = 512 and
    device_model_max_processes = 128.
    """
    group = '/xen-dm-restrict/dm-%d' % uid
    try:
        f = {}
        with open('/proc/%d/status' % pid) as st:
            for line in st:
                k, _, v = line.partition(':')
                if k in ('VmHWM', 'VmRSS', 'VmSize', 'Threads'):
                    f[k] = ' '.join(v.split())
    except OSError as err:
        f = {'error': err.strerror}
    counters = cgroup_values(group, ('memory.peak', 'memory.current',
                                     'memory.max_usage_in_bytes',
                                     'memory.usage_in_bytes', 'pids.current',
                                     'pids.peak', 'memory.events'))
    if 'memory.events' in counters:
        counters['memory.events'] = ','.join(
            x.replace(' ', '=') for x in counters['memory.events'].split(
                '\n') if x.split()[-1] != '0') or 'all-zero'
    mib = {}
    for k in ('memory.peak', 'memory.current', 'memory.max_usage_in_bytes',
              'memory.usage_in_bytes'):
        if counters.get(k, '').isdigit():
            mib[k] = '%.1fMiB' % (int(counters[k]) / 1048576.0)
    s.info('%s: measured %.0f s after start: QEMU pid %d %s; cgroup %s %s'
           % (label, time.monotonic() - since, pid, ' '.join(
               '%s %s' % (k, f[k]) for k in ('VmHWM', 'VmRSS', 'VmSize',
                                             'Threads', 'error') if k in f),
              group, ' '.join('%s=%s%s' % (k, v, (' (%s)' % mib[k])
                                           if k in mib else '')
                              for k, v in sorted(counters.items()))))
    return f, counters


def cgroup_gone(s, label, uid, timeout=30):
    """Item of issue 11: the reap removed the device model's cgroup."""
    group = '/xen-dm-restrict/dm-%d' % uid
    t0 = time.monotonic()
    left = cgroup_dirs(group)
    while left and time.monotonic() - t0 < timeout:
        time.sleep(1)
        left = cgroup_dirs(group)
    s.check(not left and not uid_procs(uid),
            '%s: after destroy and reap, cgroup %s gone: %s (%s after %.0f '
            's); processes of uid %d: %d' % (
                label, group, not left, left or 'no directory in any '
                'hierarchy', time.monotonic() - t0, uid,
                len(uid_procs(uid))))


CGROUP_ROOT = '/sys/fs/cgroup'


def cgroup_dirs(group):
    """The directories of cgroup path ``group`` in every hierarchy."""
    found = []
    for base in [CGROUP_ROOT] + glob.glob(CGROUP_ROOT + '/*/'):
        path = base.rstrip('/') + group
        if os.path.isdir(path):
            found.append(path)
    return found


def cgroup_values(group, names=('pids.max', 'memory.max',
                                'memory.limit_in_bytes', 'memory.swap.max',
                                'cpu.weight')):
    values = {}
    for path in cgroup_dirs(group):
        for name in names:
            try:
                with open(os.path.join(path, name)) as f:
                    values[name] = f.read().strip()
            except OSError:
                pass
    return values


@scenario('1-start', 'tenant HVM guests start restricted (diskless, Linux)')
def s1_start(s):
    # a) diskless: hvmloader + SeaBIOS, ends at "No bootable device".
    path = write('/root/acme-1.xml', domain_xml('acme-1', uuid_of(1)))
    r, rec = boot('acme-1', path)
    s.check(r.rc == 0 and rec, 'diskless: boot exit %d in %.1f s%s' % (
        r.rc, r.seconds, '' if r.rc == 0 else ': ' + first_line(r.text)))
    if r.rc != 0 or not rec:
        return
    started = time.monotonic()
    s.info('diskless: uid %s gid %s chroot %s applied %s' % (
        rec.get('uid'), rec.get('gid'), rec.get('chroot'),
        ' '.join(rec.get('applied', []))))
    time.sleep(5)
    d = rec['id']
    pid = dm_pid(d)
    s.check(pid and state('acme-1') == 'running',
            'diskless: domain running, domid %s, device model pid %s' % (
                d, pid))
    if pid:
        f = facts(pid)
        STATE['plugin_facts'] = f
        STATE['plugin_boot_s'] = r.seconds
        check_restricted(s, 'diskless', f, rec)
        emit('XENLAB-ARGV plugin-diskless proc: %s' % shlex.join(f['argv']))
    logged = libxl_spawn_argv('acme-1')
    if logged:
        emit('XENLAB-ARGV plugin-diskless libxl-log: %s' % shlex.join(logged))
    fw, n = guest_log(d)
    s.check(n > 0, 'diskless: firmware ran, %d console lines, last: %s' % (
        n, ' / '.join(fw)))
    if pid:
        measure(s, 'diskless', pid, rec['uid'], started)
    virsh('destroy', 'acme-1')
    cgroup_gone(s, 'diskless', rec['uid'])
    STATE['acme-1'] = rec
    # b) a tiny Linux to userspace (busybox initramfs; it powers off).
    path = write('/root/acme-2.xml', domain_xml('acme-2', uuid_of(2),
                                                memory=256, kernel=True))
    r, rec = boot('acme-2', path)
    s.check(r.rc == 0 and rec, 'linux: boot exit %d in %.1f s%s' % (
        r.rc, r.seconds, '' if r.rc == 0 else ': ' + first_line(r.text)))
    if r.rc != 0 or not rec:
        return
    t0 = time.monotonic()
    pid = dm_pid(rec['id'])
    if pid:
        check_restricted(s, 'linux', facts(pid), rec)
    found, text, ran = read_guest('acme-2', rec['id'],
                                  'XENLAB-GUEST-USERSPACE-OK')
    if ran != rec['id']:
        pid = dm_pid(ran)
    if pid:
        # At once: the guest powers off right after its marker line.
        measure(s, 'linux (256 MiB guest, at userspace)', pid, rec['uid'],
                t0)
    s.check(found, 'linux: guest userspace reached %.0f s after start: %s'
            % (time.monotonic() - t0, first_line(text)))
    gone = wait_state('acme-2', 'shut off', 120)
    STATE['acme-2'] = (rec, gone)


def tamper(xml, drop=False, runas=None):
    """The rendered domain with its <xen:commandline> changed."""
    from lxml import etree
    root = etree.fromstring(xml.encode())
    args = root.findall('{http://libvirt.org/schemas/domain/xen/1.0}'
                        'commandline/{http://libvirt.org/schemas/domain/'
                        'xen/1.0}arg')
    for i, arg in enumerate(args):
        if drop and arg.get('value') == '-xen-domid-restrict':
            arg.getparent().remove(arg)
        if runas and arg.get('value') == '-runas' and i + 1 < len(args):
            args[i + 1].set('value', runas)
    return etree.tostring(root).decode()


@scenario('2-refuse', 'unrestricted and tampered domains refused by the '
          'daemon hook')
def s2_refuse(s):
    # a) defined with plain virsh, no plugin.
    path = write('/root/plain-1.xml', domain_xml('plain-1', uuid_of(20)))
    virsh('define', path)
    r = virsh('start', 'plain-1')
    s.check(r.rc != 0, 'plain virsh domain: start exit %d: %s' % (
        r.rc, first_line(r.text, 400)))
    s.check(state('plain-1') == 'shut off' and domid('plain-1') is None,
            'plain virsh domain: state %s, nothing runs' % state('plain-1'))
    virsh('undefine', 'plain-1')
    # b) rendered through the plugin, then tampered with before define.
    src = write('/root/acme-3.xml', domain_xml('acme-3', uuid_of(3)))
    r = cli('render', '--tenant', 'acme', src, '-o', '/root/acme-3-r.xml')
    s.check(r.rc == 0, 'render exit %d' % r.rc)
    good = open('/root/acme-3-r.xml').read()
    tampers = [('no -xen-domid-restrict', tamper(good, drop=True)),
               ('emulator set back to the bare QEMU',
                re.sub(r'<emulator>[^<]*</emulator>',
                       '<emulator>%s</emulator>' % QEMU, good)),
               ('-runas uid changed to 0:0', tamper(good, runas='0:0'))]
    for label, xml in tampers:
        if xml == good:
            s.check(False, 'tamper "%s" did not change the XML' % label)
            continue
        virsh('define', write('/root/acme-3-t.xml', xml))
        r = virsh('start', 'acme-3')
        s.check(r.rc != 0 and domid('acme-3') is None,
                'tampered (%s): start exit %d, not running: %s' % (
                    label, r.rc, first_line(r.text, 400)))
        virsh('destroy', 'acme-3')
        virsh('undefine', 'acme-3')
    # c) a NIC naming one of dom0's interfaces, added after render: the
    # daemon hook refuses it at prepare, and dom0's interface is untouched
    # (libxl's failed start would run "vif-bridge offline" on it).
    dom0_if = sorted(x for x in os.listdir('/sys/class/net')
                     if x != 'lo' and not x.startswith(('vif', 'xenbr',
                                                        'tap')))[:1]
    if dom0_if:
        name = dom0_if[0]
        before = run(['ip', '-o', 'link', 'show', name]).out
        src = write('/root/acme-11.xml', domain_xml('acme-11', uuid_of(11),
                                                    vif=True))
        r = cli('render', '--tenant', 'acme', src, '-o',
                '/root/acme-11-r.xml')
        s.check(r.rc == 0, 'render acme-11 (one vif) exit %d %s' % (
            r.rc, first_line(r.text)))
        xml = open('/root/acme-11-r.xml').read().replace(
            '</interface>', "<target dev='%s'/></interface>" % name, 1)
        virsh('define', write('/root/acme-11-t.xml', xml))
        r = virsh('start', 'acme-11')
        after = run(['ip', '-o', 'link', 'show', name]).out
        s.check(r.rc != 0 and domid('acme-11') is None and
                ("<target dev='%s'>" % name) in r.text,
                'NIC named after dom0\'s %s: start exit %d, refused at '
                'prepare: %s' % (name, r.rc, first_line(r.text, 400)))
        s.check(before == after and before,
                'dom0\'s %s untouched: %s' % (
                    name, ' '.join(after.split())[:160]))
        virsh('undefine', 'acme-11')
        cli('leases', 'release', uuid_of(11))
    running = [x for x in run(['ps', '-eo', 'uid=,args=']).out.splitlines()
               if x.split() and RANGE[0] <= int(x.split()[0]) <= RANGE[1]]
    s.check(not running, 'no process of a tenant uid runs (%d)'
            % len(running))
    r = cli('leases', 'release', uuid_of(3))
    s.info('lease of the tampered domain released: ' + first_line(r.text))


@scenario('3-lifecycle', 'destroy/shutdown reap, undefine releases, '
          'libvirtd restart, reconcile')
def s3_lifecycle(s):
    rec2, gone = STATE.get('acme-2', (None, False))
    if rec2:
        s.check(gone and not uid_procs(rec2['uid']),
                'shutdown (Linux guest powered off): domain %s, processes '
                'of uid %d: %d' % ('stopped' if gone else 'still running',
                                   rec2['uid'], len(uid_procs(rec2['uid']))))
        cgroup_gone(s, 'shutdown (Linux guest)', rec2['uid'])
    path = write('/root/acme-4.xml', domain_xml('acme-4', uuid_of(4)))
    r, rec = boot('acme-4', path)
    s.check(r.rc == 0 and rec, 'boot acme-4 exit %d' % r.rc)
    if not rec:
        return
    uid = rec['uid']
    time.sleep(3)
    pid = dm_pid(rec['id'])
    s.check(bool(uid_procs(uid)), 'running: %d process(es) of uid %d' % (
        len(uid_procs(uid)), uid))
    r = virsh('destroy', 'acme-4')
    time.sleep(2)
    s.check(r.rc == 0 and not uid_procs(uid),
            'destroy: processes of uid %d left: %d' % (
                uid, len(uid_procs(uid))))
    r = virsh('start', 'acme-4')
    time.sleep(3)
    pid = dm_pid(domid('acme-4') or -1)
    s.check(r.rc == 0 and pid, 'restart with virsh start: exit %d, pid %s' %
            (r.rc, pid))
    leases0 = cli('leases', 'list', '--format', 'json').out
    since = '@%d' % int(time.time())
    r = run(['systemctl', 'restart', 'libvirtd'])
    ready = wait_libvirtd()
    states = []
    for _ in range(3):
        time.sleep(5)
        states.append(state('acme-4'))
    pid2 = dm_pid(domid('acme-4') or -1)
    leases1 = cli('leases', 'list', '--format', 'json').out
    s.check(ready and states == ['running'] * 3 and pid2 == pid
            and leases0 == leases1,
            'libvirtd restart (reconnect): states over 15 s %s, device '
            'model pid %s -> %s, leases unchanged: %s' % (
                states, pid, pid2, leases0 == leases1))
    j = run(['journalctl', '-u', 'libvirtd', '--no-pager', '--since', since,
             '-o', 'cat'])
    for line in j.out.splitlines():
        if re.search(r'hook|reconnect|acme-4|error', line, re.I):
            s.info('libvirtd after restart: ' + line[-300:])
    hook_err = [x for x in j.out.splitlines()
                if 'hook' in x.lower() and ('error' in x.lower()
                                            or 'fail' in x.lower())]
    s.check(not hook_err, 'libvirtd journal since the restart: no hook '
            'error%s' % ('' if not hook_err else ': ' + hook_err[-1][-200:]))
    log = '/var/log/libvirt/libxl/libxl-driver.log'
    if os.path.exists(log):
        for line in open(log, errors='replace').read().splitlines()[-8:]:
            s.info('libxl-driver.log: ' + line[-250:])
    if state('acme-4') != 'running' and pid2:
        s.info('device model pid %s still alive: %s' % (
            pid2, os.path.exists('/proc/%d' % pid2)))
    r = cli('leases', 'reconcile', '--connect', URI, '--grace', '0')
    s.check(r.rc == 0, 'reconcile (running domain): exit %d: %s' % (
        r.rc, first_line(r.text)))
    r = virsh('destroy', 'acme-4')
    time.sleep(2)
    s.check(not uid_procs(uid), 'destroy again: processes of uid %d: %d' % (
        uid, len(uid_procs(uid))))
    cgroup_gone(s, 'destroy again', uid)
    # Undefine as the orchestrator does: through the library's wrapper.
    r = library('undefine', uuid_of(4))
    leases = cli('leases', 'list', '--format', 'json').out
    s.check(r.rc == 0 and uuid_of(4) not in leases,
            'undefine through virt.HookedDomain: %s; lease released: %s' % (
                first_line(r.text), uuid_of(4) not in leases))
    # acme-1 and acme-2 were only destroyed: their leases stay, and
    # reconcile must agree with libvirt (defined, stopped).
    r = cli('leases', 'reconcile', '--connect', URI, '--grace', '0')
    s.check(r.rc == 0, 'reconcile: exit %d: %s' % (r.rc, first_line(r.text)))


@scenario('6-isolation', 'issue 11: a guest with a disk and a vif: tap '
          'handed over into the device model\'s own network namespace, '
          'cgroup removed by the reap; VNC refused')
def s6_isolation(s):
    run(['truncate', '-s', '16M', LAB + '/disk6.img'])
    halting_boot_sector(LAB + '/disk6.img')
    disk = ("<disk type='file' device='disk'><driver name='phy'/>"
            "<source file='%s/disk6.img'/><target dev='hda' bus='ide'/>"
            "</disk>" % LAB)
    name = 'acme-9'
    path = write('/root/%s.xml' % name, domain_xml(name, uuid_of(9),
                                                   disk=disk, vif=True))
    r, rec = boot(name, path)
    s.check(r.rc == 0 and rec, 'nic: boot %s (file disk, one vif on %s) '
            'exit %d in %.1f s%s' % (
                name, BRIDGE, r.rc, r.seconds,
                '' if r.rc == 0 else ': ' + first_line(r.text)))
    if r.rc != 0 or not rec:
        library('undefine', uuid_of(9))
        return
    started = time.monotonic()
    uid = rec['uid']
    time.sleep(5)
    nic_checks(s, name, rec, started)
    want = 'vif%d.0-emu' % rec['id']
    r = virsh('destroy', name)
    s.check(r.rc == 0, 'nic: destroy exit %d' % r.rc)
    cgroup_gone(s, 'nic', uid)
    link = run(['ip', '-o', 'link', 'show', want])
    s.info('nic: after destroy, %s in dom0: %s' % (want, link.rc == 0))
    library('undefine', uuid_of(9))

    # VNC under network_namespace = required: QEMU listens on a unix
    # socket in its chroot, a relay in dom0 listens where libvirt says.
    name = 'acme-10'
    path = write('/root/%s.xml' % name, domain_xml(name, uuid_of(10),
                                                   vnc=True))
    r, rec = boot(name, path)
    s.check(r.rc == 0 and rec, 'vnc: boot of a guest with <graphics '
            'type=\'vnc\'> under network_namespace = required: exit %d %s'
            % (r.rc, '' if r.rc == 0 else first_line(r.text, 400)))
    if rec:
        vnc_console(s, name, rec)
        r = virsh('destroy', name)
        s.check(r.rc == 0, 'vnc: destroy exit %d' % r.rc)
        time.sleep(2)
        relays = run(['pgrep', '-x', 'systemd-socket-']).out.split()
        s.check(not relays, 'vnc: after destroy, relay processes: %s'
                % (relays or 'none'))
        library('undefine', uuid_of(10))


def nic_checks(s, name, rec, started):
    """The restricted device model of a guest with a vif: its tap."""
    d = rec['id']
    pid = dm_pid(d)
    # virsh says "idle" (blocked) while every vCPU halts, here in the
    # disk's halting boot sector.
    now = state(name)
    s.check(pid is not None and now in ('running', 'idle'),
            'nic: domain %s, domid %s, device model pid %s' % (now, d, pid))
    if pid is None:
        return
    f = facts(pid)
    emit('XENLAB-ARGV plugin-nic proc: %s' % shlex.join(f['argv']))
    check_restricted(s, 'nic', f, rec)
    argv = f['argv']
    netdevs = [argv[i + 1] for i, a in enumerate(argv[:-1])
               if a == '-netdev']
    want = 'vif%d.0-emu' % d
    handed = [a for a in netdevs
              if re.match(r'^type=tap,id=[A-Za-z0-9_.-]+,fd=[0-9]+$', a)]
    fds = [int(a.rsplit('=', 1)[1]) for a in handed]
    s.check(handed and len(handed) == len(netdevs),
            'nic: QEMU argv -netdev %s (no ifname=, no script: the '
            'launcher opened the tap)' % netdevs)
    infos = {}
    for fd in fds:
        try:
            with open('/proc/%d/fdinfo/%d' % (pid, fd)) as info:
                infos[fd] = [x.rstrip('\n') for x in info
                             if x.startswith('iff:')]
        except OSError as err:
            infos[fd] = ['error: %s' % err.strerror]
    s.check(fds and all(infos[fd] == ['iff:\t' + want] for fd in fds),
            'nic: /proc/%d/fdinfo of fd %s: %s (want iff:\\t%s)' % (
                pid, fds, {fd: infos[fd] for fd in fds}, want))
    link = run(['ip', '-o', 'link', 'show', want])
    s.check(link.rc == 0 and want in link.out,
            'nic: tap %s exists in dom0 (ip link show): %s' % (
                want, ' '.join(link.text.split())[:220]))
    s.info('nic: dom0 taps %s' % ' '.join(
        x for x in os.listdir('/sys/class/net') if x.startswith('vif')))
    fw, n = guest_log(d)
    s.info('nic: firmware, %d console lines, last: %s' % (
        n, ' / '.join(fw)))
    measure(s, 'nic (disk+vif)', pid, rec['uid'], started)


def vnc_console(s, name, rec):
    """The console at the address and port the live XML reports answers
    with the RFB greeting; QEMU's own namespace has no route out.
    """
    import socket as socket_mod

    xml = virsh('dumpxml', name).out
    found = re.search(r"<graphics type='vnc' port='([0-9]+)'[^>]*"
                      r"listen='([^']+)'", xml)
    s.check(found is not None, 'vnc: live XML graphics: %s' % (
        found.group(0) if found else 'none with a port'))
    if not found:
        return
    port, listen = int(found.group(1)), found.group(2)
    greeting = b''
    for _ in range(20):
        try:
            with socket_mod.create_connection((listen, port),
                                              timeout=5) as conn:
                greeting = conn.recv(12)
            break
        except OSError:
            time.sleep(1)
    s.check(greeting.startswith(b'RFB '), 'vnc: %s:%d from dom0 answers '
            '%r' % (listen, port, greeting))
    pid = dm_pid(rec['id'])
    if pid:
        routes = run(['nsenter', '-t', str(pid), '-n', 'ip', '-o',
                      'route']).out.strip()
        links = run(['nsenter', '-t', str(pid), '-n', 'ip', '-o',
                     'link']).out
        s.check(not routes and 'lo:' in links and links.count(': ') <= 2,
                'vnc: QEMU\'s network namespace: routes %r, links %s' % (
                    routes, ' '.join(links.split())[:200]))
    relay = run(['pgrep', '-a', '-x', 'systemd-socket-']).out.strip()
    s.info('vnc: relay %s' % relay[:300])
    for line in relay.splitlines():
        st = os.stat('/proc/%s' % line.split()[0])
        s.check(st.st_uid not in (0, rec.get('uid')), 'vnc: relay pid %s '
                'runs as uid %d (not root, not the device model)'
                % (line.split()[0], st.st_uid))


@scenario('7-storage', 'issue 23: a Nova-style guest whose disk is a qcow2 '
          'overlay on a raw _base file boots restricted through the '
          'deprivileged storage daemon; a backing file outside is refused')
def s7_storage(s):
    run(['modprobe', 'nbd'])
    marker = 'XENLABDISK-%s' % os.urandom(8).hex()
    uuid = uuid_of(12)
    top = '%s/%s/disk' % (INSTANCES, uuid)
    r = nova_image(top, marker)
    s.check(r.rc == 0, 'qemu-img create overlay: exit %d %s' % (
        r.rc, first_line(r.text)))
    disk = ("<disk type='file' device='disk'><driver name='qemu' "
            "type='qcow2'/><source file='%s'/><target dev='xvda' "
            "bus='xen'/></disk>" % top)
    name = 'acme-12'
    path = write('/root/%s.xml' % name, domain_xml(
        name, uuid, memory=256, kernel=True, disk=disk))
    r, rec = boot(name, path, timeout=240)
    s.check(r.rc == 0 and rec, 'qcow2: boot exit %d in %.1f s%s' % (
        r.rc, r.seconds, '' if r.rc == 0 else ': ' + first_line(r.text, 400)))
    if rec:
        t0 = time.monotonic()
        daemons = run(['pgrep', '-f', 'qemu-storage-daemon']).out.split()
        s.check(len(daemons) == 1, 'qcow2: storage daemons running: %s'
                % daemons)
        for pid in daemons[:1]:
            f = facts(int(pid))
            s.info('qcow2: storage daemon pid %s: %s' % (pid, f))
            s.check(f['Uid'].split() == [str(rec['uid'])] * 4,
                    'qcow2: storage daemon runs as the instance\'s uid %d: '
                    'Uid %s' % (rec['uid'], f['Uid']))
            s.check(f['ns_mnt'] == 'own', 'qcow2: storage daemon in a mount '
                    'namespace of its own (%s)' % f['ns_mnt'])
            s.check(f.get('Seccomp') == '2', 'qcow2: storage daemon under '
                    'seccomp (Seccomp %s)' % f.get('Seccomp'))
            with open('/proc/%s/cgroup' % pid) as handle:
                groups = handle.read()
            s.check('storage' in groups, 'qcow2: storage daemon cgroup: %s'
                    % ' '.join(groups.split())[:200])
        found, text, _ = read_guest(name, rec['id'],
                                    'XENLAB-GUEST-DISKREAD', whole=True)
        line = re.search(r'XENLAB-GUEST-DISK [^\r\n]*', text)
        s.check(found and line and marker in line.group(0),
                'qcow2: the guest read its disk (blkfront, through the '
                'kernel backend and /dev/nbd) %.0f s after start: %s (want '
                '%s, written into the raw _base file under the overlay)' % (
                    time.monotonic() - t0, line.group(0) if line else
                    first_line(text), marker))
        STATE['disk_restricted_mib_s'] = disk_read(text)
        s.info('qcow2: the guest read its %d MiB disk at %s MiB/s' % (
            DISK_MIB, STATE['disk_restricted_mib_s']))
        wait_state(name, 'shut off', 120)
        virsh('destroy', name)
        time.sleep(3)
        left = run(['pgrep', '-f', 'qemu-storage-daemon']).out.split()
        s.check(not left, 'qcow2: after the guest stopped, storage daemons '
                'left: %s' % (left or 'none'))
        library('undefine', uuid)
    # A backing file outside the instance's paths: refused before
    # anything runs (no lease, not defined).
    bad_uuid = uuid_of(13)
    bad_dir = '%s/%s' % (INSTANCES, bad_uuid)
    os.makedirs(bad_dir, exist_ok=True)
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-u', '-b',
         '/etc/shadow', bad_dir + '/disk', '32M'])
    disk = ("<disk type='file' device='disk'><driver name='qemu' "
            "type='qcow2'/><source file='%s/disk'/><target dev='xvda' "
            "bus='xen'/></disk>" % bad_dir)
    path = write('/root/acme-13.xml', domain_xml('acme-13', bad_uuid,
                                                 disk=disk))
    r, rec = boot('acme-13', path)
    listed = virsh('list', '--all', '--name').out.split()
    leases = cli('leases', 'list', '--format', 'json').out
    s.check(r.rc == 2 and '/etc/shadow' in r.text and 'acme-13' not in
            listed and bad_uuid not in leases,
            'qcow2 backed by /etc/shadow: exit %d, defined %s, leased %s: %s'
            % (r.rc, 'acme-13' in listed, bad_uuid in leases,
               first_line(r.text, 300)))


OVS_BRIDGE = 'ovsbr0'


@scenario('8-ovs', 'issue 19: a guest on an Open vSwitch bridge with a '
          'Neutron-style port name boots restricted; its port is on the '
          'bridge with its VLAN tag, and gone after destroy')
def s8_ovs(s):
    r = run(['systemctl', 'start', 'openvswitch-switch'], timeout=120)
    s.check(r.rc == 0, 'ovs: systemctl start openvswitch-switch: exit %d %s'
            % (r.rc, first_line(r.text)))
    r = run(['ovs-vsctl', '--timeout=60', '--may-exist', 'add-br',
             OVS_BRIDGE], timeout=90)
    s.check(r.rc == 0, 'ovs: add-br %s: exit %d %s' % (
        OVS_BRIDGE, r.rc, first_line(r.text)))
    run(['ip', 'link', 'set', OVS_BRIDGE, 'up'])
    s.info('ovs: %s' % ' '.join(run(['ovs-vsctl', '--version']).out
                                .split()[:4]))
    # Neutron's names: tap + the first 11 characters of the port's uuid.
    port_id = '1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d'
    tap = ('tap' + port_id)[:14]
    nic = ("<interface type='bridge'><source bridge='%s'/>"
           "<virtualport type='openvswitch'><parameters interfaceid='%s'/>"
           "</virtualport><vlan><tag id='42'/></vlan>"
           "<mac address='fa:16:3e:00:00:08'/><target dev='%s'/>"
           "<model type='netfront'/></interface>" % (OVS_BRIDGE, port_id,
                                                     tap))
    name, uuid = 'acme-14', uuid_of(14)
    path = write('/root/%s.xml' % name, domain_xml(name, uuid, nics=nic))
    r, rec = boot(name, path)
    s.check(r.rc == 0 and rec, 'ovs: boot of a guest with port %s on %s '
            '(netfront, VLAN 42) exit %d in %.1f s%s' % (
                tap, OVS_BRIDGE, r.rc, r.seconds,
                '' if r.rc == 0 else ': ' + first_line(r.text, 400)))
    if r.rc != 0 or not rec:
        library('undefine', uuid)
        return
    time.sleep(3)
    ports = run(['ovs-vsctl', 'list-ports', OVS_BRIDGE]).out.split()
    s.check(tap in ports, 'ovs: ports of %s: %s' % (OVS_BRIDGE, ports))
    tag = run(['ovs-vsctl', 'get', 'Port', tap, 'tag']).out.strip()
    s.check(tag == '42', 'ovs: port %s tag %s (want 42)' % (tap, tag))
    link = run(['ip', '-o', 'link', 'show', tap])
    s.check(link.rc == 0, 'ovs: %s is the guest\'s backend vif in dom0: %s'
            % (tap, ' '.join(link.text.split())[:200]))
    pid = dm_pid(rec['id'])
    if pid:
        check_restricted(s, 'ovs', facts(pid), rec)
    else:
        s.check(False, 'ovs: no device model for domain %s' % rec['id'])
    r = virsh('destroy', name)
    s.check(r.rc == 0, 'ovs: destroy exit %d' % r.rc)
    time.sleep(3)
    ports = run(['ovs-vsctl', 'list-ports', OVS_BRIDGE]).out.split()
    s.check(tap not in ports, 'ovs: after destroy, ports of %s: %s' % (
        OVS_BRIDGE, ports or 'none'))
    cgroup_gone(s, 'ovs', rec['uid'])
    library('undefine', uuid)
    s8_ovs_port_names(s, nic, tap)


def s8_ovs_port_names(s, nic, tap):
    """A NIC named after a port only Open vSwitch's database holds (a
    patch port, as Neutron's patch-tun): refused at define and at
    prepare, and the port stays (vif-openvswitch would del-port it).
    """
    patch = 'patch-tun'
    r = run(['ovs-vsctl', '--timeout=60', '--may-exist', 'add-port',
             OVS_BRIDGE, patch, '--', 'set', 'Interface', patch,
             'type=patch', 'options:peer=patch-int'], timeout=90)
    s.check(r.rc == 0, 'ovs: add patch port %s: exit %d %s' % (
        patch, r.rc, first_line(r.text)))
    name, uuid = 'acme-15', uuid_of(15)
    bad = nic.replace("<target dev='%s'/>" % tap,
                      "<target dev='%s'/>" % patch)
    src = write('/root/%s-bad.xml' % name, domain_xml(name, uuid, nics=bad))
    r = cli('render', '--tenant', 'acme', src, '-o', '/root/%s-r.xml' % name)
    leases = cli('leases', 'list', '--format', 'json').out
    s.check(r.rc == 2 and ("<target dev='%s'>" % patch) in r.text
            and uuid not in leases,
            'ovs: NIC named %s refused at define: exit %d, leased %s: %s'
            % (patch, r.rc, uuid in leases, first_line(r.text, 400)))
    src = write('/root/%s.xml' % name, domain_xml(name, uuid, nics=nic))
    r = cli('render', '--tenant', 'acme', src, '-o', '/root/%s-r.xml' % name)
    s.check(r.rc == 0, 'ovs: render %s exit %d %s' % (name, r.rc,
                                                      first_line(r.text)))
    if r.rc == 0:
        # The rendered XML is lxml's: its attributes are double-quoted.
        xml = re.sub('<target dev=["\']%s["\']' % re.escape(tap),
                     "<target dev='%s'" % patch,
                     open('/root/%s-r.xml' % name).read(), count=1)
        s.check(patch in xml, 'ovs: the rendered domain renamed its NIC to '
                '%s before virsh define' % patch)
        virsh('define', write('/root/%s-t.xml' % name, xml))
        r = virsh('start', name)
        ports = run(['ovs-vsctl', 'list-ports', OVS_BRIDGE]).out.split()
        s.check(r.rc != 0 and domid(name) is None
                and ("<target dev='%s'>" % patch) in r.text,
                'ovs: NIC named %s refused at prepare: start exit %d: %s'
                % (patch, r.rc, first_line(r.text, 400)))
        s.check(patch in ports, 'ovs: %s still on %s: %s' % (
            patch, OVS_BRIDGE, ports))
        virsh('undefine', name)
    cli('leases', 'release', uuid)
    run(['ovs-vsctl', '--timeout=60', '--if-exists', 'del-port', patch])


@scenario('4-refused-ops', 'migration, save, managed save, CD-ROM change, '
          'PCI attach refused before libxl; the domain keeps running')
def s4_refused(s):
    path = write('/root/acme-5.xml', domain_xml('acme-5', uuid_of(5)))
    r, rec = boot('acme-5', path)
    s.check(r.rc == 0 and rec, 'boot acme-5 exit %d' % r.rc)
    if not rec:
        return
    time.sleep(3)
    r = library('refused-ops', uuid_of(5))
    for line in r.out.splitlines():
        if line.startswith('OP '):
            _, ok, text = line.split(' ', 2)
            s.check(ok == 'ok', text)
    s.check(r.rc == 0, 'library run exit %d %s' % (
        r.rc, '' if r.rc == 0 else first_line(r.text)))
    virsh('destroy', 'acme-5')
    library('undefine', uuid_of(5))


XL_CFG = """name = "xl-anchor"
type = "hvm"
memory = 64
vcpus = 1
device_model_version = "qemu-xen"
device_model_override = "%s"
firmware = "%s"
dm_restrict = 1
vnc = 0
sdl = 0
serial = "pty"
boot = "c"
""" % (QEMU, HVMLOADER)


@scenario('5-xl-anchor', 'the same guest under xl dm_restrict=1 and through '
          'the plugin')
def s5_anchor(s):
    path = write('/root/xl-anchor.cfg', XL_CFG)
    r = run(['xl', '-vvv', 'create', path])
    logged = libxl_spawn_argv(text=r.err)
    if logged:
        emit('XENLAB-ARGV xl-dm_restrict libxl-log: %s' % shlex.join(logged))
    s.check(r.rc == 0, 'xl create dm_restrict=1: exit %d in %.1f s' % (
        r.rc, r.seconds))
    xl_s = r.seconds
    time.sleep(3)
    d = run(['xl', 'domid', 'xl-anchor']).out.strip()
    pid = dm_pid(int(d)) if d.isdigit() else None
    if not pid:
        s.check(False, 'xl guest: no device model found')
        run(['xl', 'destroy', 'xl-anchor'])
        return
    xf = facts(pid)
    emit('XENLAB-ARGV xl-dm_restrict proc: %s' % shlex.join(xf['argv']))
    run(['xl', 'destroy', 'xl-anchor'])
    path = write('/root/acme-6.xml', domain_xml('acme-6', uuid_of(6)))
    r, rec = boot('acme-6', path)
    s.check(r.rc == 0 and rec, 'plugin boot: exit %d in %.1f s' % (
        r.rc, r.seconds))
    if not rec:
        return
    time.sleep(3)
    pf = facts(dm_pid(rec['id']))
    plugin_s = r.seconds
    rows = [('start (s)', '%.1f' % xl_s, '%.1f (boot: define+start)'
             % plugin_s)]
    for k in ('Uid', 'Gid', 'Groups', 'CapEff', 'Seccomp', 'NoNewPrivs',
              'root', 'ns_mnt', 'ns_ipc', 'ns_net', 'ns_pid', 'FSIZE',
              'CORE', 'MEMLOCK', 'LOCKS', 'MSGQUEUE', 'NPROC', 'fds'):
        rows.append((k, str(xf.get(k)), str(pf.get(k))))
    restrict = [a for a in xf['argv'] if a in ('-xen-domid-restrict',
                                               '-runas', '-chroot',
                                               '-sandbox')]
    rows.append(('restriction args', ' '.join(restrict), ' '.join(
        a for a in pf['argv'] if a in ('-xen-domid-restrict', '-runas',
                                       '-chroot', '-sandbox'))))
    for k, a, b in rows:
        s.info('TABLE | %-16s | %-40s | %s' % (k, a, b))
    s.check(int(pf['CapEff'], 16) == 0 and '-xen-domid-restrict'
            in pf['argv'] and pf['Uid'].split()[0] != '0',
            'plugin device model as restricted as xl\'s: not root, no '
            'capabilities, -xen-domid-restrict')
    virsh('destroy', 'acme-6')
    library('undefine', uuid_of(6))


def bench_restricted():
    path = write('/root/acme-7.xml', domain_xml('acme-7', uuid_of(7)))
    r, rec = boot('acme-7', path)
    boots = [r.seconds] if r.rc == 0 else []
    starts = []
    virsh('destroy', 'acme-7')
    # The timed starts run the hook as the install guide leaves it, not
    # through the lab's diagnostic wrapper (a bash, two dates and a tee
    # at every call: about 0.1 s each under emulation). libvirtd looks
    # the hook up by path at every call.
    os.rename('/etc/libvirt/hooks/libxl', HOOK_WRAPPED)
    shutil.copy2(HOOK_INSTALLED, '/etc/libvirt/hooks/libxl')
    try:
        for _ in range(BENCH_STARTS):
            time.sleep(1)
            STATE.setdefault('quiet_waits_s', []).append(
                round(wait_quiet(), 1))
            r = virsh('start', 'acme-7', timeout=300)
            if r.rc == 0:
                starts.append(r.seconds)
            virsh('destroy', 'acme-7')
        time.sleep(1)
        start_timeline('acme-7', 'restricted')
    finally:
        os.replace(HOOK_WRAPPED, '/etc/libvirt/hooks/libxl')
    library('undefine', uuid_of(7))
    return starts, boots


# --- crash diagnostics (lab only) --------------------------------------------

IMPORT_PROBE = [VENV + '/bin/python', '-X', 'faulthandler', '-c',
                'import xen_dm_restrict_plugin.daemon_hook.hook, '
                'xen_dm_restrict_plugin.cmd.host']


def import_probe(n, tag):
    """Import what the hook imports on its full path, ``n`` times."""
    results = []
    for _ in range(n):
        r = run(IMPORT_PROBE, timeout=120)
        results.append(r.rc)
        if r.rc != 0:
            emit('XENLAB-FACT probe %s: import exit %d: %s' % (
                tag, r.rc, ' | '.join(r.text.splitlines()[-6:])[:600]))
    return results


def exec_probe(n, tag):
    """Start the device model binary (``-version``) ``n`` times."""
    results = []
    for _ in range(n):
        r = run([QEMU, '-no-user-config', '-version'], timeout=60)
        results.append(r.rc)
        if r.rc != 0:
            emit('XENLAB-FACT probe %s: %s -version exit %d' % (
                tag, QEMU, r.rc))
    return results


def crash_probe(n_py=6, n_exec=20):
    """Start programs in dom0 with an HVM guest running, and without.

    The daemon hook died (SIGSEGV, once MemoryError) at ``started
    begin``, the first hook call made while a new HVM guest runs, and
    the plugin's capability probe of QEMU died (SIGSEGV, ip 0, in a
    library constructor) while a diskless guest idled in SeaBIOS. This
    starts the hook's full import and ``QEMU -version`` repeatedly while
    such a guest runs, then with no guest, and counts the failures.
    """
    path = write('/root/acme-8.xml', domain_xml('acme-8', uuid_of(8)))
    r, rec = boot('acme-8', path)
    time.sleep(5)
    up = state('acme-8') == 'running'
    busy_py = import_probe(n_py, 'guest')
    busy_ex = exec_probe(n_exec, 'guest')
    up &= state('acme-8') == 'running'
    virsh('destroy', 'acme-8')
    library('undefine', uuid_of(8))
    idle_py = import_probe(n_py, 'idle')
    idle_ex = exec_probe(n_exec, 'idle')

    def bad(x):
        return sum(1 for rc in x if rc != 0)
    res = {'guest_ran_throughout': up,
           'with_guest': {'python_imports': len(busy_py),
                          'python_failed': bad(busy_py),
                          'qemu_execs': len(busy_ex),
                          'qemu_failed': bad(busy_ex)},
           'no_guest': {'python_imports': len(idle_py),
                        'python_failed': bad(idle_py),
                        'qemu_execs': len(idle_ex),
                        'qemu_failed': bad(idle_ex)},
           'exit_codes': sorted(set(busy_py + busy_ex + idle_py + idle_ex))}
    emit('XENLAB-PROBE %s' % json.dumps(res))


def crash_evidence():
    """Segfaults the kernel logged, Python's fatal errors, cores."""
    r = run(['dmesg'])
    segv = [x for x in r.out.splitlines()
            if re.search(r'segfault at|traps:|general protection|'
                         r'invalid opcode|Code: ', x)]
    emit('XENLAB-FACT kernel segfault/trap lines: %d' % len(segv))
    for line in segv[:20]:
        emit('XENLAB-FACT dmesg: %s' % line.strip()[:400])
    try:
        err = open(HOOK_STDERR, errors='replace').read().splitlines()
    except OSError:
        err = []
    fatal = [i for i, x in enumerate(err)
             if re.search(r'Fatal Python error|MemoryError|Segmentation',
                          x)]
    emit('XENLAB-FACT hook stderr: %d lines, %d fatal' % (
        len(err), len(fatal)))
    for i in fatal[:3]:
        for line in err[i:i + 25]:
            emit('XENLAB-FACT hook-stderr: %s' % line[:300])
    try:
        calls = open(HOOK_CALLS).read().splitlines()
    except OSError:
        calls = []
    bad = [x for x in calls if ' rc=0 ' not in x]
    emit('XENLAB-FACT hook calls: %d, non-zero exits: %d' % (
        len(calls), len(bad)))
    for line in bad[:20]:
        emit('XENLAB-FACT hook-call: %s' % line)
    # How long libvirtd waited for each hook call, by operation.
    per_op = {}
    for line in calls:
        parts = line.split()
        if len(parts) >= 6:
            per_op.setdefault(' '.join(parts[4:6]), []).append(
                float(parts[1]) - float(parts[0]))
    emit('XENLAB-FACT hook seconds per call (median, n): %s' % '; '.join(
        '%s %.2f n=%d' % (k, statistics.median(v), len(v))
        for k, v in sorted(per_op.items())))
    for f in (HOOK_CALLS, HOOK_STDERR):
        if os.path.exists(f):
            run(['cp', f, OUT])
    cores = sorted(glob.glob(CORES + '/core.*'))
    emit('XENLAB-FACT cores: %s' % (' '.join(
        '%s(%d)' % (os.path.basename(c), os.path.getsize(c))
        for c in cores) or 'none'))
    for c in cores[:2]:
        if os.path.getsize(c) < 80 * 1024 * 1024:
            run(['cp', c, OUT])


# --- the library part (run under the venv's Python) -------------------------

def library(action, uuid):
    return run([VENV + '/bin/python', os.path.abspath(__file__), '--library',
                action, uuid], timeout=600)


def print_record(uuid):
    """The domain's dm_restrict record: virDomain.metadata() and XML."""
    import libvirt
    from lxml import etree
    from xen_dm_restrict_plugin.core import restrict
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    dom = libvirt.open(URI).lookupByUUIDString(uuid)
    out = {}
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                            restrict.META_NS, 0)
        out['metadata_api'] = text[:300]
        out['metadata_api_record'] = restrict.record_from_xml(
            text) is not None
    except libvirt.libvirtError as err:
        out['metadata_api_error'] = str(err)[:300]
    root = etree.fromstring(dom.XMLDesc(0).encode())
    node = root.find('metadata/' + restrict.RECORD_TAG)
    rec = restrict.parse_record(node) if node is not None else None
    if rec is not None:
        out.update(uid=rec.uid, gid=rec.gid, chroot=rec.chroot,
                   applied=list(rec.args), source='domain XML')
    print(json.dumps(out))
    return 0


def library_main(action, uuid):
    """Use the plugin as an orchestrator does: virt.HookedConnection."""
    import libvirt
    from xen_dm_restrict_plugin.cmd import host
    from xen_dm_restrict_plugin import exception
    from xen_dm_restrict_plugin.orchestrator import hooks
    from xen_dm_restrict_plugin.orchestrator import loader
    from xen_dm_restrict_plugin.orchestrator import virt

    if action == 'record':
        return print_record(uuid)
    conf = host.load_conf(None)
    conn = virt.HookedConnection.open(URI, loader.HookManager(conf))
    dom = conn.lookup(hooks.Instance(uuid, 'acme'))
    if action == 'undefine':
        dom.undefine()
        print('undefined %s' % uuid)
        return 0
    name = dom.name()
    log = '/var/log/libvirt/libxl/%s.log' % name
    pid0 = dm_pid(dom.ID())
    cdrom = ("<disk type='file' device='cdrom'><source file='%s/cd0.iso'/>"
             "<target dev='hdc' bus='ide'/><readonly/></disk>" % LAB)
    pci = ("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
           "<address domain='0x0000' bus='0x00' slot='0x01' "
           "function='0x0'/></source></hostdev>")
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    ops = [
        ('live migration', lambda: dom.migrateToURI3(
            'xen+ssh://198.51.100.1/system', {},
            libvirt.VIR_MIGRATE_LIVE)),
        ('save', lambda: dom.save(LAB + '/acme-5.save')),
        ('managed save', lambda: dom.managedSave(0)),
        ('CD-ROM change', lambda: dom.updateDeviceFlags(cdrom, live)),
        ('PCI attach', lambda: dom.attachDeviceFlags(pci, live)),
    ]
    rc = 0
    for label, op in ops:
        size0 = os.path.getsize(log) if os.path.exists(log) else 0
        try:
            op()
            outcome, ok = 'ALLOWED (libvirt accepted it)', False
        except exception.DmRestrictError as err:
            outcome, ok = 'refused by the plugin: %s' % str(err)[:300], True
        except libvirt.libvirtError as err:
            outcome, ok = 'reached libvirt: %s' % str(err)[:200], False
        size1 = os.path.getsize(log) if os.path.exists(log) else 0
        running = dom.isActive() and dm_pid(dom.ID()) == pid0
        ok = ok and running and size1 == size0
        rc |= 0 if ok else 1
        print('OP %s %s: %s; domain running with the same device model: %s; '
              'libxl log unchanged: %s' % (
                  'ok' if ok else 'FAIL', label, outcome, running,
                  size1 == size0))
    print('OP %s save image absent' % (
        'FAIL' if os.path.exists(LAB + '/acme-5.save') else 'ok'))
    return rc


# --- main ------------------------------------------------------------------

def main():
    os.makedirs(OUT, exist_ok=True)
    emit('XENLAB-RUNNER start uptime=%s' % open('/proc/uptime').read()
         .split()[0])
    # Crash diagnostics (lab only): every Python the runner starts prints
    # its stack on a fatal signal; cores go to CORES.
    os.environ['PYTHONFAULTHANDLER'] = '1'
    os.makedirs(CORES, exist_ok=True)
    write('/proc/sys/kernel/core_pattern', CORES + '/core.%e.%p.%s\n')
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,
                                              resource.RLIM_INFINITY))
    flags = set()
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('flags'):
                flags = set(line.split(':', 1)[1].split())
                break
    emit('XENLAB-FACT dom0 cpu flags: %s' % ' '.join(sorted(
        x for x in flags if re.match(r'(avx|fma|f16c|xsave|vaes|vpclmul|'
                                     r'svm|npt|sse4|bmi)', x))))
    # Which string routines glibc picks in dom0: what it read from CPUID
    # (a PV dom0's userspace executes CPUID on the emulated CPU directly)
    # and marks usable. ``ld.so --help`` lists every hwcaps level and
    # marks only the last ones "supported": read the diagnostics instead.
    r = run(['/lib64/ld-linux-x86-64.so.2', '--list-diagnostics'])
    diag = dict(x.split('=', 1) for x in r.out.splitlines() if '=' in x)

    def usable(word, bit):
        value = diag.get('x86.cpu_features.features[%s].active[%s]' % word)
        return 'yes' if value and int(value, 16) >> bit & 1 else 'no'
    isa = int(diag.get('x86.cpu_features.isa_1', '0'), 16)
    emit('XENLAB-FACT glibc in dom0: ISA level x86-64-v%d (isa_1=%#x); '
         'usable AVX %s, AVX2 %s, AVX512F %s; xsave state %s bytes' % (
             max([1] + [n + 1 for n in range(1, 4) if isa >> n & 1]), isa,
             usable(('0x0', '0x2'), 28), usable(('0x1', '0x1'), 5),
             usable(('0x1', '0x1'), 16),
             int(diag.get('x86.cpu_features.xsave_state_size', '0'), 16)))
    info = run(['xl', 'info'])
    caps = re.search(r'virt_caps\s*:\s*(.*)', info.out)
    ver = re.search(r'xen_version\s*:\s*(.*)', info.out)
    emit('XENLAB-FACT xen %s virt_caps %s; %s' % (
        ver.group(1) if ver else '?', caps.group(1) if caps else '?',
        run(['dpkg-query', '-W', '-f', '${Package} ${Version}; ',
             'qemu-system-xen', 'libvirt-daemon-driver-xen', 'python3.11'])
        .out))
    settings = [x.split(':', 1)[1].strip() for x in
                run(['xl', 'dmesg']).out.splitlines()
                if 'Xen settings:' in x or 'Support for PV VMs' in x]
    emit('XENLAB-FACT xen speculation settings (EAGER_FPU expected, the '
         'lab\'s spec-ctrl=eager-fpu): %s' % ' | '.join(settings))
    # libvirt's libxl driver logs libxl's debug lines (the device-model
    # argv among them) into /var/log/libvirt/libxl/<name>.log only at
    # log_level 1; its own outputs stay at warnings.
    with open('/etc/libvirt/libvirtd.conf', 'a') as f:
        f.write('log_level = 1\nlog_outputs = "3:stderr"\n')
    run(['systemctl', 'restart', 'libvirtd'])
    run(['ip', 'link', 'add', BRIDGE, 'type', 'bridge'])
    run(['ip', 'link', 'set', BRIDGE, 'up'])
    if not wait_libvirtd():
        emit('XENLAB-RESULT install FAIL 0.0s libvirtd never answered')
        return
    only = None
    with contextlib.suppress(OSError):
        with open(os.path.join(HERE, 'only.txt')) as f:
            only = f.read().strip().split(',')
    if only:
        emit('XENLAB-FACT only these scenarios, after the install: %s'
             % ', '.join(only))
        plain = bench_unrestricted() if 'bench' in only else None
        install()
        for name in only:
            if name == 'bench':
                s_bench(plain)
            else:
                SCENARIO_FUNCTIONS[name]()
        return
    t = time.monotonic()
    capture_argv()
    emit('XENLAB-FACT argv capture took %.0f s' % (time.monotonic() - t))
    plain = bench_unrestricted()
    STATE['disk_unrestricted_mib_s'] = disk_unrestricted()
    if not install():
        emit('XENLAB-FACT the install failed; the scenarios run anyway')
    s1_start()
    s2_refuse()
    s3_lifecycle()
    s4_refused()
    s5_anchor()
    s6_isolation()
    s7_storage()
    s8_ovs()
    s_bench(plain)
    crash_probe()
    crash_evidence()
    emit('XENLAB-FACT guest triple faults under emulation (each guest '
         'started, or its scenario run, once more): %d %s' % (
             len(STATE.get('triple_faults', [])),
             ' '.join(STATE.get('triple_faults', []))))
    j = run(['journalctl', '--no-pager', '-b'])
    mem = [x for x in j.out.splitlines() if 'MemoryError' in x]
    emit('XENLAB-FACT MemoryError lines in the journal: %d%s' % (
        len(mem), (': ' + mem[0][-200:]) if mem else ''))
    emit('XENLAB-FACT free: %s' % ' '.join(run(['free', '-m']).out.split()))


LAUNCHER_BENCH = '''import json, sys, tempfile
from bench import qemu
work = tempfile.mkdtemp()
print(json.dumps(qemu.run_launcher(sys.argv[1], work, int(sys.argv[2]))))
'''


def launcher_bench(starts=15):
    """The bench's launcher step (bench/qemu.py) in dom0.

    dom0 has cgroup v2, so the compiled front starts QEMU straight into
    its cgroup (clone3), which this machine's cgroup v1 cannot.
    """
    r = run([VENV + '/bin/python', '-c', LAUNCHER_BENCH,
             '/usr/bin/qemu-system-x86_64', str(starts)], timeout=900,
            env=dict(os.environ, PYTHONPATH=HERE))
    try:
        res = json.loads(r.out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {'failed': first_line(r.text, 400)}
    keep = ('cgroup', 'median_ms', 'bare_median_ms', 'ratio_to_bare')
    out = {k: res[k] for k in keep if k in res}
    if 'python_launcher' in res:
        out['python_launcher_ratio'] = res['python_launcher'].get(
            'ratio_to_bare')
    return out or res


def hook_times():
    """Median milliseconds of libvirtd's hook per operation.

    From the lab wrapper's call log (its own bash and tee included).
    """
    times = {}
    try:
        with open(HOOK_CALLS) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 5 and parts[2].startswith('rc='):
                    op = '%s %s' % (parts[4], parts[5] if len(parts) > 5
                                    else '-')
                    times.setdefault(op, []).append(
                        (float(parts[1]) - float(parts[0])) * 1000)
    except (OSError, ValueError):
        return {}
    return {op: {'median': round(statistics.median(v), 1), 'n': len(v)}
            for op, v in sorted(times.items())}


@scenario('bench', 'restricted vs unrestricted libvirt start')
def s_bench(s, plain):
    restricted, boots = bench_restricted()
    res = {'unrestricted_virsh_start_s': [round(x, 2) for x in plain],
           'restricted_virsh_start_s': [round(x, 2) for x in restricted],
           'restricted_cli_boot_s': [round(x, 2) for x in boots]}
    if plain and restricted:
        mu, mr = statistics.median(plain), statistics.median(restricted)
        res.update(unrestricted_median_s=round(mu, 2),
                   restricted_median_s=round(mr, 2),
                   ratio=round(mr / mu, 2))
    res['quiet_waits_s'] = STATE.get('quiet_waits_s')
    res['hook_ms_by_operation'] = hook_times()
    fast, slow = (STATE.get('disk_restricted_mib_s'),
                  STATE.get('disk_unrestricted_mib_s'))
    res['guest_disk_read_mib_s'] = {
        'storage_daemon': fast, 'unrestricted_qdisk': slow,
        'ratio_restricted_to_unrestricted': round(fast / slow, 2)
        if fast and slow else None}
    res['launcher'] = launcher_bench()
    emit('XENLAB-BENCH %s' % json.dumps(res))
    s.check(len(plain) == BENCH_STARTS and len(restricted) == BENCH_STARTS,
            '%d unrestricted and %d restricted starts succeeded' % (
                len(plain), len(restricted)))


SCENARIO_FUNCTIONS = {'1-start': s1_start, '2-refuse': s2_refuse,
                      '3-lifecycle': s3_lifecycle, '4-refused-ops': s4_refused,
                      '5-xl-anchor': s5_anchor, '6-isolation': s6_isolation,
                      '7-storage': s7_storage, '8-ovs': s8_ovs}


if __name__ == '__main__':
    if sys.argv[1:2] == ['--library']:
        sys.exit(library_main(sys.argv[2], sys.argv[3]))
    main()
