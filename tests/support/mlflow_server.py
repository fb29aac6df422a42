"""A real ``mlflow server`` on 127.0.0.1 for tests, and outages of it during a run."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from jepa_platform.testing import free_port


class MlflowServer:
    """A real ``mlflow server`` for tests: SQLite backend and artifacts under ``root``, on 127.0.0.1 at a free port
    (or ``port``), in its own process group so that :meth:`stop` takes its web workers down with it."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = Path(root), port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> MlflowServer:
        import shutil
        import sys
        import time
        import urllib.request

        self.root.mkdir(parents=True, exist_ok=True)
        mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        cmd = [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        cmd += ["--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination", str(self.root / "artifacts")]
        log = (self.root / "server.log").open("a")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: see {self.root / 'server.log'}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout:g} s: see {self.root / 'server.log'}")

    def stop(self) -> None:
        """Kill the server and its workers at once (SIGKILL: a crash, not a clean shutdown)."""
        import signal

        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None


class ServerOutage(Callback):
    """Test callback: kills the tracking server (SIGKILL, as a crash) after each optimiser step in ``kill_at`` and
    starts it again, on the same port and store, after each step in ``restart_at``."""

    def __init__(self, root: str, port: int, kill_at: list[int], restart_at: list[int]) -> None:
        self.server = MlflowServer(Path(root), port)
        self.kill_at, self.restart_at = set(kill_at), set(restart_at)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step in self.kill_at:
            kill_server_on(self.server.port)
        elif trainer.global_step in self.restart_at:
            self.server.start()


def kill_server_on(port: int) -> None:
    """SIGKILL the process group of whatever ``mlflow server`` listens on ``port`` (found by its command line)."""
    import signal

    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "server" in cmdline and "--port" in cmdline and str(port) in cmdline and any("mlflow" in c for c in cmdline):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
