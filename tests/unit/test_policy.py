"""Every feature refused up front names the device, reason and remedy."""

import pytest

from tests import base
from xen_dm_restrict_plugin import domain
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin import policy

HOSTDEV = ("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
           "<address domain='0x0000' bus='0x0a' slot='0x08' "
           "function='0x0'/></source></hostdev>")
HOSTDEV_NIC = ("<interface type='hostdev' managed='yes'>"
               "<mac address='00:16:3e:2e:e7:fc'/><source>"
               "<address type='pci' domain='0x0000' bus='0x0a' slot='0x10' "
               "function='0x0'/></source></interface>")
EMPTY_CDROM = ("<disk type='file' device='cdrom'><target dev='hdd' "
               "bus='ide'/><readonly/></disk>")
QDISK = ("<disk type='file' device='disk'><driver name='qemu' "
         "type='raw'/><source file='/var/lib/xen/images/d.img'/>"
         "<target dev='hdb'/></disk>")


def _check(xml, args=()):
    policy.check_domain(domain.parse(xml, 1 << 20), list(args))


@pytest.mark.parametrize('device,words', [
    (HOSTDEV, ['PCI passthrough', "type='pci'", 'remove the <hostdev>']),
    (HOSTDEV_NIC, ['PCI passthrough network interface', 'type="bridge"']),
    (EMPTY_CDROM, ['empty CD-ROM drive', 'hdd', 'media cannot be inserted',
                   '<source file=...>']),
    (QDISK, ['qdisk backend', 'hdb', 'phy']),
])
def test_refused_devices(device, words):
    with pytest.raises(exception.FeatureRefused) as err:
        _check(base.add_device(base.fixture('hvm.xml'), device))
    for word in words:
        assert word in str(err.value)
    assert 'Remedy:' in str(err.value)


def test_traditional_device_model_is_refused():
    xml = base.add_device(base.fixture('hvm.xml'),
                          '<emulator>/usr/lib/xen/bin/qemu-dm</emulator>')
    with pytest.raises(exception.FeatureRefused) as err:
        _check(xml)
    assert 'qemu-xen-traditional' in str(err.value)
    assert 'qemu-dm' in str(err.value)


def test_non_xen_domain_is_refused():
    xml = base.fixture('hvm.xml').replace("type='xen'", "type='kvm'", 1)
    with pytest.raises(exception.FeatureRefused) as err:
        _check(xml)
    assert "type='kvm'" in str(err.value)


@pytest.mark.parametrize('args', [
    ['-runas', '0:0'], ['--runas', '1000'], ['-runas=1000'],
    ['-run-with', 'user=0:0'], ['-chroot', '/'],
    ['-readconfig', '/tmp/x.cfg'], ['-set', 'sandbox.x.enable=off'],
    ['-xen-domid', '0'], ['-xen-attach'], ['-pidfile', '/etc/shadow'],
    ['-D', '/etc/passwd'], ['-daemonize'],
    ['-sandbox', 'off'], ['-sandbox', 'on'], ['--xen-domid-restrict=1'],
])
def test_conflicting_commandline_arguments_are_refused(args):
    with pytest.raises(exception.FeatureRefused) as err:
        _check(base.fixture('hvm.xml'), args)
    assert args[0] in str(err.value)
    assert ('dm_restrict controls' in str(err.value)
            or 'the restriction included' in str(err.value)
            or 'before it drops its privileges' in str(err.value))


def test_harmless_arguments_and_a_cdrom_with_media_pass():
    _check(base.fixture('hvm.xml'), ['-d', 'guest_errors', '-monitor',
                                     'none'])


@pytest.mark.parametrize('name', ['pv.xml', 'pvh.xml'])
def test_guests_without_device_model_are_not_checked(name):
    # pv.xml uses a qdisk backend, which is fine without a device model.
    _check(base.add_device(base.fixture(name), HOSTDEV), ['-runas', '0'])


def test_option_name():
    assert policy.option_name('-runas') == 'runas'
    assert policy.option_name('--run-with=user=1') == 'run-with'
    assert policy.option_name('200000:200000') is None
    assert policy.option_name('-') is None


def test_every_refused_feature_is_named_at_once():
    xml = base.add_device(base.add_device(base.fixture('hvm.xml'), HOSTDEV),
                          QDISK)
    with pytest.raises(exception.FeatureRefused) as err:
        _check(xml, ['-chroot', '/'])
    message = str(err.value)
    assert message.startswith('3 refused features: (1) PCI passthrough')
    for words in ('PCI passthrough', 'qdisk backend', "'-chroot'",
                  'phy backend', 'remove the <hostdev>'):
        assert words in message
