"""The launcher service's answers to the compiled front (the records
front.c reads), without a socket: the decision itself is launch.plan's,
tested with the launcher.
"""

import struct

from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import launch
from xen_dm_restrict_plugin.launcher import network
from xen_dm_restrict_plugin.launcher import service


def _records(data):
    found, off = [], 0
    while off < len(data):
        tag, size = struct.unpack_from('<BI', data, off)
        off += 5
        found.append((tag, data[off:off + size]))
        off += size
    return found


def test_a_query_is_only_the_exec():
    steps = launch.Plan('/usr/bin/qemu', ['-version'], query=True)
    assert _records(service.encode(steps)) == [
        (service.T_ARG, b'/usr/bin/qemu\0'), (service.T_ARG, b'-version\0')]


def test_taps_go_just_above_the_kept_descriptors():
    args = ['-netdev', 'type=tap,id=net0,ifname=vif1.0-emu,script=no,'
            'downscript=no']
    steps = launch.Plan('/q', ['-netdev', 'type=tap,id=net0,fd=37'])
    steps.taps = [network.Tap('net0', 'vif1.0-emu', 37)]
    steps.keep_fds = frozenset([5])
    steps.message = 'tap vif1.0-emu as fd 37'
    assert service.renumber(steps, args) == [37]
    assert steps.argv[1] == 'type=tap,id=net0,fd=6'
    assert steps.message == 'tap vif1.0-emu as fd 6'
    records = _records(service.encode(steps))
    assert (service.T_TAP, struct.pack('<I', 6)) in records
    assert (service.T_KEEP, struct.pack('<I', 5)) in records
    assert (service.T_CLOSE_FDS, b'') in records


def test_a_filter_the_plan_needs_is_never_left_out():
    steps = launch.Plan('/q', [])
    steps.seccomp = True
    try:
        service.encode(steps)
    except ValueError:
        pass
    else:
        raise AssertionError('encoded a plan without its filter')


class _Refusing:
    def __call__(self):
        raise exception.Refused('subject', 'reason', 'remedy')


def test_refusals_and_errors_become_exit_statuses():
    svc = service.Service(_Refusing())
    data, fds = svc.answer(b'XDR1-version\0')
    assert fds == []
    records = dict(_records(data))
    assert records[service.T_EXIT] == struct.pack('<I', 2)
    assert records[service.T_MESSAGE].startswith(b'refused: subject')
    data, _ = svc.answer(b'GET / HTTP/1.0')
    assert dict(_records(data))[service.T_EXIT] == struct.pack('<I', 1)
