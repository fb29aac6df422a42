"""Every file under conf/ composes and instantiates; bad overrides are one-line errors."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate

from jepa_platform.config import config_dir, group_options, rewrite_trainer_overrides, validate
from jepa_platform.errors import ConfigError
from jepa_platform.objectives import Objective
from jepa_platform.testing import objective_class
from jepa_platform.train import apply_gpu_defaults

CONF = config_dir()
ALL_OPTIONS = [(g.name, p.stem) for g in sorted(CONF.iterdir()) if g.is_dir() for p in sorted(g.glob("*.yaml"))]
#: groups inside an objective's config (``objective/regulariser=sigreg``): each option is composed by a test below
PART_OPTIONS = [("objective/regulariser", p.stem) for p in sorted((CONF / "objective" / "regulariser").glob("*.yaml"))]


def test_every_config_file_is_covered():
    files = sorted(p.relative_to(CONF) for p in CONF.rglob("*.yaml"))
    covered = {Path(g) / f"{o}.yaml" for g, o in ALL_OPTIONS} | {Path("train.yaml")}
    # files in a group's subfolder (objective/base/...) are composed through the defaults of that group's options
    nested = {f for f in files if len(f.parts) > 2}
    parts = {Path(g) / f"{o}.yaml" for g, o in PART_OPTIONS}  # composed by test_part_options
    for f in nested - {f for f in nested if f.parts[:2] == ("hydra", "launcher")} - parts:
        # named from the group's top level (base/x@...) or, by a sibling file, relative to its own folder (x@...)
        names = (f"{'/'.join(f.parts[1:-1])}/{f.stem}@", f"- {f.stem}@")
        users = [p for p in (CONF / f.parts[0]).rglob("*.yaml") if p != CONF / f and any(n in p.read_text() for n in names)]
        assert users, f"{f} is in no defaults list of conf/{f.parts[0]}/"
    launchers = {f for f in nested if f.parts[:2] == ("hydra", "launcher")}  # composed by tests/unit/test_launch.py
    assert launchers == {Path("hydra/launcher/slurm.yaml")}
    assert set(files) == covered | nested


@pytest.mark.parametrize(("group", "option"), PART_OPTIONS, ids=[f"{g}={o}" for g, o in PART_OPTIONS])
def test_part_options(group: str, option: str):
    """Each regulariser preset builds into the world model and into a masked JEPA, the two kinds that take one."""
    from jepa_platform.losses.regularisers import Regulariser
    from jepa_platform.testing import build_objective

    for objective in ("ac_jepa", "ema_jepa"):
        model = build_objective((f"objective={objective}", f"{group}={option}"))
        assert isinstance(model.regulariser, Regulariser)
        assert model.regulariser.active == (option != "none")


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_compose_and_instantiate(group: str, option: str, make_cfg, tiny_dataset: Path, tiny_sequences: Path):
    overrides = [f"{group}={option}"]
    if group == "data" and option in ("images", "small_images", "small_images_gray"):
        overrides += [f"data.urls={tiny_dataset}", "data.image_size=32", "data.num_workers=0"]
    if group == "data" and option == "sequences":
        overrides += [f"data.urls={tiny_sequences}", "data.image_size=16", "data.batch_size=4", "data.num_workers=0"]
    if group in ("debug", "hydra"):
        overrides = []  # debug=fast is already applied; the hydra group is composed by every run
    if group == "encoder" and option == "timm":
        overrides.append("encoder.name=test_resnet")  # the one value encoder=timm leaves to the command line
    if group == "trainer" and option == "gpu":
        overrides.append("trainer.accelerator=cpu")  # no GPU in CI: check the rest of the file
    own_data = group == "data" and option in ("images", "small_images", "small_images_gray", "sequences")
    debug: bool | str = not own_data
    if (group not in ("debug", "hydra") and getattr(objective_class(overrides), "needs_token_encoder", False)) or option == "fast_vit":
        debug = "fast_vit"  # the masked JEPAs need a ViT and have no projector
    if option == "fast_wm":
        debug, overrides = "fast_wm", ["objective=ac_jepa"]  # world models: two-rooms clips with actions
    elif group not in ("debug", "hydra") and (
        (option == "two_rooms" and group == "experiment") or getattr(objective_class(overrides), "needs_actions", False)
    ):
        debug = "fast_wm"
    if group == "experiment" and option.startswith("surprise_"):
        debug = "fast_physics"  # intuitive-physics clips; the experiment brings its own encoder
    cfg = make_cfg(*overrides, debug=debug)
    datamodule = instantiate(cfg.data, _convert_="all")
    assert isinstance(datamodule, L.LightningDataModule)
    if own_data:
        datamodule.setup("fit")
        assert len(datamodule.train_dataloader()) >= 1
    model = instantiate(cfg.objective, _convert_="all")
    assert isinstance(model, Objective)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c and c.get("_target_")]
    logger = instantiate(cfg.logger) if cfg.logger.get("_target_") else False
    apply_gpu_defaults(cfg)  # trainer.precision=auto (ddp, fsdp) resolves as jepa train resolves it
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, _convert_="all")
    assert isinstance(trainer, L.Trainer)
    optimizer = model.optimizer_factory(model.parameters())
    assert optimizer.param_groups


def test_groups_have_options():
    for group in ("objective", "encoder", "data", "trainer", "logger", "optimizer", "callbacks"):
        assert group_options(group), group


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["objective=vicregg"], r"unknown objective 'vicregg' \(did you mean vicreg\?\): choose one of"),
        (["encoder=resnet19"], r"unknown encoder 'resnet19' \(did you mean resnet18\?\)"),
        (["trainer.max_epoch=2"], r"trainer.max_epoch is not a Lightning Trainer argument \(did you mean max_epochs\?\)"),
        (["objective.sim_weigth=1"], r"unknown config key 'objective.sim_weigth' \(did you mean objective.sim_weight\?\)"),
        (["trainer.max_epochs=[1"], r"malformed override 'trainer.max_epochs=\[1'"),
        (["encoder.name"], r"malformed override 'encoder.name'"),
        (["data=images"], r"data.urls is required but not set"),
        (["-m", "encoder=resnet_test,resnet19"], r"unknown encoder 'resnet19'"),
    ],
)
def test_bad_overrides_are_one_line_errors(args: list[str], message: str):
    with pytest.raises(ConfigError, match=message) as info:
        validate(rewrite_trainer_overrides(args))
    assert "\n" not in str(info.value)


def test_any_trainer_argument_is_accepted():
    args = rewrite_trainer_overrides(["trainer.gradient_clip_val=1.0", "trainer.max_epochs=3"])
    assert args == ["++trainer.gradient_clip_val=1.0", "++trainer.max_epochs=3"]
    validate(args)


def test_gpu_defaults_resolve_precision_and_tf32_where_cuda_is(monkeypatch: pytest.MonkeyPatch):
    """trainer=ddp/fsdp ask for precision auto: bf16-mixed on CUDA GPUs with bfloat16, 32-true for CPU processes;
    float32_matmul_precision applies on CUDA only (a key turns it off)."""
    import torch
    from omegaconf import OmegaConf

    def cfg(accelerator: str, matmul: str | None = "high"):
        return OmegaConf.create({"trainer": {"accelerator": accelerator, "precision": "auto"}, "float32_matmul_precision": matmul})

    before = torch.get_float32_matmul_precision()
    try:
        cases = ((False, "auto", "32-true"), (False, "cpu", "32-true"), (True, "auto", "bf16-mixed"), (True, "cpu", "32-true"))
        for cuda, accelerator, expected in cases:
            monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
            monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
            torch.set_float32_matmul_precision("highest")
            c = cfg(accelerator)
            apply_gpu_defaults(c)
            assert c.trainer.precision == expected, (cuda, accelerator)
            assert torch.get_float32_matmul_precision() == ("high" if cuda else "highest")
        torch.set_float32_matmul_precision("highest")
        apply_gpu_defaults(cfg("gpu", matmul=None))  # turned off: torch's default stays
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize(
    ("overrides", "size", "mean", "std"),
    [
        (["data=small_images_gray", "data.image_size=28"], [1, 28, 28], [0.5], [0.25]),
        (["data=small_images"], [3, 32, 32], [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
        (["debug=fast_wm"], [3, 32, 32], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]),
    ],
)
def test_export_records_what_the_encoder_expects_as_input(overrides: list[str], size: list[int], mean: list[float], std: list[float]):
    """jepa export's ``input`` record comes from the run's evaluation transform: a grey-image encoder carries its one
    channel and its mean 0.5 / std 0.25, and the preprocessing built from it maps uint8 images to exactly that."""
    import torch

    from jepa_platform.config import compose_config
    from jepa_platform.export import input_spec, preprocessing

    spec = input_spec(compose_config(overrides))
    assert spec["input_size"] == size and spec["mean"] == pytest.approx(mean) and spec["std"] == pytest.approx(std)
    images = torch.randint(0, 256, (2, size[0], size[1] + 4, size[2] + 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = preprocessing(spec)(images)
    assert x.shape == (2, *size)
    centre = images[..., 2 : 2 + size[1], 3 : 3 + size[2]].float() / 255  # resize to the short side, then centre crop
    expected = (centre - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    assert x.mean().item() == pytest.approx(expected.mean().item(), abs=0.05)
