"""What the rest of tracking needs to know about a store and the source before anything is logged: whether the
MLflow store can be used (one line if not), and the git state recorded with each run. Imported by the logger, the
outbox (``jepa sync``), sweeps and ``jepa compare``; it imports none of them."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from jepa_platform.errors import ConfigError
from jepa_platform.settings import unwritable


def _sqlite_dir(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None


def check_tracking_uri(uri: str, timeout: float) -> None:
    """One-line error if the store cannot be used: a server that does not answer ``/health`` within ``timeout``
    seconds, or a local store whose directory cannot be written."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                response.read(64)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(
                f"MLflow tracking server {uri} is unreachable ({reason}): start it, fix logger.tracking_uri, or train without it with logger=none"
            ) from exc
        return
    local = _sqlite_dir(uri) or (Path(uri.removeprefix("file://")) if uri.startswith("file://") or "://" not in uri else None)
    db = Path(uri.removeprefix("sqlite:///")) if _sqlite_dir(uri) else None
    if local is not None and (unwritable(local) is not None or (db is not None and db.exists() and not os.access(db, os.W_OK))):
        raise ConfigError(
            f"the MLflow store {uri} is not writable: fix its permissions, set paths.runs_dir to a writable directory, or use logger=none"
        )


def git_state(path: Path | None = None) -> dict[str, str]:
    """The commit of the source tree that holds this package (or ``path``) and whether it has uncommitted changes,
    as MLflow tags; ``unknown`` outside a git checkout (an installed wheel)."""

    where = path or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return {"jepa.git.commit": "unknown", "jepa.git.dirty": "unknown"}
    dirty = str(bool(status.stdout.strip())).lower()
    return {"jepa.git.commit": commit, "jepa.git.dirty": dirty, "mlflow.source.git.commit": commit}
