"""Files from elsewhere: sharded-checkpoint manifests, the restricted metadata unpickler, the config allowlist."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from jepa_platform.config import compose_config, job_config
from jepa_platform.errors import CheckpointError, ConfigError
from jepa_platform.untrusted import check_targets, dcp_load, read_dcp_metadata, verify_manifest, write_manifest


@pytest.fixture
def sharded(tmp_path: Path) -> tuple[Path, dict]:
    """A real torch.distributed.checkpoint directory (weights and optimiser settings) with the platform's manifest."""
    state = {
        "state_dict": {"w": torch.randn(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16)},
        "optimizer_0": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": ["w"]}], "state": {"w": {"step": torch.tensor(1.0)}}},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=tmp_path, no_dist=True)
    write_manifest(tmp_path)
    return tmp_path, state


def test_a_checkpoint_the_platform_wrote_reads_back(sharded):
    path, state = sharded
    assert set(read_dcp_metadata(path).state_dict_metadata) >= {"state_dict.w", "state_dict.b"}
    into = {
        "state_dict": {"w": torch.empty(3, 4), "b": torch.empty(2, dtype=torch.bfloat16)},
        "optimizer_0": {"param_groups": [{"lr": 0.0, "betas": (0.0, 0.0), "params": [""]}], "state": {"w": {"step": torch.tensor(0.0)}}},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp_load(into, path, no_dist=True)
    assert torch.equal(into["state_dict"]["w"], state["state_dict"]["w"])
    assert (
        into["optimizer_0"]["param_groups"][0]["betas"] == (0.9, 0.99) and into["optimizer_0"]["param_groups"][0]["lr"] == 0.1
    )  # non-tensor values, loaded weights_only


def test_changed_or_foreign_directories_are_refused(sharded):
    path, _ = sharded
    shard = next(path.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"SHA-256"):
        verify_manifest(path)
    (path / "jepa_manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"jepa_manifest\.json"):
        read_dcp_metadata(path)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_metadata_that_would_run_code_is_refused_even_with_a_valid_manifest(sharded, tmp_path: Path):
    path, _ = sharded
    marker = tmp_path.parent / "ran"
    (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    write_manifest(path)  # forged: the digests match the malicious file
    with pytest.raises(CheckpointError, match="not allowed in checkpoint metadata"):
        read_dcp_metadata(path)
    assert not marker.exists()


def test_every_shipped_config_passes_the_allowlist():
    for overrides in ([], ["debug=fast"], ["experiment=ema_jepa_shapes"], ["trainer=fsdp"], ["data=moving_shapes", "objective=h_jepa"]):
        check_targets(job_config(compose_config(overrides)), "conf")


@pytest.mark.parametrize(
    "node",
    [
        {"data": {"_target_": "os.system", "command": "true"}},
        {"encoder": {"_target_": "builtins.exec", "source": "1"}},
        {"t": {"_target_": "hydra.utils.get_object", "path": "os.system"}},
        {"x": [{"_target_": "subprocess.run", "args": ["true"]}]},
        {"y": {"_target_": "jepa_platform.__builtins__"}},
    ],
)
def test_foreign_targets_are_a_one_line_error_naming_the_key(node):
    with pytest.raises(ConfigError, match="is not a class the platform instantiates"):
        check_targets(node, "config.yaml")


def test_run_config_checks_only_what_the_reading_commands_build(tmp_path):
    """A run recorded with the user's own callback (outside the allowlist) still evaluates and exports: those commands
    build only the objective, encoder, optimizer and data, and those must name allowlisted classes."""
    import pytest
    from omegaconf import OmegaConf

    from jepa_platform.checkpoints import load_run_config
    from jepa_platform.errors import ConfigError

    run = tmp_path / "run"
    run.mkdir()
    good = {"objective": {"_target_": "jepa_platform.objectives.VICReg"}, "callbacks": {"mine": {"_target_": "my_lab.callbacks.Mine"}}}
    OmegaConf.save(OmegaConf.create(good), run / "config.yaml")
    assert load_run_config(run).callbacks.mine._target_ == "my_lab.callbacks.Mine"
    OmegaConf.save(OmegaConf.create({**good, "data": {"_target_": "os.system"}}), run / "config.yaml")
    with pytest.raises(ConfigError, match=r"os\.system"):
        load_run_config(run)
