"""Helpers shared by the tests: fixtures, settings and libvirt's schema."""

import atexit
import functools
import os
import shutil
import tempfile
import typing

from lxml import etree
from oslo_config import cfg

from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin.orchestrator import loader

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
DOMAIN_RNG = '/usr/share/libvirt/schemas/domain.rng'
HVM_UUID = '3b5c8f0e-9d7a-4e21-b6f4-1a2c3d4e5f60'
PV_UUID = '5e6f7a8b-1c2d-4e3f-8a9b-0c1d2e3f4a5b'


#: Token in the fixtures for the directory of the test's disk images.
IMAGES_TOKEN = '@IMAGES@'


@functools.lru_cache(maxsize=1)
def images_dir() -> str:
    """The directory of this run's images that the fixtures name.

    Empty files: nothing opens them under libvirt's test driver.  It is
    removed when the run ends.
    """
    path = tempfile.mkdtemp(prefix='xen-dm-restrict-images-')
    atexit.register(shutil.rmtree, path, True)
    for name in ('root-disk.img', 'installer.iso', 'vmlinuz',
                 'initrd.img'):
        with open(os.path.join(path, name), 'wb'):
            pass
    return path


def fixture(name: str) -> str:
    """A fixture's text, with its image paths in :func:`images_dir`."""
    with open(os.path.join(FIXTURES, name), encoding='utf-8') as handle:
        return handle.read().replace(IMAGES_TOKEN, images_dir())


def fixture_file(name: str, directory) -> str:
    """Write :func:`fixture` ``name`` into ``directory``; return its path."""
    path = os.path.join(str(directory), name)
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write(fixture(name))
    return path


def edit(xml: str, func: typing.Callable[[etree._Element], None]) -> str:
    """Return ``xml`` with ``func`` applied to its parsed root."""
    root = etree.fromstring(xml.encode('utf-8'))
    func(root)
    return etree.tostring(root, encoding='unicode')


def add_device(xml: str, device: str) -> str:
    """Append a device, given as XML text, to ``<devices>``."""
    return edit(xml, lambda root: root.find('devices').append(
        etree.fromstring(device)))


def make_conf(tmp_path, **overrides) -> cfg.ConfigOpts:
    """A parsed ConfigOpts for tests; lease DB and chroots under tmp_path.
    """
    conf = cfg.ConfigOpts()
    conf_mod.register_opts(conf)
    loader.register_opts(conf)
    conf([], default_config_files=[])
    defaults = dict(
        tenant_uid_ranges={'acme': '200000-200099',
                           'globex': '201000-201099'},
        device_model_syntax='runas',
        lease_db=str(tmp_path / 'leases.sqlite'),
        chroot_base_dir=str(tmp_path / 'chroots'),
        reaper_user='nobody-reaper-not-created',
        reap_device_models=False,
        allowed_host_paths=[images_dir()],
        allowed_bridges=['xenbr0', 'br-ten1'],
        allowed_networks=['default'],
    )
    if 'allowed_host_paths' not in overrides:
        # The fixtures' images are shared by every test tenant, and their
        # disks are writable.
        defaults['writable_shared_host_paths'] = [images_dir()]
    defaults.update(overrides)
    for key, value in defaults.items():
        group = conf_mod.GROUP
        if key == 'domain_hooks':
            group = loader.GROUP
        conf.set_override(key, value, group=group)
    return conf


def make_settings(tmp_path, **overrides) -> conf_mod.Settings:
    return conf_mod.load(make_conf(tmp_path, **overrides))


@functools.lru_cache(maxsize=1)
def domain_schema() -> etree.RelaxNG:
    return etree.RelaxNG(file=DOMAIN_RNG)


def assert_schema_valid(xml: str) -> None:
    schema = domain_schema()
    doc = etree.fromstring(xml.encode('utf-8'))
    assert schema.validate(doc), schema.error_log.last_error
