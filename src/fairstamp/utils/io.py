"""Atomic writes: no reader sees a half-written file or folder; an interrupted run leaves none."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (data checksums, model provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _default_mode(folder: bool) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode(folder=False))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


class OutputClaimedError(FileExistsError):
    """Another process is writing the same output (its claim is held)."""


@dataclass
class _Claim:
    final: Path
    lock: Path
    fd: int
    created: list[Path] = field(default_factory=list)


#: outputs this process has claimed, by absolute path: a claim is re-entrant within a process, so
#: the CLI can claim `--out` at the start and the library's writer finds it already held.
_CLAIMS: dict[Path, _Claim] = {}


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def claim_lock_path(final: str | os.PathLike[str]) -> Path:
    """The lock file that claims `final`: `.NAME.claim` beside it (not `.NAME.lock`, which
    other locks, e.g. the model cache's conversion lock, already use)."""
    final = _key(Path(final))
    return final.with_name(f".{final.name}.claim")


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p `folder`; the folders it created, deepest first (to remove them if unused)."""
    missing = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        missing.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def _acquire(final: Path) -> _Claim:
    lock = claim_lock_path(final)
    created = _make_parents(lock.parent)
    try:
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, _default_mode(folder=False))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputClaimedError(
                    f"{final} is being written by another run (it holds {lock}); wait for it "
                    f"to finish or choose another output") from None
            try:  # the holder before us may have removed the file we opened: lock the new one
                if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:
        _remove_empty(created)
        raise
    return _Claim(final, lock, fd, created)


def _release(claim: _Claim) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(claim.lock)  # while still locked: the next claimant re-checks the inode
    os.close(claim.fd)
    if not claim.final.exists():
        _remove_empty(claim.created)


@contextlib.contextmanager
def claim_output(final: str | os.PathLike[str], *, overwrite: bool = False,
                 exist_ok: bool = False) -> Iterator[Path]:
    """Claim `final` for this process for the block: another process claiming it is refused at
    once (`OutputClaimedError`), and an existing `final` is refused unless `overwrite` (or
    `exist_ok`, for a run that resumes in it). The claim is a non-blocking `flock` on
    `.NAME.claim` beside `final`, removed at the end; parent folders it had to create are removed
    again when nothing was written. Re-entrant within a process."""
    final = Path(final)
    key = _key(final)
    if key in _CLAIMS:
        yield final
        return
    if final.exists() and not (overwrite or exist_ok):
        raise FileExistsError(f"{final} already exists (pass --overwrite to replace it)")
    claim = _acquire(key)
    _CLAIMS[key] = claim
    try:
        if final.exists() and not (overwrite or exist_ok):  # created while we were claiming
            raise FileExistsError(f"{final} already exists (pass --overwrite to replace it)")
        yield final
    finally:
        del _CLAIMS[key]
        _release(claim)


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove a file, link or folder tree; nothing when absent."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the filesystem cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def replace_path(new: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Put `new` (a file or folder) at `final`, replacing whatever is there (file or folder): in
    one atomic exchange where the system offers it, so `final` is never missing, then the old
    one is removed. Nothing of the old one is left behind."""
    new, final = Path(new), Path(final)
    if not final.exists() and not final.is_symlink():
        os.rename(new, final)
        return
    if _exchange(new, final):
        remove_path(new)  # `new` now holds the old one
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.rename(final, old)
    try:
        os.rename(new, final)
    except BaseException:
        os.rename(old, final)
        raise
    remove_path(old)


@contextlib.contextmanager
def staging_dir(final: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to `final` only if the block succeeds.

    Refuses an existing `final` unless `overwrite` is set, and a `final` that another process has
    claimed (`claim_output`; claimed here for the block unless this process already holds it).
    On any exception the staging folder is removed and `final` is left as it was; with
    `overwrite` the old `final` (folder or file) is replaced atomically and removed.
    """
    final = Path(final)
    with claim_output(final, overwrite=overwrite):
        if final.exists() and not overwrite:
            raise FileExistsError(f"{final} already exists (pass overwrite to replace it)")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial",
                                    dir=final.parent))
        os.chmod(tmp, _default_mode(folder=True))
        try:
            yield tmp
            replace_path(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held for the block; other processes wait for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
