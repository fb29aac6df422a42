"""WebDataset DataModules (images, sequences), the shard writer and converter, and the built-in datasets (shapes,
moving shapes, intuitive physics, two-rooms trajectories)."""

from data_modules.builtin import (
    IntuitivePhysicsDataModule,
    MovingShapesDataModule,
    NavigationDataModule,
    ShapesDataModule,
    TwoRoomsDataModule,
    ensure_intuitive_physics_dataset,
    ensure_intuitive_physics_pairs,
    ensure_moving_shapes_dataset,
    ensure_shapes_dataset,
)
from data_modules.images import ImageDataModule
from data_modules.sequences import SequenceDataModule
from data_modules.urls import expand_urls

__all__ = [
    "ImageDataModule",
    "IntuitivePhysicsDataModule",
    "MovingShapesDataModule",
    "NavigationDataModule",
    "SequenceDataModule",
    "ShapesDataModule",
    "TwoRoomsDataModule",
    "ensure_intuitive_physics_dataset",
    "ensure_intuitive_physics_pairs",
    "ensure_moving_shapes_dataset",
    "ensure_shapes_dataset",
    "expand_urls",
]
