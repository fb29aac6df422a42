"""WebDataset DataModules, the shard writer and the built-in dataset."""

from data_modules.builtin import ShapesDataModule, ensure_shapes_dataset
from data_modules.webdataset_dm import WebDatasetDataModule, expand_shards

__all__ = ["ShapesDataModule", "WebDatasetDataModule", "ensure_shapes_dataset", "expand_shards"]
