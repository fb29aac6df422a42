"""Training against a real ``mlflow server`` over HTTP, which dies mid-run: nothing is lost, nothing doubles."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from lightning.pytorch.loggers import MLFlowLogger
from support.cli import run_jepa
from support.mlflow_server import MlflowServer, kill_server_on


@pytest.fixture
def server(tmp_path: Path):
    s = MlflowServer(tmp_path / "server").start()
    yield s
    kill_server_on(s.port)


def _artifacts(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in client.list_artifacts(run_id, path):
        out.update(_artifacts(client, run_id, item.path) if item.is_dir else {item.path: item.file_size})
    return out


def _train_through_outages(
    server: MlflowServer, runs: Path, data_root: Path, kill_at: list[int], restart_at: list[int], monkeypatch
) -> list[tuple[str, int]]:
    """Train (debug=fast, 12 steps) against ``server`` while it is killed and restarted after the given steps;
    returns every (metric, step) the logger was asked to log."""
    logged: list[tuple[str, int]] = []
    original = MLFlowLogger.log_metrics

    def spy(self, metrics, step=None):
        logged.extend((key, step or 0) for key in metrics)
        return original(self, metrics, step)

    monkeypatch.setattr(MLFlowLogger, "log_metrics", spy)
    outage = ["+callbacks.outage._target_=support.mlflow_server.ServerOutage", f"+callbacks.outage.root={server.root}"]
    outage += [f"+callbacks.outage.port={server.port}", f"+callbacks.outage.kill_at={kill_at}", f"+callbacks.outage.restart_at={restart_at}"]
    outage += ["callbacks=default", "callbacks.encoder_model=null"]  # artifacts through the outage too
    train = ["train", "debug=fast", f"paths.runs_dir={runs}", f"paths.data_dir={data_root}", "++trainer.limit_train_batches=12"]
    train += ["trainer.enable_progress_bar=false"]
    result = run_jepa([*train, f"logger.tracking_uri={server.uri}", "logger.retry_every=1", "logger.request_retries=0", *outage])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unreachable" in result.stderr
    return logged


def _check_exactly_once(server: MlflowServer, run_dir: Path, logged: list[tuple[str, int]]) -> None:
    info = json.loads((run_dir / "mlflow_run.json").read_text())
    client = mlflow.MlflowClient(server.uri)
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    arrived = [(key, m.step) for key in run.data.metrics for m in client.get_metric_history(info["run_id"], key)]
    print(f"\nmetric steps logged: {len(logged)} ({len(set(logged))} distinct); arrived: {len(arrived)} ({len(set(arrived))} distinct)")
    assert sorted(arrived) == sorted(set(logged)) and len(logged) == len(set(logged))
    assert len({step for _, step in logged}) >= 6
    artifacts = _artifacts(client, info["run_id"])
    local_plots = {f"plots/{p.relative_to(run_dir / 'plots')}": p.stat().st_size for p in (run_dir / "plots").rglob("*.png")}
    print(f"artifacts: {len(local_plots)} plot files written, {sum(k.startswith('plots/') for k in artifacts)} arrived")
    assert {k: v for k, v in artifacts.items() if k.startswith("plots/")} == local_plots
    assert {"plots/epoch000", "plots/final"} <= {str(Path(k).parent) for k in local_plots}
    assert any(k.startswith("config/") for k in artifacts)


@pytest.mark.slow  # 40 s with its server; the outbox itself is tested in tests/unit/test_outbox.py
def test_server_killed_mid_run_and_restarted_loses_nothing(server: MlflowServer, tmp_path: Path, data_root: Path, monkeypatch):
    """Killed after step 3, back after step 7 of 12: training goes on, the outbox is delivered when the server
    returns, and every metric step and artifact arrives exactly once."""
    runs = tmp_path / "runs"
    logged = _train_through_outages(server, runs, data_root, [3], [7], monkeypatch)
    run_dir = next(runs.glob("*_vicreg"))
    assert not (run_dir / "mlflow-outbox").exists(), "delivered during training"
    _check_exactly_once(server, run_dir, logged)


@pytest.mark.slow
def test_server_down_at_the_end_then_jepa_sync(server: MlflowServer, tmp_path: Path, data_root: Path, monkeypatch):
    """Killed after step 3, back after step 7, killed again after step 10 and back only after the run: the rest
    waits in the run directory and ``jepa sync`` delivers it, exactly once (a second sync finds nothing)."""
    runs = tmp_path / "runs"
    logged = _train_through_outages(server, runs, data_root, [3, 10], [7], monkeypatch)
    run_dir = next(runs.glob("*_vicreg"))
    assert (run_dir / "mlflow-outbox" / "journal.jsonl").is_file()
    server.start()
    synced = run_jepa(["sync", str(run_dir)])
    assert synced.returncode == 0, synced.stderr
    assert not (run_dir / "mlflow-outbox").exists()
    again = run_jepa(["sync", str(run_dir)])
    assert again.returncode == 0 and "nothing to upload" in again.stdout
    _check_exactly_once(server, run_dir, logged)
