"""Names and secrets of the shm backend's group segments, and the sweep of stale ones.

A group's segment is /dev/shm/disco_ccl_<group> (csrc/ccl/communicator.h). Names are
visible to every user of the host, so they carry no secret; what keeps another job or
user out is the segment's owner and mode (checked by every joining rank) and the group
secret in its header, which travels only through the session (`session_setup`, on the
controller; for the per-axis groups of disco/spmd.py, derived from one such secret).
Group names are `disco-<pid>-<random>`: pid is the controller's, a process alive while
the group may be forming; the random part keeps two jobs (of one user or two) apart.

A worker 0 killed between creating a segment and the last rank's attach leaves its
name behind. The session that named the group unlinks it when init_ccl fails and at
shutdown (`unlink_groups`); if the controller died too, `sweep_stale` unlinks the
names of this form whose pid is dead and whose segment is ours, before a session makes
a new group.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat

SHM_DIR = "/dev/shm"
_PREFIX = "disco_ccl_"
_OURS = re.compile(r"disco_ccl_disco-(\d+)-[0-9a-f]+(?:-[0-9a-f]+)*$")


def new_group_name() -> str:
    """A group name no other job can guess: disco-<this pid>-<96 random bits>."""
    return f"disco-{os.getpid()}-{secrets.token_hex(12)}"


def new_secret() -> str:
    """A group secret (hex text, 128 bits)."""
    return secrets.token_hex(16)


def derived(secret: str, *parts) -> str:
    """A secret (or name part) for a sub-group, derived from `secret` and `parts`:
    unpredictable to whoever does not know `secret`."""
    return hashlib.sha256("\0".join([secret, *map(str, parts)]).encode()).hexdigest()[:32]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process: alive
        return True
    return True


def unlink_groups(groups, directory: str = SHM_DIR) -> None:
    """Unlink what is left of the segments of `groups` (names a session made, and the
    names that begin with them: per-axis groups) when they are ours: after a worker 0
    died while its group formed, or at shutdown."""
    groups = tuple(_PREFIX + g for g in groups)
    if not groups:
        return
    try:
        names = [n for n in os.listdir(directory) if n.startswith(groups)]
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                os.unlink(path)
        except OSError:
            pass


def sweep_stale(directory: str = SHM_DIR) -> list[str]:
    """Unlink group segments left by dead creators: names of this module's form whose pid
    is not running, regular files owned by this user. Returns the names unlinked."""
    try:
        names = [n for n in os.listdir(directory) if n.startswith(_PREFIX)]
    except OSError:
        return []
    swept = []
    for name in names:
        m = _OURS.match(name)
        if m is None or _alive(int(m.group(1))):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                os.unlink(path)
                swept.append(name)
        except OSError:
            pass   # gone meanwhile, or not ours to remove
    return swept
