"""Hooks load by name, in order, and fail loudly when missing or broken."""

import sys

import pytest
from stevedore import extension as extension_mod

from tests import base
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import loader

ACME = hooks.Instance(base.HVM_UUID, 'acme')


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """A real distribution on sys.path whose entry points we choose."""
    site = tmp_path / 'site'
    info = site / 'fake_hooks-1.0.dist-info'
    info.mkdir(parents=True)
    (info / 'METADATA').write_text(
        'Metadata-Version: 2.1\nName: fake-hooks\nVersion: 1.0\n')
    (site / 'fake_hooks.py').write_text(
        'from xen_dm_restrict_plugin import hooks\n'
        'class Upper(hooks.DomainHook):\n'
        '    def prepare(self, xml, instance):\n'
        '        return xml.replace("fixture-hvm", "FIXTURE-HVM")\n'
        'class Crashes(hooks.DomainHook):\n'
        '    def prepare(self, xml, instance):\n'
        '        raise KeyError("boom")\n'
        'class BadInit(hooks.NoopHook):\n'
        '    def __init__(self, conf):\n'
        '        raise RuntimeError("no database")\n')
    (info / 'entry_points.txt').write_text(
        '[libvirt.domain_hooks]\n'
        'upper = fake_hooks:Upper\n'
        'crashes = fake_hooks:Crashes\n'
        'badinit = fake_hooks:BadInit\n'
        'unimportable = fake_hooks_missing_module:Nothing\n')
    monkeypatch.syspath_prepend(str(site))
    # stevedore remembers a namespace's entry points per process.
    monkeypatch.setattr(extension_mod.ExtensionManager,
                        'ENTRY_POINT_CACHE', {})
    yield
    sys.modules.pop('fake_hooks', None)


def _manager(tmp_path, names):
    conf = base.make_conf(tmp_path, domain_hooks=names)
    return loader.HookManager(conf)


def test_entry_points_of_this_package_load(tmp_path):
    manager = _manager(tmp_path, ['noop', 'dm_restrict'])
    assert manager.names == ['noop', 'dm_restrict']
    assert isinstance(manager.hooks[0][1], hooks.NoopHook)
    assert isinstance(manager.hooks[1][1], extension.DmRestrictHook)
    out = manager.prepare(base.fixture('hvm.xml'), ACME)
    assert '-xen-domid-restrict' in out


def test_hooks_run_in_configured_order(tmp_path, fake_dist):
    manager = _manager(tmp_path, ['dm_restrict', 'upper'])
    assert [n for n, _ in manager.hooks] == ['dm_restrict', 'upper']
    out = manager.prepare(base.fixture('hvm.xml'), ACME)
    assert 'FIXTURE-HVM' in out and '-xen-domid-restrict' in out


def test_missing_hook_fails_loudly(tmp_path):
    with pytest.raises(exception.HookLoadError) as err:
        _manager(tmp_path, ['dm_restrict', 'no_such_hook'])
    assert 'no_such_hook' in str(err.value)


@pytest.mark.parametrize('name,words', [
    ('unimportable', 'failed to load'),
    ('badinit', 'no database'),
])
def test_broken_hook_fails_loudly(tmp_path, fake_dist, name, words):
    with pytest.raises(exception.HookLoadError) as err:
        _manager(tmp_path, [name])
    assert name in str(err.value) and words in str(err.value)


def test_hook_crash_is_reported_with_its_name(tmp_path, fake_dist):
    manager = _manager(tmp_path, ['crashes'])
    with pytest.raises(exception.HookFailed) as err:
        manager.prepare(base.fixture('hvm.xml'), ACME)
    assert err.value.hook == 'crashes'
    assert isinstance(err.value.error, KeyError)


def test_bad_dm_restrict_config_stops_loading(tmp_path):
    conf = base.make_conf(tmp_path, domain_hooks=['dm_restrict'],
                          tenant_uid_ranges={'acme': '0-10'})
    with pytest.raises(exception.ConfigError):
        loader.HookManager(conf)


def test_no_hooks_changes_nothing(tmp_path):
    manager = _manager(tmp_path, [])
    xml = base.fixture('hvm.xml')
    assert manager.prepare(xml, ACME) == xml
