"""The settings snapshot libvirtd's hook and the launcher read instead of
loading oslo.config: current only while the configuration file holds the
bytes it was made from, trusted only while root alone can change it, and
the host's accounts checked again at every read.
"""

import marshal
import os

import pytest

from tests import base
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import settings as launch_settings

#: A gid no group has (a dedicated group need not exist to be used).
FREE_GID = 3999917


@pytest.fixture
def made(tmp_path, monkeypatch):
    """Full settings, their configuration file and a fresh snapshot."""
    if os.geteuid() != 0:
        pytest.skip('the snapshot is trusted only when root wrote it')
    run = tmp_path / 'run'
    path = run / 'settings.marshal'
    monkeypatch.setenv(launch_settings.PATH_ENV, str(path))
    config = tmp_path / 'xen-dm-restrict.conf'
    config.write_text('[dm_restrict]\nenforce = true\n')
    settings = base.make_settings(
        tmp_path, unmapped_tenants='shared', shared_uid_range='300000-300999',
        device_model_gid=FREE_GID, vnc_fixed_ports=['5900-5910'],
        max_devices={'disk': '3'}, allowed_qemu_options=['-no-hpet'])
    launch_settings.write(settings, str(config))
    return settings, str(config), path


def test_every_setting_comes_back(made):
    settings, config, path = made
    # It holds the configuration file's bytes: root's alone to read too.
    st = os.stat(path)
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o600)
    assert launch_settings.full_settings(
        launch_settings.read(config)) == settings
    loaded = launch_settings.load(config)
    assert loaded.gid == FREE_GID
    assert [(r.start, r.stop - 1) for r in loaded.all_ranges()] == [
        (r.first, r.last) for r in settings.all_ranges()]


def test_no_snapshot_is_none(made):
    _, config, path = made
    path.unlink()
    assert launch_settings.read(config) is None
    path.parent.rmdir()
    assert launch_settings.read(config) is None


def test_an_edit_of_the_same_size_and_time_makes_it_stale(made):
    _, config, _ = made
    st = os.stat(config)
    with open(config, 'r+b') as handle:
        handle.write(b'[dm_restrict]\nenforce = off \n')
    with open(config, 'rb') as handle:
        assert len(handle.read()) == st.st_size
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert launch_settings.read(config) is None
    assert launch_settings.load(config) is None


def test_a_snapshot_of_another_file_or_the_defaults_is_not_used(
        made, tmp_path):
    _, config, _ = made
    other = tmp_path / 'other.conf'
    other.write_bytes(open(config, 'rb').read())
    assert launch_settings.read(str(other)) is None
    assert launch_settings.read(None) is None
    os.unlink(config)
    assert launch_settings.read(config) is None


@pytest.mark.parametrize('spoil, reason', [
    ('mode', 'it is writable by others than root (mode 0666)'),
    ('owner', 'it is owned by uid 65534, not root'),
    ('directory', 'is writable by others than root (mode 0777)'),
    ('symlink', 'it cannot be opened as a file'),
    ('fifo', 'it is not a regular file'),
])
def test_an_untrusted_snapshot_is_refused_with_the_remedy(
        made, spoil, reason):
    _, config, path = made
    if spoil == 'mode':
        path.chmod(0o666)
    elif spoil == 'owner':
        os.chown(path, 65534, -1)
    elif spoil == 'directory':
        path.parent.chmod(0o777)
    elif spoil == 'symlink':
        path.rename(path.with_name('real'))
        path.symlink_to(path.with_name('real'))
    else:
        path.unlink()
        os.mkfifo(path, 0o644)
    with pytest.raises(launch_settings.Untrusted) as caught:
        launch_settings.read(config)
    assert caught.value.subject == 'settings snapshot %s' % path
    assert reason in caught.value.reason
    assert 'xen-dm-restrict install-hook' in caught.value.remedy
    assert isinstance(caught.value, exception.ConfigError)
    # The launcher loads the configuration in full instead.
    assert launch_settings.load(config) is None


def test_no_snapshot_is_written_into_a_directory_others_can_change(made):
    settings, config, path = made
    path.unlink()
    path.parent.chmod(0o777)
    with pytest.raises(PermissionError):
        launch_settings.write(settings, config)
    assert not path.exists()


def test_a_file_changed_while_it_was_loaded_leaves_it_stale(made):
    settings, config, _ = made
    before = launch_settings.source(config)
    with open(config, 'a') as handle:
        handle.write('# edited meanwhile\n')
    launch_settings.write(settings, config, before)
    assert launch_settings.read(config) is None


@pytest.mark.parametrize('field, value, message', [
    ('gid', 5, 'statically allocated system group'),
    ('reaper_user', 'root', 'the reaper must not be root'),
    ('reaper_user', '200005', 'inside range 200000-200099 of acme'),
])
def test_the_accounts_are_checked_at_every_read(
        made, field, value, message):
    _, config, path = made
    data = marshal.loads(path.read_bytes())
    data['settings'][field] = value
    with pytest.raises(exception.ConfigError) as caught:
        launch_settings.full_settings(data['settings'])
    assert message in str(caught.value)


def test_a_reaper_user_that_is_gone_is_seen(made):
    _, config, path = made
    data = marshal.loads(path.read_bytes())
    data['settings']['reaper_user'] = 'xdr-no-such-user-ever'
    data['settings']['reaper_uid'] = 12345
    assert launch_settings.full_settings(
        data['settings']).reaper_uid is None


def test_a_snapshot_of_another_version_is_stale(made):
    _, config, path = made
    data = marshal.loads(path.read_bytes())
    data['format'] -= 1
    path.write_bytes(marshal.dumps(data))
    assert launch_settings.read(config) is None
