"""Content-addressed artifact cache: atomic writes, integrity-checked reads, one builder per key.

An artifact is a folder `<root>/<stage>/<key>/` holding files and one `meta.json`, which records what built it
(the stage's own metadata and costs) and the size and SHA-256 of every file. It is built in a temporary sibling
folder and renamed into place only when complete, so a killed run never leaves a half-written artifact behind a
valid key. Reading checks every recorded size and hash: a corrupt or truncated artifact is reported in one
sentence, moved aside and built again. A per-key file lock makes a second process wait for an artifact the first
is building and then reuse it. In a run over several processes (`harness.distributed`), rank 0 looks up and
writes; every rank builds together and then reads what rank 0 wrote.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.distributed import SINGLE, ProcessGroup
from harness.errors import UserError
from harness.hashing import stable_hash

TMP_PREFIX = ".tmp-"
CORRUPT_PREFIX = ".corrupt-"
META = "meta.json"
#: A training stage's saved state (`harness.checkpoint`): handed to the next build of the same key when a build is
#: killed, never part of the artifact.
CHECKPOINTS = "checkpoint"
FORMAT = 2  # 2: one meta.json with per-file sizes and hashes
log = logging.getLogger("harness")


def default_cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", ".harness-cache"))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so readers see either the old content or the new, never a truncated one."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _bytes(folder: Path) -> int:
    """What a folder holds on disk (0 when it is gone)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def _free(folder: Path) -> int:
    return shutil.disk_usage(folder if folder.exists() else folder.parent).free


def _inventory(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under `folder`, by relative path."""
    return {str(f.relative_to(folder)): {"size": f.stat().st_size, "sha256": file_digest(f)}
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != META}


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def size_bytes(self) -> int:
        return sum(record["size"] for record in self.meta.get("files", {}).values())


class CorruptArtifact(Exception):
    """An artifact's files do not match what its meta.json recorded."""


class ArtifactCache:
    def __init__(self, root: Path | str, group: ProcessGroup = SINGLE):
        self.root = Path(root)
        self.group = group
        self._verified: set[Path] = set()  # checked once per process; the cache only ever adds folders
        self._told_waiting = False

    @staticmethod
    def key(stage: str, **parts: Any) -> str:
        return stable_hash({"stage": stage, **parts}, length=24)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    # ------------------------------------------------------------------------------------------ reading

    def get(self, stage: str, key: str) -> Artifact | None:
        """The artifact, or None when it is absent; a corrupt one is moved aside (and reported) and None returned."""
        folder = self.path(stage, key)
        if not (folder / META).is_file():
            return None
        try:
            artifact = self._read(stage, key, folder)
        except CorruptArtifact as exc:
            aside = folder.with_name(f"{CORRUPT_PREFIX}{key}-{uuid.uuid4().hex[:8]}")
            os.replace(folder, aside)
            log.warning("cache artifact of stage %s is corrupt (%s); moved aside to %s and rebuilding it.",
                        stage, exc, aside)
            return None
        return artifact

    def _read(self, stage: str, key: str, folder: Path) -> Artifact:
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError) as exc:
            raise CorruptArtifact(f"{folder / META} is unreadable: {exc}") from None
        if meta.get("format") != FORMAT:
            raise CorruptArtifact(f"{folder / META} was written by an older harness")
        if folder not in self._verified:
            for name, record in meta["files"].items():
                file = folder / name
                size = file.stat().st_size if file.is_file() else None
                if size != record["size"]:
                    found = "missing" if size is None else f"{size} bytes"
                    raise CorruptArtifact(f"{file} is {found}, {record['size']} bytes were written")
                if file_digest(file) != record["sha256"]:
                    raise CorruptArtifact(f"{file} does not match its recorded SHA-256")
            self._verified.add(folder)
        return Artifact(stage, key, folder, meta)

    # ------------------------------------------------------------------------------------------ writing

    @contextmanager
    def writing(self, stage: str, key: str) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Yield a temporary folder and the meta dict to fill; on success both become the artifact.

        Called under the key's lock. The folder is empty but for the `checkpoint/` a killed build of the same key
        left, which training loops resume from; it is dropped from the artifact, and kept (with its temporary
        folder) when this build fails too.
        """
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        self._take_checkpoints(key, tmp)
        meta: dict[str, Any] = {}
        try:
            yield tmp, meta
            shutil.rmtree(tmp / CHECKPOINTS, ignore_errors=True)
            record = {"format": FORMAT, "stage": stage, "key": key, "created": time.time(), **meta,
                      "files": _inventory(tmp)}
            (tmp / META).write_text(json.dumps(record, indent=1, default=str))
            try:
                os.rename(tmp, final)
                self._verified.add(final)  # hashed just now, from the files written
            except OSError:
                if not (final / META).is_file():
                    raise
                shutil.rmtree(tmp)  # another process finished the same artifact first
        except BaseException as exc:
            written = _bytes(tmp)
            if not (tmp / CHECKPOINTS).is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                full = UserError(f"the disk of the cache folder {self.root} is full: stage '{stage}' needs more "
                                 f"than the {written / 2**20:.1f} MiB it had written ({_free(self.root) / 2**20:.1f} "
                                 "MiB free now); free space there or point --cache (HARNESS_CACHE) at a larger disk, "
                                 "and re-run to resume: every finished stage is kept.")
                full.from_external_stage = True  # the world outside the cache: no enclosing stage may cache it
                raise full from None
            raise

    @staticmethod
    def _take_checkpoints(key: str, tmp: Path) -> None:
        """Move the newest checkpoint folder that killed builds of `key` left into `tmp`; remove their leftovers
        (under the key's lock, no live build owns them)."""
        killed = [old for old in tmp.parent.glob(f"{TMP_PREFIX}{key}-*") if old != tmp]
        with_state = sorted((old for old in killed if (old / CHECKPOINTS).is_dir()),
                            key=lambda old: (old / CHECKPOINTS).stat().st_mtime)
        if with_state:
            os.rename(with_state[-1] / CHECKPOINTS, tmp / CHECKPOINTS)
        for old in killed:
            shutil.rmtree(old, ignore_errors=True)

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Hold the key's lock; a second process asking for it waits (and says so) until the first is done.

        The lock file is removed on release, so the cache holds no litter; a waiter that then finds it locked a
        removed file starts over on the current one.
        """
        path = self.root / ".locks" / f"{stage}-{key}"
        path.parent.mkdir(parents=True, exist_ok=True)
        waited = False
        while True:
            handle = open(path, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:  # said once on the console, every time in the run's log
                    level = logging.INFO if self._told_waiting else logging.WARNING
                    log.log(level, "waiting for another run that is computing stage %s (it shares this cache)",
                            stage)
                    waited = self._told_waiting = True
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            handle.close()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            handle.close()  # releases the lock

    def get_or_build(self, stage: str, key: str, build: Callable[[Path, dict[str, Any]], None], alone: bool = False
                     ) -> tuple[Artifact, bool]:
        """The artifact, built with `build(folder, meta)` under the key's lock when absent; True when built here.
        Over several ranks, `alone` lets rank 0 build it by itself while the others wait (see below)."""
        if self.group.active:
            return self._get_or_build_together(stage, key, build, alone)
        artifact = self.get(stage, key)
        if artifact is not None:
            return artifact, False
        with self.lock(stage, key):
            artifact = self.get(stage, key)  # another run may have built it while we waited
            if artifact is not None:
                return artifact, False
            with self.writing(stage, key) as (tmp, meta):
                build(tmp, meta)
        return self._read(stage, key, self.path(stage, key)), True

    def _get_or_build_together(self, stage: str, key: str, build: Callable[[Path, dict[str, Any]], None],
                               alone: bool) -> tuple[Artifact, bool]:
        """`get_or_build` over the ranks: rank 0 looks up (under the key's lock) and writes; the other ranks build
        alongside it in a scratch folder whose `checkpoint/` is rank 0's, so every rank resumes the same training
        state; then all read rank 0's artifact. A build that needs no other rank (`alone`: reading a dataset) runs
        on rank 0 only, as in a single process, and the others wait: they would only write a copy in scratch."""
        group, error = self.group, None
        if group.main:
            if self.get(stage, key) is not None:
                group.broadcast(None)
                return self._read(stage, key, self.path(stage, key)), False
            with self.lock(stage, key):
                if self.get(stage, key) is not None:  # another run built it while we waited
                    group.broadcast(None)
                    return self._read(stage, key, self.path(stage, key)), False
                try:
                    with self.writing(stage, key) as (tmp, meta):
                        group.broadcast(tmp)
                        with group.apart() if alone else contextlib.nullcontext():
                            build(tmp, meta)
                except BaseException as exc:
                    error = exc
        else:
            main_folder = group.broadcast(None)
            if main_folder is None:
                return self._read(stage, key, self.path(stage, key)), False
            if not alone:
                with tempfile.TemporaryDirectory(prefix="harness-rank-") as scratch:
                    (Path(scratch) / CHECKPOINTS).symlink_to(main_folder / CHECKPOINTS, target_is_directory=True)
                    try:
                        build(Path(scratch), {})
                    except BaseException as exc:
                        error = exc
        group.agree(error)
        return self._read(stage, key, self.path(stage, key)), True

    def exists(self, stage: str, key: str) -> bool:
        """Whether the artifact is cached, as rank 0 finds it (every rank must take the same branch)."""
        return self.group.broadcast(self.get(stage, key) is not None if self.group.main else None)

    # ------------------------------------------------------------------------------------------ housekeeping

    def _stage_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def entries(self) -> list[Artifact]:
        found = []
        for stage_dir in self._stage_dirs():
            for folder in sorted(stage_dir.iterdir()):
                if folder.name.startswith("."):
                    continue
                artifact = self.get(stage_dir.name, folder.name)
                if artifact is not None:
                    found.append(artifact)
        return found

    def leftovers(self) -> list[Path]:
        """Temporary folders of killed runs, corrupt artifacts moved aside, and folders without a meta.json."""
        return [folder for stage_dir in self._stage_dirs() for folder in stage_dir.iterdir()
                if folder.name.startswith((TMP_PREFIX, CORRUPT_PREFIX)) or not (folder / META).is_file()]

    def gc(self, keep: set[tuple[str, str]] | None, dry_run: bool = False) -> list[Path]:
        """Remove leftovers, and every artifact not in `keep` (when `keep` is given)."""
        doomed = self.leftovers()
        if keep is not None:
            doomed += [a.path for a in self.entries() if (a.stage, a.key) not in keep]
        if not dry_run:
            for path in doomed:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return doomed
