"""The built-in datasets, generated or collected into a cache directory on first use: one module per dataset, its
generator beside its DataModule (``shapes``: labelled shape images; ``moving_shapes``: videos of moving shapes;
``intuitive_physics``: a ball under gravity, and impossible twins for ``jepa surprise``; ``navigation``: two_rooms and
maze trajectories); ``videos`` is the base of the video datasets, ``cache`` where they go."""

from data_modules.builtin.cache import default_cache_dir
from data_modules.builtin.intuitive_physics import (
    IntuitivePhysicsDataModule,
    ensure_intuitive_physics_dataset,
    ensure_intuitive_physics_pairs,
    intuitive_physics_dir,
)
from data_modules.builtin.moving_shapes import MovingShapesDataModule, ensure_moving_shapes_dataset, moving_shapes_dir
from data_modules.builtin.navigation import NavigationDataModule, TwoRoomsDataModule, two_rooms_dir
from data_modules.builtin.shapes import ShapesDataModule, ensure_shapes_dataset, shapes_dir
from data_modules.builtin.videos import GeneratedVideoDataModule

__all__ = [
    "GeneratedVideoDataModule",
    "IntuitivePhysicsDataModule",
    "MovingShapesDataModule",
    "NavigationDataModule",
    "ShapesDataModule",
    "TwoRoomsDataModule",
    "default_cache_dir",
    "ensure_intuitive_physics_dataset",
    "ensure_intuitive_physics_pairs",
    "ensure_moving_shapes_dataset",
    "ensure_shapes_dataset",
    "intuitive_physics_dir",
    "moving_shapes_dir",
    "shapes_dir",
    "two_rooms_dir",
]
