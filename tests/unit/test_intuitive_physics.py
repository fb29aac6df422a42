"""The intuitive-physics videos: deterministic, pairs identical up to the violation, and each violation is what it
says (checked on the ball's simulated states and on the pixels)."""

from __future__ import annotations

import numpy as np
import pytest

from data_modules.builtin import intuitive_physics as ip

PAIRS = 24


@pytest.mark.parametrize("violation", list(ip.VIOLATIONS))
def test_pairs_match_until_the_violation_and_differ_from_it(violation: str):
    variants = set()
    for i in range(PAIRS):
        p = ip.pair(0, "val", i, violation)
        t = p["violation_frame"]
        assert ip.MIN_CONTEXT <= t < p["possible"].shape[0]
        assert np.array_equal(p["possible"][:t], p["impossible"][:t])
        assert not np.array_equal(p["possible"][t], p["impossible"][t])
        variants.add(p["variant"])
    assert variants == set(ip.VIOLATIONS[violation])  # every variant of the type occurs


def test_clips_are_a_function_of_seed_split_and_index():
    a, b = ip.pair(3, "test", 5, "solidity"), ip.pair(3, "test", 5, "solidity")
    assert np.array_equal(a["impossible"], b["impossible"]) and a["violation_frame"] == b["violation_frame"]
    assert not np.array_equal(a["possible"], ip.pair(4, "test", 5, "solidity")["possible"])
    clip = ip.possible_clip(0, "train", 7)
    assert clip["frames"].shape == (24, 32, 32, 3) and clip["frames"].dtype == np.uint8
    assert np.array_equal(clip["frames"], ip.possible_clip(0, "train", 7)["frames"])


def _ball_pixels(frame: np.ndarray, scene: ip.Scene) -> int:
    """Pixels of the ball's colour (or its complement) outside the occluder."""
    colours = [np.asarray(scene.colour), 255 - np.asarray(scene.colour)]
    near = np.zeros(frame.shape[:2], bool)
    for c in colours:
        near |= np.abs(frame.astype(np.float32) - c).max(-1) < 12
    left, right = (round(v) for v in scene.occluder)
    near[:, left:right] = False
    return int(near.sum())


def test_each_violation_breaks_the_physics_it_names():
    for i in range(8):
        solid = ip.pair(0, "val", i, "solidity")
        assert solid["possible_states"][:, 0].max() <= solid["scene"].wall_x  # the wall stops the ball...
        assert solid["impossible_states"][-1, 0] > solid["scene"].wall_x  # ...or does not

        gravity = ip.pair(0, "val", i, "gravity")
        t = gravity["violation_frame"]
        dy_possible = np.diff(gravity["possible_states"][t - 1 :, 1], 2)
        dy_impossible = np.diff(gravity["impossible_states"][t:, 1], 2)
        assert np.median(dy_possible) > 0 >= np.median(dy_impossible) - 1e-6  # falls down vs floats or falls up

        continuity = ip.pair(0, "val", i, "continuity")
        t = continuity["violation_frame"]
        jump = np.abs(np.diff(continuity["impossible_states"][t - 1 : t + 1, 0]))[0]
        assert jump > 2 * np.abs(np.diff(continuity["possible_states"][:, 0])).max()

        permanence = ip.pair(0, "val", i, "permanence")
        if permanence["variant"] == "vanish":  # the ball is seen again in the possible clip only
            scene, t = permanence["scene"], permanence["violation_frame"]
            seen = [sum(_ball_pixels(f, scene) for f in permanence[k][t:]) for k in ("possible", "impossible")]
            assert seen[0] > 0 and seen[1] == 0, seen


def test_unknown_violation_type_names_the_known_ones():
    with pytest.raises(ValueError, match="use one of permanence, continuity, solidity, gravity, constancy"):
        ip.pair(0, "val", 0, "telekinesis")


def test_video_objective_trains_on_the_possible_clips(make_cfg):
    """data=intuitive_physics: possible clips only, as shards, with a speed label for the probes."""
    from hydra.utils import instantiate

    from jepa_platform.train import run_train

    data = (
        "data=intuitive_physics",
        "data.num_train=48",
        "data.num_val=16",
        "data.episodes_per_shard=16",
        "data.knn_bank_size=32",
        "data.batch_size=8",
    )
    short = ("logger=none", "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=2", "trainer.log_every_n_steps=1")
    cfg = make_cfg("objective=ema_jepa", *data, *short, debug="fast_vit")
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["frames"].shape == (8, 8, 3, 32, 32) and set(batch["label"].tolist()) <= {0, 1, 2}
    metrics = run_train(cfg)
    assert np.isfinite(metrics["train/loss"]) and "val/probe_acc" in metrics


def test_evaluation_pairs_are_written_as_consecutive_episodes(tmp_path):
    import io
    import json
    import tarfile

    from PIL import Image

    from data_modules import ensure_intuitive_physics_pairs

    root = ensure_intuitive_physics_pairs(tmp_path, pairs_per_type=2, episodes_per_shard=8)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["classes"]["violation"] == list(ip.VIOLATIONS) and manifest["pairs"] == 10
    episodes = []
    for shard in sorted(root.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        for key in sorted({n.split(".")[0] for n in members}):
            meta = json.loads(members[f"{key}.episode.json"])
            first = np.asarray(Image.open(io.BytesIO(members[f"{key}.frame_00000.png"])))
            episodes.append((meta, first))
    assert len(episodes) == 20
    for (possible, frame_p), (impossible, frame_i) in zip(episodes[::2], episodes[1::2], strict=True):
        assert not possible["impossible"] and impossible["impossible"] and possible["pair_id"] == impossible["pair_id"]
        assert possible["violation_frame"] == impossible["violation_frame"] >= ip.MIN_CONTEXT
        assert np.array_equal(frame_p, frame_i)  # the same scene up to the violation
    expected = ip.pair(0, "test", 1, "continuity")
    assert episodes[6][0]["variant"] == expected["variant"] and episodes[6][0]["violation_frame"] == expected["violation_frame"]
