"""Configuration is validated at load, naming the option at fault."""

import grp
import os
import pwd

import pytest

from tests import base
from xen_dm_restrict_plugin import conf
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import loader


def _load(tmp_path, **overrides):
    return base.make_settings(tmp_path, **overrides)


def test_valid_configuration(tmp_path):
    settings = _load(tmp_path)
    assert str(settings.range_for('acme')) == '200000-200099'
    assert settings.gid_for(200005) == 200005
    assert settings.chroot_dir(200005).endswith('/chroots/qemu-root-200005')
    assert _load(tmp_path, device_model_gid=64000).gid_for(200005) == 64000


@pytest.mark.parametrize('ranges,words', [
    ({'acme': '200000-200999', 'globex': '200500-201500'}, 'overlap'),
    ({'acme': '0-999'}, 'contains uid 0'),
    ({'acme': '65000-66000'}, 'contains uid 65534'),
    ({'acme': '65535-65535'}, 'contains uid 65535'),
    ({'acme': '4294967000-4294967295'}, 'passes the largest uid'),
    ({'acme': '200999-200000'}, 'reversed or empty'),
    ({'acme': '200000'}, 'not FIRST-LAST'),
    ({'acme': 'a-b'}, 'not FIRST-LAST'),
    ({'acme': ''}, 'not FIRST-LAST'),
])
def test_bad_ranges_are_refused_naming_the_option(tmp_path, ranges, words):
    with pytest.raises(exception.ConfigError) as err:
        _load(tmp_path, tenant_uid_ranges=ranges)
    assert err.value.subject == 'tenant_uid_ranges'
    assert words in str(err.value)


def test_shared_pool(tmp_path):
    settings = _load(tmp_path, unmapped_tenants='shared',
                     shared_uid_range='300000-300999')
    assert str(settings.range_for('initech')) == '300000-300999'
    with pytest.raises(exception.ConfigError) as err:
        _load(tmp_path, unmapped_tenants='shared')
    assert err.value.subject == 'shared_uid_range'
    with pytest.raises(exception.ConfigError) as err:
        _load(tmp_path, unmapped_tenants='shared',
              shared_uid_range='200050-200150')
    assert 'overlap' in str(err.value)


def test_unmapped_tenant_is_refused_by_default(tmp_path):
    with pytest.raises(exception.Refused) as err:
        _load(tmp_path).range_for('initech')
    assert 'initech' in str(err.value)
    assert 'tenant_uid_ranges' in str(err.value)


def test_reaper_must_not_be_root_or_inside_a_range(tmp_path):
    with pytest.raises(exception.ConfigError) as err:
        _load(tmp_path, reaper_user='root')
    assert err.value.subject == 'reaper_user'
    with pytest.raises(exception.ConfigError) as err:
        _load(tmp_path, reaper_user='200010')
    assert 'inside range 200000-200099' in str(err.value)
    some_user = pwd.getpwuid(os.getuid() or 1).pw_name
    if pwd.getpwnam(some_user).pw_uid:
        assert _load(tmp_path, reaper_user=some_user).reaper_uid


def test_bad_gid_and_relative_chroot(tmp_path):
    with pytest.raises(exception.ConfigError) as err:
        _load(tmp_path, device_model_gid=65534)
    assert err.value.subject == 'device_model_gid'
    with pytest.raises(exception.ConfigError) as err:
        _load(tmp_path, chroot_base_dir='relative/dir')
    assert err.value.subject == 'chroot_base_dir'


@pytest.mark.parametrize('gid', [42, 6, 100])
def test_device_model_gid_of_a_static_system_group_is_refused(tmp_path,
                                                              gid):
    # gid 42 is shadow on Debian: every device model could read
    # /etc/shadow.
    with pytest.raises(exception.ConfigError) as err:
        _load(tmp_path, device_model_gid=gid)
    assert err.value.subject == 'device_model_gid'
    assert 'statically allocated' in str(err.value)


def test_device_model_gid_of_a_users_group_is_refused(tmp_path):
    shared = [entry for entry in grp.getgrall() if 101 <= entry.gr_gid < 65534
              and (entry.gr_mem or any(user.pw_gid == entry.gr_gid
                                       for user in pwd.getpwall()))]
    if not shared:
        pytest.skip('no group with members or primary users >= 101 here')
    with pytest.raises(exception.ConfigError) as err:
        _load(tmp_path, device_model_gid=shared[0].gr_gid)
    assert 'is not dedicated' in str(err.value)


@pytest.mark.parametrize('option,value', [
    ('allowed_qemu_options', ['runas']),
    ('allowed_qemu_options', ['-chardev']),
    ('allowed_host_paths', ['relative/images']),
    ('allowed_host_paths', ['/srv/../etc']),
])
def test_unsafe_allowlists_are_refused(tmp_path, option, value):
    with pytest.raises(exception.ConfigError) as err:
        _load(tmp_path, **{option: value})
    assert err.value.subject == option


def test_list_opts_covers_every_registered_option():
    listed = {(group, opt.name) for group, opts in conf.list_opts()
              for opt in opts}
    assert ('dm_restrict', 'tenant_uid_ranges') in listed
    assert ('libvirt', 'domain_hooks') in listed
    assert {o.name for o in conf.dm_restrict_opts} == {
        name for group, name in listed if group == 'dm_restrict'}
    assert {o.name for o in loader.hook_opts} == {
        name for group, name in listed if group == 'libvirt'}
    for _, opts in conf.list_opts():
        for opt in opts:
            assert opt.help, opt.name


def _typo_conf(tmp_path, text, name='xen-dm-restrict.conf'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _parsed(files):
    from oslo_config import cfg

    parsed = cfg.ConfigOpts()
    conf.register_opts(parsed)
    loader.register_opts(parsed)
    parsed(['--config-file=%s' % name for name in files],
           default_config_files=[])
    return parsed


def test_a_misspelled_option_is_refused_with_file_line_and_nearest(
        tmp_path):
    path = _typo_conf(tmp_path, '[dm_restrict]\n'
                      'tenant_uid_ranges = acme:200000-200999\n'
                      '# sandbox is spelled wrong below\n'
                      'sandbx = required\n')
    with pytest.raises(exception.ConfigError) as err:
        conf.load(_parsed([path]))
    assert '%s line 4: sandbx is not an option of [dm_restrict] (did ' \
        'you mean sandbox?)' % path in str(err.value)
    assert 'Remedy: correct the name' in str(err.value)


def test_a_misspelled_group_is_refused_even_in_a_shared_file(tmp_path):
    path = _typo_conf(tmp_path, '[DEFAULT]\ndebug = true\n'
                      '[api]\nauth_strategy = keystone\n'
                      '[dmrestrict]\nlease_db = /x\n', name='nova.conf')
    assert conf.unknown_names([path]) == [
        '%s line 5: [dmrestrict] is not a group of xen-dm-restrict (did '
        'you mean [dm_restrict]?)' % path]


def test_other_programs_groups_in_a_shared_file_are_left_alone(tmp_path):
    path = _typo_conf(tmp_path, '[DEFAULT]\ndebug = true\n'
                      '[libvirt]\nvirt_type = xen\ndomain_hooks = '
                      'dm_restrict\n[glance]\napi_servers = x\n'
                      '[dm_restrict]\nsandbox = when-supported\n',
                      name='nova.conf')
    assert conf.unknown_names([path]) == []
    assert conf.load(_parsed([path])).sandbox == 'when-supported'


def test_in_the_products_own_file_every_name_must_be_known(tmp_path):
    path = _typo_conf(tmp_path, '[DEFAULT]\ndebug = true\n'
                      '[libvirt]\ndomain_hook = dm_restrict\n'
                      '[dm_restrict_privileged]\nhelper_comand = x\n')
    assert conf.unknown_names([path]) == [
        '%s line 4: domain_hook is not an option of [libvirt] (did you '
        'mean domain_hooks?)' % path,
        '%s line 6: helper_comand is not an option of '
        '[dm_restrict_privileged] (did you mean helper_command?)' % path]


def test_a_group_far_from_ours_makes_the_file_a_shared_one(tmp_path):
    """[libvirt] holds the orchestrator's own options in its file."""
    path = _typo_conf(tmp_path, '[libvirt]\ndomain_hook = dm_restrict\n'
                      '[privsep]\nuser = root\n', name='nova.conf')
    assert conf.unknown_names([path]) == []


def test_known_names_with_dashes_and_continuations_pass(tmp_path):
    path = _typo_conf(tmp_path, '[dm_restrict]\n'
                      'tenant-uid-ranges = acme:200000-200999,\n'
                      '  globex:201000-201999\n'
                      'sandbox = off\n')
    assert conf.unknown_names([path]) == []
    bad = _typo_conf(tmp_path, '[dm_restrict]\nallowed_host_paths = /a,\n'
                     '  /b\nalowed_chardev_types = pty\n', name='bad.conf')
    assert conf.unknown_names([bad]) == [
        '%s line 4: alowed_chardev_types is not an option of [dm_restrict] '
        '(did you mean allowed_chardev_types?)' % bad]


def test_the_xen_labs_configuration_is_valid():
    # The lab installs it as the guide's step 5; a rule that refuses it
    # would fail the whole lab run at install-launcher.
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), 'tools', 'xenlab', 'dom0.conf')
    assert conf.unknown_names([path]) == []
    from xen_dm_restrict_plugin.cmd import host
    settings = host.load_settings([path])
    assert '/var/lib/xen-dm-restrict-instances/{instance}' in \
        settings.allowed_host_paths
