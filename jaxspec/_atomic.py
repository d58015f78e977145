"""Atomic file writes: a run killed while saving leaves the previous file intact.

Every file the library and its scripts save (spectra, Lanczos checkpoints, configs, metrics,
reports) is written to a temporary file next to it, then renamed over it (``os.replace`` is
atomic on POSIX and Windows); a failed write removes the temporary file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def replacing(path: str | os.PathLike, /, *, suffix: str = ".tmp") -> Iterator[str]:
    """Yields a temporary path next to ``path``, renamed over ``path`` when the block succeeds.

    ``suffix`` ends the temporary name (``".tmp.npz"`` for ``np.savez``, which appends ``.npz``
    to a name without it).

    Example:
      >>> import os, tempfile
      >>> from jaxspec._atomic import replacing
      >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
      >>> with replacing(path) as tmp:
      ...     _ = open(tmp, "w").write("done")
      >>> open(path).read(), os.listdir(os.path.dirname(path))
      ('done', ['a.txt'])
    """
    path = os.fspath(path)
    tmp = path + suffix
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str, /, *, fsync: bool = False) -> None:
    """Writes ``text`` to ``path`` atomically (``fsync``: also flush it to the disk first).

    Example:
      >>> import os, tempfile
      >>> from jaxspec._atomic import write_text
      >>> path = os.path.join(tempfile.mkdtemp(), "a.json")
      >>> write_text(path, '{"a": 1}')
      >>> open(path).read()
      '{"a": 1}'
    """
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
