"""The maze, goal-distance pairs, the hierarchical planner (with an oracle two-level world model) and plans under a
latent variable: no learning involved."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.oracles import OracleHierarchicalWorldModel

from jepa_platform.errors import ConfigError
from jepa_platform.testing import build_objective
from jepa_platform.world_model.costs import Guardrail, PlanningCost
from jepa_platform.world_model.envs import MazeEnv, TwoRoomsEnv
from jepa_platform.world_model.evaluate import BUCKETS, distance_bucket, farthest_rooms, pairs_by_distance
from jepa_platform.world_model.hierarchical import HierarchicalPlanner, LevelTwoModel
from jepa_platform.world_model.mpc import run_episode
from jepa_platform.world_model.planners import CEM, WorldModel


# -- the maze ------------------------------------------------------------------------------------------------------------
def test_maze_layout_comes_from_its_seed_and_connects_every_room():
    layouts = {seed: MazeEnv(rows=3, cols=3, layout_seed=seed) for seed in range(4)}
    assert np.array_equal(layouts[0].walls, MazeEnv(rows=3, cols=3, layout_seed=0).walls)
    assert len({layout.walls.tobytes() for layout in layouts.values()}) > 1
    for maze in layouts.values():
        assert len(maze.doors) == 8 and (maze._apart >= 0).all()  # a spanning tree: 9 rooms, 8 doors, all reachable
        assert maze._apart.max() >= 2
    assert farthest_rooms(MazeEnv(layout_seed=1)) >= 2 and farthest_rooms(TwoRoomsEnv()) == 1


def test_maze_bad_parameters_are_errors():
    with pytest.raises(ConfigError, match="at least four rooms"):
        MazeEnv(rows=1, cols=3)
    with pytest.raises(ConfigError, match="door_width"):
        MazeEnv(door_width=0.05)
    with pytest.raises(ConfigError, match="decide_within"):
        MazeEnv(stochastic_door=True, decide_within=[5, 2])
    with pytest.raises(ConfigError, match="without a door"):
        MazeEnv(stochastic_door=True, extra_doors=1.0)


def _door_crossing(maze: MazeEnv, edge: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A start in room ``edge[0]`` facing the middle of the door (or wall) of ``edge``, and the action through it."""
    x0, y0, x1, y1 = maze.door_boxes.get(edge) or maze.random_door_box
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float32)
    direction = np.array([1.0, 0.0] if edge[1] == edge[0] + 1 else [0.0, 1.0], np.float32)
    return centre - 0.15 * direction, direction


def test_maze_doors_pass_and_the_stochastic_door_blocks_once_closed():
    for close, expect_room_change in ((0.0, True), (1.0, False)):
        maze = MazeEnv(layout_seed=1, stochastic_door=True, close_probability=close, decide_within=[1, 1])
        start, direction = _door_crossing(maze, maze.random_door)
        _, info = maze.reset(seed=0, options={"state": start})
        for _ in range(12):
            _, _, _, _, info = maze.step(direction)
        assert info["door_open"] is not (close == 1.0)
        assert (info["room"] == maze.random_door[1]) is expect_room_change
    door = maze.doors[0]
    start, direction = _door_crossing(maze, door)
    maze.reset(options={"state": start})
    for _ in range(12):
        _, _, _, _, info = maze.step(direction)
    assert info["room"] == door[1]  # a tree door is always open


def test_the_stochastic_door_never_closes_on_the_agent_and_shows_in_the_frame():
    maze = MazeEnv(layout_seed=1, stochastic_door=True, close_probability=1.0, decide_within=[1, 1])
    x0, y0, x1, y1 = maze.random_door_box
    inside = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float32)
    maze.reset(options={"state": inside})
    _, _, _, _, info = maze.step(np.zeros(2))
    assert info["door_open"]  # the agent stands in the doorway: the decision waits
    direction = np.array([1.0, 0.0] if maze.random_door[1] == maze.random_door[0] + 1 else [0.0, 1.0], np.float32)
    for _ in range(6):
        _frame, _, _, _, info = maze.step(direction)
    assert not info["door_open"] and not maze.free(inside)
    assert not np.array_equal(maze.render(), maze.reset(options={"state": maze.state})[0])  # the closed door is drawn


def test_pairs_by_distance_take_turns_over_the_groups():
    maze = MazeEnv(layout_seed=1)
    pairs = pairs_by_distance(maze, 9, seed=3, margin=0.05)
    groups = [distance_bucket(maze.rooms_apart(s, g)) for s, g in pairs]
    assert groups == list(BUCKETS) * 3
    assert all(np.linalg.norm(s - g) >= 0.3 for s, g in pairs)
    with pytest.raises(ConfigError, match="more rooms"):
        pairs_by_distance(TwoRoomsEnv(), 3, seed=0, margin=0.05)


# -- the hierarchical planner --------------------------------------------------------------------------------------------
def _oracle(env: TwoRoomsEnv, stride: int = 4) -> WorldModel:
    model = OracleHierarchicalWorldModel(env.speed, stride=stride)
    return WorldModel(model, lambda f: f.float() / 255, env.action_space.low, env.action_space.high)


def test_hierarchical_planner_sets_subgoals_reaches_far_goals_and_keeps_the_guardrail():
    env = TwoRoomsEnv(door_width=0.9, wall_thickness=0.02, forbidden=[[0.45, 0.45, 0.55, 0.55]])  # open; a box on the diagonal
    wm = _oracle(env)
    cost = PlanningCost(1.0, 1.0, guardrail=Guardrail(env.forbidden.tolist(), 0.05))
    planner = HierarchicalPlanner(CEM(num_samples=64, iterations=3, elites=8), CEM(num_samples=64, iterations=3, elites=8), high_horizon=4)
    start, goal = np.array([0.12, 0.12], np.float32), np.array([0.88, 0.88], np.float32)
    episode = run_episode(env, planner, wm, cost, start, goal, horizon=4, execute=2, max_steps=60, success_radius=0.06)
    assert episode.success and episode.violations == 0
    assert len(episode.subgoals) >= 2 and all(len(s) == 3 for s in episode.subgoals)
    first = np.array(episode.subgoals[0][1:])
    assert np.linalg.norm(first - start) == pytest.approx(4 * env.speed * np.sqrt(2), abs=0.08)  # one macro-step toward the goal
    assert 0 < episode.evaluations_level2 < episode.evaluations


def test_the_high_level_runs_any_planner_of_the_interface():
    env = TwoRoomsEnv(door_width=0.9, wall_thickness=0.02, forbidden=[])
    wm = _oracle(env)
    level2 = LevelTwoModel(wm)
    assert level2.action_dim == 2 and float(level2.high[0]) == 1.0
    from jepa_platform.registry import PLANNERS

    for name in ("cem", "icem", "mppi", "gradient"):
        planner = PLANNERS.get(name).cls(seed=0)
        s0, goal = torch.tensor([[0.2, 0.2], [0.7, 0.3]]), torch.tensor([[0.6, 0.6], [0.4, 0.6]])
        macros = planner.search(level2, s0, goal, PlanningCost(1.0, 0.0), 2)
        reached = level2.rollout(s0, macros[:, None])[:, 0, -1]
        assert (torch.linalg.norm(reached - goal, dim=1) < 0.12).all(), name


def test_level_two_needs_a_hierarchical_model():
    env = TwoRoomsEnv()
    from support.oracles import OracleWorldModel

    flat = WorldModel(OracleWorldModel(env.speed), lambda f: f.float() / 255, env.action_space.low, env.action_space.high)
    with pytest.raises(ConfigError, match="no level 2"):
        LevelTwoModel(flat)


# -- the latent variable -------------------------------------------------------------------------------------------------
def test_latent_draws_are_shared_by_candidates_and_plain_actions_get_the_prior_mean():
    model = build_objective(("objective=ac_jepa", "objective.latent_dim=3")).eval()
    assert model.latent_dim == 3
    for block in model.levels[0].predictor.blocks:  # AdaLN gates start at zero: give the condition (action and latent) an effect
        torch.nn.init.normal_(block.modulation.weight, std=0.3)
    env = TwoRoomsEnv(image_size=32)
    wm = WorldModel(model, lambda f: f.float() / 255, env.action_space.low, env.action_space.high, latent_samples=4)
    z0 = wm.encode(env.reset(options={"state": [0.3, 0.5]})[0][None])  # (1, D)
    actions = torch.rand(1, 5, 6, 2) * 2 - 1
    with torch.no_grad():
        draws = wm.rollout_samples(z0, actions)
        assert draws.shape == (4, 1, 5, 6, z0.shape[1])
        assert not torch.allclose(draws[0], draws[1])  # the draws differ ...
        mean = model.predict(z0.expand(5, -1), actions[0])
        padded = model.predict(z0.expand(5, -1), torch.cat([actions[0], torch.zeros(5, 6, 3)], dim=-1))
        assert torch.allclose(mean, padded)  # ... and plain actions mean z = 0
    scored = CEM().score(wm, z0, z0, PlanningCost(), actions)
    assert scored.costs.shape == (1, 5) and wm.evaluations == 2 * 4 * 5 * 6
    with pytest.raises(ConfigError, match="risk"):
        WorldModel(model, lambda f: f, env.action_space.low, env.action_space.high, latent_risk="median")


def test_hierarchical_objective_trains_both_levels_with_their_own_terms():
    model = build_objective(("objective=hierarchical_ac_jepa", "objective.levels_above.level2.latent_dim=2", "objective.latent_dim=2"))
    from jepa_platform.testing import example_clip_batch

    batch = example_clip_batch(8)
    frames, actions = model._clip(batch)
    out, _per_clip, z = model.losses(frames, actions, batch.get("states"))
    level2 = model.levels[1]
    terms, total, per_clip, s = level2.losses(z, actions, batch.get("states"), step=0)
    assert {"prediction", "rollout", "variance", "covariance", "macro_variance", "smoothness", "latent_kl"} <= set(terms)
    assert "latent_kl" in out.terms and per_clip.shape == (8,) and s.shape[-1] == level2.dim and torch.isfinite(total)
    chunks = 50 * torch.randn(4, level2.stride, 2)
    assert level2.encode_actions(chunks).abs().max() <= level2.action_bound  # inside the box the planner searches
    total.backward()
    assert all(p.grad is None for p in model.encoder.parameters())  # level 2 reads detached level-1 embeddings
    with pytest.raises(ConfigError, match="stride"):
        model._check_length(2)


def test_world_models_are_built_from_parts_and_declare_their_levels():
    """One Level type per level, parts passed in: the regulariser and predictor come from the config, level 2 is
    the same type as level 1, and the planners' interface is encode + levels (no hasattr)."""
    from jepa_platform.losses.regularisers import Regulariser
    from jepa_platform.world_model.level import Level

    flat = build_objective(("objective=ac_jepa", "objective/regulariser=sigreg"))
    assert len(flat.levels) == 1 and isinstance(flat.regulariser, Regulariser) and flat.regulariser.sigreg_weight == 0.1
    two = build_objective(("objective=hierarchical_ac_jepa",))
    assert len(two.levels) == 2 and all(isinstance(level, Level) for level in two.levels)
    assert two.levels[1].predictor.dim == two.levels[1].dim and two.levels[1].action_bound == 2.0
    assert not any(k.endswith("2") for k in dict(two.named_children()))  # no copy-with-suffix
    assert "regulariser" not in two.hparams and "levels_above" not in two.hparams  # parts are modules, not hparams
