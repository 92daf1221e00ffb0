"""What a tenant's domain may take from dom0 and the hypervisor.

libvirt's libxl driver hands the domain's sizes and CPU settings to libxl
as they are written (``libxlMakeDomBuildInfo``): ``<vcpu>`` and
``<memory>`` become the guest's vCPUs and memory, ``<video><model
vram>`` is added to the domain's memory (``libxlMakeVideo``:
``video_memkb``, which autoballooning takes from dom0), ``<cputune>
<shares>`` becomes the credit scheduler's weight and ``<vcpupin>`` /
``<vcpu cpuset>`` pin vCPUs to physical CPUs
(``libxlDomainSetVcpuAffinities``), and ``<cpu mode='host-passthrough'>``
with ``vmx`` or ``svm`` required or forced turns on nested HVM whatever
libxl.conf says.  Each device costs dom0 work as root before the guest
runs (a backend, a hotplug script under libxl's locks).

Nothing here is a restriction of the device model; it keeps one tenant
from starving dom0 and its neighbours, or from reaching a hypervisor
feature Xen does not security-support (nested HVM is "experimental" in
Xen's SUPPORT.md).  Every limit is an operator option.
"""

import typing

from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import settings as settings_mod
from xen_dm_restrict_plugin import exception

Refusal = exception.FeatureRefused

_UNITS = {'b': 1, 'bytes': 1, 'k': 1024, 'kib': 1024, 'kb': 1000,
          'm': 1024 ** 2, 'mib': 1024 ** 2, 'mb': 1000 ** 2,
          'g': 1024 ** 3, 'gib': 1024 ** 3, 'gb': 1000 ** 3,
          't': 1024 ** 4, 'tib': 1024 ** 4, 'tb': 1000 ** 4}
#: libvirt's default unit for each element it sizes.
_DEFAULT_UNIT = {'memory': 'kib', 'currentMemory': 'kib',
                 'maxMemory': 'kib', 'vram': 'kib'}
_NESTED = ('vmx', 'svm')
_NESTED_POLICIES = ('require', 'force')


def _mib(text: typing.Optional[str], unit: typing.Optional[str],
         default_unit: str) -> typing.Optional[int]:
    """Size in MiB as libvirt reads it, or None when it cannot be read
    (libvirt itself refuses such a domain).
    """
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return None
    factor = _UNITS.get((unit or default_unit).lower())
    if factor is None:
        return None
    return -(-int(text) * factor // 1024 ** 2)


def _refusal(subject: str, reason: str, remedy: str) -> Refusal:
    return Refusal(subject, reason, remedy)


def problems(dom: domain_mod.Domain,
             settings: settings_mod.Settings) -> typing.List[Refusal]:
    """Every size, device count and CPU setting of ``dom`` beyond what
    the operator allows.
    """
    root = dom.root
    found: typing.List[Refusal] = []
    found += _vcpus(root, settings)
    found += _memory(root, settings)
    found += _video(root, settings)
    found += _cputune(root, settings)
    found += _nested(root, settings)
    found += _device_counts(root, settings)
    return found


def _vcpus(root, settings) -> typing.List[Refusal]:
    node = root.find('vcpu')
    if node is None:
        return []
    found = []
    text = (node.text or '').strip()
    count = int(text) if text.isascii() and text.isdigit() else None
    if count is not None and count > settings.max_vcpus:
        found.append(_refusal(
            '<vcpu>%d</vcpu>' % count, 'more than [dm_restrict] max_vcpus '
            '(%d) vCPUs, which the hypervisor schedules against every '
            'other guest' % settings.max_vcpus,
            'use a flavour within the limit, or ask the operator to raise '
            'max_vcpus'))
    return found


def _memory(root, settings) -> typing.List[Refusal]:
    found = []
    for tag in ('memory', 'currentMemory', 'maxMemory'):
        node = root.find(tag)
        if node is None:
            continue
        size = _mib(node.text, node.get('unit'), _DEFAULT_UNIT[tag])
        if size is not None and size > settings.max_memory_mib:
            found.append(_refusal(
                '<%s>' % tag, '%d MiB is more than [dm_restrict] '
                'max_memory_mib (%d MiB): libxl takes it from the host, '
                'ballooning dom0 down when it has to'
                % (size, settings.max_memory_mib),
                'use a flavour within the limit, or ask the operator to '
                'raise max_memory_mib'))
    return found


def _video(root, settings) -> typing.List[Refusal]:
    found = []
    for model in root.iterfind('devices/video/model'):
        size = _mib(model.get('vram'), None, 'kib')
        if size is not None and size > settings.max_video_ram_mib:
            found.append(_refusal(
                "<video><model vram='%s'>" % model.get('vram'),
                '%d MiB of video RAM is more than [dm_restrict] '
                'max_video_ram_mib (%d MiB); libxl adds it to the '
                'domain\'s memory (video_memkb), taken from the host'
                % (size, settings.max_video_ram_mib),
                'use the default video RAM (cirrus 8 MiB, vga 16 MiB), or '
                'ask the operator to raise max_video_ram_mib'))
    return found


def _cputune(root, settings) -> typing.List[Refusal]:
    if settings.allow_cputune:
        return []
    found = []
    if root.find('cputune') is not None:
        found.append(_refusal(
            '<cputune>', 'libvirt hands its scheduler weight (shares) and '
            'vCPU pinning to Xen as written: a tenant could outweigh dom0 '
            'or pin every vCPU to the CPUs dom0 runs on',
            'remove <cputune>, or ask the operator to set allow_cputune'))
    vcpu = root.find('vcpu')
    if vcpu is not None and vcpu.get('cpuset') is not None:
        found.append(_refusal(
            "<vcpu cpuset='%s'>" % vcpu.get('cpuset'), 'libvirt pins the '
            'guest\'s vCPUs to those physical CPUs',
            'remove cpuset=, or ask the operator to set allow_cputune'))
    return found


def _nested(root, settings) -> typing.List[Refusal]:
    cpu = root.find('cpu')
    if settings.allow_nested_hvm or cpu is None or \
            cpu.get('mode') != 'host-passthrough':
        return []
    found = []
    for feature in cpu.iterfind('feature'):
        if feature.get('name') in _NESTED and \
                (feature.get('policy') or 'require') in _NESTED_POLICIES:
            found.append(_refusal(
                "<cpu mode='host-passthrough'><feature name='%s' policy="
                "'%s'>" % (feature.get('name'),
                           feature.get('policy') or 'require'),
                'libvirt turns on nested HVM for it whatever libxl.conf '
                'says (libxlMakeDomBuildInfo), and Xen lists nested HVM as '
                'experimental, not security-supported',
                'remove the feature, or ask the operator to set '
                'allow_nested_hvm'))
    return found


def _device_counts(root, settings) -> typing.List[Refusal]:
    counts: typing.Dict[str, int] = {}
    devices = root.find('devices')
    if devices is None:
        return []
    for node in devices:
        if isinstance(node.tag, str) and node.tag != 'emulator':
            counts[node.tag] = counts.get(node.tag, 0) + 1
    found = []
    for tag, count in sorted(counts.items()):
        limit = settings.max_devices.get(tag, settings.max_devices_other)
        if count > limit:
            found.append(_refusal(
                '%d <%s> devices' % (count, tag), 'more than [dm_restrict] '
                'max_devices allows (%d): each is set up in dom0 as root '
                '(a backend, a hotplug script under libxl\'s locks) before '
                'the guest runs' % limit,
                'use fewer, or ask the operator to raise max_devices'))
    return found
