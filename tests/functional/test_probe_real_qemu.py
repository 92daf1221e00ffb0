"""Probing the real QEMU installed here (Debian's 7.2 TCG build).

It is not a Xen build, so it must report no ``-xen-domid-restrict`` and
every boot probing it must be refused; the other answers are those of
QEMU 7.2: ``-runas``, ``-chroot`` and seccomp, but no ``-run-with``.
"""


import pytest

from tests.functional import hostenv
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import capabilities


@pytest.fixture
def qemu():
    hostenv.require_tool(hostenv.QEMU)
    return hostenv.QEMU


def test_real_qemu_72_answers(qemu):
    caps = capabilities.probe(qemu)
    assert caps.supported == {
        'version': True, 'xen-domid-restrict': False, 'runas': True,
        'chroot': True, 'run-with-user': False, 'run-with-chroot': False,
        'sandbox': True, 'nonsense': False}


def test_real_qemu_cannot_restrict_a_xen_domain(qemu):
    caps = capabilities.probe(qemu)
    with pytest.raises(exception.CapabilityMissing) as err:
        capabilities.syntax_from_capabilities(caps, 'when-supported')
    assert qemu in str(err.value)
    assert 'does not support -xen-domid-restrict' in str(err.value)


def test_second_probe_is_served_from_the_cache(qemu):
    first = capabilities.probe(qemu)
    assert capabilities.probe(qemu) is first
    # A new process (this one's cache cleared) reads what root kept.
    capabilities.clear_cache()
    again = capabilities.probe(qemu)
    assert again is not first and again.supported == first.supported
