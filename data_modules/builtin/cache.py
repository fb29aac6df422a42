"""Where the built-in datasets are generated: ``$JEPA_DATA_DIR`` or ``~/.cache/jepa_platform``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(root: str | None) -> Path:
    """The folder a built-in dataset is generated into: ``root`` (``~`` expanded), or :func:`default_cache_dir`."""
    return Path(root).expanduser() if root else default_cache_dir()


def default_cache_dir() -> Path:
    return Path(os.environ.get("JEPA_DATA_DIR", Path.home() / ".cache" / "jepa_platform"))
