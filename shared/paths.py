"""Where cached artifacts live: ``$VQBENCH_CACHE`` or ``<repo>/cache``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    return Path(os.environ.get("VQBENCH_CACHE") or REPO_ROOT / "cache")


def config_hash(cfg: dict, n: int = 12) -> str:
    """Stable short hash of a JSON-serialisable config."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:n]
