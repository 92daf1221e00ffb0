"""Tenant sizes, device counts and CPU settings within the operator's
limits (issue 20: denial of service against dom0, nested HVM, pygrub).
"""

from lxml import etree
import pytest

from tests import base
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import policy
from xen_dm_restrict_plugin.core import resources
from xen_dm_restrict_plugin import exception


def _dom(xml):
    return domain.parse(xml.replace(base.IMAGES_TOKEN, base.images_dir()),
                        1 << 22)


def _problems(settings, func):
    xml = base.edit(base.fixture('hvm.xml'), func)
    return [str(p) for p in resources.problems(_dom(xml), settings)]


def _set(tag, text, **attrs):
    def change(root):
        node = root.find(tag)
        if node is None:
            node = etree.SubElement(root, tag)
        node.text = text
        for key, value in attrs.items():
            node.set(key, value)
    return change


def test_the_fixture_is_within_every_default_limit(tmp_path):
    settings = base.make_settings(tmp_path)
    assert _problems(settings, lambda root: None) == []


@pytest.mark.parametrize('change,words', [
    (_set('vcpu', '128'), ['<vcpu>128</vcpu>', 'max_vcpus (32)']),
    (_set('memory', '200', unit='GiB'),
     ['<memory>', '204800 MiB', 'max_memory_mib (131072 MiB)']),
    (_set('maxMemory', '1', unit='TiB', slots='16'),
     ['<maxMemory>', '1048576 MiB']),
])
def test_sizes_beyond_the_limits_are_refused(tmp_path, change, words):
    found = _problems(base.make_settings(tmp_path), change)
    assert len(found) == 1
    for word in words:
        assert word in found[0]
    assert 'Remedy:' in found[0]


def test_memory_is_read_in_libvirts_units(tmp_path):
    settings = base.make_settings(tmp_path, max_memory_mib=1024)
    assert _problems(settings, _set('memory', '1048576')) == []  # KiB
    assert _problems(settings, _set('memory', '1', unit='G')) == []
    assert _problems(settings, _set('memory', '1', unit='GB')) == []
    assert len(_problems(settings, _set('memory', '1025', unit='M'))) == 1


def test_video_ram_is_counted_into_the_domain(tmp_path):
    def vram(root):
        root.find('devices/video/model').set('vram', str(32 << 20))
    found = _problems(base.make_settings(tmp_path), vram)
    assert len(found) == 1 and 'video_memkb' in found[0]
    assert '32768 MiB of video RAM' in found[0]


def test_cputune_and_pinning_need_the_operator(tmp_path):
    def tune(root):
        etree.SubElement(etree.SubElement(root, 'cputune'),
                         'shares').text = '65535'
        root.find('vcpu').set('cpuset', '0')
    found = _problems(base.make_settings(tmp_path), tune)
    assert [f.split(':')[0] for f in found] == [
        '<cputune>', "<vcpu cpuset='0'>"]
    assert _problems(base.make_settings(tmp_path, allow_cputune=True),
                     tune) == []


@pytest.mark.parametrize('feature,policy_attr,refused', [
    ('vmx', 'require', True), ('svm', 'force', True), ('vmx', None, True),
    ('vmx', 'disable', False), ('vmx', 'optional', False),
    ('pdpe1gb', 'require', False)])
def test_nested_hvm(tmp_path, feature, policy_attr, refused):
    def cpu(root):
        node = etree.SubElement(root, 'cpu', mode='host-passthrough')
        attrs = {'name': feature}
        if policy_attr:
            attrs['policy'] = policy_attr
        etree.SubElement(node, 'feature', **attrs)
    found = _problems(base.make_settings(tmp_path), cpu)
    assert bool(found) == refused
    if refused:
        assert 'nested HVM' in found[0] and 'allow_nested_hvm' in found[0]
    assert _problems(base.make_settings(tmp_path, allow_nested_hvm=True),
                     cpu) == []


def test_a_thousand_vifs_are_refused(tmp_path):
    def vifs(root):
        for index in range(1000):
            etree.SubElement(root.find('devices'), 'interface',
                             type='bridge')
    found = _problems(base.make_settings(tmp_path), vifs)
    assert len(found) == 1 and found[0].startswith('100')
    assert 'max_devices allows (8)' in found[0]


def test_device_limits_are_the_operators(tmp_path):
    def disks(root):
        for index in range(3):
            etree.SubElement(root.find('devices'), 'disk')
    settings = base.make_settings(tmp_path, max_devices={'disk': '2'})
    assert 'max_devices allows (2)' in _problems(settings, disks)[0]
    with pytest.raises(exception.ConfigError):
        base.make_settings(tmp_path, max_devices={'disk': 'many'})


def test_the_whole_policy_refuses_them(tmp_path):
    xml = base.edit(base.fixture('hvm.xml'), _set('vcpu', '999'))
    with pytest.raises(exception.FeatureRefused) as err:
        policy.check_domain(_dom(xml), [], base.make_settings(tmp_path))
    assert 'max_vcpus' in str(err.value)


PV = """<domain type='xen'>
  <name>pv</name>
  <uuid>4b1c4b9e-2a7d-4c3e-9b51-0d8e7f6a5c21</uuid>
  <memory unit='KiB'>524288</memory>
  <os><type arch='x86_64' machine='xenpv'>linux</type></os>
</domain>
"""


def test_a_pv_guest_without_kernel_gets_pygrub_only_if_allowed(tmp_path):
    with pytest.raises(exception.FeatureRefused) as err:
        policy.check_domain(_dom(PV), [], base.make_settings(
            tmp_path, allowed_bootloaders=[]))
    assert 'LIBXL_BOOTLOADER_PATH' in str(err.value)
    policy.check_domain(_dom(PV), [], base.make_settings(
        tmp_path, allowed_bootloaders=['pygrub']))


def _refused_subjects(settings, func):
    xml = base.edit(base.fixture('hvm.xml'), func)
    return [p.subject for p in resources.problems(_dom(xml), settings)]


def test_xenbus_limits_are_the_operators(tmp_path):
    """libvirt copies them to libxl's event_channels and max_grant_frames
    (an attacker review: 131071 event channels passed).
    """
    def xenbus(root):
        etree.SubElement(root.find('devices'), 'controller', type='xenbus',
                         index='0', maxEventChannels='131071',
                         maxGrantFrames='4096')
    assert _refused_subjects(base.make_settings(tmp_path), xenbus) == [
        "<controller type='xenbus' maxEventChannels>",
        "<controller type='xenbus' maxGrantFrames>"]


@pytest.mark.parametrize('change', [
    _set('memory', '1', unit='PiB'),
    _set('memory', '1', unit='E'),
    _set('memory', '+1099511627776', unit='KiB'),
    _set('memory', ' 1099511627776\n', unit='KiB'),
])
def test_memory_is_read_in_every_spelling_libvirt_reads(tmp_path, change):
    assert _refused_subjects(base.make_settings(tmp_path), change) == [
        '<memory>']


def test_numa_cells_count_when_there_is_no_memory_element(tmp_path):
    def cells(root):
        for tag in ('memory', 'currentMemory'):
            root.remove(root.find(tag))
        numa = etree.SubElement(etree.SubElement(root, 'cpu'), 'numa')
        for index in range(2):
            etree.SubElement(numa, 'cell', id=str(index), cpus=str(index),
                             memory='100', unit='GiB')
    assert _refused_subjects(base.make_settings(tmp_path), cells) == [
        '<cpu><numa> cells']


def test_a_signed_vcpu_count_is_read_as_libvirt_reads_it(tmp_path):
    assert _refused_subjects(base.make_settings(tmp_path),
                             _set('vcpu', '+128')) == ['<vcpu>128</vcpu>']


def test_numbers_libvirt_would_not_read_are_refused_not_a_crash(tmp_path):
    found = _refused_subjects(base.make_settings(tmp_path),
                              _set('memory', '9' * 5000))
    assert found == ['<memory>']
    with pytest.raises(exception.FeatureRefused):
        policy.check_domain(_dom(base.edit(base.fixture('hvm.xml'), _set(
            'memory', '9' * 5000))), [], base.make_settings(tmp_path))
