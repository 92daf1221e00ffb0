"""pytest configuration shared by unit and functional tests."""

import os
import tempfile

import pytest

from xen_dm_restrict_plugin.host import capabilities
from xen_dm_restrict_plugin.launcher import settings as launch_settings


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    capabilities.clear_cache()
    yield
    capabilities.clear_cache()


@pytest.fixture(autouse=True, scope='session')
def _no_hosts_ovsdb():
    """Point ovs-vsctl (the NIC name check) at an empty directory of the
    tests' own, never at a database the host's Open vSwitch may run:
    tests that want one start their own ovsdb-server and set OVS_RUNDIR
    (tests/functional/ovsdbenv.py).
    """
    saved = os.environ.get('OVS_RUNDIR')
    with tempfile.TemporaryDirectory(prefix='xdr-no-ovsdb-') as empty:
        os.environ['OVS_RUNDIR'] = empty
        yield
    if saved is None:
        os.environ.pop('OVS_RUNDIR', None)
    else:
        os.environ['OVS_RUNDIR'] = saved


@pytest.fixture(autouse=True, scope='session')
def _no_hosts_snapshot_directory():
    """Point the settings snapshot (and the probe results kept beside it)
    at a directory of the tests' own, never the host's /run: tests that
    want one of theirs set it for the processes they start.
    """
    saved = os.environ.get(launch_settings.PATH_ENV)
    with tempfile.TemporaryDirectory(prefix='xdr-run-') as run:
        os.environ[launch_settings.PATH_ENV] = os.path.join(
            run, 'launcher-settings.marshal')
        yield
    if saved is None:
        os.environ.pop(launch_settings.PATH_ENV, None)
    else:
        os.environ[launch_settings.PATH_ENV] = saved
