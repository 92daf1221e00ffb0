"""A private Open vSwitch database for the NIC name tests.

Debian's ``openvswitch-switch`` and ``openvswitch-common`` (bindep.txt,
test profile) give ``ovsdb-tool``, ``ovsdb-server``, ``ovs-vsctl`` and
the schema.  The test creates its own database file with ``ovsdb-tool
create`` in a directory of its own and runs ``ovsdb-server`` on it in the
foreground, listening only on ``DIR/db.sock``; ``OVS_RUNDIR=DIR`` makes
``ovs-vsctl`` (the product's and the test's) use that socket.  Neither
``ovs-vswitchd`` nor the kernel module is involved: bridges and ports are
rows added with ``ovs-vsctl --no-wait``, which is all the product reads.
Nothing of the host changes, and the package's own services (which apt
may or may not have started) are never used: the default database
``/var/run/openvswitch/db.sock`` is never reached by a test
(tests/conftest.py points ``OVS_RUNDIR`` elsewhere for every test).
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import typing

from tests.functional import hostenv

OVSDB_SERVER = '/usr/sbin/ovsdb-server'
OVSDB_TOOL = '/usr/bin/ovsdb-tool'
OVS_VSCTL = '/usr/bin/ovs-vsctl'
SCHEMA = '/usr/share/openvswitch/vswitch.ovsschema'


def require() -> None:
    """Skip unless the Open vSwitch database tools are installed."""
    for path in (OVSDB_SERVER, OVSDB_TOOL, OVS_VSCTL, SCHEMA):
        hostenv.require_tool(path)


class OvsDb:
    """A running private ovsdb-server.

    :param rundir: its directory (``OVS_RUNDIR``): database, socket, log.
    """

    def __init__(self, rundir: str):
        self.rundir = rundir
        self.proc: typing.Optional[subprocess.Popen] = None

    @property
    def environ(self) -> typing.Dict[str, str]:
        """What a process needs in its environment to use this database."""
        return {'OVS_RUNDIR': self.rundir}

    def start(self, wait: float = 10.0) -> None:
        database = os.path.join(self.rundir, 'conf.db')
        subprocess.run([OVSDB_TOOL, 'create', database, SCHEMA], check=True,
                       capture_output=True)
        self.proc = subprocess.Popen(
            [OVSDB_SERVER, database,
             '--remote=punix:%s' % os.path.join(self.rundir, 'db.sock'),
             '--unixctl=%s' % os.path.join(self.rundir, 'ovsdb-server.ctl'),
             '--pidfile=%s' % os.path.join(self.rundir, 'ovsdb-server.pid'),
             '--no-chdir',
             '--log-file=%s' % os.path.join(self.rundir, 'ovsdb-server.log')],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + wait
        while True:
            done = self.vsctl('init', check=False)
            if done.returncode == 0:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError('ovsdb-server did not start: %s'
                                   % done.stderr)
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def vsctl(self, *args: str, check: bool = True
              ) -> subprocess.CompletedProcess:
        """``ovs-vsctl --no-wait ARGS`` on this database (no
        ovs-vswitchd runs to wait for).
        """
        proc = subprocess.run(
            [OVS_VSCTL, '--no-wait', '--timeout=10'] + list(args),
            env=dict(os.environ, **self.environ), capture_output=True,
            text=True, timeout=30)
        if check and proc.returncode != 0:
            raise RuntimeError('ovs-vsctl %s: %s'
                               % (' '.join(args), proc.stderr))
        return proc

    def names(self) -> typing.Tuple[typing.List[str], typing.List[str]]:
        """(ports, interfaces), sorted: what a test compares before and
        after.
        """
        def column(table):
            out = self.vsctl('--bare', '--columns=name', 'list', table).stdout
            return sorted(line for line in out.split() if line)
        return column('Port'), column('Interface')


@contextlib.contextmanager
def running() -> typing.Iterator[OvsDb]:
    """A private database, removed with its directory afterwards."""
    require()
    # Short: a unix socket path holds at most 107 bytes.
    rundir = tempfile.mkdtemp(prefix='xdr-ovs-')
    db = OvsDb(rundir)
    try:
        db.start()
        yield db
    finally:
        db.stop()
        shutil.rmtree(rundir, ignore_errors=True)
