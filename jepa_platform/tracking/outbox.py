"""A run's MLflow records survive a tracking server that goes away mid-run: nothing is lost, nothing arrives twice.

:class:`OutboxClient` wraps the ``MlflowClient`` of a training run. Reads pass through. Writes (metrics, params,
tags, artifacts, the run's status) are sent at once while the store answers; when a write fails because the store
cannot be reached, it goes to the :class:`Outbox` (a JSON-lines journal in the run directory, with copies of the
artifact files), and so does every later write, in order, until a retry (every ``retry_every`` seconds, on the
next write) delivers the whole journal. Training never waits for more than one request timeout per retry.

Exactly once: a write whose request reached the server but whose answer was lost is in the journal too. Before
replaying, the client asks the server which steps of each journalled metric it already holds and skips those;
params and tags are idempotent, an artifact re-sent to the same path replaces itself, and the run's final status is
set once the rest is in. If the server is still away when the run ends, the journal stays in
``<run dir>/mlflow-outbox/`` and ``jepa sync <run dir>`` uploads it later (also after a crash: the journal is
written as the run goes).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jepa_platform.errors import ConfigError, JepaError

log = logging.getLogger(__name__)
OUTBOX_DIR = "mlflow-outbox"
JOURNAL = "journal.jsonl"
HEADER = "outbox.json"
#: write methods of ``MlflowClient`` that the outbox journals (any other call passes through unprotected)
JOURNALLED = ("log_batch", "log_metric", "log_param", "set_tag", "log_artifact", "log_artifacts", "set_terminated", "update_run")


def is_outage(exc: BaseException) -> bool:
    """Whether a failed MLflow call means "the store cannot be reached now" (network, timeout, 5xx, a locked
    database) rather than "this request is wrong" (a 4xx answer such as an invalid parameter), which must surface."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, RestException):
        return exc.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
    return isinstance(exc, MlflowException | OSError | ConnectionError | TimeoutError) or type(exc).__module__.startswith(("requests", "urllib3"))


def _now_ms() -> int:
    return int(time.time() * 1000)


class Outbox:
    """The journal of writes not yet delivered to one MLflow run: ``journal.jsonl`` (one write per line, in order)
    and ``files/<n>/`` (copies of the artifacts, so that temporary files may go), under ``directory``."""

    def __init__(self, directory: Path, tracking_uri: str, run_id: str) -> None:
        self.directory, self.tracking_uri, self.run_id = Path(directory), tracking_uri, run_id
        self._count: int | None = None

    @classmethod
    def open(cls, directory: Path) -> Outbox:
        """The outbox a run left in ``directory`` (one-line error if there is none or it is not one)."""
        header = Path(directory) / HEADER
        try:
            info = json.loads(header.read_text())
            return cls(Path(directory), str(info["tracking_uri"]), str(info["run_id"]))
        except FileNotFoundError as exc:
            raise ConfigError(f"{directory} holds no MLflow outbox ({HEADER} is missing)") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{header} is not an outbox header (JSON with tracking_uri and run_id): {exc}") from exc

    @property
    def journal(self) -> Path:
        return self.directory / JOURNAL

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for line in self.journal.open() if line.strip()) if self.journal.is_file() else 0
        return self._count

    def _prepare(self) -> None:
        if not (self.directory / HEADER).is_file():
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / HEADER).write_text(json.dumps({"tracking_uri": self.tracking_uri, "run_id": self.run_id}, indent=2))

    def append(self, op: dict[str, Any]) -> None:
        """Journal one write; artifact files are copied into the outbox first."""
        self._prepare()
        n = len(self)
        if op["op"] in ("log_artifact", "log_artifacts"):
            source, target = Path(op.pop("local_path")), self.directory / "files" / str(n)
            target.mkdir(parents=True, exist_ok=True)
            if op["op"] == "log_artifact":
                shutil.copy2(source, target / source.name)
                op["file"] = f"files/{n}/{source.name}"
            else:
                shutil.copytree(source, target, dirs_exist_ok=True)
                op["file"] = f"files/{n}"
        with self.journal.open("a") as f:
            f.write(json.dumps(op) + "\n")
        self._count = n + 1

    def read(self) -> list[dict[str, Any]]:
        if not self.journal.is_file():
            return []
        ops, lines = [], self.journal.read_text().splitlines()
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                ops.append(json.loads(line))
            except ValueError as exc:  # a line cut short by a crash mid-write can only be the last one
                if i < len(lines):
                    raise ConfigError(f"{self.journal} line {i} is not JSON ({exc}): fix or remove that line, then jepa sync again") from exc
                log.warning("ignoring the cut-short last line of %s", self.journal)
        return ops

    def keep(self, ops: list[dict[str, Any]]) -> None:
        """Rewrite the journal with the writes still to deliver (empty: remove the outbox)."""
        if not ops:
            shutil.rmtree(self.directory, ignore_errors=True)
            self._count = 0
            return
        tmp = self.journal.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(op) + "\n" for op in ops))
        tmp.replace(self.journal)
        self._count = len(ops)


def encode(name: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A journal entry for ``MlflowClient.<name>(*args, **kwargs)`` (its arguments as plain JSON)."""
    import inspect

    from mlflow import MlflowClient

    bound = inspect.signature(getattr(MlflowClient, name)).bind(None, *args, **kwargs).arguments
    run_id = bound["run_id"]
    if name == "log_batch":
        return {
            "op": "log_batch",
            "run_id": run_id,
            "metrics": [[m.key, m.value, m.timestamp, m.step] for m in bound.get("metrics") or []],
            "params": [[p.key, p.value] for p in bound.get("params") or []],
            "tags": [[t.key, t.value] for t in bound.get("tags") or []],
        }
    if name == "log_metric":
        metric = [bound["key"], float(bound["value"]), bound.get("timestamp") or _now_ms(), bound.get("step") or 0]
        return {"op": "log_batch", "run_id": run_id, "metrics": [metric], "params": [], "tags": []}
    if name in ("log_param", "set_tag"):
        field = "params" if name == "log_param" else "tags"
        return {"op": "log_batch", "run_id": run_id, "metrics": [], "params": [], "tags": [], field: [[bound["key"], str(bound["value"])]]}
    if name in ("log_artifact", "log_artifacts"):
        return {
            "op": name,
            "run_id": run_id,
            "local_path": str(bound["local_path" if name == "log_artifact" else "local_dir"]),
            "artifact_path": bound.get("artifact_path"),
        }
    if name == "set_terminated":
        return {"op": name, "run_id": run_id, "status": bound.get("status") or "FINISHED", "end_time": bound.get("end_time") or _now_ms()}
    return {"op": name, "run_id": run_id, "status": bound.get("status"), "name": bound.get("name")}


def replay(client: Any, outbox: Outbox, ops: list[dict[str, Any]]) -> dict[str, int]:
    """Deliver journalled writes in order, skipping metric steps the server already holds; the journal keeps
    whatever was not delivered when an outage interrupts (raised). Returns counts of what was sent and skipped."""
    from mlflow.entities import Metric, Param, RunTag

    held: dict[tuple[str, str], set[int]] = {}
    keys = {(op["run_id"], m[0]) for op in ops if op["op"] == "log_batch" for m in op["metrics"]}
    for run_id, key in keys:
        held[(run_id, key)] = {m.step for m in client.get_metric_history(run_id, key)}
    counts: dict[str, int] = defaultdict(int)
    for i, op in enumerate(ops):
        try:
            if op["op"] == "log_batch":
                fresh = [m for m in op["metrics"] if m[3] not in held[(op["run_id"], m[0])]]
                counts["metric values skipped (already there)"] += len(op["metrics"]) - len(fresh)
                metrics = [Metric(k, v, ts, step) for k, v, ts, step in fresh]
                params = [Param(k, v) for k, v in op["params"]]
                tags = [RunTag(k, v) for k, v in op["tags"]]
                if metrics or params or tags:
                    client.log_batch(op["run_id"], metrics=metrics, params=params, tags=tags)
                for k, _, _, step in fresh:
                    held[(op["run_id"], k)].add(step)
                counts["metric values"] += len(fresh)
                counts["params and tags"] += len(params) + len(tags)
            elif op["op"] in ("log_artifact", "log_artifacts"):
                method = client.log_artifact if op["op"] == "log_artifact" else client.log_artifacts
                method(op["run_id"], str(outbox.directory / op["file"]), op.get("artifact_path"))
                counts["artifact uploads"] += 1
            elif op["op"] == "set_terminated":
                client.set_terminated(op["run_id"], op["status"], op["end_time"])
                counts["status updates"] += 1
            else:
                client.update_run(op["run_id"], status=op.get("status"), name=op.get("name"))
                counts["status updates"] += 1
        except BaseException:
            outbox.keep(ops[i:])
            raise
    outbox.keep([])
    return dict(counts)


class OutboxClient:
    """An ``MlflowClient`` whose writes survive outages of the store (see the module docstring).

    Args:
        client: the client to wrap.
        outbox: where undelivered writes wait.
        retry_every: seconds between two attempts to deliver the journal while the store is away.
        on_outage: called once with the error when the store becomes unreachable (a warning by default).
    """

    def __init__(self, client: Any, outbox: Outbox, retry_every: float = 30.0, on_outage: Callable[[BaseException], None] | None = None) -> None:
        self._client, self.outbox, self.retry_every = client, outbox, retry_every
        self._next_try = 0.0
        self._lock = threading.RLock()  # the run logger's writer thread and the main thread both write
        self._on_outage = on_outage or (
            lambda exc: log.warning("MLflow store unreachable (%s): writes go to %s until it returns", exc, outbox.directory)
        )

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in JOURNALLED:
            return attr
        return lambda *args, **kwargs: self._write(name, args, kwargs)

    @property
    def pending(self) -> int:
        """Writes waiting in the outbox."""
        return len(self.outbox)

    def _write(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        with self._lock:
            return self._write_locked(name, args, kwargs)

    def _write_locked(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        if self.pending:
            self.outbox.append(encode(name, args, kwargs))
            if time.monotonic() >= self._next_try:
                self.flush()
            return None
        try:
            return getattr(self._client, name)(*args, **kwargs)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._down(exc)
            self.outbox.append(encode(name, args, kwargs))
            return None

    def _down(self, exc: BaseException) -> None:
        self._next_try = time.monotonic() + self.retry_every
        self._on_outage(exc)

    def flush(self) -> bool:
        """Try to deliver the journal now; ``True`` when nothing is left waiting."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> bool:
        ops = self.outbox.read()
        if not ops:
            return True
        try:
            counts = replay(self._client, self.outbox, ops)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._next_try = time.monotonic() + self.retry_every
            return False
        log.warning("MLflow store back: delivered the outbox (%s)", ", ".join(f"{v} {k}" for k, v in counts.items()))
        return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories (or their mlflow-outbox folders)")
    parser.add_argument("--tracking-uri", default=None, help="send to this store instead of the one the run used")


def main(args: list[str]) -> int:
    """``jepa sync RUN_DIR...``: upload what runs could not send to their MLflow store (metrics, params, tags,
    artifacts, final status), exactly once."""
    import mlflow

    from jepa_platform.tracking.store import check_tracking_uri

    parser = argparse.ArgumentParser(prog="jepa sync", description=main.__doc__.splitlines()[0])
    add_arguments(parser)
    parsed = parser.parse_args(args)
    for run_dir in parsed.run_dirs:
        directory = run_dir if (run_dir / HEADER).is_file() else run_dir / OUTBOX_DIR
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir} is not a directory: give the run directory of a jepa train run")
        if not (directory / HEADER).is_file():
            print(f"{run_dir}: nothing to upload")
            continue
        outbox = Outbox.open(directory)
        uri = parsed.tracking_uri or outbox.tracking_uri
        check_tracking_uri(uri, timeout=15)
        ops = outbox.read()
        try:
            counts = replay(mlflow.MlflowClient(tracking_uri=uri), outbox, ops)
        except Exception as exc:
            if is_outage(exc):
                raise JepaError(
                    f"the MLflow store {uri} failed during the upload ({exc}); what is left stays in {directory}: run jepa sync again"
                ) from exc
            raise
        done = ", ".join(f"{v} {k}" for k, v in counts.items()) or "nothing new"
        print(f"{run_dir}: uploaded to run {outbox.run_id} in {uri}: {done}", file=sys.stdout)
    return 0
