"""The storage daemon serves a qcow2 chain deprivileged, over NBD.

A Nova-style qcow2 overlay on a raw ``_base`` file is served by a real
``qemu-storage-daemon`` as a uid of the test's own block, in its own
mount namespace, cgroup and seccomp filter; ``qemu-io`` reads and writes
it over ``nbd+unix://`` (this kind of machine's kernel has no nbd
module: the kernel side runs in the Xen lab).  Needs root.
"""

import os
import select
import shutil
import stat
import subprocess
import tempfile

from lxml import etree
from oslo_config import cfg
import pytest

from tests import base
from tests.functional import hostenv
from xen_dm_restrict_plugin.core import disks
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import imageformat
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.storage import daemon
from xen_dm_restrict_plugin.storage import nbd
from xen_dm_restrict_plugin.storage import service

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
            assert settings.cgroup_parent + '/storage/xvda/dm-%d' % uid in \
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


def test_the_daemon_holds_none_of_roots_descriptors(env, tmp_path):
    # libvirtd waits for its hook's output pipes to close: a daemon the
    # hook started that kept an inherited pipe open hung libvirtd (seen
    # in the Xen lab).
    settings = env.settings()
    overlay, _ = _nova_images(tmp_path)
    chain = disks.chain_for(overlay, settings,
                            pathscope.Scope('acme', INSTANCE))
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    directory = daemon.disk_dir(settings.storage_dir, INSTANCE, 'xvda')
    try:
        served = daemon.start(settings, INSTANCE, 'xvda', env.first,
                              env.first, chain)
        try:
            os.close(write_end)
            write_end = None
            ready, _, _ = select.select([read_end], [], [], 10)
            assert ready and os.read(read_end, 1) == b'', \
                'the daemon holds the write end of root\'s pipe'
            assert 'read 1/1' in _io(served.socket, 'read -P 0x42 0 1')
        finally:
            daemon.stop_disk(settings, directory)
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)


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


def _served_domain(settings, images):
    """A rendered domain: one block disk at the stable path per target,
    with the storage record naming ``images`` (target: image).
    """
    root = etree.fromstring(
        b'<domain type="xen"><name>n</name><uuid>%s</uuid><os><type>hvm'
        b'</type></os><devices/></domain>' % INSTANCE.encode())
    for target in sorted(images):
        disk = etree.SubElement(root.find('devices'), 'disk', type='block',
                                device='disk')
        etree.SubElement(disk, 'driver', name='phy', type='raw')
        etree.SubElement(disk, 'source', dev=disks.stable_path(
            settings.storage_dir, INSTANCE, target))
        etree.SubElement(disk, 'target', dev=target, bus='xen')
    dom = domain.Domain(root)
    dom.set_metadata(disks._record([
        disks.DaemonDisk(target, image, 'qcow2')
        for target, image in sorted(images.items())]))
    return dom


def test_the_hook_service_leaves_nothing_when_nbd_is_missing(env, tmp_path):
    """Here the kernel has no nbd module: the start is refused and the
    daemon, its directory and the image's ownership are undone.
    """
    if nbd.module_loaded():
        pytest.skip('this kernel has nbd devices; the lab covers them')
    settings = env.settings()
    overlay, _ = _nova_images(tmp_path)
    before = os.stat(overlay)
    dom = _served_domain(settings, {'xvda': overlay})
    with pytest.raises(exception.OperationRefused) as err:
        service.start(settings, dom, 'acme', env.first, env.first)
    assert 'nbd' in str(err.value)
    assert daemon.running(settings.storage_dir) == []
    assert not os.path.exists(os.path.join(settings.storage_dir, INSTANCE))
    after = os.stat(overlay)
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)


def _uid_processes(uid):
    found = []
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                if os.stat('/proc/' + pid).st_uid == uid:
                    found.append(int(pid))
            except OSError:
                pass
    return found


def _as_uid(uid, func, root=None):
    """Run ``func`` in a child as ``uid`` (chrooted to ``root``); its
    exit status.
    """
    pid = os.fork()
    if pid == 0:
        try:
            if root:
                os.chroot(root)
                os.chdir('/')
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            func()
            os._exit(0)
        except BaseException:  # noqa: B902 - the child reports by status
            os._exit(1)
    return os.waitpid(pid, 0)[1]


# -- the storage record is the product's, never the tenant's --------------
HOOK = hostenv.module('xen_dm_restrict_plugin.cmd.libvirt_hook')
ACME = hooks.Instance(base.HVM_UUID, 'acme')


@pytest.fixture
def hook_env(tmp_path):
    hostenv.require_root()
    hostenv.require_tool(QSD)
    hostenv.require_tool('qemu-img')
    made = hostenv.make_env(tmp_path, with_reaper=True)
    instances = tmp_path / 'instances'
    (instances / base.HVM_UUID).mkdir(parents=True)
    made.instances = instances
    made.storage = tempfile.mkdtemp(prefix='xdr-')
    made.victims = tempfile.mkdtemp(prefix='xdr-victim-')
    made.uids = set()
    made.write_config(
        allowed_host_paths='%s,%s/{instance}' % (
            base.images_dir(), instances),
        writable_shared_host_paths=base.images_dir(),
        storage_daemon='enabled', storage_dir=made.storage)
    yield made
    for uid in made.uids:
        hostenv.kill_uid(uid, rounds=2)
    made.remove_users()
    shutil.rmtree(made.storage, ignore_errors=True)
    shutil.rmtree(made.victims, ignore_errors=True)


def _victim(env):
    """A directory standing for /etc/pam.d, and its file's content."""
    victim = os.path.join(env.victims, 'pam.d')
    os.mkdir(victim)
    with open(os.path.join(victim, 'common-auth'), 'w') as handle:
        handle.write('auth required pam_unix.so\n')
    return victim


def _assert_untouched(victim, uid, image, before):
    assert os.listdir(victim) == ['common-auth']
    assert os.stat(victim).st_uid == 0
    assert _uid_processes(uid) == []
    after = os.stat(image)
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        before.st_uid, before.st_gid, before.st_mode)


def _define(env, xml):
    hook = extension.DmRestrictHook(cfg.ConfigOpts(), env.settings())
    try:
        out = hook.prepare(xml, ACME)
    finally:
        hook.close()
    uid = restrict.read_record(domain.parse(out, 1 << 20)).uid
    env.uids.add(uid)
    return out, uid


def _call_hook(env, xml):
    return subprocess.run(HOOK + ['fixture-hvm', 'prepare', 'begin', '-'],
                          input=xml.encode(), capture_output=True,
                          env=env.environ(), timeout=60)


def _forge(xml, entries):
    dom = domain.parse(xml, 1 << 20)
    dom.set_metadata(disks._record([disks.DaemonDisk(*entry)
                                    for entry in entries]))
    return dom.to_string()


def test_a_storage_record_the_tenant_wrote_is_dropped_at_define(hook_env):
    """The tenant writes the product's storage record itself, with a
    target that is a host path: the orchestrator's hook drops it, and
    the start at ``prepare`` touches nothing of the host.
    """
    victim = _victim(hook_env)
    image = str(hook_env.instances / base.HVM_UUID / 'disk')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', image, '1M'],
                   check=True)
    before = os.stat(image)
    defined, uid = _define(hook_env, _forge(
        base.fixture('hvm.xml'),
        [(os.path.join(hook_env.victims, 'pam'), image, 'qcow2')]))
    assert disks.daemon_disks(domain.parse(defined, 1 << 20)) == []
    proc = _call_hook(hook_env, defined)
    assert proc.returncode == 0, proc.stderr
    _assert_untouched(victim, uid, image, before)


@pytest.mark.parametrize('target', ['/pam', '../pam', 'xvdc'])
def test_a_forged_storage_record_is_refused_at_prepare(hook_env, target):
    """A domain defined in libvirt directly (or edited after the hook
    wrote it) carries whatever record its author wrote: libvirtd's hook
    refuses its start before root acts on any entry.
    """
    victim = _victim(hook_env)
    image = str(hook_env.instances / base.HVM_UUID / 'disk')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', image, '1M'],
                   check=True)
    before = os.stat(image)
    defined, uid = _define(hook_env, base.fixture('hvm.xml'))
    if target.startswith('/'):
        target = os.path.join(hook_env.victims, 'pam')
    elif target.startswith('..'):
        target = os.path.relpath(os.path.join(hook_env.victims, 'pam'),
                                 os.path.join(hook_env.storage,
                                              base.HVM_UUID))
    proc = _call_hook(hook_env, _forge(defined, [(target, image, 'qcow2')]))
    assert proc.returncode == 2, proc.stderr
    assert b'storage record' in proc.stderr
    _assert_untouched(victim, uid, image, before)
    assert not os.path.exists(os.path.join(hook_env.storage, base.HVM_UUID))


# -- a refused start stops every daemon it started -------------------------
def _two_disks(env, tmp_path, unreadable_backing):
    overlay, base_file = _nova_images(tmp_path)
    second = str(tmp_path / 'instances' / INSTANCE / 'disk2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                    '-b', base_file, second], check=True)
    if unreadable_backing:
        other = str(tmp_path / 'instances' / INSTANCE / 'private')
        shutil.copy(base_file, other)
        os.chmod(other, 0o600)
        subprocess.run(['qemu-img', 'rebase', '-q', '-u', '-F', 'raw',
                        '-b', other, second], check=True)
    return overlay, second


def _assert_nothing_left(settings, uid, images, before):
    assert _uid_processes(uid) == []
    assert daemon.running(settings.storage_dir) == []
    assert not os.path.exists(os.path.join(settings.storage_dir, INSTANCE))
    for image, st in zip(images, before):
        after = os.stat(image)
        assert (after.st_uid, after.st_mode) == (st.st_uid, st.st_mode)


def test_a_refused_start_stops_the_daemons_it_started(env, tmp_path):
    """The first disk's daemon runs when the second cannot start (its
    backing file is not readable by the uid): the refusal stops it and
    gives its image back.
    """
    settings = env.settings()
    images = _two_disks(env, tmp_path, unreadable_backing=True)
    before = [os.stat(image) for image in images]
    dom = _served_domain(settings, dict(zip(('xvda', 'xvdb'), images)))
    with pytest.raises(exception.OperationRefused) as err:
        service.start(settings, dom, 'acme', env.first, env.first)
    assert 'not readable by uid' in str(err.value)
    _assert_nothing_left(settings, env.first, images, before)


def test_an_unexpected_error_stops_the_daemons_already_started(
        env, tmp_path, monkeypatch):
    """Any error past the first daemon's start (here nbd-client failing
    in a way nobody foresaw) stops every daemon of the call before it
    goes on.
    """
    settings = env.settings()
    images = _two_disks(env, tmp_path, unreadable_backing=False)
    before = [os.stat(image) for image in images]
    dom = _served_domain(settings, dict(zip(('xvda', 'xvdb'), images)))
    started = []

    def broken(storage_dir, socket, export):
        started.extend(daemon.running(storage_dir))
        raise RuntimeError('unforeseen')
    monkeypatch.setattr(nbd, 'connect', broken)
    with pytest.raises(RuntimeError):
        service.start(settings, dom, 'acme', env.first, env.first)
    assert [one.target for one in started] == ['xvda', 'xvdb']
    _assert_nothing_left(settings, env.first, images, before)


# -- the socket root connects to is root's ---------------------------------
def test_the_daemons_uid_cannot_replace_the_socket_root_connects_to(
        env, tmp_path):
    """Root makes the listening socket in a directory only root enters
    and hands the daemon the descriptor: neither inside the daemon's own
    root nor on the host may its uid swap the path for a symlink to
    another instance's socket, and root reaches the instance's own disk.
    qemu-io as root stands in for nbd-client (no kernel nbd here).
    """
    settings = env.settings()
    other = 'a8f9e6c4-0000-4000-8000-000000000001'
    images = {}
    for inst, fill in ((INSTANCE, 'aa'), (other, 'bb')):
        (tmp_path / 'instances' / inst).mkdir(parents=True)
        path = str(tmp_path / 'instances' / inst / 'disk')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', path,
                        '1M'], check=True)
        subprocess.run(['qemu-io', '-f', 'qcow2', '-c',
                        'write -P 0x%s 0 4096' % fill, path], check=True,
                       capture_output=True)
        images[inst] = path
    uid_a, uid_b = env.first + 1, env.first + 2
    a = daemon.start(settings, INSTANCE, 'xvda', uid_a, uid_a,
                     [imageformat.Layer(images[INSTANCE], 'qcow2')])
    try:
        b = daemon.start(settings, other, 'xvda', uid_b, uid_b,
                         [imageformat.Layer(images[other], 'qcow2')])
        try:
            st = os.lstat(a.socket)
            assert stat.S_ISSOCK(st.st_mode) and st.st_uid == 0
            parent = os.stat(os.path.dirname(a.socket))
            assert parent.st_uid == 0 and stat.S_IMODE(parent.st_mode) \
                == 0o700

            def swap():
                os.unlink(a.socket)
                os.symlink(b.socket, a.socket)
            # Inside its own mount namespace the path does not exist.
            assert _as_uid(uid_a, swap, root='/proc/%d/root' % a.pid) != 0
            assert not os.path.lexists(
                '/proc/%d/root%s' % (a.pid, a.socket))
            # On the host its uid may not enter the directory.
            assert _as_uid(uid_a, swap) != 0
            out = _io(a.socket, 'read -P 0xaa 0 4096')
            assert 'read 4096/4096' in out and 'failed' not in out
        finally:
            daemon.stop_disk(settings, daemon.disk_dir(
                settings.storage_dir, other, 'xvda'))
    finally:
        daemon.stop_disk(settings, daemon.disk_dir(
            settings.storage_dir, INSTANCE, 'xvda'))
        hostenv.kill_uid(uid_a, rounds=2)
        hostenv.kill_uid(uid_b, rounds=2)


# -- the image given to the uid is the file the domain names ---------------
def test_an_image_with_a_second_hard_link_is_not_given_away(env, tmp_path):
    """Root gives the top image to the instance's uid: a file with
    another name (a hard link to someone else's file) or a symlink is
    refused, and its owner stays.
    """
    settings = env.settings()
    overlay, _ = _nova_images(tmp_path)
    before = os.stat(overlay)
    elsewhere = str(tmp_path / 'elsewhere')
    os.link(overlay, elsewhere)
    with pytest.raises(daemon.StorageError) as err:
        daemon.start(settings, INSTANCE, 'xvda', env.first, env.first,
                     [imageformat.Layer(overlay, 'qcow2')])
    assert 'hard links' in str(err.value)
    os.unlink(elsewhere)
    link = str(tmp_path / 'instances' / INSTANCE / 'link')
    os.symlink(overlay, link)
    with pytest.raises(daemon.StorageError) as err:
        daemon.start(settings, INSTANCE, 'xvda', env.first, env.first,
                     [imageformat.Layer(link, 'qcow2')])
    assert 'symlink' in str(err.value)
    after = os.stat(overlay)
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
    assert _uid_processes(env.first) == []
    assert not os.path.exists(os.path.join(settings.storage_dir, INSTANCE,
                                           'xvda.d'))
