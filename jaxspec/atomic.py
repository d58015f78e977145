"""Atomic file writes: a run killed while saving leaves the previous file intact.

Every file the library and its scripts save (spectra, Lanczos checkpoints, configs, metrics,
reports) is written to a temporary file next to it, flushed to the disk, then renamed over it
(``os.replace`` is atomic on POSIX and Windows); a failed write removes the temporary file.

Each write gets its own temporary name (``tempfile.mkstemp`` in the target's directory): two
writers of one file never share a temporary, so neither can rename the other's half-written
bytes into place or find its own temporary gone, and a reader sees the old file or a new one,
never a mixture. The name starts with a dot, so ``*.json``-style globs do not pick it up.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

__all__ = ["replacing", "write_text"]


def _umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before threads exist.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _fsync_dir(directory: str) -> None:
    # The rename itself is durable only once the directory entry is on the disk (POSIX).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open a directory; its rename is journalled by NTFS
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, /, *, suffix: str = ".tmp",
              fsync: bool = True) -> Iterator[str]:
    """Yields a fresh temporary path next to ``path``, renamed over ``path`` when the block succeeds.

    ``suffix`` ends the temporary name (``".tmp.npz"`` for ``np.savez``, which appends ``.npz``
    to a name without it). The temporary file exists (empty) when the block starts; write it by
    name. ``fsync`` (default): flush its bytes to the disk before the rename, and the rename
    after, so a power cut cannot leave an empty file under the final name.

    Example:
      >>> import os, tempfile
      >>> from jaxspec.atomic import replacing
      >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
      >>> with replacing(path) as tmp:
      ...     _ = open(tmp, "w").write("done")
      >>> open(path).read(), os.listdir(os.path.dirname(path))
      ('done', ['a.txt'])
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, _FILE_MODE)
        if fsync:
            fd = os.open(tmp, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str, /, *, fsync: bool = True) -> None:
    """Writes ``text`` to ``path`` atomically (``fsync``: flushed to the disk before the rename).

    Example:
      >>> import os, tempfile
      >>> from jaxspec.atomic import write_text
      >>> path = os.path.join(tempfile.mkdtemp(), "a.json")
      >>> write_text(path, '{"a": 1}')
      >>> open(path).read()
      '{"a": 1}'
    """
    with replacing(path, fsync=fsync) as tmp, open(tmp, "w") as f:
        f.write(text)
