"""Reading a benchmark spec file: its YAML, as one sentence per thing wrong with the file, and the spec it names as
its `base`, laid under it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    if not path.is_file():
        raise UserError(f"{path}: spec file not found; check the path.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file (byte {exc.start} cannot be decoded); a spec is a YAML text "
                        "file, save it as UTF-8.") from None
    if "\x00" in text:
        raise UserError(f"{path}: a binary file, not a YAML spec; pass the .yaml file of the benchmark.")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{where}: malformed YAML ({problem}); fix the syntax at that line.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a spec must be a YAML mapping with keys like spec_version, name, dataset.")
    return data, node


def with_base(path: Path, data: dict[str, Any], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A spec that names a `base` (a spec file, relative to this one) is that spec with this one's keys laid over
    it: mappings merge key by key, anything else (a list of generators, a number) replaces the base's. A variant of
    a benchmark then says only how it differs."""
    if "base" not in data:
        return data
    base = (path.parent / str(data["base"])).resolve()
    if base in seen or base == path.resolve():
        raise UserError(f"{path}: `base: {data['base']}` leads back to itself; a spec's bases must end in a spec "
                        "without one.")
    parent, _ = read_yaml(base)
    merged = _laid_over(with_base(base, parent, (*seen, path.resolve())), data)
    merged.pop("base")
    return merged


def _laid_over(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _laid_over(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out
