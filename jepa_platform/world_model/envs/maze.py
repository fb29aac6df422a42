"""Multi-room maze: ``rows`` x ``cols`` rooms on a grid, joined by doors along a random spanning tree (the layout is
drawn from ``layout_seed``), so that reaching a room two or more doors away takes a detour that a planner's horizon
does not cover: the long-horizon testbed of hierarchical planning.

Same observation and action interface as two-rooms (:class:`~jepa_platform.world_model.envs.navigation.
PointNavigationEnv`): RGB images, continuous 2-D actions scaled by ``speed``, the agent slides along walls, the true
state / room / forbidden flag in ``info`` only. ``extra_doors`` opens that fraction of the walls left closed by the
tree (loops: several ways round).

**Stochastic variant** (``stochastic_door=true``): one wall the tree left closed gets a door that is open when the
episode starts and, at a step drawn uniformly from ``decide_within``, closes with probability ``close_probability``
(then stays closed to the end of the episode). What happens is visible in the next frame but not predictable from
the frames before: the case a latent variable in the world model is for. A door never closes on the agent: if the
agent stands in the doorway at the decision step, the decision waits until it has left. ``info["door_open"]`` says
whether it is open (for evaluation only).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from jepa_platform.errors import ConfigError
from jepa_platform.registry import register_environment
from jepa_platform.world_model.envs.navigation import PointNavigationEnv


@register_environment("maze")
class MazeEnv(PointNavigationEnv):
    """Rooms on a grid joined by a random spanning tree of doors (see module docstring).

    Args:
        image_size: side of the RGB observation in pixels.
        rows, cols: rooms per column and per row (at least four rooms in all).
        layout_seed: seed of the layout (which walls have doors, and where along them).
        extra_doors: fraction of the walls the tree leaves closed that get a door anyway.
        wall_thickness: thickness of the walls between rooms.
        door_width: width of a door.
        speed: displacement per step for an action of norm 1 per axis.
        agent_radius: the agent's radius.
        forbidden: guardrail boxes ``[[x0, y0, x1, y1], ...]`` (not drawn, not blocking).
        stochastic_door: add the door that may close during the episode.
        close_probability: probability that it closes at the decision step.
        decide_within: ``[first, last]`` step of the decision (uniform).
        render_mode: ``rgb_array``.
    """

    def __init__(
        self,
        image_size: int = 64,
        rows: int = 2,
        cols: int = 2,
        layout_seed: int = 0,
        extra_doors: float = 0.0,
        wall_thickness: float = 0.06,
        door_width: float = 0.18,
        speed: float = 0.04,
        agent_radius: float = 0.03,
        forbidden: Sequence[Sequence[float]] = (),
        stochastic_door: bool = False,
        close_probability: float = 0.5,
        decide_within: Sequence[int] = (1, 24),
        render_mode: str | None = "rgb_array",
    ) -> None:
        super().__init__(image_size, speed, agent_radius, forbidden, render_mode)
        if rows < 1 or cols < 1 or rows * cols < 4:
            raise ConfigError(f"env: a maze needs at least four rooms, got rows={rows} x cols={cols}")
        if not 2 * agent_radius + 0.01 < door_width < min(1 / rows, 1 / cols) - wall_thickness:
            raise ConfigError(f"env door_width={door_width} must exceed the agent's diameter and fit in a room's side")
        if speed >= wall_thickness + 2 * agent_radius:
            raise ConfigError(f"env speed={speed} must be below wall_thickness + 2 x agent_radius, or the agent could jump a wall")
        if not 0 <= extra_doors <= 1 or not 0 <= close_probability <= 1:
            raise ConfigError("env: extra_doors and close_probability must lie in [0, 1]")
        first, last = (int(v) for v in decide_within)
        if not 1 <= first <= last:
            raise ConfigError(f"env decide_within={list(decide_within)} must be [first, last] steps with 1 <= first <= last")
        self.rows, self.cols, self.layout_seed = int(rows), int(cols), int(layout_seed)
        self.wall_thickness, self.door_width = float(wall_thickness), float(door_width)
        self.stochastic_door, self.close_probability, self.decide_within = bool(stochastic_door), float(close_probability), (first, last)
        rng = np.random.default_rng([self.layout_seed, 4099])
        self.doors, closed = _spanning_tree(self.rows, self.cols, rng)
        rng.shuffle(closed)
        n_extra = round(extra_doors * len(closed))
        self.doors += closed[:n_extra]
        closed = closed[n_extra:]
        if self.stochastic_door and not closed:
            raise ConfigError("env stochastic_door=true needs a wall without a door: lower extra_doors or add rooms")
        self.random_door = closed[0] if self.stochastic_door else None
        offsets = {edge: float(rng.uniform(0.3, 0.7)) for edge in [*self.doors, *closed]}
        self.walls, self.door_boxes = _walls(
            self.rows, self.cols, self.wall_thickness, self.door_width, offsets, set(self.doors) | ({self.random_door} if self.random_door else set())
        )
        self.random_door_box = self.door_boxes.get(self.random_door) if self.random_door else None
        self.door_open = True
        self._decide_at: int | None = None
        self._steps = 0
        self._backgrounds = {
            True: self.draw_boxes(self.walls),
            False: self.draw_boxes(np.vstack([self.walls, [self.random_door_box]])) if self.random_door else None,
        }
        self._apart = _room_distances(self.rows, self.cols, self.doors)
        self.state = self.sample_free_state(np.random.default_rng(0), margin=-1.0)

    # -- geometry ---------------------------------------------------------------------------------------------------
    def room(self, state: np.ndarray) -> int:
        """``row x cols + col`` of the room the point ``state`` is in."""
        col = min(int(float(state[0]) * self.cols), self.cols - 1)
        row = min(int(float(state[1]) * self.rows), self.rows - 1)
        return row * self.cols + col

    def rooms_apart(self, a: np.ndarray, b: np.ndarray) -> int:
        """Doors between the rooms of ``a`` and ``b`` on the shortest way, the stochastic door not counted (it may
        be closed)."""
        return int(self._apart[self.room(a), self.room(b)])

    def _boxes(self) -> np.ndarray:
        return self.walls if self.door_open or self.random_door_box is None else np.vstack([self.walls, [self.random_door_box]])

    def blocked(self, state: np.ndarray) -> bool:
        """Whether the agent (a disc, taken as its bounding square) at ``state`` overlaps a wall or leaves the square."""
        if self.outside(state):
            return True
        return _overlaps(self._boxes(), state, self.agent_radius)

    def background(self) -> np.ndarray:
        return self._backgrounds[self.door_open]

    # -- the stochastic door ----------------------------------------------------------------------------------------
    def reset_layout(self) -> None:
        self.door_open, self._steps = True, 0
        self._decide_at = int(self.np_random.integers(self.decide_within[0], self.decide_within[1] + 1)) if self.random_door else None

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.move(action)
        self._steps += 1
        due = self._decide_at is not None and self._steps >= self._decide_at
        if due and not _overlaps(np.asarray([self.random_door_box], np.float32), self.state, self.agent_radius):  # never on the agent
            self.door_open = bool(self.np_random.random() >= self.close_probability)
            self._decide_at = None
        return self.render_state(self.state), 0.0, False, False, self._info()

    def _info(self) -> dict[str, Any]:
        info = super()._info()
        if self.random_door is not None:
            info["door_open"] = self.door_open
        return info

    def describe(self) -> dict[str, Any]:
        """Geometry for drawing trajectories: wall boxes (the stochastic door's box apart), forbidden boxes."""
        out: dict[str, Any] = {"walls": self.walls.tolist(), "forbidden": self.forbidden.tolist()}
        if self.random_door_box is not None:
            out["random_door"] = list(self.random_door_box)
        return out


Edge = tuple[int, int]


def _spanning_tree(rows: int, cols: int, rng: np.random.Generator) -> tuple[list[Edge], list[Edge]]:
    """A uniformly random spanning tree of the room grid (Kruskal on shuffled walls): the doors, and the walls left
    closed. Edges are ``(a, b)`` room indices with ``a < b``."""
    edges = [(r * cols + c, r * cols + c + 1) for r in range(rows) for c in range(cols - 1)]
    edges += [(r * cols + c, (r + 1) * cols + c) for r in range(rows - 1) for c in range(cols)]
    order = rng.permutation(len(edges))
    parent = list(range(rows * cols))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    doors, closed = [], []
    for i in order:
        a, b = edges[i]
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
            doors.append((a, b))
        else:
            closed.append((a, b))
    return sorted(doors), sorted(closed)


def _walls(
    rows: int, cols: int, thickness: float, door: float, offsets: dict[Edge, float], with_door: set[Edge]
) -> tuple[np.ndarray, dict[Edge, list[float]]]:
    """Wall boxes between every pair of adjacent rooms (split by a gap where there is a door), and each door's box."""
    h, boxes, door_boxes = thickness / 2, [], {}
    for (a, b), offset in sorted(offsets.items()):
        ra, ca = divmod(a, cols)
        if b == a + 1:  # a vertical wall between columns ca and ca + 1, along row ra
            x, lo, hi = (ca + 1) / cols, ra / rows, (ra + 1) / rows
            centre = lo + offset * (hi - lo)
            box = lambda s, e, x=x: [x - h, s, x + h, e]  # noqa: E731
        else:  # a horizontal wall between rows ra and ra + 1, along column ca
            y, lo, hi = (ra + 1) / rows, ca / cols, (ca + 1) / cols
            centre = lo + offset * (hi - lo)
            box = lambda s, e, y=y: [s, y - h, e, y + h]  # noqa: E731
        if (a, b) in with_door:
            boxes += [box(lo, centre - door / 2), box(centre + door / 2, hi)]
            door_boxes[(a, b)] = box(centre - door / 2, centre + door / 2)
        else:
            boxes.append(box(lo, hi))
    return np.asarray(boxes, np.float32).reshape(-1, 4), door_boxes


def _overlaps(boxes: np.ndarray, state: np.ndarray, radius: float) -> bool:
    x, y = float(state[0]), float(state[1])
    return bool(np.any((x > boxes[:, 0] - radius) & (x < boxes[:, 2] + radius) & (y > boxes[:, 1] - radius) & (y < boxes[:, 3] + radius)))


def _room_distances(rows: int, cols: int, doors: list[Edge]) -> np.ndarray:
    """All-pairs door counts on the shortest way through ``doors`` (breadth-first search from every room)."""
    n = rows * cols
    neighbours: dict[int, list[int]] = {i: [] for i in range(n)}
    for a, b in doors:
        neighbours[a].append(b)
        neighbours[b].append(a)
    out = np.full((n, n), -1, np.int64)
    for source in range(n):
        out[source, source], queue = 0, deque([source])
        while queue:
            i = queue.popleft()
            for j in neighbours[i]:
                if out[source, j] < 0:
                    out[source, j] = out[source, i] + 1
                    queue.append(j)
    return out
