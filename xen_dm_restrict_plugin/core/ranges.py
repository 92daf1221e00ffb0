"""Tenant uid ranges: parsing and the rules a range must obey.

A device model runs as a uid taken from its tenant's range.  A bad range
is a security bug, not a typo: a range holding uid 0 would run QEMU as
root, two overlapping ranges would let two tenants share a uid (and so
signal and ptrace each other's device models), and 65534/65535/4294967295
are "nobody" and the kernel's invalid-uid markers.  So every range is
checked here, once, when the configuration is loaded.
"""

import dataclasses
import re
import typing

from xen_dm_restrict_plugin import exception

#: uids no device model may ever run as.
FORBIDDEN_UIDS = frozenset((0, 65534, 65535, 4294967295))
#: the largest uid the kernel accepts (uid_t is 32 bits, -1 is invalid).
MAX_UID = 4294967294

_RANGE_RE = re.compile(r'^\s*(\d+)\s*-\s*(\d+)\s*$')


@dataclasses.dataclass(frozen=True)
class UidRange:
    """An inclusive range of uids owned by one tenant (or the shared pool).

    :param owner: the tenant id, or ``None`` for the shared pool.
    :param first: the first uid of the range.
    :param last: the last uid of the range (inclusive).
    """

    owner: typing.Optional[str]
    first: int
    last: int

    def __contains__(self, uid: int) -> bool:
        return self.first <= uid <= self.last

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return '%d-%d' % (self.first, self.last)

    def overlaps(self, other: 'UidRange') -> bool:
        return self.first <= other.last and other.first <= self.last


def parse(text: str, owner: typing.Optional[str], option: str) -> UidRange:
    """Parse ``FIRST-LAST`` into a checked :class:`UidRange`.

    :param text: the range as written in the configuration.
    :param owner: the tenant owning it, ``None`` for the shared pool.
    :param option: the option name, for the error message.
    :raises ConfigError: the range is malformed, reversed, or holds a
        forbidden uid.
    """
    who = 'tenant %r' % owner if owner is not None else 'the shared pool'
    match = _RANGE_RE.match(text or '')
    if not match:
        raise exception.ConfigError(
            option, 'range %r of %s is not FIRST-LAST' % (text, who),
            'write it as two uids joined by "-", e.g. 200000-200999')
    first, last = int(match.group(1)), int(match.group(2))
    if first > last:
        raise exception.ConfigError(
            option, 'range %s of %s is reversed or empty' % (text, who),
            'put the lower uid first')
    if last > MAX_UID:
        raise exception.ConfigError(
            option, 'range %s of %s passes the largest uid %d'
            % (text, who, MAX_UID), 'keep every uid below 4294967295')
    bad = sorted(u for u in FORBIDDEN_UIDS if first <= u <= last)
    if bad:
        raise exception.ConfigError(
            option, 'range %s of %s contains uid %d, which a device model '
            'must never run as' % (text, who, bad[0]),
            'choose a range that avoids 0, 65534, 65535 and 4294967295, '
            'e.g. above 100000')
    return UidRange(owner, first, last)


def check_disjoint(ranges: typing.Iterable[UidRange], option: str) -> None:
    """Refuse any two ranges that share a uid.

    :raises ConfigError: naming both owners and ranges.
    """
    ordered = sorted(ranges, key=lambda r: r.first)
    for left, right in zip(ordered, ordered[1:]):
        if left.overlaps(right):
            raise exception.ConfigError(
                option, 'ranges %s (%s) and %s (%s) overlap, so two tenants '
                'could share a device-model uid'
                % (left, left.owner or 'shared pool',
                   right, right.owner or 'shared pool'),
                'give every tenant and the shared pool disjoint ranges')
