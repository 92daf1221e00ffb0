"""Extract the element and attribute names of libvirt's domain schema.

libvirt's RelaxNG grammar (``domaincommon.rng`` and what it includes) is
walked from ``<domain>`` along every ``<ref>``, giving each element's path
(``devices/disk/driver``), the attributes it may carry and whether it may
hold text.  Only names are kept: the project stores its own extraction of
a libvirt release as a test fixture (``tests/fixtures/libvirt/``) and
holds :mod:`xen_dm_restrict_plugin.core.vocabulary` against it.

Run as a script to write a fixture::

    python3 tests/rng_vocabulary.py /usr/share/libvirt/schemas 9.0.0 \\
        tests/fixtures/libvirt/domain-9.0.0.json
"""

import json
import os
import sys
import typing

from lxml import etree

RNG = '{http://relaxng.org/ns/structure/1.0}'
ANY = '*'


def _load(directory: str, name: str, defines, seen) -> None:
    if name in seen:
        return
    seen.add(name)
    tree = etree.parse(os.path.join(directory, name))
    for node in tree.getroot():
        if node.tag == RNG + 'include':
            _load(directory, node.get('href'), defines, seen)
        elif node.tag == RNG + 'define':
            defines.setdefault(node.get('name'), []).append(node)


def extract(directory: str) -> typing.Dict[str, typing.Dict]:
    """Every element path under ``<domain>`` with its attributes and
    whether it may hold text.
    """
    defines: typing.Dict[str, list] = {}
    _load(directory, 'domain.rng', defines, set())
    paths: typing.Dict[str, typing.Dict] = {}

    def entry(path):
        return paths.setdefault(path, {'attrs': set(), 'text': False})

    def content(node, path, refs):
        for child in node:
            tag = child.tag
            if not isinstance(tag, str):
                continue
            if tag == RNG + 'attribute':
                name = child.get('name')
                entry(path)['attrs'].add(name if name else ANY)
            elif tag == RNG + 'element':
                name = child.get('name') or ANY
                sub = name if not path else path + '/' + name
                entry(sub)
                if name != ANY:
                    content(child, sub, refs)
            elif tag == RNG + 'ref':
                ref = child.get('name')
                if ref in refs:
                    continue
                for define in defines.get(ref, ()):
                    content(define, path, refs | {ref})
            elif tag in (RNG + 'text', RNG + 'data', RNG + 'value'):
                if path:
                    entry(path)['text'] = True
            elif tag in (RNG + 'anyName', RNG + 'nsName', RNG + 'name'):
                continue
            else:
                content(child, path, refs)

    for define in defines['domain']:
        for element in define.iter(RNG + 'element'):
            if element.get('name') == 'domain':
                entry('')
                content(element, '', frozenset(('domain',)))
    return {path: {'attrs': sorted(value['attrs']), 'text': value['text']}
            for path, value in sorted(paths.items())}


def main(argv: typing.Sequence[str]) -> int:
    directory, version, out = argv
    data = {'libvirt': version, 'source': 'domain.rng',
            'paths': extract(directory)}
    with open(out, 'w', encoding='utf-8') as handle:
        json.dump(data, handle, indent=0, sort_keys=True)
        handle.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
