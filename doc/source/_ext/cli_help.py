"""``.. program-help:: COMMAND [SUBCOMMAND...]``: a command's ``--help``.

The text is produced by the command's own argument parser (or, for the
launcher, its help constant) while the documentation builds, so the
command reference cannot fall behind the code.
"""

import argparse
import os

from docutils import nodes
from docutils.parsers.rst import Directive

#: argparse wraps at the terminal width minus 2.
WIDTH = 79


def _subparser(parser: argparse.ArgumentParser,
               name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if name in action.choices:
                return action.choices[name]
    raise ValueError('%s has no subcommand %r' % (parser.prog, name))


def help_text(words) -> str:
    """The ``--help`` output of ``words`` (program, then subcommands)."""
    os.environ['COLUMNS'] = str(WIDTH + 2)
    program, rest = words[0], words[1:]
    if program == 'xen-dm-restrict':
        from xen_dm_restrict_plugin.cmd import cli
        parser = cli.build_parser()
        for name in rest:
            parser = _subparser(parser, name)
        return parser.format_help()
    if rest:
        raise ValueError('%s has no subcommands' % program)
    if program == 'xen-dm-restrict-libvirt-hook':
        from xen_dm_restrict_plugin.cmd import libvirt_hook
        return libvirt_hook.build_parser().format_help()
    if program == 'xen-dm-restrict-launch':
        from xen_dm_restrict_plugin.launcher import usage
        return usage.HELP
    if program == 'xen-dm-restrict-launch-service':
        from xen_dm_restrict_plugin.cmd import launch_service
        return launch_service.build_parser().format_help()
    if program == 'xen-dm-restrict-hook-service':
        from xen_dm_restrict_plugin.cmd import hook_service
        return hook_service.build_parser().format_help()
    raise ValueError('unknown program %r' % program)


class ProgramHelp(Directive):
    required_arguments = 1
    optional_arguments = 5

    def run(self):
        try:
            text = help_text(self.arguments).rstrip('\n')
        except ValueError as err:
            raise self.error(str(err))
        block = nodes.literal_block(text, text)
        block['language'] = 'text'
        return [block]


def setup(app):
    app.add_directive('program-help', ProgramHelp)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
