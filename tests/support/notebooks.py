"""Executing the paired notebooks in ``notebooks/`` as a user would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.cli import environment


def execute_notebook(path: Path, workdir: Path, env: dict[str, str] | None = None, timeout: int = 600) -> list[dict[str, Any]]:
    """Execute a jupytext ``.py`` notebook in a fresh kernel (nbclient) with ``env`` set for the kernel and
    ``workdir`` as its working directory; returns the outputs of its code cells (errors raise)."""
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    with environment(env):  # the kernel inherits this process's environment
        NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
