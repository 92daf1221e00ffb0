"""Run as root by test_privsep: like privsep_client.py, but the
orchestrator's configuration also has a --config-dir (oslo.privsep's
default helper_command passes it on to privsep-helper).

argv: CONFIG_FILE CONFIG_DIR ORCHESTRATOR_UID OUTSIDE_UID
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
    config, config_dir = sys.argv[1], sys.argv[2]
    user, outside = int(sys.argv[3]), int(sys.argv[4])
    swap_to = sys.argv[5] if len(sys.argv) > 5 else None
    args = ['--config-file', config]
    if config_dir != '-':
        args += ['--config-dir', config_dir]
    cfg.CONF(args, project='xen-dm-restrict')
    conf_mod.register_opts(cfg.CONF)
    privileged.dm_restrict_pctxt.start(method=priv_context.Method.FORK)
    if swap_to:
        # After the daemon parsed its file, point the link at root's own
        # configuration.  Done here before the setuid only because the
        # test's tmp_path parents are root's 0700; the orchestrator owns
        # the link's directory and could do it as itself.
        tmp = config + '.new'
        os.symlink(swap_to, tmp)
        os.replace(tmp, config)
    os.setgroups([])
    os.setresgid(user, user, user)
    os.setresuid(user, user, user)
    out = {'euid': os.geteuid()}
    try:
        out['outside'] = privileged.reap(outside, "privsep test")
    except exception.DmRestrictError as err:
        out['outside'] = '%s: %s' % (type(err).__name__, err)
    print(json.dumps(out, default=str))


if __name__ == '__main__':
    main()
