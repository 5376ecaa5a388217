"""Stable content hashes: the cache keys and the benchmark/spec hashes are built from these."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal configs give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def derive_seed(base: int, *names: Any) -> int:
    """A 31-bit seed derived from a base seed and names, so every stage has its own stream."""
    digest = hashlib.sha256(canonical_json([int(base), *names]).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
