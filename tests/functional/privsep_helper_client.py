"""Run as root by test_privsep: start the privsep daemon with the
orchestrator guide's ``helper_command`` (oslo.privsep's ROOTWRAP method,
the way nova-compute starts it), become the orchestrator's user, reap.

argv: HELPER_COMMAND ORCHESTRATOR_CONFIG CONFIG_FILE ORCHESTRATOR_UID
      VICTIM_UID
Prints one JSON object: who we ran as and what the reap did.
"""

import json
import os
import sys

from oslo_config import cfg
from oslo_privsep import priv_context

from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import privileged


def main() -> None:
    helper, orchestrator_conf, config = sys.argv[1:4]
    user, victim = int(sys.argv[4]), int(sys.argv[5])
    cfg.CONF(['--config-file', orchestrator_conf, '--config-file', config],
             project='xen-dm-restrict')
    conf_mod.register_opts(cfg.CONF)
    cfg.CONF.set_override('helper_command', helper,
                          group=privileged.GROUP)
    privileged.dm_restrict_pctxt.start(method=priv_context.Method.ROOTWRAP)
    os.setgroups([])
    os.setresgid(user, user, user)
    os.setresuid(user, user, user)
    out = {'euid': os.geteuid()}
    try:
        out['reap'] = privileged.reap(victim, 'helper command test')
    except exception.DmRestrictError as err:
        out['reap'] = '%s: %s' % (type(err).__name__, err)
    print(json.dumps(out, default=str))


if __name__ == '__main__':
    main()
