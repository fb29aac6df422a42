"""Hydra finds this plugin by its namespace (``hydra_plugins``): it puts the ``conf/`` folders of installed
jepa-platform plugins on the config search path (see :class:`JepaPluginSearchPath`)."""
