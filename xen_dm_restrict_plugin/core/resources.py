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

#: libvirt's scaled units (virScaleInteger): powers of 1024 for the
#: letter and its ...iB spelling, of 1000 for ...B.
_UNITS = {'b': 1, 'bytes': 1}
for _power, _letter in enumerate('kmgtpe', start=1):
    _UNITS[_letter] = _UNITS[_letter + 'ib'] = 1024 ** _power
    _UNITS[_letter + 'b'] = 1000 ** _power
#: libvirt reads sizes and counts as unsigned long long: never more
#: digits than that.
_MAX_DIGITS = 20
#: libvirt's default unit for each element it sizes.
_DEFAULT_UNIT = {'memory': 'kib', 'currentMemory': 'kib',
                 'maxMemory': 'kib', 'vram': 'kib'}
_NESTED = ('vmx', 'svm')
_NESTED_POLICIES = ('require', 'force')


class Unreadable(ValueError):
    """A number libvirt's parser would not read as this one."""


def _number(text: typing.Optional[str]) -> typing.Optional[int]:
    """An unsigned number as libvirt reads it (virStrToLong_ull: leading
    white space and a ``+`` sign allowed), or None when absent.

    :raises Unreadable: anything else.
    """
    if text is None:
        return None
    text = text.strip(' \t\n\r\f\v')
    if text.startswith('+'):
        text = text[1:]
    if not (text.isascii() and text.isdigit()
            and len(text) <= _MAX_DIGITS):
        raise Unreadable(text[:40])
    return int(text)


def _mib(text: typing.Optional[str], unit: typing.Optional[str],
         default_unit: str) -> typing.Optional[int]:
    """Size in MiB as libvirt reads it, or None when absent.

    :raises Unreadable: not a size libvirt reads.
    """
    value = _number(text)
    if value is None:
        return None
    factor = _UNITS.get((unit or default_unit).strip().lower())
    if factor is None:
        raise Unreadable('unit %r' % unit)
    return -(-value * factor // 1024 ** 2)


def _unreadable(subject: str, err: Unreadable) -> Refusal:
    return _refusal(subject, 'the value %s is not a number in a form this '
                    'check reads the way libvirt does' % err,
                    'write it in plain decimal digits with a unit libvirt '
                    'knows')


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
    found += _xenbus(root, settings)
    return found


def _vcpus(root, settings) -> typing.List[Refusal]:
    node = domain_mod.find(root, 'vcpu')
    if node is None:
        return []
    found = []
    try:
        count = _number(node.text)
    except Unreadable as err:
        return [_unreadable('<vcpu>', err)]
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
    sizes = []
    for tag in ('memory', 'currentMemory', 'maxMemory'):
        node = domain_mod.find(root, tag)
        if node is not None:
            sizes.append(('<%s>' % tag, node.text, node.get('unit'),
                          _DEFAULT_UNIT[tag]))
    # Without <memory>, libvirt sums the guest NUMA cells
    # (virDomainDefPostParseMemory); each counts on its own anyway.
    cells = domain_mod.findall(root, 'cpu/numa/cell')
    for index, cell in enumerate(cells):
        sizes.append(("<cpu><numa><cell memory> (cell %d)" % index,
                      cell.get('memory'), cell.get('unit'), 'kib'))
    total = 0
    for subject, text, unit, default_unit in sizes:
        try:
            size = _mib(text, unit, default_unit)
        except Unreadable as err:
            found.append(_unreadable(subject, err))
            continue
        if subject.startswith('<cpu>') and size is not None:
            total += size
            continue
        if size is not None and size > settings.max_memory_mib:
            found.append(_memory_refusal(subject, size, settings))
    if total > settings.max_memory_mib:
        found.append(_memory_refusal('<cpu><numa> cells', total, settings))
    return found


def _memory_refusal(subject, size, settings) -> Refusal:
    return _refusal(
        subject, '%d MiB is more than [dm_restrict] max_memory_mib (%d '
        'MiB): libxl takes it from the host, ballooning dom0 down when it '
        'has to' % (size, settings.max_memory_mib),
        'use a flavour within the limit, or ask the operator to raise '
        'max_memory_mib')


def _video(root, settings) -> typing.List[Refusal]:
    found = []
    for model in domain_mod.findall(root, 'devices/video/model'):
        try:
            size = _mib(model.get('vram'), None, 'kib')
        except Unreadable as err:
            found.append(_unreadable("<video><model vram>", err))
            continue
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
    if domain_mod.find(root, 'cputune') is not None:
        found.append(_refusal(
            '<cputune>', 'libvirt hands its scheduler weight (shares) and '
            'vCPU pinning to Xen as written: a tenant could outweigh dom0 '
            'or pin every vCPU to the CPUs dom0 runs on',
            'remove <cputune>, or ask the operator to set allow_cputune'))
    vcpu = domain_mod.find(root, 'vcpu')
    if vcpu is not None and vcpu.get('cpuset') is not None:
        found.append(_refusal(
            "<vcpu cpuset='%s'>" % vcpu.get('cpuset'), 'libvirt pins the '
            'guest\'s vCPUs to those physical CPUs',
            'remove cpuset=, or ask the operator to set allow_cputune'))
    return found


def _nested(root, settings) -> typing.List[Refusal]:
    cpu = domain_mod.find(root, 'cpu')
    if settings.allow_nested_hvm or cpu is None or \
            cpu.get('mode') != 'host-passthrough':
        return []
    found = []
    for feature in domain_mod.findall(cpu, 'feature'):
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
    devices = domain_mod.find(root, 'devices')
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


#: Xen's defaults: libxl's event channel limit and the hypervisor's
#: grant-table frames (xl.cfg(5): max_event_channels, max_grant_frames).
XENBUS_LIMITS = (('maxEventChannels', 'max_event_channels'),
                 ('maxGrantFrames', 'max_grant_frames'))


def _xenbus(root, settings) -> typing.List[Refusal]:
    """``<controller type='xenbus'>`` limits, which libvirt copies to
    ``b_info->event_channels`` and ``max_grant_frames``: each event
    channel and grant frame is hypervisor memory.
    """
    found = []
    for node in domain_mod.findall(root, 'devices/controller'):
        if node.get('type') != 'xenbus':
            continue
        for attr, option in XENBUS_LIMITS:
            subject = "<controller type='xenbus' %s>" % attr
            try:
                value = _number(node.get(attr))
            except Unreadable as err:
                found.append(_unreadable(subject, err))
                continue
            limit = getattr(settings, option)
            if value is not None and value > limit:
                found.append(_refusal(
                    subject, '%d is more than [dm_restrict] %s (%d): each '
                    'is hypervisor memory spent for the guest'
                    % (value, option, limit),
                    'leave it out (Xen\'s default), or ask the operator to '
                    'raise %s' % option))
    return found
