"""The names Open vSwitch's database holds, as vif-openvswitch sees them.

Xen's ``vif-openvswitch`` runs ``ovs-vsctl -- --if-exists del-port NAME``
on a guest's interface name when it plugs and unplugs it, so a
``<target dev>`` naming a port of the database (Neutron's ``patch-tun``,
a tunnel port, another bridge's internal port) has libxl delete that
port (:mod:`xen_dm_restrict_plugin.core.nics`).  Those ports need not be
kernel interfaces, so the database is asked, with the tool and the
database the script uses: ``ovs-vsctl`` from ``PATH``, its default
database ``unix:$OVS_RUNDIR/db.sock`` (``/var/run/openvswitch`` unless
``OVS_RUNDIR`` is set in the environment, as for the script), read as
JSON (``--format=json``), never as text meant for people.

``ovs-vsctl`` rather than the ``ovs`` Python library: the check runs in
libvirtd's hook before every start, where a plain read of three tables
is one short process, and the library's IDL would add a dependency and
a schema to load for the same answer.  What runs the tool and reads
its answer (subprocess, shutil, json) is imported when the database is
first asked for: libvirtd's hook imports this module at every start.
"""

import logging
import typing

from xen_dm_restrict_plugin.core import nics
from xen_dm_restrict_plugin import exception

LOG = logging.getLogger(__name__)

OVS_VSCTL = 'ovs-vsctl'
#: Seconds ovs-vsctl waits for the database server before it gives up.
TIMEOUT = 10
#: The three tables a name can be in, and the columns read of each.
QUERY = (
    '--', '--columns=name,ports', 'list', 'Bridge',
    '--', '--columns=_uuid,name,interfaces', 'list', 'Port',
    '--', '--columns=_uuid,name,type,external_ids', 'list', 'Interface')


class QueryFailed(Exception):
    """The database could not be read; the message says why."""


def _atoms(value) -> typing.List[typing.Any]:
    """The members of an OVSDB set as ovs-vsctl writes it in JSON: a
    one-member set is written as the member itself.
    """
    if isinstance(value, list) and value and value[0] == 'set':
        return list(value[1])
    return [value]


def _uuid(value) -> str:
    if not (isinstance(value, list) and len(value) == 2
            and value[0] == 'uuid'):
        raise ValueError('not a uuid: %r' % (value,))
    return value[1]


def _map(value) -> typing.Dict[str, str]:
    if not (isinstance(value, list) and len(value) == 2
            and value[0] == 'map'):
        raise ValueError('not a map: %r' % (value,))
    return {str(key): str(item) for key, item in value[1]}


def _rows(document: dict) -> typing.List[typing.Dict[str, typing.Any]]:
    headings = document['headings']
    return [dict(zip(headings, row)) for row in document['data']]


def parse(output: str) -> typing.Dict[str, nics.OvsPort]:
    """Every name in ``ovs-vsctl --format=json`` output of :data:`QUERY`.

    :raises ValueError: the output is not that.
    """
    import json

    documents = [json.loads(line) for line in output.splitlines()
                 if line.strip()]
    if len(documents) != 3:
        raise ValueError('expected 3 tables, got %d' % len(documents))
    bridges, ports, interfaces = (_rows(doc) for doc in documents)
    bridge_of = {}
    for row in bridges:
        for port in _atoms(row['ports']):
            bridge_of[_uuid(port)] = str(row['name'])
    ifaces = {}
    for row in interfaces:
        ids = _map(row['external_ids'])
        ifaces[_uuid(row['_uuid'])] = (
            str(row['name']), str(row['type']),
            frozenset(ids[key].strip().lower()
                      for key in nics.OVS_OWNER_KEYS if ids.get(key)))
    found: typing.Dict[str, nics.OvsPort] = {}
    members = []
    for row in ports:
        port_uuid = _uuid(row['_uuid'])
        name = str(row['name'])
        mine = [ifaces[_uuid(each)] for each in _atoms(row['interfaces'])
                if _uuid(each) in ifaces]
        bridge = bridge_of.get(port_uuid)
        found[name] = nics.OvsPort(
            name, 'port', bridge, '+'.join(sorted({kind for _, kind, _ in
                                                   mine})),
            name, frozenset().union(*(owners for _, _, owners in mine)))
        members += [nics.OvsPort(each, 'interface', bridge, kind, name,
                                 owners) for each, kind, owners in mine]
    for member in members:
        found.setdefault(member.name, member)
    for name, kind, owners in ifaces.values():
        if name not in found:  # an interface of no port
            found[name] = nics.OvsPort(name, 'interface', None, kind, None,
                                       owners)
    for row in bridges:
        found.setdefault(str(row['name']), nics.OvsPort(
            str(row['name']), 'bridge', str(row['name'])))
    return found


def read_ports(command: typing.Optional[str] = None
               ) -> typing.Optional[typing.Dict[str, nics.OvsPort]]:
    """Every name of the database, or None without ``ovs-vsctl``.

    :param command: the ``ovs-vsctl`` to run (default: from ``PATH``).
    :raises QueryFailed: the database cannot be read.
    """
    import shutil
    import subprocess

    path = command or shutil.which(OVS_VSCTL)
    if path is None:
        return None
    argv = [path, '--format=json', '--timeout=%d' % TIMEOUT] + list(QUERY)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True,
                              timeout=TIMEOUT + 5)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise QueryFailed('%s: %s' % (path, err)) from None
    if proc.returncode != 0:
        raise QueryFailed((proc.stderr.strip().splitlines() or [
            '%s exited %d' % (path, proc.returncode)])[-1])
    try:
        return parse(proc.stdout)
    except (ValueError, KeyError, TypeError) as err:
        raise QueryFailed('%s printed what is not its JSON: %s'
                          % (path, err)) from None


class OvsPorts:
    """The database, read once, when a name is first asked for.

    :param configured: the bridges of ``[dm_restrict]
        allowed_ovs_bridges``; when any is listed, Open vSwitch is in use
        and a database that cannot be read fails the check.
    """

    def __init__(self, configured: typing.Iterable[str]):
        self.configured = sorted(configured)
        self._ports: typing.Optional[typing.Dict[str, nics.OvsPort]] = None

    def _load(self) -> typing.Dict[str, nics.OvsPort]:
        try:
            ports = read_ports()
            if ports is None:
                raise QueryFailed('%s is not on PATH' % OVS_VSCTL)
        except QueryFailed as err:
            if self.configured:
                LOG.error('Open vSwitch database cannot be read: %s', err)
                raise exception.Unavailable(
                    'Open vSwitch database', '[dm_restrict] '
                    'allowed_ovs_bridges lists %s, so Open vSwitch is in '
                    'use, but the <target dev> names of the domain cannot '
                    'be checked against its ports (vif-openvswitch deletes '
                    'a port of the name): %s' % (', '.join(self.configured),
                                                 err),
                    'start ovsdb-server (Debian: openvswitch-switch) and '
                    'let this process reach the database vif-openvswitch '
                    'uses (ovs-vsctl\'s default, $OVS_RUNDIR/db.sock), or '
                    'empty allowed_ovs_bridges if the host has no Open '
                    'vSwitch') from None
            LOG.debug('no Open vSwitch database to check NIC names '
                      'against: %s', err)
            return {}
        return ports

    def get(self, name: str) -> typing.Optional[nics.OvsPort]:
        if self._ports is None:
            self._ports = self._load()
        return self._ports.get(name)
