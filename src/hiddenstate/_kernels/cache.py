"""Where a compiled kernel is cached and loaded from: a directory no one but its user can write.

Loading a shared object runs its code, so an object is trusted only as far as the directory that
holds it. As ssh's ``StrictModes`` does for ``~/.ssh``, the cache directory must belong to the
user and be writable by no one else, and every directory above it must belong to the user or
root and be writable by no one else either (unless it is sticky, like ``/tmp``, where no one
else can rename or delete what is inside). An unsafe directory is never used: :func:`cache_dir`
warns and returns a fresh private one instead, for this process only.

Inside a safe directory, each object ``NAME.so`` has a record ``NAME.so.sha256`` written when it
was built; :func:`verified` checks the object against it, and an object without a record, or
that differs from it (a truncated or damaged file), is rebuilt, never loaded. Since no one else
can write the directory, what was checked is what is loaded. :func:`install` puts a freshly
built object and its record in place, each by one rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import warnings
from pathlib import Path

__all__ = ["cache_dir", "install", "unsafe_reason", "verified"]


def unsafe_reason(path: Path) -> str | None:
    """Why ``path`` may not hold code this process loads, or None when it is safe."""
    if not hasattr(os, "getuid"):  # no POSIX owners or modes to check (Windows)
        return None
    uid = os.getuid()
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"cannot be inspected: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by this user (uid {uid})"
    if st.st_mode & 0o022:
        return f"is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):o})"
    for parent in path.resolve().parents:
        st = os.stat(parent)
        if st.st_uid not in (uid, 0):
            return f"is inside {parent}, which is owned by uid {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return (
                f"is inside {parent}, which is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):o})"
            )
    return None


def cache_dir(preferred: Path) -> tuple[Path, bool]:
    """``(directory, private)``: ``preferred`` (created ``0700`` when missing) when it is safe,
    else a fresh private directory that the caller removes once the object is loaded."""
    with contextlib.suppress(OSError):  # an unwritable place is reported below as unsafe
        preferred.mkdir(mode=0o700, parents=True, exist_ok=True)
    reason = unsafe_reason(preferred)
    if reason is None:
        return preferred, False
    warnings.warn(
        f"the kernel cache {preferred} {reason}, so a compiled object there could have been planted; "
        "building the fused kernel in a private directory instead (set HIDDENSTATE_CACHE_DIR to a directory "
        "only you can write)",
        RuntimeWarning,
        stacklevel=3,
    )
    return Path(tempfile.mkdtemp(prefix="hiddenstate-kernel-")), True


def _record(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def verified(target: Path) -> bool:
    """True when ``target`` is a regular file of this user, writable by no one else, whose sha256
    equals the record written when it was built."""
    try:
        expected = _record(target).read_text().strip()
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        owner_ok = not hasattr(os, "getuid") or st.st_uid == os.getuid()
        if not stat.S_ISREG(st.st_mode) or not owner_ok or st.st_mode & 0o022:
            return False
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        return digest.hexdigest() == expected
    finally:
        os.close(fd)


def install(built: Path, target: Path) -> None:
    """Move the object ``built`` (in ``target``'s directory) to ``target``, its sha256 record first."""
    digest = hashlib.sha256(built.read_bytes()).hexdigest()
    fd, tmp = tempfile.mkstemp(suffix=".sha256.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(digest + "\n")
        os.replace(tmp, _record(target))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.replace(built, target)  # atomic: a concurrent build leaves one complete object
