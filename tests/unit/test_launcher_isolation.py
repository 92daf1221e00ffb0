"""The launcher's isolation pieces that need no root: which ``-netdev``
values it rewrites, where it finds cgroups, its settings snapshot and the
options behind them.
"""

import marshal
import os

import pytest

from tests import base
from xen_dm_restrict_plugin import conf
from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import cgroup as dm_cgroup
from xen_dm_restrict_plugin.launcher import network as dm_network
from xen_dm_restrict_plugin.launcher import seccomp as syscall_filter
from xen_dm_restrict_plugin.launcher import settings as launch_settings

TAP = 'type=tap,id=net0,ifname=vif3.0-emu,script=no,downscript=no'


def test_only_libxls_tap_netdevs_are_found():
    args = ['-machine', 'xenfv', '-netdev', TAP,
            '-device', 'rtl8139,id=nic0,netdev=net0,mac=00:16:3e:00:00:01',
            '-netdev', 'type=tap,id=net1,ifname=vif3.1-emu,script=no,'
            'downscript=no', '-name', 'netdev']
    assert dm_network.tap_netdevs(args) == [
        (3, 'net0', 'vif3.0-emu'), (7, 'net1', 'vif3.1-emu')]
    # Other shapes are not the launcher's to rewrite (the argv check
    # refuses them before): a script, a helper, an fd already.
    for other in ('type=tap,id=net0,ifname=vif3.0-emu,script=/bin/sh,'
                  'downscript=no', 'type=bridge,id=net0,br=xenbr0',
                  'type=tap,id=net0,fd=3', 'type=user,id=net0'):
        assert dm_network.tap_netdevs(['-netdev', other]) == []


@pytest.mark.parametrize('args, listens', [
    (['-vnc', '127.0.0.1:0,to=99'], True),
    (['-vnc', '0.0.0.0:1'], True),
    (['-vnc', 'none'], False),
    (['-nographic'], False),
    (['-name', '-vnc'], False),
])
def test_vnc_listening_is_seen(args, listens):
    assert dm_network.vnc_listens(args) is listens


@pytest.mark.parametrize('value, expected', [
    ('127.0.0.1:3', 'unix:/c/vnc.sock'),
    ('127.0.0.1:3,password=on', 'unix:/c/vnc.sock,password=on'),
    ('0.0.0.0:1,password=on,to=99', 'unix:/c/vnc.sock,password=on'),
    ('none', 'none'),
])
def test_libxls_vnc_becomes_a_unix_socket(value, expected):
    # libxl__build_device_model_args_new: -vnc ADDR:DISPLAY[,password=on]
    # [,to=99]; the password itself comes by QMP (change-vnc-password).
    args = ['-name', '-vnc', '-vnc', value]
    assert dm_network.vnc_to_unix(args, '/c/vnc.sock') == [
        '-name', '-vnc', '-vnc', expected]
    with pytest.raises(ValueError):
        dm_network.vnc_to_unix(args, '/c,d/vnc.sock')


def _mounts(tmp_path, lines):
    path = tmp_path / 'mounts'
    path.write_text(''.join(line + '\n' for line in lines))
    return str(path)


def test_cgroup_v2_with_pids_and_memory_is_preferred(tmp_path):
    unified = tmp_path / 'unified'
    unified.mkdir()
    (unified / 'cgroup.controllers').write_text('cpuset cpu io memory pids\n')
    mounts = _mounts(tmp_path, [
        'cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0',
        'cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0',
        'cgroup2 %s cgroup2 rw 0 0' % unified])
    found = dm_cgroup.find(mounts)
    assert (found.version, found.roots) == (2, {
        'pids': str(unified), 'memory': str(unified), 'cpu': str(unified)})


def test_an_empty_cgroup2_falls_back_to_v1(tmp_path):
    unified = tmp_path / 'un ified'
    unified.mkdir()
    (unified / 'cgroup.controllers').write_text('\n')
    escaped = str(unified).replace(' ', '\\040')
    mounts = _mounts(tmp_path, [
        'cgroup2 %s cgroup2 rw 0 0' % escaped,
        'cgroup /c/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0',
        'cgroup /c/pids cgroup rw,nosuid,pids 0 0',
        'cgroup /c/memory cgroup rw,memory 0 0'])
    found = dm_cgroup.find(mounts)
    assert (found.version, found.roots) == (1, {
        'pids': '/c/pids', 'memory': '/c/memory', 'cpu': '/c/cpu,cpuacct'})
    assert 'cgroup v1' in found.describe()


def test_no_memory_controller_is_no_hierarchy(tmp_path):
    mounts = _mounts(tmp_path, [
        'cgroup /c/pids cgroup rw,pids 0 0',
        'cgroup2 /nonexistent cgroup2 rw 0 0'])
    assert dm_cgroup.find(mounts) is None


@pytest.mark.parametrize('parent', ['/abs', '../up', 'a/../b', ''])
def test_cgroup_enter_refuses_parents_outside_the_root(parent):
    with pytest.raises(OSError) as err:
        dm_cgroup.enter(parent, 200001, dm_cgroup.Limits(128, 1 << 29, 100))
    assert 'not a relative path' in str(err.value)


def test_the_filter_allows_only_the_device_model_ids():
    rows = syscall_filter.rules(200001, 64000)
    setuid = [row for row in rows if row[0] == 'setuid']
    setgid = [row for row in rows if row[0] == 'setgid']
    assert setuid == [('setuid', syscall_filter.EPERM,
                       ((0, syscall_filter.SCMP_CMP_NE, 200001, 0),))]
    assert setgid == [('setgid', syscall_filter.EPERM,
                       ((0, syscall_filter.SCMP_CMP_NE, 64000, 0),))]
    killed = {row[0] for row in rows if row[1] == syscall_filter.KILL}
    assert {'fork', 'vfork', 'execveat', 'setns', 'unshare', 'setresuid',
            'mount', 'clone'} <= killed
    assert 'execve' not in {row[0] for row in rows}


@pytest.mark.parametrize('allowed', [
    syscall_filter.FALLOCATE_MODES, syscall_filter.SOCKET_FAMILIES])
def test_outside_matches_exactly_the_values_not_allowed(allowed):
    pairs = syscall_filter.outside(allowed)
    high = 0xdead << 32  # the kernel reads an int: the low 32 bits
    for value in list(range(1 << 12)) + [1 << 31, 0xffffffff]:
        for register in (value, value | high):
            matched = any(register & mask == want for mask, want in pairs)
            assert matched == (value not in allowed), hex(register)


@pytest.mark.parametrize('value', ['/', 'a/../b', 'x y', 'dm\u00e9', '..'])
def test_bad_cgroup_parents_are_refused(tmp_path, value):
    with pytest.raises(exception.ConfigError) as err:
        base.make_settings(tmp_path, cgroup_parent=value)
    assert 'cgroup_parent' in str(err.value)


def test_cgroup_parent_is_normalised(tmp_path):
    assert base.make_settings(
        tmp_path, cgroup_parent='/machine.slice/xdr/').cgroup_parent == (
        'machine.slice/xdr')


@pytest.mark.parametrize('option, value', [
    ('device_model_max_processes', 8),
    ('device_model_memory_mib', 32),
    ('device_model_cpu_weight', 0),
    ('network_namespace', 'sometimes'),
    ('cgroup_limits', 'v1'),
])
def test_limits_below_what_qemu_needs_are_refused(tmp_path, option, value):
    with pytest.raises((ValueError, exception.ConfigError)):
        base.make_settings(tmp_path, **{option: value})


@pytest.fixture
def snapshot(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip('the launcher trusts only a root-owned snapshot')
    run = tmp_path / 'run'
    run.mkdir(mode=0o755)
    path = run / 'launcher-settings.marshal'
    monkeypatch.setenv(launch_settings.PATH_ENV, str(path))
    config = tmp_path / 'xen-dm-restrict.conf'
    config.write_text('[dm_restrict]\n')
    settings = base.make_settings(tmp_path)
    launch_settings.write(settings, str(config))
    return settings, str(config), path


def test_a_fresh_snapshot_gives_the_launchers_settings(snapshot):
    settings, config, _ = snapshot
    loaded = launch_settings.load(config)
    for name in launch_settings.FIELDS:
        want = getattr(settings, name)
        assert getattr(loaded, name) == (
            frozenset(want) if name == 'allowed_qemu_options' else want)
    assert [(r.start, r.stop - 1) for r in loaded.all_ranges()] == [
        (r.first, r.last) for r in settings.all_ranges()]
    assert loaded.chroot_dir(200001) == settings.chroot_dir(200001)


def test_a_changed_config_makes_the_snapshot_stale(snapshot):
    _, config, _ = snapshot
    with open(config, 'a') as handle:
        handle.write('# changed\n')
    assert launch_settings.load(config) is None


def test_a_snapshot_of_another_config_is_not_used(snapshot, tmp_path):
    other = tmp_path / 'other.conf'
    other.write_text('[dm_restrict]\n')
    assert launch_settings.load(str(other)) is None
    assert launch_settings.load(None) is None


@pytest.mark.parametrize('spoil', ['mode', 'dir', 'format', 'garbage',
                                   'symlink'])
def test_an_untrusted_or_foreign_snapshot_is_not_used(snapshot, spoil):
    _, config, path = snapshot
    if spoil == 'mode':
        path.chmod(0o666)
    elif spoil == 'dir':
        path.parent.chmod(0o777)
    elif spoil == 'format':
        data = marshal.loads(path.read_bytes())
        data['format'] += 1
        path.write_bytes(marshal.dumps(data))
    elif spoil == 'garbage':
        path.write_bytes(b'\x00not marshal')
    else:
        real = path.with_name('real')
        path.rename(real)
        path.symlink_to(real)
    assert launch_settings.load(config) is None


def test_network_and_cgroup_choices_are_shared(tmp_path):
    settings = base.make_settings(tmp_path)
    assert settings.network_namespace == constants.NETNS_REQUIRED
    assert settings.cgroup_limits == constants.CGROUPS_REQUIRED
    assert conf.NETNS_EXCEPT_VNC is constants.NETNS_EXCEPT_VNC
    snapshot = launch_settings.LaunchSettings(launch_settings.dump(settings))
    assert snapshot.network_namespace == constants.NETNS_REQUIRED
    assert snapshot.chroot_dir(200000) == settings.chroot_dir(200000) == (
        constants.chroot_dir(settings.chroot_base_dir, 200000))
