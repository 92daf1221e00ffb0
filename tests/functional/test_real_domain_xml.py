"""Try the policy on real libvirt Xen domain XML, as an operator would.

The workplace keeps libvirt's own libxl test domains beside the
repository (``../shared/corpus``); they are read from there, never copied
in.  Each must come out restricted (HVM qemu-xen) or passed (PV, PVH),
valid against libvirt's schema, or be refused with a message naming
every refused part and a remedy, leaving no lease.  Most of them use
qdisk disks and ``<emulator>/bin/true</emulator>``, which are refused;
``single-serial.xml`` has nothing dangerous and must be restricted.
Without the corpus the test skips and says so.
"""

import glob
import os

import pytest

from tests import base
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CORPUS = os.path.join(os.path.dirname(ROOT), 'shared', 'corpus',
                      'libvirt-libxl-domains')
FILES = sorted(glob.glob(os.path.join(CORPUS, '*.xml')))
#: Documents that have nothing the policy refuses.
CLEAN = {'single-serial.xml'}
#: Words every refusal of a document must contain.
REFUSED_FOR = {
    'basic-hvm.xml': ['<emulator>/bin/true', 'qdisk backend'],
    'basic-pv.xml': ['qdisk backend', 'pv_dom0_qemu'],
    'fullvirt-acpi-slic.xml': ['ACPI table', 'allowed_host_paths'],
    'fullvirt-cpuid-legacy-nest.xml': ['/dev/HostVG/XenGuest2',
                                       'allowed_host_paths'],
    'moredevs-hvm.xml': ['PCI passthrough', 'qdisk backend'],
    'multiple-ip.xml': ["type='ethernet'"],
    'multiple-serial.xml': ["<serial type='file'>",
                            "<serial type='tcp'>", 'allowed_chardev_types'],
}


@pytest.mark.skipif(not FILES, reason='no real domain XML at %s' % CORPUS)
@pytest.mark.parametrize('path', FILES, ids=[os.path.basename(f)
                                             for f in FILES])
def test_real_domain_is_restricted_or_refused_with_a_reason(tmp_path, path):
    name = os.path.basename(path)
    with open(path, encoding='utf-8') as handle:
        xml = handle.read()
    source = domain.parse(xml, 1 << 20)
    instance = hooks.Instance(source.uuid, 'acme')
    hook = extension.DmRestrictHook(base.make_conf(tmp_path))
    try:
        out = hook.prepare(xml, instance)
    except exception.FeatureRefused as err:
        assert name not in CLEAN, str(err)
        assert err.subject and err.reason and err.remedy
        for word in REFUSED_FOR.get(name, []):
            assert word in str(err), word
        assert not os.path.exists(hook.settings.lease_db)
        return
    finally:
        hook.close()
    assert name not in REFUSED_FOR
    if not source.kind.has_dom0_device_model:
        assert out == source.to_string()
        return
    record = restrict.read_record(domain.parse(out, 1 << 20))
    assert record is not None and record.uid in range(200000, 200100)
    assert '-xen-domid-restrict' in domain.parse(out, 1 << 20).xen_args()
    base.assert_schema_valid(out)


@pytest.mark.skipif(not FILES, reason='no real domain XML at %s' % CORPUS)
def test_the_clean_document_is_restricted(tmp_path):
    path = os.path.join(CORPUS, 'single-serial.xml')
    with open(path, encoding='utf-8') as handle:
        xml = handle.read()
    hook = extension.DmRestrictHook(base.make_conf(tmp_path))
    try:
        out = hook.prepare(xml, hooks.Instance(
            domain.parse(xml, 1 << 20).uuid, 'acme'))
    finally:
        hook.close()
    assert restrict.read_record(domain.parse(out, 1 << 20)) is not None
