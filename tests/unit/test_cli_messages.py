"""Every error of the command line says subject, reason and remedy, and
changes nothing.
"""

import os

import pytest

from tests import base
from xen_dm_restrict_plugin.cmd import cli
from xen_dm_restrict_plugin.launcher import settings as launch_settings

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'etc', 'xen-dm-restrict')


def _conf(tmp_path, text=''):
    path = tmp_path / 'xen-dm-restrict.conf'
    path.write_text('[libvirt]\ndomain_hooks = dm_restrict\n'
                    '[dm_restrict]\n'
                    'tenant_uid_ranges = acme:200000-200999\n'
                    'device_model_syntax = runas\n'
                    'reap_device_models = false\n'
                    'lease_db = %s\n'
                    'allowed_host_paths = %s\n' % (
                        tmp_path / 'leases.sqlite', base.images_dir())
                    + text)
    return str(path)


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_malformed_domain_file_is_named(tmp_path, capsys):
    bad = tmp_path / 'bad.xml'
    bad.write_text('<domain type="xen"><name>x</name')
    code, _, err = _run(capsys, 'validate', '--config-file',
                        _conf(tmp_path), '--tenant', 'acme', str(bad))
    assert code == 2
    assert err.startswith('xen-dm-restrict: refused: domain XML file %s: '
                          'it is not well-formed XML' % bad)
    assert '<string>' not in err and 'Remedy: ' in err


def test_a_misspelled_option_stops_validate(tmp_path, capsys):
    code, _, err = _run(capsys, 'validate', '--config-file',
                        _conf(tmp_path, 'sandbx = required\n'),
                        '--tenant', 'acme',
                        os.path.join(EXAMPLE, 'boot-example-domain.xml'))
    assert code == 2
    assert 'line 9: sandbx is not an option of [dm_restrict] (did you ' \
        'mean sandbox?)' in err
    assert 'Remedy: correct the name' in err


MINIMAL = """<domain type='xen'>
  <name>acme-minimal</name>
  <uuid>6f1c4b9e-2a7d-4c3e-9b51-0d8e7f6a5c21</uuid>
  <memory unit='KiB'>524288</memory>
  <os>
    <type arch='x86_64' machine='xenfv'>hvm</type>
    <loader>/usr/lib/xen/boot/hvmloader</loader>
  </os>
</domain>
"""


def test_an_unreachable_libvirt_says_what_to_do(tmp_path, capsys):
    socket = tmp_path / 'no-libvirtd.sock'
    domain = tmp_path / 'minimal.xml'
    domain.write_text(MINIMAL)
    code, _, err = _run(
        capsys, 'boot', '--config-file', _conf(tmp_path),
        '--connect', 'test+unix:///default?socket=%s' % socket,
        '--tenant', 'acme', str(domain))
    assert code == 1
    assert err.startswith('xen-dm-restrict: error: libvirt connection '
                          'test+unix:///default?socket=%s: ' % socket)
    assert 'Remedy: check the URI' in err
    assert 'libvirtError' not in err
    assert not (tmp_path / 'leases.sqlite').exists()


def test_install_launcher_without_a_configuration_refuses(
        tmp_path, capsys, monkeypatch):
    if os.path.exists(launch_settings.DEFAULT_CONFIG):
        pytest.skip('this host has %s' % launch_settings.DEFAULT_CONFIG)
    monkeypatch.delenv(launch_settings.CONFIG_ENV, raising=False)
    snapshot = tmp_path / 'run' / 'snapshot'
    monkeypatch.setenv(launch_settings.PATH_ENV, str(snapshot))
    target = tmp_path / 'launch'
    code, _, err = _run(capsys, 'install-launcher', str(target))
    assert code == 2
    assert 'the launcher reads %s' % launch_settings.DEFAULT_CONFIG in err
    assert 'it does not exist' in err and 'Remedy: write ' in err
    assert not target.exists() and not snapshot.parent.exists()


def test_install_launcher_refuses_a_file_the_launcher_does_not_read(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(launch_settings.CONFIG_ENV, _conf(tmp_path))
    other = tmp_path / 'other.conf'
    other.write_text('[dm_restrict]\n')
    snapshot = tmp_path / 'run' / 'snapshot'
    monkeypatch.setenv(launch_settings.PATH_ENV, str(snapshot))
    target = tmp_path / 'launch'
    code, _, err = _run(capsys, 'install-launcher', '--config-file',
                        str(other), str(target))
    assert code == 2
    assert 'the settings given were read from %s' % other in err
    assert not target.exists() and not snapshot.parent.exists()


def test_render_output_never_writes_through_a_planted_symlink(
        tmp_path, capsys):
    """Root renders into a directory another user can write."""
    victim = tmp_path / 'victim'
    victim.write_text('precious\n')
    out = tmp_path / 'out.xml'
    for planted in (out, tmp_path / 'out.xml.tmp'):
        planted.symlink_to(victim)
    domain = tmp_path / 'minimal.xml'
    domain.write_text(MINIMAL)
    code, _, err = _run(capsys, 'render', '--config-file', _conf(tmp_path),
                        '--tenant', 'acme', str(domain), '-o', str(out))
    assert code == 0, err
    assert victim.read_text() == 'precious\n'
    assert not out.is_symlink() and '<domain' in out.read_text()
    assert oct(out.stat().st_mode & 0o777) == '0o644'
    assert sorted(p.name for p in tmp_path.iterdir()
                  if p.name.startswith('.out.xml')) == []
