"""Every installed jepa-platform plugin's YAML (``<package>/conf/<group>/<name>.yaml``) on Hydra's search path, in
every mode Hydra runs in (a run, ``--help``, ``--cfg``, a multirun's jobs, the compose API), after the platform's
own ``conf/``: a plugin adds options and cannot replace a built-in's."""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class JepaPluginSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from jepa_platform.config import plugin_config_dirs

        for directory in plugin_config_dirs():
            search_path.append(provider="jepa-platform-plugin", path=f"file://{directory}")
