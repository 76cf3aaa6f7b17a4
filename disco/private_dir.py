"""Private directories for files that become native code (the kernel caches).

A shared object found in a cache is dlopen'ed, so whoever can write the cache runs code
as us. A cache directory is therefore used only when it is private: a real directory
(not a symbolic link), owned by this user, not writable by group or others; one that
is missing is created with mode 0700. A directory that fails this, cannot be created
or is not writable is not an error (a read-only home is common in containers): the
cache moves to a private temporary directory of this process (mkdtemp: random name,
0700, removed at exit), with a warning (once per directory and reason) that says why.

`write_atomic` puts a file in place under a temporary name and renames it, removing the
temporary file whatever fails, so concurrent writers never see half a file and no
`.tmp` is left behind.
"""
from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
import threading
import warnings


class CacheWarning(UserWarning):
    """A kernel cache directory was not usable; a private temporary one is used instead."""


_fallbacks: dict[str, str] = {}   # what -> this process's temporary directory for it
_warned: set[tuple[str, str]] = set()   # (path, why) said once per process
_lock = threading.Lock()


def why_not_private(path: str) -> str | None:
    """Why `path` must not hold code we load (None when it is a private directory)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def why_not_trusted_file(path: str) -> str | None:
    """Why the file at `path` must not be loaded (None: a regular file of ours that
    only we can write)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def private_dir(path: str, what: str) -> str:
    """`path` when it is (or could be created as) a private directory, else this
    process's private temporary directory for `what`, after one CacheWarning."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        why = why_not_private(path)
    except OSError as e:
        why = f"it cannot be created ({e.strerror or e})"
    if why is None:
        return path
    with _lock:
        fallback = _fallbacks.get(what)
        if fallback is None:
            fallback = _fallbacks[what] = tempfile.mkdtemp(prefix=f"disco-{what}-")
            atexit.register(shutil.rmtree, fallback, True)
        if (path, why) not in _warned:
            _warned.add((path, why))
            warnings.warn(f"disco: not using {path!r} for the {what} cache: {why}; using the private "
                          f"temporary directory {fallback!r} for this process", CacheWarning, stacklevel=3)
    return fallback


def write_atomic(directory: str, name: str, data: bytes) -> str:
    """Write `data` to directory/name (mode 0600) through a temporary file renamed into
    place; the temporary file is gone whatever happens. Returns the path."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        target = os.path.join(directory, name)
        os.replace(tmp, target)
        return target
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
