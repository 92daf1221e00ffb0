"""The committed sample configuration matches the options in the code."""

import os

from oslo_config import cfg
from oslo_config import generator
import pytest
import stevedore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GENERATOR_CONF = os.path.join(
    ROOT, 'etc', 'oslo-config-generator', 'xen-dm-restrict.conf')
SAMPLE = os.path.join(
    ROOT, 'etc', 'xen-dm-restrict', 'xen-dm-restrict.conf.sample')
NAMESPACE = 'xen_dm_restrict_plugin'


def _generate(output_file):
    conf = cfg.ConfigOpts()
    generator.register_cli_opts(conf)
    conf(['--config-file', GENERATOR_CONF, '--output-file', output_file],
         project='xen-dm-restrict', default_config_files=[],
         default_config_dirs=[])
    generator.generate(conf)


def test_sample_config_is_up_to_date(tmp_path):
    names = stevedore.ExtensionManager('oslo.config.opts').names()
    if NAMESPACE not in names:
        pytest.fail('entry point oslo.config.opts:%s is not installed; run '
                    'the tests through tox (or pip install -e .)' % NAMESPACE)
    generated = tmp_path / 'xen-dm-restrict.conf.sample'
    _generate(str(generated))
    with open(SAMPLE) as f:
        committed = f.read()
    assert generated.read_text() == committed, (
        '%s is out of date with the options in the code: run '
        '`tox -e genconfig` and commit the result' %
        os.path.relpath(SAMPLE, ROOT))
