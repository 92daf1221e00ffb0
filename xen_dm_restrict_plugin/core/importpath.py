"""Whether root may import code from a directory: root's alone, up to /.

Root's programs (the launcher, libvirtd's hook, the services they ask)
run Python code from an import path; a directory on it that someone else
can write lets that someone run code as root.  The services check their
import path with this module before they import anything else of the
package, so it imports nothing but ``os``.
"""

import os


def writable_by_others(entry: str):
    """The first directory from ``entry`` up to / that lets someone other
    than root put code where ``entry`` is, or None.

    The nearest existing directory must be root's alone; above it, a
    directory others can write is fine with the sticky bit (as /tmp),
    which stops them from replacing root's entries in it.
    """
    current = os.path.realpath(entry)
    nearest = True
    while True:
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            st = None
        if st is not None:
            if st.st_uid != 0 or (st.st_mode & 0o022 and (
                    nearest or not st.st_mode & 0o1000)):
                return current
            nearest = False
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def first_unsafe(path):
    """The first (entry, directory) of ``path`` whose directory others
    can write, or None.
    """
    for entry in path:
        unsafe = writable_by_others(entry)
        if unsafe:
            return entry, unsafe
    return None


def package_parent() -> str:
    """The directory this package is imported from."""
    return os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))


def untrusted_reason():
    """Why root must not run code from this process's import path (and
    the package's directory), or None.
    """
    import sys

    path = [os.path.abspath(entry or '.') for entry in sys.path]
    unsafe = first_unsafe(path + [package_parent()])
    if unsafe:
        return ('it would import code from %s, and %s is not root\'s '
                'alone; install the plugin where only root can write'
                % unsafe)
    return None
