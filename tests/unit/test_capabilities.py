"""Probing the device model, with shell scripts standing in for QEMU.

A stand-in exits 1 when given an option it "lacks" and 0 otherwise, as
QEMU does when it parses ``-no-user-config OPTION... -version``, and
logs every call, so the tests can see what was run and how often.
"""

import os
import time

from lxml import etree
import pytest

from tests import base
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import capabilities
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks

XEN_47 = ('-run-with', '-xen-dm-restrict-no-such-option')
DEBIAN_XEN = ('-run-with', '-sandbox', '-xen-dm-restrict-no-such-option')
QEMU_72_TCG = ('-xen-domid-restrict', '-run-with',
               '-xen-dm-restrict-no-such-option')
QEMU_10_XEN = ('-runas', '-chroot', '-xen-dm-restrict-no-such-option')


def standin(tmp_path, name, lacks=(), sleep=0.0, broken=False):
    """Write an executable stand-in QEMU lacking the options ``lacks``."""
    path = tmp_path / name
    log = tmp_path / (name + '.calls')
    cases = ''.join('    %s) exit 1;;\n' % option for option in lacks)
    path.write_text(
        '#!/bin/sh\n'
        'echo "$*" >> %s\n'
        '%s'
        '%s'
        'for arg in "$@"; do\n'
        '  case "$arg" in\n'
        '%s'
        '  esac\n'
        'done\n'
        'exit 0\n' % (log, 'sleep %s\n' % sleep if sleep else '',
                      'exit 127\n' if broken else '', cases))
    path.chmod(0o755)
    return str(path)


def calls(binary):
    try:
        with open(binary + '.calls') as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


def test_every_probe_asks_qemu_to_parse_and_exit(tmp_path):
    binary = standin(tmp_path, 'qemu-all')
    caps = capabilities.probe(binary)
    assert all(caps.supported.values())
    assert sorted(calls(binary)) == sorted(
        ' '.join(['-no-user-config'] + args + ['-version'])
        for args in capabilities.PROBES.values())
    assert ('-no-user-config -sandbox %s -version'
            % restrict.SANDBOX_POLICY) in calls(binary)


@pytest.mark.parametrize('lacks, expected', [
    (XEN_47, {'xen-domid-restrict': True, 'runas': True, 'chroot': True,
              'run-with-user': False, 'run-with-chroot': False,
              'sandbox': True}),
    (QEMU_10_XEN, {'xen-domid-restrict': True, 'runas': False,
                   'chroot': False, 'run-with-user': True,
                   'run-with-chroot': True, 'sandbox': True}),
    (DEBIAN_XEN, {'sandbox': False, 'runas': True}),
])
def test_probe_reports_each_option(tmp_path, lacks, expected):
    caps = capabilities.probe(standin(tmp_path, 'qemu', lacks))
    for name, value in expected.items():
        assert caps.has(name) is value, name
    assert caps.has('version') and not caps.has('nonsense')


@pytest.mark.parametrize('lacks, sandbox, syntax', [
    (XEN_47, 'when-supported', ('legacy', 'legacy', True)),
    (QEMU_10_XEN, 'required', ('run-with', 'run-with', True)),
    (('-chroot', '-xen-dm-restrict-no-such-option'), 'when-supported',
     ('run-with', 'run-with', True)),
    (DEBIAN_XEN, 'when-supported', ('legacy', 'legacy', False)),
    (XEN_47, 'off', ('legacy', 'legacy', False)),
])
def test_syntax_follows_the_probe(tmp_path, lacks, sandbox, syntax):
    caps = capabilities.probe(standin(tmp_path, 'qemu', lacks))
    chosen = capabilities.syntax_from_capabilities(caps, sandbox)
    assert (chosen.user_form, chosen.chroot_form, chosen.sandbox) == syntax


@pytest.mark.parametrize('lacks, sandbox, missing', [
    (QEMU_72_TCG, 'when-supported', '-xen-domid-restrict'),
    (('-runas', '-run-with', '-xen-dm-restrict-no-such-option'),
     'when-supported', '-runas or -run-with user='),
    (('-chroot', '-run-with', '-xen-dm-restrict-no-such-option'),
     'when-supported', '-chroot or -run-with chroot='),
    (DEBIAN_XEN, 'required', '-sandbox (seccomp)'),
])
def test_refuses_a_qemu_that_cannot_restrict(tmp_path, lacks, sandbox,
                                             missing):
    binary = standin(tmp_path, 'qemu', lacks)
    caps = capabilities.probe(binary)
    with pytest.raises(exception.CapabilityMissing) as err:
        capabilities.syntax_from_capabilities(caps, sandbox)
    assert binary in str(err.value)
    assert 'does not support %s' % missing in str(err.value)


def test_refuses_a_binary_that_accepts_anything(tmp_path):
    caps = capabilities.probe(standin(tmp_path, 'true'))
    with pytest.raises(exception.CapabilityMissing, match='not a QEMU'):
        capabilities.syntax_from_capabilities(caps, 'when-supported')


def test_refuses_a_binary_that_does_not_run(tmp_path):
    caps = capabilities.probe(standin(tmp_path, 'qemu', broken=True))
    with pytest.raises(exception.CapabilityMissing, match='does not run'):
        capabilities.syntax_from_capabilities(caps, 'when-supported')


def test_missing_binary_is_named(tmp_path):
    missing = str(tmp_path / 'no-such-qemu')
    with pytest.raises(exception.CapabilityMissing, match=missing):
        capabilities.probe(missing)


def _most_at_once(spans):
    edges = sorted([(start, 1) for start, _ in spans]
                   + [(end, -1) for _, end in spans])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize('cpus', [1, 2, 4, 64])
def test_probes_run_at_once_but_no_more_than_cpus(tmp_path, monkeypatch,
                                                  cpus):
    # Each probe has its own timeout; more QEMU starts at once than CPUs
    # would make them share it out on a slow host.
    binary = tmp_path / 'slow-qemu'
    spans = tmp_path / 'spans'
    binary.write_text('#!/bin/sh\nt0=$(date +%%s.%%N)\nsleep 0.3\n'
                      'echo "$t0 $(date +%%s.%%N)" >> %s\n' % spans)
    binary.chmod(0o755)
    monkeypatch.setattr(os, 'cpu_count', lambda: cpus)
    capabilities.probe(str(binary))
    found = [tuple(map(float, line.split()))
             for line in spans.read_text().splitlines()]
    assert len(found) == len(capabilities.PROBES)
    most = _most_at_once(found)
    assert 2 <= most <= max(2, min(cpus, len(capabilities.PROBES)))


def test_result_is_cached_per_binary_identity(tmp_path):
    binary = standin(tmp_path, 'qemu', XEN_47)
    first = capabilities.probe(binary)
    count = len(calls(binary))
    assert capabilities.probe(binary) is first
    assert len(calls(binary)) == count

    # An upgrade (new content, size and mtime) is probed again.
    standin(tmp_path, 'qemu', QEMU_10_XEN)
    os.utime(binary, ns=(0, time.time_ns() + 10 ** 9))
    second = capabilities.probe(binary)
    assert second is not first and second.has('run-with-user')
    assert len(calls(binary)) == count + len(capabilities.PROBES)


def test_a_symlink_shares_the_cache_of_its_target(tmp_path):
    binary = standin(tmp_path, 'qemu', XEN_47)
    link = tmp_path / 'qemu-link'
    link.symlink_to(binary)
    assert capabilities.probe(str(link)) is capabilities.probe(binary)


def test_explicit_syntax_probes_nothing(tmp_path):
    binary = standin(tmp_path, 'qemu', QEMU_72_TCG)
    settings = base.make_settings(tmp_path, device_model_syntax='run-with',
                                  qemu_binary=binary)
    syntax = capabilities.syntax_for(settings, None)
    assert (syntax.user_form, syntax.chroot_form) == ('run-with',
                                                      'run-with')
    assert calls(binary) == []


def test_the_launcher_makes_the_qemu_binary_the_one_probed(tmp_path):
    emulator = standin(tmp_path, 'emulator')
    qemu = standin(tmp_path, 'qemu', XEN_47)
    settings = base.make_settings(tmp_path, device_model_syntax='probe',
                                  qemu_binary=qemu, launcher='/x/launch')
    capabilities.syntax_for(settings, emulator)
    assert calls(emulator) == [] and calls(qemu) != []


def _with_emulator(path: str) -> str:
    def put(root):
        node = etree.SubElement(root.find('devices'), 'emulator')
        node.text = path
    return base.edit(base.fixture('hvm.xml'), put)


def test_boot_with_a_qemu_lacking_domid_restrict_fails_without_lease(
        tmp_path):
    binary = standin(tmp_path, 'qemu-system-i386', QEMU_72_TCG)
    hook = extension.DmRestrictHook(
        None, base.make_settings(tmp_path, device_model_syntax='probe',
                                 qemu_binary=binary))
    try:
        with pytest.raises(exception.CapabilityMissing) as err:
            hook.prepare(_with_emulator(binary),
                         hooks.Instance(base.HVM_UUID, 'acme'))
        assert binary in str(err.value)
        assert '-xen-domid-restrict' in str(err.value)
        assert (not os.path.exists(hook.settings.lease_db)
                or hook.store.list() == [])
    finally:
        hook.close()


def test_boot_with_a_capable_qemu_uses_its_syntax(tmp_path):
    binary = standin(tmp_path, 'qemu-system-i386', QEMU_10_XEN)
    hook = extension.DmRestrictHook(
        None, base.make_settings(tmp_path, device_model_syntax='probe',
                                 qemu_binary=binary))
    try:
        out = hook.prepare(_with_emulator(binary),
                           hooks.Instance(base.HVM_UUID, 'acme'))
    finally:
        hook.close()
    assert '-run-with' in out and '-runas' not in out


def test_a_probe_that_does_not_answer_is_refused_and_not_remembered(
        tmp_path, monkeypatch):
    """A loaded host is not a QEMU without the restriction."""
    capabilities.clear_cache()
    binary = standin(tmp_path, 'slow', sleep=1.0)
    monkeypatch.setattr(capabilities, 'PROBE_TIMEOUT', 0.2)
    with pytest.raises(exception.CapabilityMissing) as err:
        capabilities.probe(binary)
    assert 'did not complete within' in str(err.value)
    assert 'try again' in err.value.remedy
    monkeypatch.setattr(capabilities, 'PROBE_TIMEOUT', 10.0)
    caps = capabilities.probe(binary)
    assert caps.has('version') and caps.has('xen-domid-restrict')
    capabilities.clear_cache()


def test_results_are_kept_for_the_next_process(tmp_path):
    """libvirtd's hook starts anew at every call: the probe's results
    are kept in a root-only file, and a new process (here: the cache of
    this one cleared) probes nothing.
    """
    binary = standin(tmp_path, 'qemu', DEBIAN_XEN)
    first = capabilities.probe(binary)
    count = len(calls(binary))
    capabilities.clear_cache()
    if os.geteuid() != 0:
        # Only root writes it (only root's is read).
        assert not os.path.exists(capabilities.shared_path())
        return
    st = os.stat(capabilities.shared_path())
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
    again = capabilities.probe(binary)
    assert again.supported == first.supported
    assert not again.has('sandbox')
    assert len(calls(binary)) == count
    # An upgrade is probed again, and kept beside the old entry.
    standin(tmp_path, 'qemu', QEMU_10_XEN)
    capabilities.clear_cache()
    assert capabilities.probe(binary).has('run-with-user')
    assert len(calls(binary)) == count + len(capabilities.PROBES)


@pytest.mark.parametrize('spoil', ['group-writable', 'not-roots',
                                   'garbage'])
def test_a_shared_cache_not_roots_alone_is_not_believed(tmp_path, spoil):
    if os.geteuid() != 0:
        pytest.skip('needs root: the cache is root\'s')
    binary = standin(tmp_path, 'qemu', DEBIAN_XEN)
    capabilities.probe(binary)
    count = len(calls(binary))
    path = capabilities.shared_path()
    if spoil == 'group-writable':
        os.chmod(path, 0o620)
    elif spoil == 'not-roots':
        os.chown(path, 65534, 65534)
    else:
        with open(path, 'wb') as handle:
            handle.write(b'\x00not marshal')
    capabilities.clear_cache()
    capabilities.probe(binary)
    assert len(calls(binary)) == count + len(capabilities.PROBES)
