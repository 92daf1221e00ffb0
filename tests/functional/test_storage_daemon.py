"""The storage daemon serves a qcow2 chain deprivileged, over NBD.

A Nova-style qcow2 overlay on a raw ``_base`` file is served by a real
``qemu-storage-daemon`` as a uid of the test's own block, in its own
mount namespace, cgroup and seccomp filter; ``qemu-io`` reads and writes
it over ``nbd+unix://`` (this kind of machine's kernel has no nbd
module: the kernel side runs in the Xen lab).  Needs root.
"""

import os
import shutil
import subprocess
import tempfile

import pytest

from tests.functional import hostenv
from xen_dm_restrict_plugin.core import disks
from xen_dm_restrict_plugin.core import imageformat
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin.storage import daemon

QSD = '/usr/bin/qemu-storage-daemon'
INSTANCE = '6a0d1c1e-3f1b-4b8e-9a55-2f7c0b1d4e21'


def _io(socket, command):
    return subprocess.run(
        ['qemu-io', '-f', 'raw', '-c', command,
         'nbd+unix:///%s?socket=%s' % (daemon.EXPORT, socket)],
        check=True, capture_output=True, text=True, timeout=30).stdout


def _status(pid):
    with open('/proc/%d/status' % pid) as handle:
        return dict(line.split(':', 1) for line in handle if ':' in line)


@pytest.fixture
def env(tmp_path):
    hostenv.require_root()
    hostenv.require_tool(QSD)
    hostenv.require_tool('qemu-io')
    instances = tmp_path / 'instances'
    env = hostenv.HostEnv(str(tmp_path), hostenv.free_block())
    # A unix socket path must stay under 108 bytes.
    storage = tempfile.mkdtemp(prefix='xdr-')
    env.write_config(
        allowed_host_paths='%s/{instance},%s/_base' % (instances, instances),
        storage_daemon='enabled', storage_dir=storage)
    yield env
    hostenv.kill_uid(env.first)
    shutil.rmtree(storage, ignore_errors=True)


def _nova_images(tmp_path):
    base_dir = tmp_path / 'instances' / '_base'
    own = tmp_path / 'instances' / INSTANCE
    base_dir.mkdir(parents=True)
    own.mkdir(parents=True)
    base_file = base_dir / 'abc123'
    with open(base_file, 'wb') as handle:
        handle.write(b'BASE' * 1024)
        handle.truncate(8 << 20)
    os.chmod(base_file, 0o644)
    overlay = own / 'disk'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                    '-b', str(base_file), str(overlay)], check=True)
    return str(overlay), str(base_file)


def test_a_qcow2_overlay_is_served_deprivileged(env, tmp_path):
    settings = env.settings()
    overlay, base_file = _nova_images(tmp_path)
    before = os.stat(overlay)
    chain = disks.chain_for(overlay, settings,
                            pathscope.Scope('acme', INSTANCE))
    assert [layer.format for layer in chain] == ['qcow2', 'raw']
    uid = gid = env.first
    served = daemon.start(settings, INSTANCE, 'xvda', uid, gid, chain)
    directory = daemon.disk_dir(settings.storage_dir, INSTANCE, 'xvda')
    try:
        status = _status(served.pid)
        assert status['Uid'].split()[:4] == [str(uid)] * 4
        assert status['Gid'].split()[:4] == [str(gid)] * 4
        assert status['Groups'].strip() == ''
        assert status['Seccomp'].strip() == '2'
        assert os.readlink('/proc/%d/ns/mnt' % served.pid) != \
            os.readlink('/proc/self/ns/mnt')
        # Its root holds the program, its libraries, the chain, the socket.
        root = '/proc/%d/root' % served.pid
        assert sorted(os.listdir(root)) != sorted(os.listdir('/'))
        assert not os.path.exists(root + '/etc/shadow')
        assert os.path.exists(root + base_file)
        with open('/proc/%d/cgroup' % served.pid) as handle:
            assert settings.cgroup_parent + '/storage/dm-%d' % uid in \
                handle.read()
        assert os.stat(overlay).st_uid == uid
        # The guest's view: the base shows through, writes land in the
        # overlay, the base is untouched.
        out = _io(served.socket, 'read -P 0x42 0 1')
        assert 'read 1/1' in out and 'failed' not in out
        _io(served.socket, 'write -P 0x5a 0 4096')
        out = _io(served.socket, 'read -P 0x5a 0 4096')
        assert 'read 4096/4096' in out and 'failed' not in out
        with open(base_file, 'rb') as handle:
            assert handle.read(4) == b'BASE'
    finally:
        daemon.stop_disk(settings, directory)
    assert not os.path.exists(directory)
    assert not os.path.exists('/proc/%d' % served.pid) or \
        _status(served.pid).get('State', '').strip().startswith('Z')
    after = os.stat(overlay)
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        before.st_uid, before.st_gid, before.st_mode)


@pytest.mark.parametrize('backing,words', [
    ('/etc/shadow', 'not under'),
    ('json:{"driver":"file","filename":"/etc/shadow"}', 'json: or protocol'),
    ('nbd://10.0.0.1/x', 'json: or protocol'),
])
def test_a_backing_file_outside_the_instance_is_refused(env, tmp_path,
                                                        backing, words):
    settings = env.settings()
    own = tmp_path / 'instances' / INSTANCE
    own.mkdir(parents=True)
    overlay = own / 'disk'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-u', '-F',
                    'raw', '-b', backing, str(overlay), '1M'], check=True)
    with pytest.raises(imageformat.ImageProblem) as err:
        disks.chain_for(str(overlay), settings,
                        pathscope.Scope('acme', INSTANCE))
    assert words in str(err.value)


def test_another_instances_disk_and_a_loop_are_refused(env, tmp_path):
    settings = env.settings()
    own = tmp_path / 'instances' / INSTANCE
    other = tmp_path / 'instances' / 'a8f9e6c4-0000-4000-8000-000000000001'
    own.mkdir(parents=True)
    other.mkdir(parents=True)
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                    str(other / 'disk'), '1M'], check=True)
    overlay = own / 'disk'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-u', '-F',
                    'qcow2', '-b', str(other / 'disk'), str(overlay), '1M'],
                   check=True)
    scope = pathscope.Scope('acme', INSTANCE)
    with pytest.raises(imageformat.ImageProblem) as err:
        disks.chain_for(str(overlay), settings, scope)
    assert 'not under' in str(err.value)
    first, second = own / 'loop-a', own / 'loop-b'
    for image, backing in ((first, second), (second, first)):
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-u',
                        '-F', 'qcow2', '-b', str(backing), str(image), '1M'],
                       check=True)
    with pytest.raises(imageformat.ImageProblem) as err:
        disks.chain_for(str(first), settings, scope)
    assert 'loops back' in str(err.value)


def test_the_hook_service_leaves_nothing_when_nbd_is_missing(env, tmp_path):
    """Here the kernel has no nbd module: the start is refused and the
    daemon, its directory and the image's ownership are undone.
    """
    from lxml import etree

    from xen_dm_restrict_plugin.core import domain
    from xen_dm_restrict_plugin import exception
    from xen_dm_restrict_plugin.storage import nbd
    from xen_dm_restrict_plugin.storage import service

    if nbd.module_loaded():
        pytest.skip('this kernel has nbd devices; the lab covers them')
    settings = env.settings()
    overlay, _ = _nova_images(tmp_path)
    before = os.stat(overlay)
    root = etree.fromstring(
        b'<domain type="xen"><name>n</name><uuid>%s</uuid><os><type>hvm'
        b'</type></os><devices/></domain>' % INSTANCE.encode())
    dom = domain.Domain(root)
    dom.set_metadata(disks._record([disks.DaemonDisk('xvda', overlay,
                                                     'qcow2')]))
    with pytest.raises(exception.OperationRefused) as err:
        service.start(settings, dom, 'acme', env.first, env.first)
    assert 'nbd' in str(err.value)
    assert daemon.running(settings.storage_dir) == []
    assert not os.path.exists(os.path.join(settings.storage_dir, INSTANCE))
    after = os.stat(overlay)
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
