#!/usr/bin/env python3
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
"""The Xen lab: boot a real Xen host under QEMU and run the plugin on it.

Why this exists: every other test of the project runs without Xen. This
driver proves, on Debian's Xen 4.17 with libvirt's libxl driver, that
tenant VMs started through the plugin on ``xen:///system`` really run with
their device model restricted (issue 10). It:

1. builds a dom0 disk image from Debian packages (``build-dom0.sh``,
   ``packages.txt``), cached in ``.xenlab/image-<hash>`` keyed on a hash
   of those inputs;
2. builds a wheel of the *current* checkout and puts it, the scenario
   runner (``scenarios.py``) and the lab's configuration on a small
   per-run disk, next to a copy-on-write overlay of the cached image (the
   cached image is never written);
3. boots Xen and dom0 under ``qemu-system-x86_64 -accel tcg -cpu max``
   (without AVX by default, see CPU_NO_AVX),
   follows the serial console, and kills that QEMU when the run ends,
   fails, times out or is interrupted;
4. prints the scenarios' PASS/FAIL table and writes ``.xenlab/run/``:
   ``serial.log``, ``summary.json`` (timings, results, bench), the dom0
   runner's files (``out/``), and ``.xenlab/observed-argv.txt``.

Exit status: 0 when every scenario passed, 1 otherwise. Run as root on a
Debian 12 host: ``python3 -m tox -e xenlab`` or ``tools/xenlab/lab.py``.
Nothing outside the checkout changes on the host (the image build mounts
/proc and /sys in a private mount namespace only).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
# The files the cached image is built from: any change rebuilds it.
IMAGE_INPUTS = ('build-dom0.sh', 'packages.txt', 'dom0-entry.sh')
# Bumped by hand when the image recipe changes outside IMAGE_INPUTS.
IMAGE_FORMAT = '1'
IMAGE_SIZE = '4G'
# Host tools the lab itself needs; bindep.txt's profile "xenlab" has
# their packages (tools/install-deps.sh xenlab installs them).
HOST_TOOLS = ('qemu-system-x86_64', 'qemu-img', 'debootstrap', 'mkfs.ext4',
              'debugfs', 'unshare')
# The scenarios the runner must report; a missing one is a failure.
SCENARIOS = ('1-start', '2-refuse', '3-lifecycle', '4-refused-ops',
             '5-xl-anchor', '6-isolation', '7-storage', '8-ovs', 'bench')

# LAB-ONLY WORKAROUND (SMAP): a PV dom0 under TCG crashes at once with
# SMAP on ("d0v0 Unhandled: vec 14, #PF[0001]", create_bounce_frame);
# smap=0 hides it from Xen. Real hardware does not need it.
# LAB-ONLY WORKAROUND (lazy FPU): on the emulated AMD CPU Xen 4.17
# switches FPU state lazily (CR0.TS and #NM; eager only on Intel parts
# that speculate past #NM), so a vCPU's x87/SSE registers stay loaded
# until another vCPU's first FPU instruction traps. Under TCG that trap
# is the emulator's to raise for every such instruction, across nested
# SVM too; a missed one hands one vCPU another's registers. Programs in
# dom0 died now and then with wild pointers while an HVM guest shared
# its CPUs (glibc's string routines keep pointers in XMM registers).
# spec-ctrl=eager-fpu switches the state at every context switch, as
# upstream Xen now always does ("x86: Always use eager-fpu", 2026);
# real hardware needs nothing.
# conring_size: Xen's console ring holds a whole run (with loglvl=all it
# wrapped within a minute), so the runner finds a guest's "Triple fault"
# line in xl dmesg at the end of a scenario.
XEN_CMDLINE = ('console=com1 com1=115200,8n1 dom0_mem={dom0_mem}M,'
               'max:{dom0_mem}M dom0_max_vcpus=2 loglvl=all '
               'guest_loglvl=all noreboot smap=0 '
               'spec-ctrl=eager-fpu console_timestamps=boot conring_size=4m')
DOM0_CMDLINE = 'root=/dev/vda rw console=hvc0 earlyprintk=xen'
# The emulated CPU. "max" gives Xen AMD SVM with nested paging (HAP).
CPU_MAX = 'max'
# LAB-ONLY WORKAROUND (AVX): "max" without the AVX family (the default).
# With "max", programs started in dom0 while an HVM guest ran died now
# and then with SIGSEGV: the daemon hook at "started begin" (run 2), the
# plugin's capability probe of QEMU with ip 0 in a library constructor
# under _dl_init (run A, cores kept); QEMU 7.2 added AVX/AVX2 to TCG and
# glibc then uses AVX2 routines and saves YMM state. Without AVX no such
# crash was seen (doc/source/admin/xen-lab.rst has the runs). SVM and
# NPT stay; real hardware does not need this. "--cpu max" brings it back.
CPU_NO_AVX = ('max,-avx,-avx2,-fma,-f16c,-vaes,-vpclmulqdq,-avx-vnni')
CPUS = {'max': CPU_MAX, 'no-avx': CPU_NO_AVX}
MILESTONES = (
    ('xen', r'Xen version'),
    ('svm', r'HVM: SVM enabled'),
    ('hap', r'HVM: Hardware Assisted Paging \(HAP\) detected'),
    ('dom0-linux', r'Linux version'),
    ('dom0-up', r'XENLAB-BOOT dom0 up'),
    ('runner-start', r'XENLAB-RUNNER start'),
    ('end', r'XENLAB-END'),
)
FATAL = re.compile(r'Hardware Dom0 crashed|Kernel panic|XENLAB-ABORT')


def log(msg):
    print('xenlab: %s' % msg, flush=True)


def sh(cmd, **kw):
    log('$ ' + ' '.join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def missing_host_tools():
    """The lab's host tools that are not installed."""
    return [tool for tool in HOST_TOOLS
            if shutil.which(tool) is None
            and not os.path.exists('/usr/sbin/' + tool)]


def host_mirror():
    """The Debian mirror the host's apt already uses."""
    if os.environ.get('XENLAB_MIRROR'):
        return os.environ['XENLAB_MIRROR']
    files = ['/etc/apt/sources.list']
    d = '/etc/apt/sources.list.d'
    if os.path.isdir(d):
        files += [os.path.join(d, f) for f in sorted(os.listdir(d))
                  if f.endswith(('.list', '.sources'))]
    for path in files:
        try:
            with open(path) as f:
                for line in f:
                    m = re.match(r'\s*(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)'
                                 r'(\S+)', line)
                    if m and 'security' not in m.group(1):
                        return m.group(1)
        except OSError:
            pass
    return 'http://deb.debian.org/debian'


def image_key():
    h = hashlib.sha256(IMAGE_FORMAT.encode())
    for name in IMAGE_INPUTS:
        with open(os.path.join(HERE, name), 'rb') as f:
            h.update(name.encode() + b'\0' + f.read() + b'\0')
    return h.hexdigest()[:16]


def build_image(work, rebuild=False):
    """Return (image dir, seconds spent, cached?)."""
    key = image_key()
    img = os.path.join(work, 'image-' + key)
    if os.path.exists(os.path.join(img, 'done')) and not rebuild:
        log('dom0 image %s is cached' % img)
        return img, 0.0, True
    t0 = time.monotonic()
    shutil.rmtree(img, ignore_errors=True)
    rootfs = os.path.join(work, 'rootfs-' + key)
    os.makedirs(img)
    # Its own mount namespace: debootstrap's and the build's /proc and
    # /sys mounts disappear with it and never show on the host.
    sh(['unshare', '--mount', '--propagation', 'private',
        os.path.join(HERE, 'build-dom0.sh'), rootfs, host_mirror(),
        os.path.join(HERE, 'packages.txt')])
    disk = os.path.join(img, 'disk.img')
    with open(disk, 'wb') as f:
        f.truncate(0)
    sh(['truncate', '-s', IMAGE_SIZE, disk])
    sh(['mkfs.ext4', '-q', '-F', '-L', 'dom0root', '-d', rootfs, disk])
    boot = os.path.join(rootfs, 'boot')
    xen = sorted(f for f in os.listdir(boot)
                 if re.match(r'xen-[0-9.]+-amd64\.gz$', f))[-1]
    with open(os.path.join(img, 'xen'), 'wb') as out:
        sh(['zcat', os.path.join(boot, xen)], stdout=out)
    shutil.copy(os.path.join(rootfs, 'vmlinuz'), os.path.join(img, 'vmlinuz'))
    shutil.copy(os.path.join(rootfs, 'initrd.img'),
                os.path.join(img, 'initrd.img'))
    versions = subprocess.run(
        ['chroot', rootfs, 'dpkg-query', '-W', '-f', '${Package} ${Version}\n',
         'xen-hypervisor-common', 'xen-utils-common', 'qemu-system-xen',
         'libvirt-daemon', 'libvirt-daemon-driver-xen', 'python3',
         'linux-image-amd64'],
        capture_output=True, text=True).stdout
    shutil.rmtree(rootfs)
    spent = time.monotonic() - t0
    with open(os.path.join(img, 'build.json'), 'w') as f:
        json.dump({'key': key, 'seconds': round(spent, 1),
                   'versions': versions.splitlines(),
                   'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())},
                  f, indent=1)
    open(os.path.join(img, 'done'), 'w').close()
    log('dom0 image built in %.0f s' % spent)
    return img, spent, False


def build_payload(run, only=''):
    """The per-run disk: this checkout's wheel, the runner, the config."""
    payload = os.path.join(run, 'payload')
    os.makedirs(payload)
    if only:
        with open(os.path.join(payload, 'only.txt'), 'w') as f:
            f.write(only + '\n')
    wheels = os.path.join(payload, 'wheels')
    os.makedirs(wheels)
    env = dict(os.environ, SKIP_GENERATE_AUTHORS='1',
               SKIP_WRITE_GIT_CHANGELOG='1')
    sh([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps',
        '-w', wheels, TOP], env=env)
    for name in ('scenarios.py', 'dom0.conf'):
        shutil.copy(os.path.join(HERE, name), payload)
    # The bench's launcher step runs in dom0 too (cgroup v2 there); it
    # needs bench/ and the tests' base module, not the test suite.
    shutil.copytree(os.path.join(TOP, 'bench'), os.path.join(payload,
                                                             'bench'))
    os.makedirs(os.path.join(payload, 'tests'))
    for name in ('__init__.py', 'base.py'):
        shutil.copy(os.path.join(TOP, 'tests', name),
                    os.path.join(payload, 'tests'))
    rev = subprocess.run(['git', '-C', TOP, 'describe', '--always',
                          '--dirty'], capture_output=True, text=True)
    with open(os.path.join(payload, 'checkout.txt'), 'w') as f:
        f.write(rev.stdout)
    disk = os.path.join(run, 'payload.img')
    # Room for the runner's logs and up to two cores of a crashed hook.
    sh(['truncate', '-s', '512M', disk])
    sh(['mkfs.ext4', '-q', '-F', '-L', 'xenlab', '-d', payload, disk])
    return disk


class Qemu(object):
    """The lab's QEMU: started once, always killed (see stop())."""

    def __init__(self, img, run, mem, dom0_mem, cpu, tcg='multi',
                 xen_extra=''):
        self.run = run
        self.last_step = None
        # The host's 1-minute load average, once a second: the emulated
        # Xen host slows down (and its timeouts fire) on a busy machine.
        self.loads = []
        self.serial = os.path.join(run, 'serial.log')
        self.overlay = os.path.join(run, 'dom0.qcow2')
        # Copy-on-write: the run writes the overlay, never the cache.
        sh(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
            os.path.join(img, 'disk.img'), self.overlay])
        self.argv = [
            'qemu-system-x86_64', '-accel', 'tcg,thread=%s' % tcg,
            '-cpu', cpu, '-m', str(mem), '-smp', '2', '-machine', 'pc',
            '-display', 'none', '-vga', 'none', '-no-reboot',
            '-kernel', os.path.join(img, 'xen'),
            '-append', ' '.join(filter(None, (
                XEN_CMDLINE.format(dom0_mem=dom0_mem), xen_extra))),
            '-initrd', '%s %s,%s' % (os.path.join(img, 'vmlinuz'),
                                     DOM0_CMDLINE,
                                     os.path.join(img, 'initrd.img')),
            '-drive', 'file=%s,format=qcow2,if=virtio,cache=unsafe'
            % self.overlay,
            '-drive', 'file=%s,format=raw,if=virtio'
            % os.path.join(run, 'payload.img'),
            '-chardev', 'file,id=ser0,path=%s' % self.serial,
            '-serial', 'chardev:ser0', '-monitor', 'none',
        ]
        self.proc = None
        self.t0 = None

    def start(self):
        log('$ ' + ' '.join(self.argv))
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.t0 = time.monotonic()
        log('QEMU pid %d' % self.proc.pid)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        log('stopping QEMU pid %d' % self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def follow(qemu, timeout):
    """Read the serial log until the runner ends; return (lines, times)."""
    times = {}
    seen = 0
    buf = b''
    lines = []
    while True:
        el = time.monotonic() - qemu.t0
        try:
            with open(qemu.serial, 'rb') as f:
                f.seek(seen)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b''
        seen += len(chunk)
        buf += chunk
        *complete, buf = buf.split(b'\n')
        for raw in complete:
            line = raw.decode('utf-8', 'replace').replace('\r', '')
            lines.append(line)
            for name, pat in MILESTONES:
                if name not in times and re.search(pat, line):
                    times[name] = round(el, 1)
                    log('+%5.1fs %s' % (el, name))
            if line.startswith('XENLAB-STEP '):
                qemu.last_step = '[%.0fs] %s' % (el, line[12:200])
            elif line.startswith('XENLAB-'):
                print('  [%6.1fs] %s' % (el, line[:300]), flush=True)
            if 'end' in times:
                return lines, times, None
            if FATAL.search(line):
                return lines, times, 'fatal: ' + line.strip()
        if qemu.proc.poll() is not None:
            return lines, times, 'QEMU exited with %s' % qemu.proc.returncode
        qemu.loads.append(os.getloadavg()[0])
        if el > timeout:
            return lines, times, 'timeout after %d s' % timeout
        time.sleep(1)


def parse(lines):
    results, evidence, bench, argv = {}, {}, {}, []
    facts, probe = [], {}
    for line in lines:
        m = re.match(r'XENLAB-RESULT (\S+) (PASS|FAIL) ([0-9.]+)s (.*)', line)
        if m:
            results[m.group(1)] = {'result': m.group(2),
                                   'seconds': float(m.group(3)),
                                   'title': m.group(4)}
        m = re.match(r'XENLAB-EVIDENCE (\S+) (.*)', line)
        if m:
            evidence.setdefault(m.group(1), []).append(m.group(2))
        m = re.match(r'XENLAB-BENCH (.*)', line)
        if m:
            bench.update(json.loads(m.group(1)))
        m = re.match(r'XENLAB-ARGV (.*)', line)
        if m:
            argv.append(m.group(1))
        m = re.match(r'XENLAB-(?:FACT|HANG) (.*)', line)
        if m:
            facts.append(m.group(1))
        m = re.match(r'XENLAB-PROBE (.*)', line)
        if m:
            probe.update(json.loads(m.group(1)))
    return results, evidence, bench, argv, facts, probe


def dump_out(run):
    """Copy the runner's out/ from the per-run disk (debugfs, no mount)."""
    # rdump creates run/out itself (it fails when out/ exists already).
    subprocess.run(['debugfs', '-R', 'rdump /out %s' % run,
                    os.path.join(run, 'payload.img')],
                   capture_output=True)
    os.makedirs(os.path.join(run, 'out'), exist_ok=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--work', default=os.path.join(TOP, '.xenlab'),
                   help='cache and work directory (default: %(default)s)')
    p.add_argument('--rebuild', action='store_true',
                   help='rebuild the dom0 image even when cached')
    p.add_argument('--build-only', action='store_true')
    p.add_argument('--timeout', type=int, default=1800,
                   help='seconds from QEMU start to the end of the run')
    p.add_argument('--mem', type=int, default=6144, help='QEMU MiB')
    p.add_argument('--dom0-mem', type=int, default=3072, help='dom0 MiB')
    p.add_argument('--only', default='',
                   help='comma-separated scenarios to run after the '
                   'install (e.g. 7-storage,8-ovs), for diagnosis; the run '
                   'then fails by design on the others')
    p.add_argument('--cpu', default=os.environ.get('XENLAB_CPU', 'no-avx'),
                   help='emulated CPU: %s, or a QEMU -cpu value '
                   '(default: %%(default)s)' % ', '.join(sorted(CPUS)))
    p.add_argument('--tcg', choices=('multi', 'single'),
                   default=os.environ.get('XENLAB_TCG', 'multi'),
                   help='TCG threading: one host thread per emulated CPU '
                   '(multi, faster) or one for all (single, the lead for '
                   'the crashes under emulation) (default: %(default)s)')
    p.add_argument('--xen-extra',
                   default=os.environ.get('XENLAB_XEN_EXTRA', ''),
                   help='more options for Xen\'s command line, for '
                   'diagnosis (e.g. asid=0: flush the whole TLB at every '
                   'VMRUN instead of relying on TCG\'s ASIDs)')
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        # Part of the test command: elsewhere than CI (root) it skips, and
        # says so, rather than fail or pretend to pass.
        print('xenlab: SKIPPED: the lab needs root (debootstrap, chroot, '
              'mkfs -d); CI runs it as root')
        return 0
    t_all = time.monotonic()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    missing = missing_host_tools()
    if missing:
        print('xenlab: ERROR: %s not found; install the lab\'s host '
              'packages first: tools/install-deps.sh xenlab'
              % ', '.join(missing))
        return 2
    img, build_s, cached = build_image(work, args.rebuild)
    if args.build_only:
        return 0
    run = os.path.join(work, 'run')
    shutil.rmtree(run, ignore_errors=True)
    os.makedirs(run)
    t_payload = time.monotonic()
    build_payload(run, args.only)
    payload_s = time.monotonic() - t_payload
    cpu = CPUS.get(args.cpu, args.cpu)
    qemu = Qemu(img, run, args.mem, args.dom0_mem, cpu, args.tcg,
                args.xen_extra)

    def on_signal(signum, frame):
        qemu.stop()
        sys.exit('xenlab: interrupted by signal %d; QEMU stopped' % signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        qemu.start()
        lines, times, problem = follow(qemu, args.timeout)
        qemu_s = time.monotonic() - qemu.t0
    finally:
        qemu.stop()
    dump_out(run)
    # The serial console interleaves Xen's and the guests' firmware lines
    # ("(d1) ...") with the runner's, and can cut one in two; the runner's
    # own copy on the per-run disk is clean. Parse that one when it exists.
    runner_log = os.path.join(run, 'out', 'runner.log')
    if os.path.exists(runner_log):
        with open(runner_log, errors='replace') as f:
            lines = f.read().splitlines()
    results, evidence, bench, observed, facts, probe = parse(lines)
    with open(os.path.join(work, 'image-' + image_key(), 'build.json')) as f:
        build = json.load(f)
    summary = {
        'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        'image': {'key': build['key'], 'cached': cached,
                  'build_seconds_this_run': round(build_s, 1),
                  'cold_build_seconds': build['seconds'],
                  'versions': build['versions']},
        'qemu_cpu': cpu,
        'tcg_threads': args.tcg,
        'xen_extra': args.xen_extra,
        'payload_seconds': round(payload_s, 1),
        'boot_milestones_seconds': times,
        'qemu_seconds': round(qemu_s, 1),
        'problem': problem,
        'host_load': {'cpus': os.cpu_count(),
                      'median': round(statistics.median(qemu.loads), 2)
                      if qemu.loads else None,
                      'max': round(max(qemu.loads), 2) if qemu.loads
                      else None},
        'last_step': qemu.last_step,
        'results': results,
        'evidence': evidence,
        'bench': bench,
        'crash_probe': probe,
        'facts': facts,
        'whole_run_seconds': round(time.monotonic() - t_all, 1),
    }
    with open(os.path.join(run, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    if observed:
        with open(os.path.join(work, 'observed-argv.txt'), 'w') as f:
            f.write('# libxl device-model argv seen in the Xen lab, %s\n'
                    % summary['date'])
            f.write('\n'.join(observed) + '\n')
    print()
    print('%-14s %-5s %8s  %s' % ('SCENARIO', 'RESULT', 'SECONDS', 'TITLE'))
    failed = bool(problem)
    for name in SCENARIOS:
        r = results.get(name)
        if r is None:
            print('%-14s %-5s %8s  %s' % (name, 'FAIL', '-', 'not reported'))
            failed = True
            continue
        print('%-14s %-5s %8.1f  %s' % (
            name, r['result'], r['seconds'], r['title']))
        failed |= r['result'] != 'PASS'
    print()
    print('image: %s (%s; cold build %.0f s)' % (
        build['key'], 'cached' if cached else 'built now', build['seconds']))
    for v in build['versions']:
        print('  ' + v)
    print('boot milestones (s after QEMU start): %s' % json.dumps(times))
    if bench:
        print('bench: %s' % json.dumps(bench))
    if probe:
        print('crash probe: %s' % json.dumps(probe))
    print('QEMU -cpu %s' % cpu)
    print('whole run: %.0f s; QEMU ran %.0f s' % (
        summary['whole_run_seconds'], qemu_s))
    print('host load average during the run: median %s, max %s on %d '
          'CPUs (the lab needs them to itself)' % (
              summary['host_load']['median'], summary['host_load']['max'],
              os.cpu_count()))
    if problem:
        print('PROBLEM: %s' % problem)
        print('last step the runner began: %s' % qemu.last_step)
    print('details: %s' % os.path.join(run, 'summary.json'))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
