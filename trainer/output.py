"""The trainer's output directories: checked before any work, replaced whole or not at all.

Used by :func:`trainer.train.train`, :func:`trainer.merge.merge` and
:func:`trainer.combine.combine`. Two steps:

* :func:`checked_output`, before a model is loaded: ``~`` is expanded once (the path checked is
  the path written), a symlink is refused (the trainer never writes or deletes through a
  link: ``--overwrite`` on ``adapters/current -> v3`` must not destroy ``v3``), an existing
  non-directory is refused, and a non-empty directory needs ``overwrite``.
* :func:`publish`, once the work is done: everything is written into a staging directory
  beside the output (``.NAME.partial-XXXX``, so the same filesystem), then put in place by
  renames. A new output is one rename. An existing one is swapped with the staging directory
  by one ``renameat2(RENAME_EXCHANGE)`` (Linux), and the old directory, now at the staging
  path, is deleted afterwards. Where the kernel or filesystem cannot exchange, the old
  directory is renamed aside (``.NAME.previous-XXXX``), the new one renamed in, and the old one
  renamed back if that fails. So a crash leaves at ``output`` the old directory or the new one,
  each whole (in the fallback, a crash between its two renames leaves the old one whole at
  ``.NAME.previous-XXXX``). Registries never see half a directory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from trainer.config import ConfigError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# errno values meaning "this kernel or filesystem cannot exchange": use the fallback.
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


class OutputError(ConfigError):
    """The output path is one the trainer refuses to write; the message says why."""


def checked_output(path: Path | str, *, overwrite: bool) -> Path:
    """The absolute, ``~``-expanded output directory; refuse what must not be written."""
    given = str(path)
    try:
        expanded = Path(path).expanduser()
    except RuntimeError:  # "~user" naming no user, or no home directory at all
        expanded = Path(path)
    if expanded.parts and expanded.parts[0].startswith("~"):
        raise OutputError(
            f"output {given!r}: cannot expand {expanded.parts[0]!r}; give a full path"
        )
    if expanded.name in ("", ".", ".."):
        raise OutputError(f"output {given!r} names no directory to write")
    absolute = Path(os.path.abspath(expanded))  # normalised, the last part not resolved
    output = absolute.parent.resolve() / absolute.name  # symlinked parents are fine
    if output.is_symlink():
        raise OutputError(
            f"output {given!r} is a symlink (to {os.readlink(output)!r}); pass the directory "
            "itself: the trainer never writes or deletes through a link"
        )
    if output.exists():
        if not output.is_dir():
            raise OutputError(f"output {given!r} exists and is not a directory")
        if not overwrite and any(output.iterdir()):
            raise OutputError(f"output {given!r} is not empty; pass --overwrite to replace it")
    return output


def publish(output: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(staging)``, then put the staging directory in place at ``output``.

    ``output`` comes from :func:`checked_output`. Files are made world-readable (an engine may
    run as another user). Returns ``output``.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        write(staging)
        _make_readable(staging)
        _swap_in(staging, output)
    finally:
        # After an exchange this is the old directory; rmtree refuses a symlink at the top and
        # never follows one inside.
        shutil.rmtree(staging, ignore_errors=True)
    return output


def _swap_in(staging: Path, output: Path) -> None:
    if output.is_symlink():
        raise OutputError(f"output {str(output)!r} became a symlink while the trainer ran")
    if not output.exists():
        os.rename(staging, output)
        return
    if not output.is_dir():
        raise OutputError(f"output {str(output)!r} exists and is not a directory")
    if _exchange(staging, output):
        return
    aside = output.with_name(f".{output.name}.previous-{secrets.token_hex(4)}")
    os.rename(output, aside)
    try:
        os.rename(staging, output)
    except BaseException:
        os.rename(aside, output)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where that is not supported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # a libc without renameat2 (glibc < 2.28)
        return False
    path_arg = (ctypes.c_int, ctypes.c_char_p)
    renameat2.argtypes = [*path_arg, *path_arg, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, f"cannot swap {b} for the new directory: {os.strerror(code)}")


def _make_readable(directory: Path) -> None:
    """mkdtemp and safetensors create owner-only files; an engine may run as another user."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
