"""Bad inputs: each is one line that says what to fix, a non-zero exit, and nothing already written changes.

The cases are the table of docs/reliability.md. One tiny run is trained first; every case then runs ``jepa ...``
in-process, and afterwards every file of that run (checkpoints, config, MLflow store) must be byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import socket
import tarfile
from pathlib import Path

import pytest
import torch
from support.cli import run_jepa

from jepa_platform.errors import JepaError
from jepa_platform.export import load_exported
from jepa_platform.untrusted import MANIFEST

PWNED = "jepa-pwned-marker"


class _Payload:
    """A pickle that runs a command when loaded: what a crafted file would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _snapshot(run_dir: Path) -> dict[str, object]:
    """Every file of the existing run, and its MLflow record (status, params, tags, every metric value)."""
    from mlflow import MlflowClient

    files = {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    info = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    run = client.get_run(info["run_id"])
    metrics = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    return {"files": files, "status": run.info.status, "params": run.data.params, "tags": run.data.tags, "metrics": metrics}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, data_root: Path):
    """A trained tiny run (runs/good_vicreg), and the environment every case runs in."""
    root = tmp_path_factory.mktemp("bad-inputs")
    runs = root / "runs"
    variables = {"JEPA_RUNS_DIR": str(runs), "JEPA_DATA_DIR": str(data_root)}
    trained = run_jepa(["train", "debug=fast", "trainer.enable_progress_bar=false"], {**variables, "JEPA_RUN_ID": "good"})
    assert trained.returncode == 0, trained.stderr[-2000:]
    return root, variables, runs / "good_vicreg"


def _crafted(root: Path, run_dir: Path) -> dict[str, Path]:
    """The attacks: files that would run a command (touch a marker) if anything unpickled or instantiated them."""
    out = {}
    marker = root / PWNED
    # a sharded checkpoint directory whose .metadata is a code-running pickle (no manifest: not written by us)
    sharded = root / "foreign" / "checkpoints" / "last.ckpt"
    sharded.mkdir(parents=True)
    (sharded / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    torch.save({"global_step": 1}, sharded / "meta.pt")
    (sharded / "__0_0.distcp").write_bytes(b"\0" * 64)
    (sharded.parent.parent / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    out["sharded"] = sharded
    # the same, with a forged manifest: refused by the restricted unpickler instead
    forged = root / "forged" / "checkpoints" / "last.ckpt"
    forged.mkdir(parents=True)
    for f in sharded.iterdir():
        (forged / f.name).write_bytes(f.read_bytes())
    files = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in forged.iterdir()}
    (forged / MANIFEST).write_text(json.dumps({"format": "jepa-platform-sharded-checkpoint/1", "files": files}))
    (forged.parent.parent / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    out["forged"] = forged
    # a run directory whose config instantiates a function that writes a file
    evil_run = root / "evil-run"
    (evil_run / "checkpoints").mkdir(parents=True)
    (evil_run / "checkpoints" / "last.ckpt").write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    config = (
        (run_dir / "config.yaml").read_text().replace("_target_: data_modules.ShapesDataModule", f"_target_: pathlib.Path.touch\n  self: {marker}")
    )
    (evil_run / "config.yaml").write_text(config)
    out["evil_run"] = evil_run
    # a checkpoint file holding a code-running pickle
    evil_ckpt = root / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, evil_ckpt)
    out["evil_ckpt"] = evil_ckpt
    garbage = root / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    out["garbage"] = garbage
    # an export file whose encoder_config names os.system
    export = root / "evil-export.pt"
    torch.save(
        {"format": "jepa-platform-encoder/1", "encoder_config": {"_target_": "os.system", "command": f"touch {marker}"}, "state_dict": {}}, export
    )
    out["export"] = export
    empty = root / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    out["empty_tar"] = empty
    out["a_file"] = root / "a-file"
    out["a_file"].write_text("not a directory")
    out["marker"] = marker
    return out


#: (name, command, text the one-line error must contain); {placeholders} are filled from the fixture
CASES: list[tuple[str, list[str], str]] = [
    ("batch size not a number", ["train", "debug=fast", "data.batch_size=abc"], "data.batch_size"),
    ("negative epochs", ["train", "debug=fast", "trainer.max_epochs=-1"], "trainer.max_epochs=-1"),
    ("zero epochs", ["train", "debug=fast", "trainer.max_epochs=0"], "trainer.max_epochs=0"),
    ("seed not a number", ["train", "debug=fast", "seed=abc"], "seed"),
    ("negative learning rate", ["train", "debug=fast", "optimizer.lr=-1"], "optimizer.lr=-1"),
    ("negative workers", ["train", "debug=fast", "data.num_workers=-1"], "data.num_workers=-1"),
    ("augmentations on an unknown place", ["train", "debug=fast", "data.augment_on=gpu", "logger=none"], "data.augment_on='gpu'"),
    ("typo in a Trainer argument", ["train", "debug=fast", "trainer.max_epoch=2"], "did you mean max_epochs"),
    ("unknown objective", ["train", "debug=fast", "objective=vicregg"], "unknown objective 'vicregg'"),
    ("unknown config key", ["train", "debug=fast", "data.batchsize=3"], "unknown config key 'data.batchsize'"),
    ("malformed override", ["train", "debug=fast", "data.batch_size=[1,"], "malformed override"),
    ("unknown guard policy", ["train", "debug=fast", "callbacks.nonfinite_guard.policy=bogus"], "policy"),
    ("missing checkpoint file", ["train", "debug=fast", "ckpt_path={root}/nope.ckpt"], "does not exist"),
    ("garbage checkpoint", ["train", "debug=fast", "ckpt_path={garbage}"], "not a readable checkpoint"),
    ("checkpoint holding code", ["train", "debug=fast", "ckpt_path={evil_ckpt}"], "could run code"),
    ("checkpoint of another objective", ["train", "debug=fast", "objective=simclr", "ckpt_path={run_dir}"], "was written by objective"),
    ("changed model shape", ["train", "debug=fast", "objective.projector_dims=[32,32]", "ckpt_path={run_dir}"], "does not match this model"),
    ("foreign sharded checkpoint (train)", ["train", "debug=fast", "ckpt_path={sharded}"], MANIFEST),
    ("forged sharded manifest (train)", ["train", "debug=fast", "ckpt_path={forged}"], "not allowed in checkpoint metadata"),
    ("foreign sharded checkpoint (eval)", ["eval", "{sharded_run}", "--no-mlflow"], MANIFEST),
    ("foreign sharded checkpoint (export)", ["export", "{sharded_run}", "--out", "{root}/x.pt"], MANIFEST),
    ("run config naming a foreign class (eval)", ["eval", "{evil_run}", "--no-mlflow"], "pathlib.Path.touch"),
    ("run config naming a foreign class (export)", ["export", "{evil_run}", "--out", "{root}/y.pt"], "pathlib.Path.touch"),
    ("not a run directory", ["eval", "{root}", "--no-mlflow"], "not a run directory"),
    ("export over an existing file", ["export", "{run_dir}", "--out", "{run_dir}/config.yaml"], "--force"),
    ("unreachable tracking server", ["train", "debug=fast", "logger.tracking_uri=http://127.0.0.1:{port}"], "unreachable"),
    ("store under a file", ["train", "debug=fast", "logger.tracking_uri=sqlite:///{a_file}/mlflow.db"], "not writable"),
    ("runs directory under a file", ["train", "debug=fast", "paths.runs_dir={a_file}/runs", "logger=none"], "a-file"),
    ("empty tar as data", ["train", "debug=fast", "data=images", "data.urls={empty_tar}", "data.image_size=32", "logger=none"], "no samples"),
    ("missing shards", ["train", "debug=fast", "data=images", "data.urls={root}/none-*.tar", "data.image_size=32", "logger=none"], "data.urls"),
    ("images without urls", ["train", "debug=fast", "data=images", "logger=none"], "data.urls"),
    ("diverging run", ["train", "debug=fast", "optimizer.lr=1e6", "logger=none", "paths.runs_dir={root}/diverged"], "non-finite"),
    ("convert a missing source", ["data", "convert", "{root}/no-such-folder", "{root}/out"], "no-such-folder"),
    ("collect an unknown environment", ["data", "collect", "no_such_env", "{root}/collected"], "unknown environment 'no_such_env'"),
    ("plan a run that is not a world model", ["plan", "{run_dir}", "--no-mlflow"], "is not a world model"),
    ("surprise from a run that predicts no frames", ["surprise", "{run_dir}", "--no-mlflow"], "does not predict future frames"),
    ("unknown command", ["trian"], "unknown command"),
]


def _fill(args: list[str], values: dict[str, object]) -> list[str]:
    return [a.format(**values) for a in args]


@pytest.mark.parametrize(("name", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(env, name: str, args: list[str], expected: str):
    root, variables, run_dir = env
    case_dir = root / re.sub(r"[^a-z0-9]+", "-", name)
    crafted = _crafted(case_dir, run_dir)
    values = {**{k: str(v) for k, v in crafted.items()}, "root": str(case_dir), "run_dir": str(run_dir), "port": free_port()}
    values["sharded_run"] = str(crafted["sharded"].parent.parent)
    before = _snapshot(run_dir)
    result = run_jepa(_fill(args, values), variables)
    code, err = result.returncode, result.stderr
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code not in (0, None), f"{name}: exit {code}"
    assert len(errors) == 1 and "Traceback" not in err, f"{name}: {err[-2000:]}"
    assert expected in errors[0], f"{name}: {errors[0]}"
    if os.environ.get("JEPA_BAD_INPUT_TABLE"):  # regenerate the table of docs/reliability.md
        shown = " ".join(args).replace("|", "\\|")
        message = re.sub(r"/tmp/\S*?/bad-inputs\d+/[a-z0-9-]+", "<dir>", errors[0]).replace("|", "\\|")
        with open(os.environ["JEPA_BAD_INPUT_TABLE"], "a") as table:
            table.write(f"| {name} | `jepa {shown}` | exit {code} | `{message}` |\n")
    after = _snapshot(run_dir)
    changed = {k for k, v in before["files"].items() if after["files"].get(k) != v}  # new files (a resume's own log) may appear
    same_run = {k: after[k] for k in before if k != "files"} == {k: before[k] for k in before if k != "files"}
    assert not changed and same_run, f"{name} changed {changed or 'the MLflow run'}"
    assert not crafted["marker"].exists(), f"{name}: a crafted file ran code"


def test_crafted_export_file_never_runs_code(env):
    root, _variables, run_dir = env
    crafted = _crafted(root / "export-api", run_dir)
    with pytest.raises(JepaError, match=r"os\.system"):
        load_exported(crafted["export"])
    assert not crafted["marker"].exists()


def test_diverged_run_saved_no_checkpoint(env):
    root = env[0] / "diverging-run" / "diverged"
    assert not list(root.glob("**/*.ckpt")), "a non-finite model was saved"


def test_the_table_in_the_docs_lists_every_case():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    missing = [name for name, _, _ in CASES if f"| {name} |" not in doc]
    assert not missing, f"docs/reliability.md misses {missing}"
