"""The hook service's request format, as the compiled client writes it."""

import struct

import pytest

from xen_dm_restrict_plugin.daemon_hook import operations
from xen_dm_restrict_plugin.daemon_hook import service

BUILD = service.build_id(operations.ACTED_ON)


def _request(mask, args, environ, count=None, limits=((1024, 4096),),
             nice=-5, build=BUILD):
    body = b''.join(item + b'\0' for item in list(args) + list(environ))
    head = struct.pack('<IiI', mask, nice, len(limits)) + b''.join(
        struct.pack('<QQ', *pair) for pair in limits)
    return (service.MAGIC + build + head + struct.pack(
        '<I', len(args) if count is None else count) + body)


def test_a_request_gives_its_build_attributes_arguments_and_environment():
    data = _request(0o22, [b'vm', b'prepare', b'begin', b'-'],
                    [b'PATH=/usr/bin', b'XEN_DM_RESTRICT_CONFIG=/c=d',
                     b'NOEQUALS', b'=nameless',
                     b'XEN_DM_RESTRICT_CONFIG=/second'])
    call = service.parse(data)
    assert call.build == BUILD
    assert (call.umask, call.nice, call.limits) == (0o22, -5, [(1024, 4096)])
    assert call.args == ['vm', 'prepare', 'begin', '-']
    # Only NAME=VALUE entries; the value may hold "="; the first of a name
    # counts, as for the C library's getenv and Python's os.environ.
    assert call.environ == {b'PATH': b'/usr/bin',
                            b'XEN_DM_RESTRICT_CONFIG': b'/c=d'}


def test_an_argument_that_is_not_utf8_survives():
    call = service.parse(_request(0, [b'vm\xff', b'a', b'b'], []))
    assert call.args[0].encode('utf-8', 'surrogateescape') == b'vm\xff'


def test_the_build_id_follows_the_operations_handed_on():
    assert service.build_id(operations.ACTED_ON) == BUILD
    assert len(BUILD) == service.BUILD_ID_BYTES
    assert service.build_id(operations.ACTED_ON + (('start', 'begin'),)) \
        != BUILD


def test_the_build_id_follows_when_an_operation_is_handed_on(monkeypatch):
    # A client installed with another started-begin rule (or none) is
    # refused by the service and reported by preflight: install-hook
    # again.
    assert operations.only_with(operations.ACTED_ON) == [
        (operations.OP_STARTED, '<graphics')]
    monkeypatch.setattr(operations, 'ACTED_ON_ONLY_WITH', {})
    assert service.build_id(operations.ACTED_ON) != BUILD
    monkeypatch.setattr(operations, 'ACTED_ON_ONLY_WITH',
                        {operations.OP_STARTED: '<video'})
    assert service.build_id(operations.ACTED_ON) != BUILD


@pytest.mark.parametrize('data', [
    b'',
    b'XDH1' + _request(0, [b'a', b'b', b'c'], [])[4:],
    _request(0, [b'a', b'b', b'c'], [])[:-1],
    _request(0, [b'a', b'b'], []),
    _request(0o1777, [b'a', b'b', b'c'], []),
    _request(0, [b'a', b'b', b'c'], [], count=9),
    _request(0, [b'a', b'b', b'c'], [], limits=[(1, 1)] * 65),
    _request(0, [b'a', b'b', b'c'], [])[:len(service.MAGIC) + 40],
])
def test_anything_else_is_a_bad_request(data):
    with pytest.raises(service.BadRequest):
        service.parse(data)
