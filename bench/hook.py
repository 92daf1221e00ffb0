"""libvirtd's libxl hook, run as libvirtd runs the installed hook.

libvirtd runs ``/etc/libvirt/hooks/libxl`` synchronously for every
operation of every domain, with argv ``NAME OP SUBOP -``, the domain XML
on stdin and a cleared environment.  Here the hook ``xen-dm-restrict
install-hook`` writes is run exactly so (the environment holds only the
scratch configuration's path, which a host has at the default place),
for ``prepare begin`` of a restricted domain of a leased uid (the whole
check, the chroot, the reap as a real reaper user), for an operation the
hook ignores (``start begin``), and for ``started begin`` of a domain
whose VNC console is not relayed (the worker looks and has nothing to
do) and of one without a graphics element (the compiled client does not
hand it on).  ``prepare begin`` is timed
with a current settings snapshot, and (every fifth call) without one:
the first call after the configuration changed loads it in full and
writes the snapshot again.  The snapshot is the scratch one (the
environment names it; a host has it at the default place).  Needs root
(the reap, the chroot); elsewhere skipped.
"""

import argparse
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import typing

from bench import common
from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin.daemon_hook import service as hook_service
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import settings as launch_settings

UID_BASE = 3990000
#: Seconds between the calls through the service.
SPACING = 0.3
#: Operations libvirtd runs that the hook may ignore; the first it does
#: ignore is timed.
IGNORED_CANDIDATES = (('start', 'begin'), ('reconnect', 'begin'),
                      ('release', 'begin'))


def _free_uid(start: int) -> int:
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def _timed(argv: typing.List[str], xml: bytes, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, input=xml, env=env, capture_output=True)
    spent = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError('the hook exited %d: %s' % (
            proc.returncode, proc.stderr.decode(errors='replace')))
    return spent


def run(workdir: str, calls: int) -> typing.Dict[str, typing.Any]:
    """Time ``calls`` runs of each operation through the installed hook."""
    if os.geteuid() != 0:
        return {'skipped': 'not root: the hook creates the chroot and '
                           'reaps as the reaper user'}
    from oslo_config import cfg

    from xen_dm_restrict_plugin.cmd import host
    from xen_dm_restrict_plugin.orchestrator import extension

    scratch = tempfile.mkdtemp(prefix='hook-', dir=workdir)
    service = None
    os.chmod(scratch, 0o755)
    reaper = 'xdr-bench-reap-%d' % os.getpid()
    reaper_uid = _free_uid(UID_BASE + os.getpid() % 5000)
    subprocess.run(['useradd', '--no-create-home', '--no-user-group',
                    '--no-log-init', '--shell', '/usr/sbin/nologin',
                    '--uid', str(reaper_uid), reaper], check=True,
                   capture_output=True)
    try:
        first = common.FIRST_UID
        config = os.path.join(scratch, 'hook.conf')
        images = os.path.join(scratch, 'images')
        os.mkdir(images)
        with open(config, 'w') as handle:
            handle.write('[dm_restrict]\n'
                         'tenant_uid_ranges = %s:%d-%d\n'
                         'device_model_syntax = runas\n'
                         'chroot_base_dir = %s\n'
                         'lease_db = %s\n'
                         'reaper_user = %s\n'
                         'reaper_lock_file = %s\n'
                         'allowed_host_paths = %s\n'
                         'writable_shared_host_paths = %s\n'
                         'allowed_bridges = xenbr0\n'
                         % (common.tenant(0), first, first + 999,
                            os.path.join(scratch, 'chroots'),
                            os.path.join(scratch, 'leases.sqlite'),
                            reaper, os.path.join(scratch, 'reaper.lock'),
                            common.base.images_dir(),
                            common.base.images_dir()))
        settings = host.load_settings([config])
        instance = common.new_instance()
        hook = extension.DmRestrictHook(cfg.ConfigOpts(), settings)
        try:
            xml = hook.prepare(common.domain_xml(instance), instance)
        finally:
            hook.close()
        record = restrict.read_record(domain_mod.parse(xml, 1 << 20))
        path = os.path.join(scratch, 'libxl')
        run_dir = os.path.join(scratch, 'run')
        snapshot = os.path.join(run_dir, 'settings.marshal')
        socket_path = os.path.join(run_dir, 'hook.sock')
        env = {host.CONFIG_ENV: config, launch_settings.PATH_ENV: snapshot,
               hook_service.SOCKET_ENV: socket_path}
        with common.environ(env), contextlib.redirect_stdout(None):
            host.install_hook(argparse.Namespace(path=path))
        data = xml.encode()
        parsed = domain_mod.parse(data, 1 << 20)
        for node in parsed.root.findall('devices/graphics'):
            node.getparent().remove(node)
        bare = parsed.to_bytes()
        name = 'bench-hook'
        prepare = [path, name, 'prepare', 'begin', '-']
        from xen_dm_restrict_plugin.daemon_hook import operations

        skipped_op = next(op for op in IGNORED_CANDIDATES
                          if op not in operations.ACTED_ON)
        ignored = [path, name, skipped_op[0], skipped_op[1], '-']
        started = [path, name] + list(operations.OP_STARTED) + ['-']
        # No service yet: the compiled hook runs the Python hook itself.
        _timed(prepare, data, env)
        python = [_timed(prepare, data, env)
                  for _ in range(max(5, calls // 3))]
        service = common.start_service(
            'xen_dm_restrict_plugin.cmd.hook_service',
            dict(os.environ, **env), socket_path)
        _timed(prepare, data, env)
        _timed(ignored, data, env)
        prepared, skipped, refreshed, after, after_bare = [], [], [], [], []
        for n in range(calls):
            # One domain start at a time, as libvirtd's calls come: the
            # service has its workers ready again (a burst of more calls
            # than workers waits for workers to start).
            time.sleep(SPACING)
            prepared.append(_timed(prepare, data, env))
            skipped.append(_timed(ignored, data, env))
            time.sleep(SPACING)
            after.append(_timed(started, data, env))
            after_bare.append(_timed(started, bare, env))
            if n % 5 == 0:
                # The first call after the configuration changed: the
                # whole configuration is loaded, and the snapshot written.
                os.unlink(snapshot)
                time.sleep(SPACING)
                refreshed.append(_timed(prepare, data, env))
    except (OSError, RuntimeError, subprocess.SubprocessError,
            exception.DmRestrictError) as err:
        return {'skipped': 'the hook failed: %s' % err}
    finally:
        if service is not None:
            service.terminate()
            service.wait()
        subprocess.run(['userdel', reaper], capture_output=True)
        shutil.rmtree(scratch)
    return {'hook': 'compiled client of install-hook asking '
                    'xen-dm-restrict-hook-service',
            'uid': record.uid,
            'ignored_operation': ' '.join(skipped_op),
            'prepare': common.summary(prepared),
            'prepare_without_snapshot': common.summary(refreshed),
            'prepare_without_service': common.summary(python),
            'ignored': common.summary(skipped),
            'started': common.summary(after),
            'started_without_graphics': common.summary(after_bare)}
