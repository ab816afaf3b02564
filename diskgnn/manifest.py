"""Versioned manifests and atomic publication of output directories.

A diskgnn output directory (dataset, samples, packed) is complete exactly when
its ``manifest.json`` exists and parses: every step writes its data files
first and the manifest last, atomically (write ``*.partial``, fsync, rename).
Reading checks the format name and version before anything else.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

from diskgnn.errors import (DiskFullError, ManifestError, ManifestNotFoundError,
                            OutputExistsError, ConfigError)

MANIFEST_NAME = "manifest.json"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via a fsynced temporary file and a rename."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` via a fsynced temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    data = text.encode()
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        _remove_quietly(tmp)
        raise_if_disk_full(exc, path.parent)
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# Bytes each output directory is expected to take (a number, or a function that estimates it
# from the progress so far), so that a disk-full error can say how much space the step needs.
_expected_bytes: dict[str, Any] = {}


def _key(directory: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(directory))


def expect_output_bytes(directory: str | os.PathLike, nbytes) -> None:
    """Record the size (bytes, or a function returning an estimate) that a step will write under ``directory``."""
    _expected_bytes[_key(directory)] = nbytes


def expected_output_bytes(directory: str | os.PathLike) -> int | None:
    """The recorded expected size for ``directory`` or the nearest parent directory that has one."""
    path = _key(directory)
    while True:
        if path in _expected_bytes:
            value = _expected_bytes[path]
            try:
                return int(value() if callable(value) else value)
            except Exception:  # an estimate must never hide the disk-full error itself
                return None
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def _free_bytes(directory: str | os.PathLike) -> int:
    path = Path(directory)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def check_free_space(directory: str | os.PathLike, needed: int, what: str = "the output") -> None:
    """Raise :class:`DiskFullError` before writing when ``directory``'s filesystem has less than ``needed`` free."""
    from diskgnn.sizes import format_bytes
    free = _free_bytes(directory)
    if needed > free:
        raise DiskFullError(
            errno.ENOSPC,
            f"not enough space for {what} in {directory}: it needs about {format_bytes(needed)}, the disk has "
            f"{format_bytes(free)} free. Free some space or choose another --out directory")


def raise_if_disk_full(exc: OSError, directory: str | os.PathLike, needed: int | None = None) -> None:
    """Re-raise ``exc`` as :class:`DiskFullError` with advice when it is ENOSPC/EDQUOT."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        from diskgnn.sizes import format_bytes
        free = _free_bytes(directory)
        if needed is None:
            needed = expected_output_bytes(directory)
        need = f" the output needs about {format_bytes(needed)} and" if needed else ""
        raise DiskFullError(
            errno.ENOSPC,
            f"the disk holding {directory} is full:{need} {format_bytes(free)} is free. "
            f"Free some space or choose another --out directory, then run the command again "
            f"(nothing half-written was kept)") from exc


def write_manifest(directory: str | os.PathLike, kind: str, version: int, body: dict) -> dict:
    """Publish ``body`` as the manifest of ``directory`` (the last write of a step)."""
    manifest = {"format": kind, "version": version, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    manifest.update(body)
    write_json_atomic(Path(directory) / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(directory: str | os.PathLike, kind: str, version: int) -> dict:
    """Read and check the manifest of ``directory``: format name first, then version."""
    directory = Path(directory)
    if not directory.exists():
        raise ManifestNotFoundError(f"{directory} does not exist; give the directory that a diskgnn step wrote")
    if not directory.is_dir():
        raise ManifestError(f"{directory} is not a directory; give the {kind} directory that a diskgnn step wrote")
    path = directory / MANIFEST_NAME
    if not path.exists():
        raise ManifestNotFoundError(
            f"{path} is missing, so {directory} is not a complete {kind} directory "
            f"(the step that writes it did not finish); run that step again")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); re-create {directory} with the step that made it") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path} does not hold a JSON object; re-create {directory}")
    found = manifest.get("format")
    if found != kind:
        raise ManifestError(f"{directory} holds a {found!r} manifest, expected {kind!r}; "
                            f"check which directory you passed")
    found_version = manifest.get("version")
    if found_version != version:
        raise ManifestError(f"{path} has {kind} format version {found_version!r}, this diskgnn reads version "
                            f"{version}; re-create {directory} with this version of diskgnn")
    return manifest


def prepare_output_dir(directory: str | os.PathLike, *, overwrite: bool, kinds: tuple[str, ...] = ()) -> Path:
    """Make ``directory`` ready for a new output.

    An empty or missing directory is fine. A directory that holds an unfinished
    output (no manifest) is cleared: it never looked complete. A finished output
    or foreign files are only replaced with ``overwrite``.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--out {directory} exists and is not a directory; choose a directory path")
    if directory.exists():
        entries = list(directory.iterdir())
        if entries:
            has_manifest = (directory / MANIFEST_NAME).exists()
            ours = (directory / ".diskgnn-partial").exists()
            if has_manifest and ours:
                # killed between publishing the manifest and dropping the marker: the output is finished
                finish_output_dir(directory)
            if not overwrite and (has_manifest or not ours):
                what = "a finished diskgnn output" if has_manifest else "files that diskgnn did not write"
                raise OutputExistsError(
                    f"{directory} already holds {what}; pass --overwrite to replace it or choose another --out")
            _clear_directory(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ".diskgnn-partial").write_text("this directory is being written by diskgnn\n")
    except OSError as exc:
        raise_if_disk_full(exc, directory.parent if not directory.exists() else directory)
        raise ConfigError(f"cannot create output directory {directory}: {exc.strerror}") from None
    return directory


def abort_output_dir(directory: str | os.PathLike) -> None:
    """Remove everything a failed step wrote, leaving only the partial marker (never a complete-looking output)."""
    try:
        _clear_directory(Path(directory))
        (Path(directory) / ".diskgnn-partial").write_text("aborted\n")
    except OSError:
        pass


def finish_output_dir(directory: str | os.PathLike) -> None:
    """Drop the in-progress marker once the manifest is published."""
    _remove_quietly(Path(directory) / ".diskgnn-partial")


def _clear_directory(directory: Path) -> None:
    # Manifest first, so a crash midway never leaves a complete-looking directory.
    _remove_quietly(directory / MANIFEST_NAME)
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class Crc32Writer:
    """A binary file writer that computes the crc32 of what it writes.

    ``resume`` (the ``{"bytes", "crc32"}`` that :meth:`sync` returned) continues a
    file that an interrupted run was writing: it is cut back to ``bytes`` and the
    checksum goes on from ``crc32``, so the result equals one uninterrupted write.
    """

    def __init__(self, path: str | os.PathLike, *, resume: dict | None = None):
        self.path = Path(path)
        self.crc = 0 if resume is None else int(resume["crc32"])
        self.nbytes = 0 if resume is None else int(resume["bytes"])
        try:
            if resume is None:
                self._f = open(self.path, "wb")
            else:
                self._f = open(self.path, "r+b")
                self._f.truncate(self.nbytes)
                self._f.seek(self.nbytes)
        except OSError as exc:
            raise_if_disk_full(exc, self.path.parent)
            raise

    def write(self, data) -> None:
        mv = memoryview(data).cast("B")
        self.crc = zlib.crc32(mv, self.crc)
        self.nbytes += mv.nbytes
        try:
            self._f.write(mv)
        except OSError as exc:
            self._close_quietly()
            raise_if_disk_full(exc, self.path.parent)
            raise

    def pad_to(self, alignment: int) -> None:
        rem = self.nbytes % alignment
        if rem:
            self.write(bytes(alignment - rem))

    def sync(self) -> dict:
        """Flush and fsync what was written; returns ``{"bytes", "crc32"}`` (what ``resume`` takes)."""
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as exc:
            self._close_quietly()
            raise_if_disk_full(exc, self.path.parent)
            raise
        return {"bytes": self.nbytes, "crc32": self.crc}

    def close(self) -> dict:
        info = self.sync()
        self._f.close()
        return info

    def _close_quietly(self) -> None:
        # Closing flushes the buffer again; on a full disk that fails too and would hide the first error.
        try:
            self._f.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._f.closed:
            self._close_quietly()


def file_crc32(path: str | os.PathLike, chunk: int = 16 << 20, limit: int | None = None) -> int:
    """crc32 of a whole file (or of its first ``limit`` bytes), read in large chunks."""
    crc = 0
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(chunk if left is None else min(chunk, left))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            if left is not None:
                left -= len(block)
    return crc


# --- resuming an interrupted step ----------------------------------------------------------------

RESUME_JOURNAL = "resume.json"
"""The journal a resumable step keeps in its unfinished output directory (removed before the manifest)."""


def write_resume_journal(directory: str | os.PathLike, key: dict, files: dict[str, dict], state: dict) -> None:
    """Record (atomically) how far a step got: ``files`` maps each kept file (path relative to ``directory``)
    to the ``{"bytes", "crc32"}`` of its finished prefix, already fsynced; ``state`` is the step's own
    progress. ``key`` says which command wrote it (a rerun resumes only with an equal key)."""
    write_json_atomic(Path(directory) / RESUME_JOURNAL, {"key": key, "files": files, "state": state})


def read_resume_journal(directory: str | os.PathLike, key: dict) -> dict | None:
    """The journal that an interrupted run of the same command left in ``directory``, or None.

    Only an unfinished directory (marked partial, no manifest) is resumed, only
    when its journal has the same ``key``, and only when every file it lists
    still holds at least the recorded bytes with the recorded crc32 over them
    (anything after that is what the killed run wrote after its last journal).
    """
    directory = Path(directory)
    path = directory / RESUME_JOURNAL
    if not (directory / ".diskgnn-partial").exists() or (directory / MANIFEST_NAME).exists() or not path.exists():
        return None
    try:
        journal = json.loads(path.read_text())
        if not isinstance(journal, dict) or journal.get("key") != key or not isinstance(journal.get("state"), dict):
            return None
        for rel, info in journal["files"].items():
            target = directory / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts or not target.is_file():
                return None
            nbytes, crc = int(info["bytes"]), int(info["crc32"])
            if target.stat().st_size < nbytes or file_crc32(target, limit=nbytes) != crc:
                return None
        return journal
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def prepare_resumable_output_dir(directory: str | os.PathLike, key: dict, *,
                                 overwrite: bool) -> tuple[Path, dict | None]:
    """Like :func:`prepare_output_dir`, but keep what an interrupted run of the same command finished.

    Returns the directory and the checked journal (None: start from zero). When
    resuming, every entry that the journal does not list is removed.
    """
    journal = None if overwrite else read_resume_journal(directory, key)
    if journal is None:
        return prepare_output_dir(directory, overwrite=overwrite), None
    directory = Path(directory)
    keep = {Path(".diskgnn-partial"), Path(RESUME_JOURNAL)} | {Path(rel) for rel in journal["files"]}
    _remove_except(directory, directory, keep)
    return directory, journal


def _remove_except(root: Path, directory: Path, keep: set[Path]) -> None:
    for entry in directory.iterdir():
        rel = entry.relative_to(root)
        if rel in keep:
            continue
        if entry.is_dir() and not entry.is_symlink() and any(rel in k.parents for k in keep):
            _remove_except(root, entry, keep)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
