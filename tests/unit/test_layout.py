"""The package's layout by where code runs, held by its import graph.

Each subpackage has a layer; a module may import its own subpackage and
lower layers only.  The launcher (root, on every device-model start) and
the policy core never load oslo.config or the orchestrator side, and no
import circle exists, lazy imports inside functions included.
"""

import ast
import pathlib

import pytest

import xen_dm_restrict_plugin

PACKAGE = 'xen_dm_restrict_plugin'
ROOT = pathlib.Path(xen_dm_restrict_plugin.__file__).parent

#: Layer of each part (the first name under the package); a module may
#: import modules of lower layers and of its own part.
LAYERS = {
    'exception': 0,
    'core': 1,
    'conf': 2, 'launcher': 2, 'leases': 2,
    'storage': 3, 'console': 3,
    'host': 4,
    'daemon_hook': 5, 'orchestrator': 5,
    'cmd': 6,
}
#: The historical names of the orchestrator-side modules: aliases only.
ALIASES = {'extension', 'hooks', 'loader', 'virt', 'operations',
           'privileged'}
#: Third-party packages the launcher and the core must never load.
HEAVY = ('oslo_config', 'oslo_privsep', 'oslo_concurrency', 'stevedore',
         'libvirt')


def module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def all_modules():
    return {module_name(path): path for path in ROOT.rglob('*.py')}


def imports(path, modules):
    """Every module ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = '%s.%s' % (node.module, alias.name)
                found.add(full if full in modules else node.module)
    return found


def graph():
    modules = all_modules()
    return {name: imports(path, modules) for name, path in modules.items()}


def part(name):
    pieces = name.split('.')
    return pieces[1] if len(pieces) > 1 else None


def test_every_part_has_a_layer():
    parts = {part(name) for name in all_modules()} - {None} - ALIASES
    assert parts == set(LAYERS)


def test_no_module_imports_a_higher_layer():
    climbs = []
    for name, targets in graph().items():
        if part(name) in ALIASES or part(name) is None:
            continue
        for target in targets:
            if not target.startswith(PACKAGE + '.'):
                continue
            if part(target) in ALIASES:
                climbs.append('%s -> %s (a historical alias)'
                              % (name, target))
            elif (part(target) != part(name)
                  and LAYERS[part(target)] >= LAYERS[part(name)]):
                climbs.append('%s -> %s' % (name, target))
    assert climbs == []


def closure(start, edges):
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        for target in edges.get(name, ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


@pytest.mark.parametrize('part_name', ['core', 'launcher'])
def test_root_runtime_and_core_load_no_orchestrator_code(part_name):
    edges = graph()
    for name in edges:
        if part(name) != part_name:
            continue
        reached = closure(name, edges)
        assert not {t for t in reached if part(t) in (
            'orchestrator', 'daemon_hook', 'host', 'cmd', 'conf')
            or t.split('.')[0] in HEAVY}, name


def test_core_imports_nothing_of_the_runtime():
    edges = graph()
    for name, targets in edges.items():
        if part(name) == 'core':
            assert {part(t) for t in targets if t.startswith(PACKAGE)} <= {
                'core', 'exception'}, name


def test_no_import_circle():
    edges = {name: {t for t in targets if t.startswith(PACKAGE)}
             for name, targets in graph().items()}
    # A package's __init__ re-exporting its own modules is not a circle.
    circles = []
    for name in edges:
        for target in edges[name]:
            if target.startswith(name + '.'):
                continue
            if name in closure(target, {
                    n: {t for t in ts if not t.startswith(n + '.')}
                    for n, ts in edges.items()}):
                circles.append('%s -> %s' % (name, target))
    assert circles == []


def test_the_walker_sees_a_climb(tmp_path):
    """The checks above are only as good as the import reader."""
    source = tmp_path / 'mod.py'
    source.write_text('def f():\n'
                      '    from xen_dm_restrict_plugin.orchestrator '
                      'import virt\n'
                      '    import oslo_config.cfg\n')
    found = imports(source, all_modules())
    assert found == {'xen_dm_restrict_plugin.orchestrator.virt',
                     'oslo_config.cfg'}


def top_level_imports(path, modules):
    """The modules ``path`` imports when it is imported (not in functions).
    """
    found = set()
    tree = ast.parse(path.read_text())
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.If, ast.Try)):
            todo.extend(node.body + node.orelse + getattr(
                node, 'finalbody', []) + [
                    stmt for handler in getattr(node, 'handlers', [])
                    for stmt in handler.body])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = '%s.%s' % (node.module, alias.name)
                found.add(full if full in modules else node.module)
    return found


def reached_at_load(script):
    """Every module importing the package's ``script`` loads at once."""
    modules = all_modules()
    edges = {name: top_level_imports(path, modules)
             for name, path in modules.items()}
    # A package's __init__ runs before any of its modules.
    for name in modules:
        parent = name.rsplit('.', 1)[0]
        if parent in modules and parent != name:
            edges[name].add(parent)
    return closure('%s.%s' % (PACKAGE, script), edges)


@pytest.mark.parametrize('script', ['daemon_hook.hook', 'launcher.launch',
                                    'cmd.libvirt_hook', 'cmd.launch',
                                    'cmd.cli'])
def test_host_scripts_load_without_oslo_privsep(script):
    """libvirtd's hook and the launcher run from Debian's packages in
    dom0, where oslo.privsep (an orchestrator's dependency) may be absent.
    """
    reached = reached_at_load(script)
    assert not {t for t in reached if t.startswith('oslo_privsep')}


def test_historical_names_are_the_moved_modules():
    import xen_dm_restrict_plugin.loader as old
    from xen_dm_restrict_plugin.orchestrator import loader as new

    assert old is new


@pytest.mark.parametrize('script', ['daemon_hook.hook', 'cmd.libvirt_hook',
                                    'host.reaper', 'launcher.settings'])
def test_the_daemon_hook_loads_no_configuration_library(script):
    """libvirtd waits for its hook at every domain start: the hook reads
    the settings snapshot, and oslo.config and stevedore (with rfc3986,
    netaddr) are imported only to make a new one.
    """
    reached = reached_at_load(script)
    assert not {t for t in reached if t.split('.')[0] in HEAVY}
    assert '%s.conf' % PACKAGE not in reached
    assert '%s.cmd.host' % PACKAGE not in reached
