"""The vocabulary table held against libvirt's own domain schema.

``tests/fixtures/libvirt/domain-*.json`` are the project's extraction
(``tests/rng_vocabulary.py``) of the element and attribute names of
libvirt's RelaxNG domain schema in 9.0.0 (Debian 12) and 12.8.0; the
schema installed on this host is read too when it is there.  Every row
must name parts libvirt has, and every other part libvirt's schema allows
under an accepted element must be refused: a new libvirt element or
attribute is never accepted silently.
"""

import json
import os

from lxml import etree
import pytest

from tests import base
from tests import rng_vocabulary
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import policy
from xen_dm_restrict_plugin.core import schema
from xen_dm_restrict_plugin.core import vocabulary

FIXTURES = os.path.join(base.FIXTURES, 'libvirt')
RELEASES = ('9.0.0', '12.8.0')
SYSTEM_SCHEMAS = os.path.dirname(base.DOMAIN_RNG)


def _load(release):
    with open(os.path.join(FIXTURES, 'domain-%s.json' % release),
              encoding='utf-8') as handle:
        return json.load(handle)['paths']


@pytest.fixture(scope='module', params=RELEASES + ('installed',))
def rng(request):
    if request.param != 'installed':
        return _load(request.param)
    if not os.path.exists(os.path.join(SYSTEM_SCHEMAS, 'domain.rng')):
        pytest.skip('libvirt\'s schemas are not installed (Debian package '
                    'libvirt0 or libvirt-common)')
    return rng_vocabulary.extract(SYSTEM_SCHEMAS)


def test_every_row_names_parts_libvirt_has():
    known = [_load(release) for release in RELEASES]
    for item in vocabulary.ROWS:
        places = [paths[item.path] for paths in known if item.path in paths]
        assert places, '%r is in no libvirt schema' % item.path
        attrs = set().union(*(place['attrs'] for place in places))
        assert item.attrs <= attrs, (item.path, item.attrs - attrs)
        if item.text:
            assert any(place['text'] for place in places), item.path


def test_every_row_cites_a_function_and_says_what_libvirt_does():
    for item in vocabulary.ROWS:
        assert item.function and item.libvirt, item.path
        if item.verdict is vocabulary.Verdict.REFUSED:
            assert item.reason and item.remedy, item.path
        parent = item.path.rpartition('/')[0]
        assert item.path == '' or vocabulary.row(parent) is not None, (
            'the parent of %r has no row' % item.path)


def _tree_paths(node, path=''):
    yield path, node
    for name, child in node.children.items():
        yield from _tree_paths(child, (path + '/' + name).lstrip('/'))


def test_schema_accepts_exactly_the_accepted_rows():
    tree = dict(_tree_paths(schema.DOMAIN))
    rows = {item.path: item for item in vocabulary.accepted()}
    assert set(tree) == set(rows)
    for path, node in tree.items():
        assert node.attrs == rows[path].attrs, path


def _domain_with(path, attr=None):
    """A small HVM domain with the element at ``path`` (and ``attr`` on
    it) added, everything on the way created.
    """
    root = etree.fromstring(base.fixture('hvm.xml').encode())
    node = root
    for name in path.split('/'):
        child = node.find(name)
        if child is None or name == path.rsplit('/', 1)[-1]:
            child = etree.SubElement(node, name)
        node = child
    if attr is not None:
        node.set(attr, '1')
    return domain.parse(etree.tostring(root), 1 << 20)


def test_every_other_part_of_libvirts_schema_is_refused(rng):
    accepted = {item.path: item for item in vocabulary.accepted()}
    checked = 0
    for path, place in rng.items():
        if not path or path.endswith('*'):
            continue
        parent = path.rpartition('/')[0]
        if parent not in accepted or accepted[parent].path in (
                'metadata', 'description'):
            continue
        if path not in accepted:
            found = schema.unknown_parts(_domain_with(path))
            assert any(path.rsplit('/', 1)[-1] in item.where
                       for item in found), path
            checked += 1
            continue
        for attr in set(place['attrs']) - accepted[path].attrs - {'*'}:
            if path == '' and attr in ('xmlns',):
                continue
            found = schema.unknown_parts(_domain_with(path, attr))
            assert any(attr in item.where for item in found), (path, attr)
            checked += 1
    assert checked > 100


def test_new_names_of_the_current_release_are_refused():
    old, new = _load(RELEASES[0]), _load(RELEASES[-1])
    added = set(new) - set(old)
    assert added, 'the fixtures should differ'
    accepted = {item.path for item in vocabulary.accepted()}
    assert not added & accepted


def test_filterref_is_refused_with_its_reason(tmp_path):
    settings = base.make_settings(tmp_path)
    xml = base.edit(base.fixture('hvm.xml'), lambda root: etree.SubElement(
        root.find('devices/interface'), 'filterref', filter='clean-traffic'))
    with pytest.raises(policy.Refusal) as err:
        policy.check_domain(domain.parse(xml, 1 << 20), [], settings)
    assert 'never instantiates network filters' in str(err.value)
