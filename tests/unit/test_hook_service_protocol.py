"""The hook service's request format, as the compiled client writes it."""

import struct

import pytest

from xen_dm_restrict_plugin.daemon_hook import service


def _request(mask, args, environ, count=None):
    body = b''.join(item + b'\0' for item in list(args) + list(environ))
    return service.MAGIC + struct.pack(
        '<II', mask, len(args) if count is None else count) + body


def test_a_request_gives_umask_arguments_and_environment():
    data = _request(0o22, [b'vm', b'prepare', b'begin', b'-'],
                    [b'PATH=/usr/bin', b'XEN_DM_RESTRICT_CONFIG=/c=d',
                     b'NOEQUALS', b'=nameless'])
    mask, args, environ = service.parse(data)
    assert mask == 0o22
    assert args == ['vm', 'prepare', 'begin', '-']
    # Only NAME=VALUE entries; the value may hold "=".
    assert environ == {b'PATH': b'/usr/bin',
                       b'XEN_DM_RESTRICT_CONFIG': b'/c=d'}


def test_an_argument_that_is_not_utf8_survives():
    mask, args, _ = service.parse(_request(0, [b'vm\xff', b'a', b'b'], []))
    assert args[0].encode('utf-8', 'surrogateescape') == b'vm\xff'


@pytest.mark.parametrize('data', [
    b'',
    b'XDH0' + struct.pack('<II', 0, 3) + b'a\0b\0c\0',
    service.MAGIC + struct.pack('<II', 0, 3) + b'a\0b\0c',
    _request(0, [b'a', b'b'], []),
    _request(0o1777, [b'a', b'b', b'c'], []),
    _request(0, [b'a', b'b', b'c'], [], count=9),
])
def test_anything_else_is_a_bad_request(data):
    with pytest.raises(service.BadRequest):
        service.parse(data)
