"""Host paths scoped per tenant and instance.

``[dm_restrict] allowed_host_paths`` is one list for every tenant of the
host; with Nova's ``/var/lib/nova/instances`` one tenant's domain could
name another tenant's image, kernel or ACPI table, and root would open it
for the wrong guest.  An entry may therefore hold ``{tenant}`` (the
tenant id) and ``{instance}`` (the instance uuid), e.g.
``/var/lib/nova/instances/{instance}``: for one domain it stands for that
domain's own directory only.  An entry without placeholders is shared by
all tenants and may only be read (backing files in ``_base``, firmware,
ISO libraries), unless it is also listed in
``[dm_restrict] writable_shared_host_paths`` (volume groups and
``/dev/disk/by-path`` for LVM and iSCSI disks, whose names the
orchestrator gives each instance).

Reading means a read-only disk or CD-ROM, a backing file, a kernel,
initrd, loader or ACPI table; writing means a writable disk or a
character device's file, device or socket.

A shared entry must not contain a scoped one: with
``/var/lib/libvirt/images/{instance}`` and ``/var/lib/libvirt/images``
both listed, the shared entry would hand every instance the directories
of all the others.  :func:`overlap` finds such a pair (the configuration
is refused when it is loaded), and :func:`foreign_problem` refuses, for
settings built any other way, a path under such a shared entry that lies
in the directory of another instance or tenant.  A shared entry *inside*
a scoped one's pattern (Nova's ``instances/_base`` next to
``instances/{instance}``) is fine: no instance uuid is ``_base``.
"""

import dataclasses
import os
import re
import typing

from xen_dm_restrict_plugin.core import hostpaths

#: What a tenant id or instance uuid must be to stand in a path.
_COMPONENT_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$')


@dataclasses.dataclass(frozen=True)
class Scope:
    """Whose paths a domain may name: one instance of one tenant."""

    tenant: str
    instance: str

    def usable(self) -> bool:
        return all(_COMPONENT_RE.match(value or '')
                   for value in (self.tenant, self.instance))


def is_scoped(entry: str) -> bool:
    """Whether ``entry`` holds ``{tenant}`` or ``{instance}``."""
    return bool(hostpaths.PLACEHOLDER_RE.search(entry))


def expand(entry: str, scope: Scope) -> str:
    return entry.replace('{tenant}', scope.tenant).replace(
        '{instance}', scope.instance)


@dataclasses.dataclass(frozen=True)
class Prefixes:
    """The prefixes one domain may read and write under."""

    read: typing.Tuple[str, ...]
    write: typing.Tuple[str, ...]

    def for_use(self, writable: bool) -> typing.Tuple[str, ...]:
        return self.write if writable else self.read


def prefixes(allowed: typing.Sequence[str],
             writable_shared: typing.Sequence[str],
             scope: typing.Optional[Scope]) -> Prefixes:
    """The prefixes a domain in ``scope`` may read and write under.

    Without a scope (the launcher, which checks QEMU's arguments after the
    daemon hook did), a placeholder stands for any one path component.
    A scope whose tenant or instance cannot stand in a path (empty, a
    slash, a leading dot) gets no scoped prefix at all.
    """
    own = []
    shared = []
    for entry in allowed:
        if is_scoped(entry):
            if scope is None:
                own.append(entry)
            elif scope.usable():
                own.append(expand(entry, scope))
        else:
            shared.append(entry)
    write = own + [entry for entry in shared if entry in writable_shared]
    return Prefixes(tuple(own + shared), tuple(write))


def _fixed_dir(entry: str) -> str:
    """The directory above the first path component of ``entry`` that
    holds a placeholder (``/srv/{tenant}/x`` -> ``/srv``).
    """
    match = hostpaths.PLACEHOLDER_RE.search(entry)
    return os.path.dirname(entry[:match.start()] + 'x') if match else entry


def _contains(outer: str, inner: str) -> bool:
    outer = outer.rstrip('/') or '/'
    return outer == '/' or inner == outer or inner.startswith(outer + '/')


def overlap(allowed: typing.Sequence[str]
            ) -> typing.Optional[typing.Tuple[str, str]]:
    """A (shared, scoped) pair of entries where the shared one contains
    the directories the scoped one stands for, or None.
    """
    for scoped in allowed:
        if not is_scoped(scoped):
            continue
        for shared in allowed:
            if not is_scoped(shared) and _contains(shared,
                                                   _fixed_dir(scoped)):
                return shared, scoped
    return None


def foreign_problem(path: str, allowed: typing.Sequence[str],
                    scope: typing.Optional[Scope]) -> typing.Optional[str]:
    """Why ``path`` (as written, or resolved) lies in another instance's
    or tenant's directory that a shared entry above it would let the
    domain in ``scope`` reach, or None.
    """
    if scope is None:
        return None
    for entry in allowed:
        if not is_scoped(entry) or not any(
                not is_scoped(shared) and _contains(shared, _fixed_dir(entry))
                for shared in allowed):
            continue
        if not hostpaths.under(path, [entry]):
            continue
        own = expand(entry, scope) if scope.usable() else None
        if own is None or not hostpaths.under(path, [own]):
            return ('%r lies in the directory of another instance or tenant '
                    '(it matches the scoped entry %r of [dm_restrict] '
                    'allowed_host_paths, not this domain\'s %r)'
                    % (path, entry, own))
    return None
