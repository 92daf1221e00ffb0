"""``render -o DIR/out.xml`` as root, where DIR belongs to another user.

The directory's owner watches for root's temporary file and swaps it for
a symlink to a root-only file while root writes: root must never change
that file (an attacker review found the temporary file chmod'ed by path,
which followed the link and made the target world-readable).
"""

import os
import subprocess


from tests.functional import hostenv
from xen_dm_restrict_plugin.cmd import cli

ATTACKER = r'''
import ctypes, os, struct, sys
d, target = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
assert libc.inotify_add_watch(fd, d.encode(), 0x100) >= 0  # IN_CREATE
print('ready', flush=True)
while True:
    buf = os.read(fd, 4096)
    off = 0
    while off < len(buf):
        wd, mask, cookie, ln = struct.unpack_from('iIII', buf, off)
        name = buf[off + 16:off + 16 + ln].rstrip(b'\0').decode()
        off += 16 + ln
        if name.startswith('.out.xml.'):
            tmp = os.path.join(d, '.lnk')
            try:
                os.symlink(target, tmp)
                os.rename(tmp, os.path.join(d, name))
            except OSError:
                pass
'''


def test_render_output_never_changes_a_file_swapped_in_by_the_directory_owner(
        tmp_path):
    hostenv.require_root()
    uid = hostenv.free_block() + 7
    name = hostenv.unique_name('xdr-atk-')
    subprocess.run(['useradd', '-M', '-N', '-u', str(uid), '-g', '65534',
                    '-s', '/usr/sbin/nologin', name], check=True)
    os.chmod(tmp_path, 0o755)
    secret_dir = tmp_path / 'root-only'
    secret_dir.mkdir(mode=0o755)
    secret = secret_dir / 'shadow-like'
    secret.write_text('root secret\n')
    os.chmod(secret, 0o600)
    share = tmp_path / 'share'
    share.mkdir()
    os.chown(share, uid, 65534)
    # pytest's parents are root's 0700: let the attacker reach share.
    opened = []
    path = str(tmp_path)
    while path != '/':
        st = os.stat(path)
        if not st.st_mode & 0o001:
            opened.append((path, st.st_mode))
            os.chmod(path, st.st_mode | 0o001)
        path = os.path.dirname(path)
    proc = None
    try:
        proc = subprocess.Popen(['/usr/bin/python3', '-c', ATTACKER,
                                 str(share), str(secret)], user=uid,
                                group=65534,
                                stdout=subprocess.PIPE, text=True, cwd='/')
        assert proc.stdout.readline().strip() == 'ready'
        won = None
        for attempt in range(100):
            try:
                cli._write_output(str(share / 'out.xml'), '<domain/>' * 4096)
            except OSError:
                pass
            if os.stat(secret).st_mode & 0o777 != 0o600:
                won = attempt
                break
        mode = os.stat(secret).st_mode & 0o777
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        for path, mode_was in opened:
            os.chmod(path, mode_was)
        subprocess.run(['userdel', name], check=False)
    assert won is None and mode == 0o600, (won, oct(mode))
    assert (secret.read_text() == 'root secret\n')
