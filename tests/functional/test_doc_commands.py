"""The documented commands run as written, and print what the pages show.

The installation guide is walked top to bottom, as a new operator would,
as root, in a sandbox: a private mount namespace whose ``/usr``, ``/opt``,
``/var``, ``/run``, ``/tmp``, ``/root`` and ``/srv`` are overlays on a
tmpfs that disappears with it, and whose ``/etc`` is a copy there.  So
the guide may create users, install into ``/opt`` and write ``/etc``
while the host stays as it was.  Each command's output is compared with
the sample the page shows (numbers such as uids and times, and the
checkout's path, normalised); the commands that need a Xen host or a
running libvirtd are skipped with their reason.  Other pages' commands
are checked against the command line's parser, and their samples
against what the commands print.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.functional import doc_commands
from tests.functional import hostenv
from xen_dm_restrict_plugin.cmd import cli
from xen_dm_restrict_plugin.launcher import settings as launch_settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GUIDE = 'doc/source/install/index.rst'
#: The checkout's path as the guide writes it.
GUIDE_SRC = '/opt/src/xen-dm-restrict-plugin'
#: Commands of the guide that cannot run here, by their first line.
NEEDS_XEN = {
    'apt-get install --no-install-recommends xen-system-amd64':
        'installs Xen and needs a reboot into it',
    'systemctl restart libvirtd': 'no libvirtd runs in the sandbox',
    'systemctl daemon-reload': 'no init system runs in the sandbox',
    'systemctl enable --now': 'no init system runs in the sandbox',
    'systemctl disable --now': 'no init system runs in the sandbox',
    'xen-dm-restrict boot --connect xen:///system':
        'boots on a Xen host',
}
OVERLAID = ('/etc', '/usr', '/opt', '/var', '/run', '/tmp', '/root', '/srv',
            '/home')
#: What the installation wrote, which uninstalling must remove.
INSTALLED = ('/usr/local/bin/xen-dm-restrict',
             '/usr/local/bin/xen-dm-restrict-launch',
             '/usr/local/bin/xen-dm-restrict-launch-service',
             '/usr/local/sbin/xen-dm-restrict-launch.py',
             '/etc/systemd/system/xen-dm-restrict-launch-service.service',
             '/usr/local/bin/xen-dm-restrict-libvirt-hook',
             '/usr/local/sbin/xen-dm-restrict-launch',
             '/opt/xen-dm-restrict', '/etc/xen-dm-restrict',
             '/var/lib/xen-dm-restrict', '/run/xen-dm-restrict',
             '/etc/libvirt/hooks/libxl')


def _page(name):
    with open(os.path.join(ROOT, name)) as handle:
        return doc_commands.commands(name, handle.read())


def _skip_reason(command):
    for prefix, reason in NEEDS_XEN.items():
        if command.first_line.startswith(prefix):
            return reason
    return None


def _sandbox_script(steps):
    """A bash script that mounts the overlays, runs ``steps`` in one shell
    (their variables carry on, as in the operator's shell) and marks
    where each one's output and exit status are.
    """
    mounts = ['mount -t tmpfs -o mode=0755 xen-dm-restrict-doc /mnt',
              # A copy, not an overlay: the host's user database may
              # change (and be locked) while the walk runs.
              'cp -a /etc /mnt/etc && mount --bind /mnt/etc /etc']
    for path in OVERLAID:
        if path == '/etc':
            continue
        name = path.strip('/')
        mounts.append(
            'mkdir -p /mnt/upper/{0} /mnt/work/{0} && mount -t overlay '
            'overlay -o lowerdir={1},upperdir=/mnt/upper/{0},'
            'workdir=/mnt/work/{0} {1}'.format(name, path))
    # pip builds in the source tree: the guide's $SRC is a copy.
    copy = ('mkdir /mnt/src && tar -C %s --exclude=./.tox --exclude=./.xenlab '
            '--exclude=./build -c . | tar -C /mnt/src -x' % shlex.quote(ROOT))
    body = ['set -e'] + mounts + [copy, 'set +e', 'exec 2>&1', 'cd /root']
    for index, text in enumerate(steps):
        body.append('echo "@@doc-command %d@@"' % index)
        body.append('{ %s\n}' % text)
        body.append('echo "@@doc-status %d $?@@"' % index)
    body.append('echo "@@doc-left@@"')
    body.append('for f in %s; do [ -e "$f" ] || [ -L "$f" ] && echo "$f"; '
                'done; echo "@@doc-end@@"' % ' '.join(INSTALLED))
    return '\n'.join(body) + '\n'


def _split(stdout, count):
    outputs, statuses = {}, {}
    for index in range(count):
        match = re.search(r'@@doc-command %d@@\n(.*?)@@doc-status %d '
                          r'([0-9]+)@@' % (index, index), stdout, re.S)
        if match:
            outputs[index] = match.group(1).splitlines()
            statuses[index] = int(match.group(2))
    left = re.search(r'@@doc-left@@\n(.*?)@@doc-end@@', stdout, re.S)
    return outputs, statuses, left.group(1).split() if left else None


def test_the_installation_guide_runs_as_written(tmp_path):
    hostenv.require_root()
    if not shutil.which('unshare'):
        pytest.skip('no unshare(1) to make the sandbox')
    commands = _page(GUIDE)
    steps, ran = [], []
    for command in commands:
        if _skip_reason(command):
            continue
        text = command.text
        if command.first_line.startswith('SRC='):
            text = 'SRC=/mnt/src'
        steps.append(text)
        ran.append(command)
    script = tmp_path / 'walk.sh'
    script.write_text(_sandbox_script(steps))
    proc = subprocess.run(
        ['unshare', '--mount', '--propagation', 'private', 'bash',
         str(script)], capture_output=True, text=True, timeout=1200,
        stdin=subprocess.DEVNULL,
        env={'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:'
                     '/sbin:/bin', 'HOME': '/root', 'LANG': 'C.UTF-8',
             'PIP_DISABLE_PIP_VERSION_CHECK': '1'})
    if 'mount: ' in proc.stdout.split('@@doc-command 0@@')[0]:
        pytest.skip('this host cannot mount the sandbox overlays: %s'
                    % proc.stdout[:300])
    outputs, statuses, left = _split(proc.stdout, len(steps))
    problems = []
    for index, command in enumerate(ran):
        where = '%s line %d: %s' % (command.page, command.line,
                                    command.first_line)
        if index not in statuses:
            problems.append('%s: did not run\n%s' % (
                where, proc.stdout[-3000:]))
            break
        # A command whose sample the guide shows may exit non-zero (a
        # refusal, preflight's failures): the sample is what it does.
        if statuses[index] != 0 and not command.output:
            problems.append('%s: exit %d\n%s' % (
                where, statuses[index], '\n'.join(outputs[index])))
            continue
        if command.output:
            replace = {'/mnt/src': GUIDE_SRC}
            want = doc_commands.normalise(command.output, replace)
            got = doc_commands.normalise(outputs[index], replace)
            if want != got:
                problems.append('%s: printed\n%s\nbut the guide shows\n%s'
                                % (where, '\n'.join(outputs[index]),
                                   '\n'.join(command.output)))
    assert not problems, '\n\n'.join(problems)
    assert left == [], 'uninstalling left %s behind' % left


def test_every_skipped_guide_command_is_still_in_the_guide():
    firsts = [command.first_line for command in _page(GUIDE)]
    for prefix in NEEDS_XEN:
        assert any(first.startswith(prefix) for first in firsts), prefix


@pytest.mark.parametrize('page', [
    'doc/source/admin/operations.rst', 'doc/source/admin/preflight.rst',
    'doc/source/configuration/three-tenants.rst',
    'doc/source/configuration/libvirt-hook.rst', GUIDE, 'README.rst'])
def test_documented_xen_dm_restrict_commands_parse(page):
    parser = cli.build_parser()
    checked = 0
    for command in _page(page):
        words = shlex.split(command.text.replace('\\\n', ' '),
                            comments=True)
        if not words or words[0] != 'xen-dm-restrict':
            continue
        words = [w for w in words[1:] if w not in ('|', '>')]
        if '|' in command.text:
            words = shlex.split(command.text.split('|')[0])[1:]
        try:
            parser.parse_args(words)
        except SystemExit as done:
            if done.code == 0:  # --help
                continue
            pytest.fail('%s line %d: %s does not parse' % (
                page, command.line, command.first_line))
        checked += 1
    assert checked or page == 'README.rst'


def test_the_leases_list_sample_has_the_columns_printed(tmp_path):
    sample = [command for command in _page('doc/source/admin/operations.rst')
              if command.first_line == 'xen-dm-restrict leases list'][0]
    conf = tmp_path / 'c.conf'
    conf.write_text('[dm_restrict]\ntenant_uid_ranges = acme:200000-200999\n'
                    'lease_db = %s\n' % (tmp_path / 'leases.sqlite'))
    from xen_dm_restrict_plugin.leases import store

    with store.LeaseStore(str(tmp_path / 'leases.sqlite')) as leases:
        from xen_dm_restrict_plugin.core import ranges

        leases.acquire('6f1c4b9e-2a7d-4c3e-9b51-0d8e7f6a5c21', 'acme',
                       ranges.parse('200000-200999', 'acme', 'x'))
    proc = subprocess.run(
        [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli', 'leases',
         'list', '--config-file', str(conf)], capture_output=True,
        text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == \
        sample.output[0].split()
    assert doc_commands.normalise(proc.stdout.splitlines()[1:]) == \
        doc_commands.normalise(sample.output[1:2])


def _code_blocks(page):
    """The ``.. code-block:: text`` samples of a page, as line lists."""
    with open(os.path.join(ROOT, page)) as handle:
        text = handle.read()
    return [block for _, block in doc_commands._literal_blocks(
        text.splitlines())]


def test_the_badly_set_up_host_sample_is_what_preflight_prints(tmp_path):
    """The second sample of the preflight page, made again."""
    hostenv.require_root()
    hostenv.require_tool('/usr/bin/qemu-system-x86_64')
    chroot = tmp_path / 'pfbad-chroot'
    chroot.mkdir()
    chroot.chmod(0o777)
    conf = tmp_path / 'bad.conf'
    conf.write_text('[dm_restrict]\n'
                    'tenant_uid_ranges = acme:200000-200999\n'
                    'qemu_binary = /usr/bin/qemu-system-x86_64\n'
                    'device_model_syntax = runas\n'
                    'sandbox = required\n'
                    'reaper_user = nosuchuser\n'
                    'chroot_base_dir = %s\n'
                    'lease_db = /nonexistent/leases.sqlite\n' % chroot)
    # No settings snapshot of the defaults (the host's own may be there).
    snapshot = str(tmp_path / 'run' / 'settings.marshal')
    env = dict(os.environ)
    env.pop(launch_settings.CONFIG_ENV, None)
    env[launch_settings.PATH_ENV] = snapshot
    proc = subprocess.run(
        [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli',
         'preflight', '--config-file', str(conf), '--libvirt-hooks-dir',
         str(tmp_path / 'hooks')], capture_output=True, text=True,
        cwd=ROOT, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr
    from xen_dm_restrict_plugin.host import preflight

    replace = {str(chroot): '/tmp/pfbad-chroot',
               snapshot: launch_settings.DEFAULT_PATH,
               str(tmp_path / 'hooks'): '/etc/libvirt/hooks',
               preflight.hook_command():
                   '/opt/xen-dm-restrict/bin/xen-dm-restrict-libvirt-hook',
               preflight.hook_command('xen-dm-restrict'):
                   '/opt/xen-dm-restrict/bin/xen-dm-restrict'}
    samples = [block for block in _code_blocks(
        'doc/source/admin/preflight.rst') if 'nosuchuser' in '\n'.join(
            block)]
    assert len(samples) == 1
    assert doc_commands.normalise(proc.stdout.splitlines(), replace) == \
        doc_commands.normalise(samples[0])


def test_every_check_preflight_prints_is_explained():
    from xen_dm_restrict_plugin.host import preflight

    with open(os.path.join(ROOT, 'doc/source/admin/preflight.rst')) as doc:
        text = doc.read()
    table = text.split('The checks\n')[1]
    names = set(re.findall(r'^   \* - ``([^`]+)``$', table, re.M))
    source = open(preflight.__file__).read()
    printed = set(re.findall(r"Check\(\s*'([^']+)'", source))
    assert printed - names == set()
