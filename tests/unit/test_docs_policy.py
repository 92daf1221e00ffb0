"""The operator documentation lists what the policy refuses and allows."""

import os

from xen_dm_restrict_plugin import conf
from xen_dm_restrict_plugin.core import qemu_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _read(*parts):
    with open(os.path.join(ROOT, 'doc', 'source', *parts)) as handle:
        return handle.read()


def test_every_never_allowed_option_is_documented():
    refused = _read('admin', 'refused.rst')
    missing = [name for name in qemu_args.NEVER_ALLOWED
               if '``%s``' % name not in refused]
    assert missing == []


def test_every_policy_option_is_explained_for_operators():
    guide = _read('configuration', 'three-tenants.rst')
    for opt in conf.dm_restrict_opts:
        if opt.name.startswith('allowed_') or opt.name == 'pv_dom0_qemu':
            assert '``%s``' % opt.name in guide, opt.name
