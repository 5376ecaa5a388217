"""Content-addressed artifact cache with atomic writes.

An artifact is a folder `<root>/<stage>/<key>/` holding files and a `meta.json`. It is built in a temporary
sibling folder and renamed into place only when complete, so a killed run never leaves a half-written artifact
behind a valid key: the next run simply builds it again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.hashing import stable_hash

TMP_PREFIX = ".tmp-"


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


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


class ArtifactCache:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    @staticmethod
    def key(stage: str, **parts: Any) -> str:
        return stable_hash({"stage": stage, **parts}, length=24)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> Artifact | None:
        folder = self.path(stage, key)
        meta_file = folder / "meta.json"
        if not meta_file.is_file():
            return None
        return Artifact(stage, key, folder, json.loads(meta_file.read_text()))

    @contextmanager
    def writing(self, stage: str, key: str, meta: dict[str, Any]) -> Iterator[Path]:
        """Yield an empty temporary folder; on success it becomes the artifact, on failure it is removed."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
            record = {"stage": stage, "key": key, "created": time.time(), **meta}
            (tmp / "meta.json").write_text(json.dumps(record, indent=1, default=str))
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp)  # another process finished the same artifact first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def entries(self) -> list[Artifact]:
        found = []
        if not self.root.is_dir():
            return found
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for folder in sorted(stage_dir.iterdir()):
                if folder.name.startswith(TMP_PREFIX):
                    continue
                artifact = self.get(stage_dir.name, folder.name)
                if artifact is not None:
                    found.append(artifact)
        return found

    def leftovers(self) -> list[Path]:
        """Temporary folders of killed runs, and folders without a meta.json."""
        if not self.root.is_dir():
            return []
        out = []
        for stage_dir in (p for p in self.root.iterdir() if p.is_dir()):
            for folder in stage_dir.iterdir():
                if folder.name.startswith(TMP_PREFIX) or not (folder / "meta.json").is_file():
                    out.append(folder)
        return out

    def gc(self, keep: set[tuple[str, str]] | None, dry_run: bool = False) -> list[Path]:
        """Remove leftovers, and every artifact not in `keep` (when `keep` is given)."""
        doomed = self.leftovers()
        if keep is not None:
            doomed += [a.path for a in self.entries() if (a.stage, a.key) not in keep]
        if not dry_run:
            for path in doomed:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return doomed
