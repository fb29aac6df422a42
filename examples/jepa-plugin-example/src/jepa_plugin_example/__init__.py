"""Example jepa-platform plugin: SimSiam (an objective) and SmallConvNet (an encoder), registered by entry points."""
