"""Atomic writes and strict reads: a killed run never leaves a half-written file behind.

Every file minipeft writes is written to a temporary sibling and renamed over the target
(`os.replace` is atomic on POSIX and Windows), so a reader sees either the old file or the
new one, never a mixture. A folder of several files (an adapter: config + weights) is built
as a temporary sibling folder and swapped in whole: with one `renameat2(RENAME_EXCHANGE)`
on Linux and `renamex_np(RENAME_SWAP)` on macOS, both atomic; elsewhere with two renames,
where a kill between them leaves the old folder complete under `<name>.old-*` beside it.

Reads name the file and the fix when something is wrong, instead of a parser's traceback.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

FILE_MODE = 0o644  # readable by everyone, like any file the user writes by hand


def _temporary_sibling(path: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def _fsync_directory(directory: Path) -> None:
    if os.name == "posix":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so that a kill leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path, ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding `tensors` (contiguous CPU copies)."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata=metadata)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------
# Folders: build beside, then swap in one step
# --------------------------------------------------------------------------------------
@functools.cache
def _exchange_function():
    """A C function that swaps two paths atomically, with its flag, or None."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        return lambda a, b: libc.renameat2(at_fdcwd, a, at_fdcwd, b, rename_exchange)
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rename_swap = 2
        return lambda a, b: libc.renamex_np(a, b, rename_swap)
    return None


def swap_in_directory(new: Path, target: Path) -> None:
    """Make the complete folder `new` appear at `target`, replacing any old folder there."""
    if not target.exists():
        os.replace(new, target)
        return
    exchange = _exchange_function()
    if exchange is not None and exchange(os.fsencode(new), os.fsencode(target)) == 0:
        shutil.rmtree(new)  # `new` now holds the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / "x")
    os.replace(new, target)
    shutil.rmtree(old)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it becomes `target`.

    If the body raises (or the process dies) the old `target` is untouched; the temporary
    folder is removed on an exception and is a hidden `.<name>.tmp-*` sibling otherwise.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(f, FILE_MODE)
        os.chmod(tmp, 0o755)
        swap_in_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_directory(target.parent)


# --------------------------------------------------------------------------------------
# Strict reads
# --------------------------------------------------------------------------------------
def read_json_object(path: Path, fix: str) -> dict:
    """The JSON object in `path`, or one error naming the file and `fix`: FileNotFoundError
    when it is missing, ValueError when it is not a JSON object."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing; {fix}")
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {fix}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value


def read_safetensors(path: Path, fix: str) -> tuple[dict, bytes]:
    """(tensors, raw bytes) of a safetensors file, or one ValueError naming it and `fix`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = Path(path).read_bytes()
    try:
        return load(data), data
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); {fix}") from err
