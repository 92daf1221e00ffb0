"""Lease database faults, seen through the dm_restrict hook.

A tenant VM must not boot without a durable uid lease.  When the lease
database cannot be written (full disk, read-only filesystem or file),
cannot be read (corrupted), or stays locked by another process past
``lease_db_timeout``, the hook must raise ``LeaseError`` naming the
database and the cause, return no XML (so the orchestrator defines
nothing), and keep every lease taken before.  The LeaseStore-level cases
are in tests/unit/test_leases.py; these run the real hook on real
filesystems.  The full disk and the read-only filesystem are a small
tmpfs this test mounts, so they need root and skip otherwise.
"""

import errno
import os
import subprocess
import sys
import time

import libvirt
import pytest

from tests import base
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import loader
from xen_dm_restrict_plugin.orchestrator import virt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TIMEOUT = 0.5


def instance(n: int) -> hooks.Instance:
    return hooks.Instance('00000000-0000-4000-8000-%012d' % n, 'acme')


def domain_xml(vm: hooks.Instance) -> str:
    return base.fixture('hvm.xml').replace(base.HVM_UUID, vm.uuid).replace(
        'fixture-hvm', 'vm-%s' % vm.uuid[-6:])


def make_hook(tmp_path, db: str) -> extension.DmRestrictHook:
    return extension.DmRestrictHook(base.make_conf(
        tmp_path, lease_db=db, lease_db_timeout=TIMEOUT))


def boot(hook: extension.DmRestrictHook, n: int) -> str:
    return hook.prepare(domain_xml(instance(n)), instance(n))


def stored(db: str):
    with leases.LeaseStore(db) as store:
        return store.list()


def refused(hook, n, *words):
    """Boot instance ``n``: it must fail closed with a LeaseError."""
    with pytest.raises(exception.LeaseError) as caught:
        boot(hook, n)
    message = str(caught.value)
    assert 'lease database %s' % hook.settings.lease_db in message
    assert any(word in message for word in words), message
    return message


def _mount(*args):
    done = subprocess.run(['mount'] + list(args), capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip('cannot mount a tmpfs: %s' % done.stderr.strip())


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs of our own, to fill up or remount read-only."""
    if os.geteuid() != 0:
        pytest.skip('mounting a small tmpfs to fill or make read-only '
                    'needs root')
    path = tmp_path / 'fs'
    path.mkdir()
    _mount('-t', 'tmpfs', '-o', 'size=1m,mode=0755', 'tmpfs', str(path))
    try:
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], check=False)


def _fill(path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b'\0' * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_full_disk_fails_closed(tmp_path, small_fs):
    db = str(small_fs / 'leases.sqlite')
    hook = make_hook(tmp_path, db)
    for n in range(3):
        boot(hook, n)
    before = stored(db)
    filler = small_fs / 'filler'
    _fill(filler)
    # The write-ahead log may still have room for a few boots.
    for n in range(3, 5000):
        try:
            boot(hook, n)
        except exception.LeaseError:
            break
    else:
        pytest.fail('5000 boots fit on a full 1 MiB filesystem')
    refused(hook, n, 'full', 'disk may be full')
    kept = stored(db)
    assert kept[:3] == before
    assert [le.uuid for le in kept[3:]] == [
        instance(i).uuid for i in range(3, n)]
    os.unlink(filler)
    assert boot(hook, n)
    assert stored(db)[:-1] == kept
    hook.close()


def test_read_only_filesystem_fails_closed(tmp_path, small_fs):
    db = str(small_fs / 'leases.sqlite')
    hook = make_hook(tmp_path, db)
    for n in range(3):
        boot(hook, n)
    hook.close()
    before = stored(db)
    # The kernel remounts only a filesystem nobody writes to read-only: as
    # a service restarting after the filesystem went read-only finds it.
    _mount('-o', 'remount,ro', str(small_fs))
    try:
        hook = make_hook(tmp_path, db)
        refused(hook, 3, 'read-only', 'cannot be opened')
        refused(hook, 0, 'read-only', 'cannot be opened')
        hook.close()
    finally:
        subprocess.run(['mount', '-o', 'remount,rw', str(small_fs)],
                       check=True)
    assert stored(db) == before
    hook = make_hook(tmp_path, db)
    assert boot(hook, 3)
    hook.close()


def test_read_only_file_fails_closed(tmp_path):
    if os.geteuid() == 0:
        pytest.skip('root ignores file modes; '
                    'test_read_only_filesystem_fails_closed covers root')
    db = str(tmp_path / 'leases.sqlite')
    hook = make_hook(tmp_path, db)
    for n in range(3):
        boot(hook, n)
    hook.close()
    before = stored(db)
    os.chmod(db, 0o444)
    os.chmod(tmp_path, 0o555)
    try:
        hook = make_hook(tmp_path, db)
        refused(hook, 3, 'read-only', 'cannot be opened')
        hook.close()
    finally:
        os.chmod(tmp_path, 0o755)
        os.chmod(db, 0o644)
    assert stored(db) == before


def _garbage(data: bytes) -> bytes:
    return os.urandom(len(data))


def _bad_pages(data: bytes) -> bytes:
    page = int.from_bytes(data[16:18], 'big')
    return data[:page] + b'\xa5' * (len(data) - page)


@pytest.mark.parametrize('corrupt', [_garbage, _bad_pages],
                         ids=['garbage', 'bad-pages'])
def test_corrupted_database_fails_closed(tmp_path, corrupt):
    db = str(tmp_path / 'leases.sqlite')
    hook = make_hook(tmp_path, db)
    for n in range(3):
        boot(hook, n)
    hook.close()
    with open(db, 'rb') as handle:
        damaged = corrupt(handle.read())
    with open(db, 'wb') as handle:
        handle.write(damaged)
    hook = make_hook(tmp_path, db)
    refused(hook, 3, 'corrupted')
    refused(hook, 0, 'corrupted')
    hook.close()
    with open(db, 'rb') as handle:
        assert handle.read() == damaged, 'the damaged file was changed'


LOCKER = '''
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute('BEGIN EXCLUSIVE')
print('locked', flush=True)
sys.stdin.read()
'''


def test_lock_held_past_timeout_fails_closed(tmp_path):
    db = str(tmp_path / 'leases.sqlite')
    hook = make_hook(tmp_path, db)
    for n in range(3):
        boot(hook, n)
    before = stored(db)
    manager = loader.HookManager.from_hooks(hook.conf,
                                            [('dm_restrict', hook)])
    conn = virt.HookedConnection(libvirt.open('test:///default'), manager)
    locker = subprocess.Popen([sys.executable, '-c', LOCKER, db],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert locker.stdout.readline().strip() == 'locked'
        start = time.monotonic()
        refused(hook, 3, 'locked', 'busy')
        assert TIMEOUT * 0.8 <= time.monotonic() - start < 10
        with pytest.raises(exception.LeaseError):
            conn.define_and_start(domain_xml(instance(4)), instance(4))
        assert conn.lookup(instance(4)) is None
    finally:
        locker.communicate('', timeout=30)
        conn.close()
    assert stored(db) == before
    assert boot(hook, 3)
    hook.close()
