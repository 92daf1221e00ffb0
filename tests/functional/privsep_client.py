"""Run as root by test_privsep: start the privsep daemon, become the
orchestrator's unprivileged user, and reap through the daemon.

argv: CONFIG_FILE ORCHESTRATOR_UID VICTIM_UID OUTSIDE_UID
Prints one JSON object: who we ran as, and what each reap did.
"""

import json
import os
import sys

from oslo_config import cfg
from oslo_privsep import priv_context

from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import reaper
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import privileged


def main() -> None:
    config, user, victim, outside = sys.argv[1], *map(int, sys.argv[2:5])
    cfg.CONF(['--config-file', config], project='xen-dm-restrict')
    conf_mod.register_opts(cfg.CONF)
    # The daemon keeps root with CAP_SETUID only; this process then
    # becomes the orchestrator's user, as a service started by systemd.
    privileged.dm_restrict_pctxt.start(method=priv_context.Method.FORK)
    os.setgroups([])
    os.setresgid(user, user, user)
    os.setresuid(user, user, user)
    hook = extension.DmRestrictHook(cfg.CONF)
    out = {'euid': os.geteuid(), 'reaper': type(hook.reaper).__name__,
           'in_process': reaper.Reaper(hook.settings).unavailable_reason()}
    out['reap'] = hook.reaper.reap(victim, 'privsep test').summary()
    for name, uid in (('outside', outside), ('root', 0)):
        try:
            privileged.reap(uid, 'privsep test')
            out[name] = 'reaped'
        except exception.Refused as err:
            out[name] = '%s: %s' % (type(err).__name__, err.reason)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
