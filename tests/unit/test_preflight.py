"""Preflight: each check, the report, and the command's exit code."""

import json
import os
import subprocess
import sys

import pytest

from tests import base
from xen_dm_restrict_plugin.cmd import cli
from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin.host import preflight
from xen_dm_restrict_plugin.leases import store as leases

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _standin(tmp_path, lacks=()):
    path = tmp_path / 'qemu'
    cases = ''.join('    %s) exit 1;;\n' % opt for opt in lacks)
    path.write_text('#!/bin/sh\nfor a in "$@"; do\n  case "$a" in\n%s'
                    '  esac\ndone\nexit 0\n'
                    % (cases + '    -xen-dm-restrict-no-such-option) '
                       'exit 1;;\n'))
    path.chmod(0o755)
    return str(path)


def _by_name(checks):
    return {check.name: check for check in checks}


def test_kernel_version_parsing():
    assert preflight.kernel_version('4.11.0-1-amd64') == (4, 11)
    assert preflight.kernel_version('6.1.0-13-amd64') >= (4, 11)
    assert preflight.kernel_version('4.9.0') < preflight.MIN_KERNEL
    assert preflight.kernel_version('weird') == (0, 0)


@pytest.mark.parametrize('lacks, sandbox, expected', [
    ((), 'when-supported', {'qemu -xen-domid-restrict': 'ok',
                            'qemu user option': 'ok',
                            'qemu chroot option': 'ok',
                            'qemu -sandbox': 'ok'}),
    (('-xen-domid-restrict',), 'when-supported',
     {'qemu -xen-domid-restrict': 'fail'}),
    (('-sandbox',), 'when-supported', {'qemu -sandbox': 'warn'}),
    (('-sandbox',), 'required', {'qemu -sandbox': 'fail'}),
    (('-sandbox',), 'off', {'qemu -sandbox': 'skip'}),
    (('-runas', '-run-with'), 'off', {'qemu user option': 'fail'}),
])
def test_qemu_checks(tmp_path, lacks, sandbox, expected):
    settings = base.make_settings(tmp_path, qemu_binary=_standin(
        tmp_path, lacks), sandbox=sandbox, device_model_syntax='probe')
    found = _by_name(preflight.check_qemu(settings))
    for name, status in expected.items():
        assert found[name].status == status, found[name]
    assert not found['qemu -xen-domid-restrict'].needs_xen


def test_configured_syntax_needs_its_own_options(tmp_path):
    settings = base.make_settings(tmp_path, qemu_binary=_standin(
        tmp_path, ('-run-with',)), device_model_syntax='run-with')
    found = _by_name(preflight.check_qemu(settings))
    assert found['qemu user option'].status == 'fail'
    assert 'run-with-user' in found['qemu user option'].detail


def test_missing_qemu_binary(tmp_path):
    settings = base.make_settings(tmp_path,
                                  qemu_binary=str(tmp_path / 'nope'))
    [check] = preflight.check_qemu(settings)
    assert check.status == 'fail' and check.needs_xen


def test_accounts_inside_a_range_fail(tmp_path):
    # uids 1-999 hold Debian's system users and groups.
    settings = base.make_settings(tmp_path,
                                  tenant_uid_ranges={'acme': '1-999'})
    check = preflight.check_accounts(settings)
    assert check.status == 'fail'
    assert 'user ' in check.detail
    clean = base.make_settings(tmp_path)
    assert preflight.check_accounts(clean).status == 'ok'
    none = base.make_settings(tmp_path, tenant_uid_ranges={})
    assert preflight.check_accounts(none).status == 'fail'


def test_reaper_user_missing(tmp_path):
    check = preflight.check_reaper_user(
        base.make_settings(tmp_path, reap_device_models=True))
    assert check.status == 'fail'
    assert check.detail.endswith(
        preflight.REAPER_USERADD % 'nobody-reaper-not-created')


def test_the_reaper_user_remedy_is_the_guides_command():
    with open(os.path.join(ROOT, 'doc/source/install/index.rst')) as doc:
        written = ' '.join(doc.read().replace('\\\n', ' ').split())
    assert '# ' + preflight.REAPER_USERADD % 'xen-dm-reaper' in written


def test_no_reaper_user_is_needed_when_nothing_is_reaped(tmp_path):
    check = preflight.check_reaper_user(
        base.make_settings(tmp_path, reap_device_models=False))
    assert check.status == 'skip'
    assert 'reap_device_models = false' in check.detail


def test_the_hook_remedy_names_an_existing_command():
    [check] = preflight.check_hook('/nonexistent-hooks')
    assert check.status == 'fail'
    command = check.detail.split('not installed: ')[1].split()[0]
    assert 'install-hook /nonexistent-hooks/libxl' in check.detail
    assert os.path.isabs(command) and os.access(command, os.X_OK), command


def test_reaper_user_running_processes_fails(tmp_path):
    # uid 0 always runs processes: stands in for a busy reaper uid.
    settings = base.make_settings(tmp_path, reap_device_models=True)
    busy = settings.__class__(**dict(settings.__dict__, reaper_uid=0))
    assert preflight.check_reaper_user(busy).status == 'fail'


def test_chroot_base(tmp_path):
    settings = base.make_settings(tmp_path)
    absent = preflight.check_chroot_base(settings)
    assert absent.status == ('ok' if os.stat(tmp_path).st_uid == 0
                             else 'fail')
    os.makedirs(settings.chroot_base_dir)
    os.chmod(settings.chroot_base_dir, 0o777)
    check = preflight.check_chroot_base(settings)
    assert check.status == 'fail'
    assert ('writable' if os.geteuid() == 0 else 'not root') in check.detail


def test_lease_db(tmp_path):
    settings = base.make_settings(tmp_path)
    assert preflight.check_lease_db(settings).status == 'ok'
    assert not os.path.exists(settings.lease_db)
    with leases.LeaseStore(settings.lease_db) as store:
        store.acquire(base.HVM_UUID, 'acme',
                      ranges.UidRange('acme', 200000, 200099))
    check = preflight.check_lease_db(settings)
    assert check.status == 'ok' and '1 lease' in check.detail
    with open(settings.lease_db, 'wb') as handle:
        handle.write(b'not a database' * 100)
    assert preflight.check_lease_db(settings).status == 'fail'
    gone = base.make_settings(tmp_path,
                              lease_db=str(tmp_path / 'no' / 'l.db'))
    assert preflight.check_lease_db(gone).status == 'fail'


def test_hook_check(tmp_path):
    assert [c.status for c in preflight.check_hook(str(tmp_path))] == [
        'fail']
    script = tmp_path / 'libxl'
    script.write_text('#!/bin/sh\nexec xen-dm-restrict-libvirt-hook "$@"\n')
    script.chmod(0o755)
    found, startup = preflight.check_hook(str(tmp_path))
    assert found.status == 'ok'
    # A script starts Python at every call it acts on.
    assert startup.status == 'warn'
    assert '--script-only' in startup.detail


def test_report_marks_failures_due_to_no_xen():
    report = preflight.Report((
        preflight.Check('Xen host', 'fail', 'none', needs_xen=True),
        preflight.Check('kernel >= 4.11', 'ok', 'Linux 6.1'),
        preflight.Check('reaper user', 'fail', 'missing'),
    ), xen_host=False)
    assert not report.ok
    assert [c.name for c in report.no_xen_failures()] == ['Xen host']
    text = report.table()
    assert 'none [no Xen here]' in text
    assert 'missing [no Xen here]' not in text
    assert 'fail only for that reason: Xen host.' in text
    data = report.to_dict()
    assert [c['fails_for_lack_of_xen'] for c in data['checks']] == [
        True, False, False]
    on_xen = preflight.Report(report.checks, xen_host=True)
    assert on_xen.no_xen_failures() == []


def test_command_exit_code_and_json(tmp_path, capsys):
    config = tmp_path / 'c.conf'
    config.write_text('[dm_restrict]\ntenant_uid_ranges = acme:200000-'
                      '200099\nqemu_binary = %s\nlease_db = %s\n'
                      'chroot_base_dir = %s\n'
                      % (_standin(tmp_path), tmp_path / 'l.db',
                         tmp_path / 'chroots'))
    hooks_dir = tmp_path / 'hooks'
    hooks_dir.mkdir()
    rc = cli.main(['preflight', '--config-file', str(config),
                   '--format', 'json', '--libvirt-hooks-dir',
                   str(hooks_dir)])
    data = json.loads(capsys.readouterr().out)
    checks = _by_name(preflight.Check(**{k: v for k, v in c.items()
                                         if k != 'fails_for_lack_of_xen'})
                      for c in data['checks'])
    # No reaper user and no hook here: preflight must fail.
    assert rc == 1 and data['ok'] is False
    assert checks['reaper user'].status == 'fail'
    assert checks['libvirt libxl hook'].status == 'fail'
    assert checks['qemu -xen-domid-restrict'].status == 'ok'


def test_table_output_via_console_script(tmp_path):
    empty = tmp_path / 'empty.conf'
    empty.write_text('')
    proc = subprocess.run(
        [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli',
         'preflight', '--config-file', str(empty)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 1
    assert proc.stdout.startswith('CHECK')
    assert 'check(s) failed' in proc.stdout
    if not os.path.exists('/usr/libexec/xen-qemu-system-i386'):
        assert 'xen-qemu-system-i386 is missing' in proc.stdout


def test_empty_allowed_host_paths_warn(tmp_path):
    empty = base.make_settings(tmp_path, allowed_host_paths=[])
    check = preflight.check_host_paths(empty)
    assert check.status == preflight.WARN
    assert 'every domain with a disk' in check.detail
    set_ = base.make_settings(tmp_path)
    assert preflight.check_host_paths(set_).status == preflight.OK


def test_launcher_test_mode_fails(tmp_path):
    on = base.make_settings(tmp_path, launcher_test_mode=True)
    assert preflight.check_test_mode(on).status == preflight.FAIL
    off = base.make_settings(tmp_path)
    assert preflight.check_test_mode(off).status == preflight.OK
