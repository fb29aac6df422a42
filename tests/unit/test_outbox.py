"""The outbox of MLflow writes: journalled while the store is away, delivered once, never twice."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException, RestException
from support.cli import run_jepa

from jepa_platform.tracking.outbox import OUTBOX_DIR, Outbox, OutboxClient, is_outage


class FlakyClient:
    """Forwards to a real client, failing like an unreachable server while ``down``; with ``answer_lost`` the write
    reaches the store but the answer does not (the client sees an error)."""

    def __init__(self, client: mlflow.MlflowClient) -> None:
        self.client, self.down, self.answer_lost = client, False, False

    def __getattr__(self, name: str):
        method = getattr(self.client, name)

        def call(*args, **kwargs):
            if self.down:
                raise MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed: Connection refused")
            result = method(*args, **kwargs)
            if self.answer_lost and name == "log_batch":
                self.answer_lost = False
                raise MlflowException("API request failed: read timed out")
            return result

        return call


@pytest.fixture
def store(tmp_path: Path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    return client, client.create_run(experiment).info.run_id


def _steps(client: mlflow.MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_writes_wait_while_down_and_arrive_once_in_order(store, tmp_path: Path):
    client, run_id = store
    flaky = FlakyClient(client)
    wrapped = OutboxClient(flaky, Outbox(tmp_path / OUTBOX_DIR, "sqlite:///x", run_id), retry_every=0.0, on_outage=lambda exc: None)
    wrapped.log_batch(run_id, metrics=[Metric("loss", 1.0, 1, 0)])
    flaky.down = True
    plot = tmp_path / "plot.png"
    plot.write_bytes(b"png")
    for step in (1, 2):
        wrapped.log_batch(run_id, metrics=[Metric("loss", 1.0 / (step + 1), 2 + step, step)])
    wrapped.log_artifact(run_id, str(plot), "plots")
    plot.unlink()  # a temporary file may go: the outbox holds a copy
    wrapped.set_tag(run_id, "k", "v")
    wrapped.set_terminated(run_id, "FINISHED")
    assert wrapped.pending == 5 and _steps(client, run_id, "loss") == [0]
    flaky.down = False
    flaky.answer_lost = True  # the first replayed batch lands but its answer is lost: replayed again, not doubled
    assert not wrapped.flush()
    assert wrapped.flush() and wrapped.pending == 0 and not (tmp_path / OUTBOX_DIR).exists()
    assert _steps(client, run_id, "loss") == [0, 1, 2]
    run = client.get_run(run_id)
    assert run.data.tags["k"] == "v" and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/plot.png"]


def test_jepa_sync_uploads_a_crashed_runs_outbox_once(store, tmp_path: Path):
    client, run_id = store
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    outbox = Outbox(run_dir / OUTBOX_DIR, uri, run_id)
    wrapped = OutboxClient(FlakyClient(client), outbox, retry_every=3600, on_outage=lambda exc: None)
    wrapped._client.down = True
    now = int(time.time() * 1000)
    wrapped.log_batch(run_id, metrics=[Metric("loss", 0.5, now, s) for s in range(3)])
    wrapped.log_metric(run_id, "acc", 0.9, step=2)
    with (run_dir / OUTBOX_DIR / "journal.jsonl").open("a") as f:
        f.write('{"op": "log_ba')  # the process died mid-write
    result = run_jepa(["sync", str(run_dir)])
    assert result.returncode == 0, result.stderr
    assert "4 metric values" in result.stdout
    assert _steps(client, run_id, "loss") == [0, 1, 2] and _steps(client, run_id, "acc") == [2]
    assert run_jepa(["sync", str(run_dir)]).stdout.strip().endswith("nothing to upload")
    assert _steps(client, run_id, "loss") == [0, 1, 2]


def test_bad_requests_are_not_outages():
    assert is_outage(MlflowException("API request to http://x failed with exception ConnectionError"))
    assert is_outage(ConnectionRefusedError())
    assert not is_outage(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "param changed"}))
    assert not is_outage(ValueError("bug"))


def test_sync_errors_are_one_line(tmp_path: Path):
    assert run_jepa(["sync", str(tmp_path / "missing")]).returncode == 2
    bad = tmp_path / "run" / OUTBOX_DIR
    bad.mkdir(parents=True)
    (bad / "outbox.json").write_text("{not json")
    result = run_jepa(["sync", str(tmp_path / "run")])
    assert result.returncode == 2 and result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1


def test_the_run_logger_writes_from_a_thread_in_order_and_flush_waits(tmp_path: Path):
    import threading

    from jepa_platform.tracking.logger import RunLogger

    logger = RunLogger(
        connect_timeout=5,
        retry_every=30,
        request_timeout=5,
        request_retries=0,
        write_in_thread=True,
        experiment_name="t",
        tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
    )
    logger.connect()
    client = logger.experiment
    entered, gate, original = threading.Event(), threading.Event(), client.log_batch

    def held(*args, **kwargs):
        entered.set()
        gate.wait(60)
        return original(*args, **kwargs)

    client.log_batch = held
    logger.log_metrics({"a": 1.0}, step=0)  # returns while its write waits in the writer thread
    logger.log_metrics({"a": 2.0}, step=1)
    assert entered.wait(60)
    assert _steps(client, logger.run_id, "a") == []  # the step went on before the store had the value
    gate.set()
    logger.flush()
    assert [m.value for m in client.get_metric_history(logger.run_id, "a")] == [1.0, 2.0]

    def broken(*args, **kwargs):
        raise ValueError("not an outage")

    client.log_batch = broken
    logger.log_metrics({"a": 3.0}, step=2)
    with pytest.raises(ValueError, match="not an outage"):  # a failed write is raised, not lost
        logger.flush()
