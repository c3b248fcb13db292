"""Files shared between processes: atomic writes (a temp file renamed into place) and an exclusive lock.

A crash or kill at any moment leaves either the previous file or the complete new one, never half of one.

- Written files follow the process umask like any ``open()`` (0644 under the usual 022), so a shared cache or a
  run's metrics stay readable by the group/others the umask allows (``tempfile.mkstemp`` would make them 0600).
- The temp file is ``.<name>.<host>-<pid>-<random>.tmp`` beside the target. A killed writer leaves it behind; the
  next write of the same target (or :func:`clean_stale_temps` on a folder) deletes such leftovers when they are
  stale: written on this host by a process that is no longer alive, or untouched for :data:`STALE_AFTER_S`
  (any host: a cache folder may be on a shared filesystem). Only names of exactly this pattern (and the
  ``.<name>.XXXXXXXX.tmp`` of the earlier mkstemp-based writer, by age) are ever deleted.
- :func:`exclusive_lock` is ``fcntl.flock`` on a lock file: one process builds a shared file while the others wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "clean_stale_temps", "exclusive_lock",
           "STALE_AFTER_S"]

log = logging.getLogger(__name__)

STALE_AFTER_S = 3600.0  # a temp file untouched this long is a leftover whatever wrote it
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:32] or "host"
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9_-]{1,32})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_LEGACY_TEMP = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp(prefix=.name., suffix=.tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _is_stale(entry: os.DirEntry, now: float) -> bool:
    m = _TEMP.match(entry.name)
    if m is None and _LEGACY_TEMP.match(entry.name) is None:
        return False
    try:
        age = now - entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_AFTER_S:
        return True
    return m is not None and m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))


def clean_stale_temps(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Delete this writer's stale temp files in ``folder`` (only those of ``target``'s name if given).

    Returns the deleted paths. Call it when a process starts using a folder (a run folder, a cache folder); each
    atomic write also does it for its own target."""
    folder = Path(folder)
    prefix = f".{target}." if target is not None else "."
    now = time.time()
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")) or not entry.is_file(follow_symlinks=False):
            continue
        if target is not None:
            m = _TEMP.match(name) or _LEGACY_TEMP.match(name)
            if m is None or m["target"] != target:
                continue
        if _is_stale(entry, now):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    if removed:
        log.info("removed %d stale temp file(s) left by a killed writer in %s: %s", len(removed), folder,
                 ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else ""))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder; on success it is fsynced and renamed to ``path``, else deleted.

    The temp file exists (empty, mode 0666 minus the umask) when the body runs; writing to it by path keeps that
    mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    tmp_path = path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as for open()
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike, waiting_message: str | None = None) -> Iterator[bool]:
    """Hold an exclusive ``fcntl.flock`` on ``lock_path`` (created if missing, never deleted: deleting a lock file
    races with its next user). Yields True if another process held it and this one waited. ``waiting_message`` is
    logged (INFO) once when the lock is busy. Without ``fcntl`` (not POSIX) it does not lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield False
        return
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    waited = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            if waiting_message:
                log.info("%s", waiting_message)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield waited
    finally:
        os.close(fd)  # releases the lock
