"""The README's walk-through works as written, in a scratch copy.

The main job's command (the ``boot`` env of tox.ini) and the command the
README shows after it are run here with the example configuration, its
lease database and image directory moved into the test's own directory,
so nothing outside it changes.
"""

import configparser
import os
import re
import shlex
import subprocess
import sys

from tests import base

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, 'etc', 'xen-dm-restrict')
CLI = [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli']


def _scratch_example(tmp_path):
    with open(os.path.join(EXAMPLE, 'boot-example.conf')) as handle:
        conf = handle.read()
    with open(os.path.join(EXAMPLE, 'boot-example-domain.xml')) as handle:
        xml = handle.read()
    images = tmp_path / 'images'
    images.mkdir()
    (images / 'acme-web-1.img').write_bytes(b'')
    conf = conf.replace('/var/tmp/xen-dm-restrict-boot-leases.sqlite',
                        str(tmp_path / 'leases.sqlite'))
    conf = conf.replace('/var/tmp/xen-dm-restrict-boot', str(images))
    xml = xml.replace('/var/tmp/xen-dm-restrict-boot', str(images))
    (tmp_path / 'boot-example.conf').write_text(conf)
    (tmp_path / 'boot-example-domain.xml').write_text(xml)
    parsed = configparser.ConfigParser()
    parsed.read_string(conf)
    assert parsed['dm_restrict']['allowed_host_paths'] == str(images)
    return tmp_path / 'boot-example.conf', tmp_path / 'boot-example-domain.xml'


def _run(args, tmp_path):
    args = [str(tmp_path / os.path.basename(a))
            if a.startswith(('etc/', '{toxinidir}/etc/')) else a
            for a in args]
    return subprocess.run(CLI + args, capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          timeout=60)


def test_the_main_job_and_the_readme_follow_up(tmp_path):
    _scratch_example(tmp_path)
    with open(os.path.join(ROOT, 'tox.ini')) as handle:
        tox = handle.read()
    boot = re.search(r'^\s+xen-dm-restrict (boot .*)$', tox, re.M).group(1)
    boot = boot.replace('{posargs}', '').replace('{toxinidir}/', '')
    first = _run(shlex.split(boot), tmp_path)
    assert first.returncode == 0, first.stderr
    assert 'uid:     200000' in first.stdout
    with open(os.path.join(ROOT, 'README.rst')) as handle:
        readme = handle.read()
    follow = re.search(r'\.tox/boot/bin/xen-dm-restrict (leases list '
                       r'\\\n\s+--config-file \S+)', readme).group(1)
    listed = _run(shlex.split(follow.replace('\\\n', ' ')), tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert '200000' in listed.stdout and 'acme' in listed.stdout
    assert base.HVM_UUID not in listed.stdout
