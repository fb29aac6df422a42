"""The world-model path end to end at tiny size: collect, train ac_jepa, plan, notebook; and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from support.cli import run_jepa

from jepa_platform.config import build_preset

TINY_TRAIN = ["train", "experiment=two_rooms", "debug=fast_wm", "trainer.enable_progress_bar=false"]
TINY_PLAN = [
    "--episodes",
    "2",
    "--max-steps",
    "6",
    "--horizon",
    "4",
    "--execute",
    "2",
    "--planner-arg",
    "cem.num_samples=16",
    "--planner-arg",
    "icem.num_samples=16",
    "--planner-arg",
    "mppi.num_samples=16",
    "--planner-arg",
    "gradient.restarts=4",
    "--planner-arg",
    "gradient.steps=3",
]


@pytest.fixture(scope="module")
def world_model_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("wm")
    env = {"JEPA_RUNS_DIR": str(root / "runs"), "JEPA_DATA_DIR": str(root / "data")}
    done = run_jepa([*TINY_TRAIN, f"hydra.run.dir={root / 'runs' / 'wm'}"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "runs" / "wm", env


def test_collect_writes_shards_with_actions_and_states(tmp_path: Path):
    out = tmp_path / "collected"
    done = run_jepa(
        [
            "data",
            "collect",
            "two_rooms",
            str(out),
            "--episodes",
            "6",
            "--val-episodes",
            "2",
            "--length",
            "10",
            "--no-progress",
            "--env-arg",
            "image_size=32",
            "--env-arg",
            "door_width=0.3",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert "6 episodes, 60 frames" in done.stdout and "cross a door" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["collection"]["env_kwargs"] == {"image_size": 32, "door_width": 0.3}

    dm = build_preset(
        "data=sequences", "data.urls=x", "data.image_size=32", urls=str(out), clip_length=4, batch_size=2, num_workers=0, flatten_actions=True
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (2, 4, 3, 32, 32) and batch["actions"].shape == (2, 3, 2) and batch["states"].shape == (2, 4, 2)
    again = run_jepa(["data", "collect", "two_rooms", str(out), "--episodes", "2", "--no-progress"])
    assert again.returncode == 2 and again.stderr.startswith("error:") and "already holds a dataset" in again.stderr
    assert json.loads((out / "manifest.json").read_text()) == manifest  # untouched


class Blinker(gym.Env):
    """A gymnasium environment from elsewhere: discrete actions, a vector state, frames from render()."""

    metadata = {"render_modes": ["rgb_array"]}  # noqa: RUF012
    action_space = gym.spaces.Discrete(3)
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode, self.t = render_mode, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t / 10, action - 1], np.float32), 0.0, self.t >= 4, False, {}

    def render(self):
        return np.full((16, 16, 3), 40 * self.t, np.uint8)


def test_collect_from_any_gymnasium_env(tmp_path: Path):
    from data_modules.collect import collect

    if "test/Blinker-v0" not in gym.registry:
        gym.register("test/Blinker-v0", entry_point=Blinker)
    manifest, tallies, _ = collect("test/Blinker-v0", tmp_path / "blinker", episodes=2, val_episodes=0, length=8, progress=False)
    assert manifest["splits"]["train"]["num_samples"] == 2 and tallies["train"].frames == 10  # the env ends episodes at 5 frames
    import webdataset as wds

    from data_modules.sequences import Episode

    raw = next(iter(wds.WebDataset(str(tmp_path / "blinker" / "train-000000.tar"), shardshuffle=False)))
    episode = Episode(raw)
    assert episode.actions.shape == (4, 3) and set(episode.actions.sum(axis=1)) == {1.0}  # one-hot discrete actions
    assert episode.states.shape == (5, 2)  # vector observations are the states


def test_train_then_plan_prints_the_table_and_logs_to_mlflow(world_model_run):
    run_dir, env = world_model_run
    done = run_jepa(["plan", str(run_dir), *TINY_PLAN], env)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("cem", "icem", "mppi", "gradient", "random", "greedy"):
        assert f"\n{name} " in done.stdout
    plan_dir = sorted((run_dir / "plan").iterdir())[-1]
    results = json.loads((plan_dir / "plan.json").read_text())["results"]
    assert set(results) == {"cem", "icem", "mppi", "gradient", "random", "greedy"}
    assert results["random"]["all"]["evaluations_per_episode"] == 0 and results["cem"]["all"]["evaluations_per_episode"] > 0
    assert (plan_dir / "cem" / "episode_000.png").is_file() and (plan_dir / "greedy.png").is_file()
    import mlflow

    info = json.loads((run_dir / "mlflow_run.json").read_text())
    run = mlflow.MlflowClient(info["tracking_uri"]).get_run(info["run_id"])
    assert "plan/success_rate" in run.data.metrics and "plan/violations" in run.data.metrics
    assert "val/rollout_energy/h1" in run.data.metrics and "val/state_error" in run.data.metrics
    assert "plan/cem/success_rate" in run.data.metrics


def test_plan_results_do_not_depend_on_the_batch(world_model_run):
    """jepa plan runs every planner's episodes as one batch; one at a time (--batch 1) gives the same episodes: the
    same pairs and work per replan for every planner, and the same path for the random baseline (planners' paths agree up to rounding,
    which a barely trained model's near-ties can turn into another choice: tests/unit/test_planning.py checks them
    exactly on an oracle model)."""
    run_dir, env = world_model_run
    records = []
    for batch in ("1", "3"):
        done = run_jepa(
            ["plan", str(run_dir), *TINY_PLAN, "--episodes", "3", "--max-steps", "8", "--batch", batch, "--no-mlflow", "--pictures", "0"], env
        )
        assert done.returncode == 0, done.stderr[-3000:]
        plan_dir = sorted((run_dir / "plan").iterdir())[-1]
        records.append(json.loads((plan_dir / "plan.json").read_text())["episodes"])
    one, three = records
    for name in ("cem", "icem", "mppi", "gradient", "random", "greedy"):
        for a, b in zip(one[name], three[name], strict=True):
            assert (a["start"], a["goal"]) == (b["start"], b["goal"]), name
            assert a["evaluations"] * b["replans"] == b["evaluations"] * a["replans"], name  # the same work per replan
    assert all(np.allclose(a["states"], b["states"]) for a, b in zip(one["random"], three["random"], strict=True))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "0"], "--batch 0"),
        (["--planners", "cem,astar"], "unknown planner 'astar'"),
        (["--planner-arg", "cem.bogus=1"], "does not take"),
        (["--execute", "9", "--horizon", "4"], "exceeds --horizon"),
        (["--planner-arg", "nope"], "PLANNER.ARG=VALUE"),
    ],
)
def test_plan_bad_arguments_are_one_line_errors(world_model_run, args: list[str], message: str):
    run_dir, env = world_model_run
    done = run_jepa(["plan", str(run_dir), "--episodes", "1", *args], env)
    assert done.returncode == 2 and done.stderr.startswith("error:") and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_plan_refuses_a_run_that_is_not_a_world_model(tmp_path: Path, data_root: Path):
    env = {"JEPA_RUNS_DIR": str(tmp_path / "runs"), "JEPA_DATA_DIR": str(data_root)}
    trained = run_jepa(
        [
            "train",
            "debug=fast",
            "logger=none",
            "++trainer.limit_train_batches=2",
            "++trainer.limit_val_batches=1",
            f"hydra.run.dir={tmp_path / 'runs' / 'ssl'}",
        ],
        env,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    done = run_jepa(["plan", str(tmp_path / "runs" / "ssl")], env)
    assert done.returncode == 2 and "is not a world model" in done.stderr


@pytest.mark.slow  # the notebook re-runs commands the tests above cover; make test-all runs it
def test_notebook_runs_at_tiny_size(tmp_path: Path):
    from support.notebooks import execute_notebook

    notebook = Path(__file__).resolve().parents[2] / "notebooks" / "world_model.py"
    outputs = execute_notebook(notebook, tmp_path, {"NOTEBOOK_SIZE": "tiny", "NOTEBOOK_WORKDIR": str(tmp_path)})
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plans and the energy landscape


def test_hierarchical_maze_trains_plans_by_distance_and_predicts_with_its_latent(tmp_path: Path):
    """experiment=maze_stochastic at tiny size: both levels and their latents train and log level2/*; jepa plan
    --hierarchical puts h-cem next to cem by goal distance, draws the subgoals and logs them; jepa predict scores the
    latent's modes."""
    env = {"JEPA_RUNS_DIR": str(tmp_path / "runs"), "JEPA_DATA_DIR": str(tmp_path / "data")}
    run_dir = tmp_path / "runs" / "maze"
    done = run_jepa(
        ["train", "experiment=maze_stochastic", "debug=fast_wm", "data=maze", "data.clip_length=5", "data.length=12", f"hydra.run.dir={run_dir}"], env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plan = ["plan", str(run_dir), "--episodes", "3", "--max-steps", "6", "--horizon", "4", "--execute", "2", "--planners", "cem"]
    plan += [
        "--baselines",
        "",
        "--planner-arg",
        "cem.num_samples=16",
        "--high-planner-arg",
        "cem.num_samples=16",
        "--hierarchical",
        "--latent-samples",
        "2",
    ]
    done = run_jepa(plan, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\nh-cem " in done.stdout and "2+ rooms" in done.stdout and "next room" in done.stdout
    plan_dir = sorted((run_dir / "plan").iterdir())[-1]
    record = json.loads((plan_dir / "plan.json").read_text())
    assert set(record["results"]) == {"cem", "h-cem"} and set(record["results"]["h-cem"]) == {"all", "same room", "next room", "2+ rooms"}
    hierarchical = record["episodes"]["h-cem"]
    assert all(e["subgoals"] for e in hierarchical) and all(e["evaluations_level2"] > 0 for e in hierarchical)
    assert [e["rooms_apart"] >= 2 for e in hierarchical] == [False, False, True]
    assert (plan_dir / "h-cem" / "episode_002.png").is_file()
    predicted = run_jepa(["predict", str(run_dir), "--episodes", "4", "--horizon", "3", "--samples", "2"], env)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert "best-of-2" in predicted.stdout and "posterior" in predicted.stdout
    import mlflow

    info = json.loads((run_dir / "mlflow_run.json").read_text())
    metrics = mlflow.MlflowClient(info["tracking_uri"]).get_run(info["run_id"]).data.metrics
    assert {"level2/val/rollout_energy/h1", "level2/loss/macro_variance", "train/loss/latent_kl", "level2/loss/latent_kl"} <= set(metrics)
    assert "plan/h-cem/2_or_more_rooms/success_rate" in metrics and "predict/best-of-2/all/error_h3" in metrics


def test_hierarchical_planning_needs_a_hierarchical_run(world_model_run):
    run_dir, env = world_model_run
    done = run_jepa(["plan", str(run_dir), "--episodes", "1", "--hierarchical"], env)
    assert done.returncode == 2 and "--hierarchical needs a hierarchical_ac_jepa run" in done.stderr
