"""The launcher's reading of a device-model command line, and its checks.

The part that execs a real QEMU is tested in
tests/functional/test_launcher_qemu.py.
"""

import os

import pytest

from tests import base
from xen_dm_restrict_plugin.core import dm_argv
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import chroot

UID = 200001


def _args(syntax_form: str, sandbox: bool = True, uid: int = UID,
          chroot_dir: str = '/c/qemu-root-200001'):
    return restrict.Restriction(
        'acme', uid, uid, chroot_dir,
        restrict.DeviceModelSyntax(syntax_form, syntax_form,
                                   sandbox)).args()


@pytest.mark.parametrize('form', [restrict.FORM_LEGACY,
                                  restrict.FORM_RUN_WITH])
def test_reads_what_restrict_writes(form):
    parsed = dm_argv.parse_argv(['-xen-domid', '7', '-name', 'vm']
                                + _args(form))
    assert (parsed.uid, parsed.gid) == (UID, UID)
    assert parsed.chroot == '/c/qemu-root-200001'
    assert parsed.domid_restrict and parsed.restricted
    assert parsed.sandbox == restrict.SANDBOX_POLICY
    assert not parsed.query


def test_separate_run_with_options_are_read():
    parsed = dm_argv.parse_argv([
        '--run-with', 'user=5:6', '-run-with', 'chroot=/x'])
    assert (parsed.uid, parsed.gid, parsed.chroot) == (5, 6, '/x')


@pytest.mark.parametrize('args', [['-help'], ['-version'], ['--help'],
                                  ['-version', '-help']])
def test_queries(args):
    assert dm_argv.parse_argv(args).query


def test_option_with_equals_is_not_the_option():
    # QEMU has no -opt=value syntax: "-chroot=/x" is an unknown option,
    # not a chroot, and the launcher refuses it as one libxl never writes.
    assert dm_argv.parse_argv(['-chroot=/x']).chroot is None


def test_a_query_with_restriction_options_is_not_a_query():
    parsed = dm_argv.parse_argv(['-name', '-version'] + _args('legacy'))
    assert not parsed.query and parsed.restricted


@pytest.mark.parametrize('args, message', [
    (['-runas', '1:1', '-run-with', 'user=2:2'], 'user is given twice'),
    (['-chroot', '/a', '-run-with', 'chroot=/b'], 'chroot is given twice'),
    (['-sandbox', 'on', '-sandbox', 'off'], 'sandbox is given twice'),
    (['-runas', 'qemu'], 'numeric UID:GID'),
    # QEMU reads the numbers in base 0: 0200000 is uid 65536.
    (['-runas', '0200000:0200000'], 'numeric UID:GID'),
    (['-run-with', 'user=0x30d40:200000'], 'numeric UID:GID'),
    (['-runas'], 'followed by its value'),
])
def test_ambiguous_or_named_restrictions_are_refused(args, message):
    with pytest.raises(exception.FeatureRefused, match=message):
        dm_argv.parse_argv(args)


def test_only_libxls_qmp_socket_is_a_descriptor_to_keep():
    # A domain's name or kernel command line can say "fds=5:6": taking
    # that for a descriptor would pass the launcher's open files to QEMU.
    parsed = dm_argv.parse_argv([
        '-chardev', 'socket,id=libxl-cmd,fd=7,server=on,wait=off',
        '-netdev', 'tap,id=n0,fds=9:10,vhostfds=11:12',
        '-add-fd', 'fd=14,set=2', '-incoming', 'fd:13',
        '-name', 'fds=5:6', '-append', 'console=ttyS0,fd=8',
        '-chardev', 'socket,id=other,fd=15,server=on,wait=off',
        '-device', 'e1000,addr=fd'])
    assert parsed.fds == {7}


def test_identity_must_match_the_configuration(tmp_path):
    settings = base.make_settings(tmp_path)
    good = dm_argv.parse_argv(_args('legacy',
                                    chroot_dir=settings.chroot_dir(UID)))
    dm_argv.check_identity(settings, good)
    with pytest.raises(exception.Refused, match='not inside any'):
        dm_argv.check_identity(settings, dm_argv.parse_argv(
            _args('legacy', uid=1000, chroot_dir=settings.chroot_dir(1000))))
    with pytest.raises(exception.Refused, match='is not %s'
                       % settings.chroot_dir(UID)):
        dm_argv.check_identity(settings, dm_argv.parse_argv(
            _args('legacy', chroot_dir=settings.chroot_dir(UID) + '/..')))
    with pytest.raises(exception.Refused, match='gid 65534'):
        dm_argv.check_identity(settings, dm_argv.parse_argv(
            ['-runas', '%d:65534' % UID, '-chroot',
             settings.chroot_dir(UID)]))


@pytest.fixture
def root_settings(tmp_path):
    if os.geteuid() != 0:
        pytest.skip('needs root: the chroot directory is chowned to root')
    return base.make_settings(tmp_path)


def test_chroot_is_created_root_owned_mode_0000(root_settings):
    path = chroot.prepare(root_settings, UID)
    assert path == root_settings.chroot_dir(UID)
    st = os.lstat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0)
    base_st = os.stat(root_settings.chroot_base_dir)
    assert base_st.st_mode & 0o777 == 0o755


def test_existing_chroot_is_reset_to_root_0000(root_settings):
    path = root_settings.chroot_dir(UID)
    os.makedirs(path)
    os.chmod(path, 0o755)
    os.chown(path, UID, UID)
    chroot.prepare(root_settings, UID)
    st = os.lstat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0)


def test_a_file_in_place_of_the_chroot_is_refused(root_settings):
    os.makedirs(root_settings.chroot_base_dir)
    path = root_settings.chroot_dir(UID)
    with open(path, 'w'):
        pass
    with pytest.raises(exception.CapabilityMissing,
                       match='not a plain directory'):
        chroot.prepare(root_settings, UID)


def test_a_base_owned_by_someone_else_is_refused(root_settings):
    os.makedirs(root_settings.chroot_base_dir)
    os.chown(root_settings.chroot_base_dir, UID, UID)
    with pytest.raises(exception.CapabilityMissing,
                       match='owned by uid %d, not root' % UID):
        chroot.prepare(root_settings, UID)
    assert os.listdir(root_settings.chroot_base_dir) == []


def test_help_as_another_options_value_is_not_a_query():
    # "-name -help" names the VM "-help": passing it through would exec
    # an unrestricted QEMU as root.
    parsed = dm_argv.parse_argv(['-name', '-help', '-drive',
                                 'file=/dev/sda'])
    assert not parsed.query


@pytest.mark.parametrize('value', [
    'user=200001:200001,chroot=/c/qemu-root-200001,async-teardown=on',
    'async-teardown=on',
    'user=200001:200001,exit-with-parent=on',
])
def test_run_with_takes_only_the_keys_dm_restrict_writes(value):
    with pytest.raises(exception.FeatureRefused) as err:
        dm_argv.parse_argv(['-xen-domid', '7', '-xen-domid-restrict',
                            '-run-with', value])
    assert 'not one dm_restrict writes' in str(err.value)


def test_async_teardown_can_never_be_allowed(tmp_path):
    with pytest.raises(exception.ConfigError) as err:
        base.make_settings(tmp_path, allowed_qemu_options=['async-teardown'])
    assert 'uid reaper cannot see' in str(err.value)
