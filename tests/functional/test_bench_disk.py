"""The disk bench compares what it says it compares.

``bench/disk.py`` pairs the storage daemon as the storage service starts
it with the same daemon as root.  Here, while fio reads and writes
through both, ``/proc`` shows the first as the instance's uid in its own
mount namespace, cgroup and seccomp filter, and the second as root with
none of them; after the step nothing of it is left (daemons, the user,
the storage directory).  No figure is checked: timings belong to the
bench.  Needs root, qemu-storage-daemon, qemu-img and fio (with its nbd
engine); skipped with the reason elsewhere.
"""

import glob
import os
import pwd
import shutil
import tempfile
import uuid as uuid_mod

import pytest

from bench import disk
from tests.functional import hostenv
from xen_dm_restrict_plugin.core import disks
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin.core import settings as settings_mod

QSD = settings_mod.Settings.storage_daemon_binary

IMAGE_MIB = 16


def _status(pid):
    with open('/proc/%d/status' % pid) as handle:
        return dict((key, value.split()) for key, _, value in
                    (line.partition(':') for line in handle))


def _processes_of(uid):
    found = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                if _status(int(name))['Uid'][0] == str(uid):
                    found.append(int(name))
            except (OSError, KeyError):
                pass
    return found


@pytest.fixture
def small_image(monkeypatch):
    hostenv.require_root()
    hostenv.require_cgroups()
    reason = disk.skip_reason(QSD)
    if reason:
        pytest.skip(reason)
    monkeypatch.setattr(disk, 'IMAGE_MIB', IMAGE_MIB)


def test_fio_runs_on_the_restricted_daemon_and_on_root(small_image,
                                                       tmp_path):
    env = hostenv.HostEnv(str(tmp_path), hostenv.free_block())
    storage = tempfile.mkdtemp(prefix='xdr-')
    uid = env.first
    guest, other = str(uuid_mod.uuid4()), str(uuid_mod.uuid4())
    try:
        env.add_user(hostenv.unique_name('xdr-bench-'), uid)
        instances = str(tmp_path / 'instances')
        settings, notes = disk._settings(env, instances, storage, QSD)
        assert notes == []
        images = disk.Images(instances)
        overlay = images.fresh_overlay(guest)
        chain = disks.chain_for(overlay, settings,
                                pathscope.Scope('acme', guest))
        root_chain = disks.chain_for(images.fresh_overlay(other), settings,
                                     pathscope.Scope('acme', other))
        with disk.restricted(settings, guest, uid, chain) as ours, \
                disk.unrestricted(settings, root_chain,
                                  str(tmp_path)) as root:
            # Both serve: the jobs' figures come from them.
            disk.measure_pair(ours, root, str(tmp_path))
            mine = os.readlink('/proc/self/ns/mnt')
            status = _status(ours.pid)
            assert status['Uid'] == [str(uid)] * 4
            assert status['Seccomp'] == ['2']
            assert os.readlink('/proc/%d/ns/mnt' % ours.pid) != mine
            with open('/proc/%d/cgroup' % ours.pid) as handle:
                assert '/%s/storage/%s/dm-%d\n' % (
                    settings.cgroup_parent, disk.TARGET, uid) in handle.read()
            assert os.stat(overlay).st_uid == uid
            status = _status(root.pid)
            assert status['Uid'] == ['0'] * 4
            assert status['Seccomp'] == ['0']
            assert os.readlink('/proc/%d/ns/mnt' % root.pid) == mine
            assert disk.check(ours, root, uid, settings)
        for served in (ours, root):
            assert set(served.figures) == set(disk.METRICS)
            assert all(value > 0 for value in served.figures.values())
        assert _processes_of(uid) == []
        assert os.stat(overlay).st_uid == 0
    finally:
        hostenv.kill_uid(uid)
        env.remove_users()
        hostenv.remove_cgroup_parent(env.cgroup_parent)
        shutil.rmtree(storage, ignore_errors=True)


def test_the_step_leaves_nothing_behind(small_image, tmp_path):
    result = disk.run(str(tmp_path), runs=1)
    assert 'failed' not in result and 'skipped' not in result, result
    uid = result['uid']
    assert result['verified'].startswith(
        'restricted: uid %d, own mount namespace, cgroup ' % uid)
    assert result['verified'].endswith(
        '/storage/%s/dm-%d, Seccomp 2; root: uid 0, Seccomp 0, dom0\'s '
        'mounts' % (disk.TARGET, uid))
    assert set(result['ratio']) == set(disk.METRICS)
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    assert _processes_of(uid) == []
    assert os.listdir(str(tmp_path)) == []
    assert [group for mount in hostenv.cgroup_mounts() for group in
            glob.glob(os.path.join(mount, '*', 'storage', '*',
                                   'dm-%d' % uid))] == []
