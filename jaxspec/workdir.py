"""One live run per work directory: a lock file that names its holder and dies with it.

Two processes writing one work directory (a training run started twice, two spectrum scripts
on one output directory) overwrite each other's checkpoints and configs. :func:`workdir_lock`
refuses the second one, naming the process that holds the directory. The lock is an OS file
lock (``fcntl.flock``) on ``<workdir>/.lock``: the kernel releases it when its holder exits,
however it exits, so a lock left by a killed run is simply taken over; the file's content
(holder PID and host) is only there for the error message.

Where ``fcntl`` is missing (Windows) the lock is the file itself, created exclusively, and a
file whose PID is no longer running is taken over: good enough for one user on one machine.

Imports nothing beyond the standard library, so any script (and the light core) can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["LOCK_FILE", "WorkdirLockedError", "workdir_lock"]

#: Name of the lock file inside a locked work directory (removed when the lock is released).
LOCK_FILE = ".lock"


class WorkdirLockedError(RuntimeError):
    """Another live process holds the work directory.

    Attributes:
      path: the work directory.
      pid: the holder's process id (``None`` if it could not be read).
      host: the holder's host name (``None`` if it could not be read).

    Example:
      >>> import os, tempfile
      >>> from jaxspec.workdir import WorkdirLockedError, workdir_lock
      >>> d = tempfile.mkdtemp()
      >>> with workdir_lock(d):
      ...     try:
      ...         with workdir_lock(d):
      ...             pass
      ...     except WorkdirLockedError as e:
      ...         e.pid == os.getpid()
      True
    """

    def __init__(self, path: str, pid: int | None, host: str | None):
        self.path, self.pid, self.host = path, pid, host
        who = "an unknown process" if pid is None else f"PID {pid}"
        if host is not None and host != socket.gethostname():
            who += f" on host {host}"
        if pid == os.getpid() and host in (None, socket.gethostname()):
            who += " (this process)"
        super().__init__(
            f"{path} is in use by {who}: two runs writing one work directory would overwrite "
            "each other's files. Wait for it to finish, stop it, or use another directory.")


def _read_holder(lock_path: str) -> tuple[int | None, str | None]:
    # The holder writes its line right after taking the lock: retry briefly if it is empty.
    for _ in range(20):
        try:
            with open(lock_path) as f:
                text = f.read().split()
        except FileNotFoundError:
            text = []
        if len(text) >= 2 and text[0].isdigit():
            return int(text[0]), text[1]
        time.sleep(0.01)
    return None, None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    except OSError:
        return True  # cannot tell: assume alive rather than take a live run's directory
    return True


def _acquire_flock(lock_path: str) -> int | None:
    """An open descriptor holding the lock, or ``None`` if a live process holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    # A releasing holder unlinks the file: if ours was unlinked between open and flock, the lock
    # is on an orphan inode and a newcomer could lock the new file too. Retry on the new one.
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return _acquire_flock(lock_path)
    return fd


def _acquire_exclusive(lock_path: str) -> int | None:
    """The ``fcntl``-less fallback: exclusive creation, taking over a dead holder's file."""
    for _ in range(3):
        try:
            return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid, _ = _read_holder(lock_path)
            if pid is None or _pid_alive(pid):
                return None
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock_path)
    return None


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, /) -> Iterator[str]:
    """Holds ``workdir`` for this process for the duration of the block; yields its absolute path.

    Creates ``workdir`` if needed. On leaving the block the lock file is removed, and so is the
    directory if the lock created it and nothing else was written there (a run that failed
    before writing anything leaves no trace). Not re-entrant: a second lock of the same
    directory in one process is refused like any other.

    Raises:
      WorkdirLockedError: if another live process (or this one) holds ``workdir``; the
        message names its PID.

    Example:
      >>> import os, tempfile
      >>> from jaxspec.workdir import workdir_lock
      >>> d = os.path.join(tempfile.mkdtemp(), "run")
      >>> with workdir_lock(d) as path:
      ...     os.listdir(path)
      ['.lock']
      >>> os.path.exists(d)  # nothing was written: the directory is gone again
      False
    """
    path = os.path.abspath(os.fspath(workdir))
    lock_path = os.path.join(path, LOCK_FILE)
    acquire = _acquire_exclusive if fcntl is None else _acquire_flock
    for attempt in range(5):
        created = not os.path.isdir(path)
        os.makedirs(path, exist_ok=True)
        try:
            fd = acquire(lock_path)
            break
        except FileNotFoundError:
            # A failed run removed its empty directory between our makedirs and open: again.
            if attempt == 4:
                raise
    if fd is None:
        raise WorkdirLockedError(path, *_read_holder(lock_path))
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield path
    finally:
        # Unlink while still holding the lock, so no newcomer locks a file about to vanish.
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock_path)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # fails, as it should, unless the directory is empty
