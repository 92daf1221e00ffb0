"""Stop, undefine and re-lease a uid, with real processes of it (root).

A VM's uid is reaped after its domain stops, before its lease is
released, and again right before a new VM starts with it, so a device
model that survived its domain can never serve the next one.  The
"device models" here are real processes of the uid run by the subreaper
supervisor of the reaper tests, which proves they are all gone.
"""

import pytest

from tests import base
from tests.functional import hostenv
from tests.functional.test_reaper_real import Workload
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import loader
from xen_dm_restrict_plugin.orchestrator import virt

FIRST = hooks.Instance(base.HVM_UUID, 'acme')
SECOND = hooks.Instance('77777777-2222-4333-8444-555555555555', 'acme')


@pytest.fixture
def env(tmp_path):
    hostenv.require_root()
    made = hostenv.make_env(tmp_path, with_reaper=True)
    yield made
    hostenv.kill_uid(made.first, rounds=2)
    made.remove_users()


def _connection(tmp_path, env, uid):
    # A one-uid range, so the second VM must get the first VM's uid.
    conf = base.make_conf(
        tmp_path, domain_hooks=['dm_restrict'],
        tenant_uid_ranges={'acme': '%d-%d' % (uid, uid)},
        reaper_user=env.reaper_name, reap_device_models=True,
        reaper_lock_file=str(tmp_path / 'run' / 'reaper.lock'))
    return virt.HookedConnection.open('test:///default',
                                      loader.HookManager(conf))


def test_uid_is_reaped_at_stop_release_and_reuse(tmp_path, env):
    uid = env.first
    conn = _connection(tmp_path, env, uid)
    store = conn.hooks.hooks[0][1].store
    try:
        dom = conn.define_and_start(base.fixture('hvm.xml'), FIRST)
        assert store.get(FIRST.uuid).uid == uid

        qemu = Workload(env, uid, 'sleep', 'forkloop')
        dom.destroy()
        assert qemu.check().startswith('gone')
        assert store.get(FIRST.uuid).uid == uid, 'a stop keeps the lease'

        survivor = Workload(env, uid, 'sleep')
        dom.undefine()
        assert survivor.check().startswith('gone')
        assert store.get(FIRST.uuid) is None, 'undefine releases the lease'

        stray = Workload(env, uid, 'sleep', 'killback')
        second_xml = base.fixture('hvm.xml').replace(
            base.HVM_UUID, SECOND.uuid)
        second = conn.define_and_start(second_xml, SECOND)
        assert stray.check().startswith('gone'), \
            'the uid was not reaped before the new VM started'
        assert store.get(SECOND.uuid).uid == uid
        assert second.isActive()
    finally:
        conn.close()


def test_start_fails_closed_when_reaping_is_impossible(tmp_path, env):
    conf = base.make_conf(
        tmp_path, domain_hooks=['dm_restrict'],
        tenant_uid_ranges={'acme': '%d-%d' % (env.first, env.first + 9)},
        reaper_user='xdr-no-such-reaper-user', reap_device_models=True)
    conn = virt.HookedConnection.open('test:///default',
                                      loader.HookManager(conf))
    try:
        with pytest.raises(exception.CapabilityMissing) as err:
            conn.define_and_start(base.fixture('hvm.xml'), FIRST)
        assert 'xdr-no-such-reaper-user' in str(err.value)
        assert conn.lookup(FIRST) is None
        assert conn.hooks.hooks[0][1].store.get(FIRST.uuid) is None
    finally:
        conn.close()
