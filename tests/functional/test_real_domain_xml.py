"""Try the hook on real libvirt Xen domain XML, as an operator would.

The workplace keeps libvirt's own libxl test domains beside the
repository (``../shared/corpus``); they are read from there, never copied
in.  Every HVM qemu-xen guest must come out restricted and valid against
libvirt's schema, or be refused with a message naming the feature and a
remedy; PV and PVH guests pass unchanged.  Without the corpus the test
skips and says so.
"""

import glob
import os

import pytest

from tests import base
from xen_dm_restrict_plugin import domain
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin import extension
from xen_dm_restrict_plugin import hooks
from xen_dm_restrict_plugin import restrict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CORPUS = os.path.join(os.path.dirname(ROOT), 'shared', 'corpus',
                      'libvirt-libxl-domains')
FILES = sorted(glob.glob(os.path.join(CORPUS, '*.xml')))


@pytest.mark.skipif(not FILES, reason='no real domain XML at %s' % CORPUS)
@pytest.mark.parametrize('path', FILES, ids=[os.path.basename(f)
                                             for f in FILES])
def test_real_domain_is_restricted_or_refused_with_a_reason(tmp_path, path):
    with open(path, encoding='utf-8') as handle:
        xml = handle.read()
    source = domain.parse(xml, 1 << 20)
    instance = hooks.Instance(source.uuid, 'acme')
    hook = extension.DmRestrictHook(base.make_conf(tmp_path))
    try:
        out = hook.prepare(xml, instance)
    except exception.FeatureRefused as err:
        assert source.kind.has_dom0_device_model
        assert err.subject and err.reason and err.remedy
        assert not os.path.exists(hook.settings.lease_db)
        return
    finally:
        hook.close()
    if not source.kind.has_dom0_device_model:
        assert out == xml
        return
    record = restrict.read_record(domain.parse(out, 1 << 20))
    assert record is not None and record.uid in range(200000, 200100)
    assert '-xen-domid-restrict' in domain.parse(out, 1 << 20).xen_args()
    base.assert_schema_valid(out)
