"""The reaper's refusals and bookkeeping; the kills are tested for real in
tests/functional/test_reaper_real.py."""

import os
import time

import pytest

from tests import base
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import reaper


@pytest.fixture
def settings(tmp_path):
    return base.make_settings(tmp_path)


@pytest.mark.parametrize('uid', [0, 65534, 65535, 4294967295, 1000,
                                 199999, 201100])
def test_uids_outside_the_ranges_are_never_reaped(settings, uid):
    with pytest.raises(reaper.ReapRefused) as err:
        reaper.Reaper(settings).reap(uid)
    assert 'reap of uid %d' % uid in str(err.value)


def test_refusals_are_refusals_and_reap_errors():
    assert issubclass(reaper.ReapRefused, exception.Refused)
    assert issubclass(reaper.ReapRefused, exception.ReapError)
    assert issubclass(reaper.ReapUnavailable, exception.CapabilityMissing)
    assert issubclass(reaper.ReapUnavailable, exception.ReapError)


def test_missing_reaper_user_makes_reaping_unavailable(settings):
    rp = reaper.Reaper(settings)
    assert 'nobody-reaper-not-created' in rp.unavailable_reason()
    with pytest.raises(reaper.ReapUnavailable, match='useradd'):
        rp.reap(200001)


def test_scan_sees_processes_and_zombies_of_a_uid():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while True:
            alive, zombies = reaper.scan(os.getuid())
            if pid in zombies or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert os.getpid() in alive
        assert pid in zombies and pid not in alive
    finally:
        os.waitpid(pid, 0)


def test_result_reports():
    result = reaper.ReapResult(200001, 2, (7, 8, 9), (41, 42), 0.0015)
    assert result.summary() == (
        'uid 200001 reaped: 3 process(es) found running, 2 kill round(s), '
        'nothing left alive (1.5 ms); zombies awaiting their parent: 41 42')
    assert result.to_dict()['zombies'] == (41, 42)
