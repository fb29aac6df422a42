"""One-way paths the structure relies on, checked in the source: who may write to MLflow, and who may read
Lightning's loop internals. A change that adds a second way fails here with the file and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "jepa_platform").rglob("*.py"), *(ROOT / "data_modules").rglob("*.py")])

RULES = {
    # values over steps go through self.log; tags and files through tracking.logger.set_tags / log_artifacts
    "MLflow written outside jepa_platform/tracking/": (
        re.compile(r"\.experiment\b|(?<!def )\blog_metrics\(|\.set_tag\(|\.log_artifacts?\(|\.loggers\s*[:\[)]|in trainer\.loggers"),
        ("jepa_platform/tracking/",),
    ),
    # data, objectives and callbacks read what they are handed; the logging cadence is Lightning's one private read
    "Lightning loop internals read": (
        re.compile(r"fit_loop|_combined_loader|batch_progress|epoch_loop|_logger_connector|_active_loop"),
        ("jepa_platform/callbacks/cadence.py",),
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_one_way(rule: str):
    pattern, allowed = RULES[rule]
    found = []
    for path in SOURCES:
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(allowed):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#")[0]):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, f"{rule}:\n" + "\n".join(found)


def test_the_rules_can_fail():
    pattern, _ = RULES["MLflow written outside jepa_platform/tracking/"]
    assert pattern.search("logger.experiment.set_tag(run_id, 'k', 'v')") and pattern.search("for lg in trainer.loggers:")
    pattern, _ = RULES["Lightning loop internals read"]
    assert pattern.search("trainer.fit_loop.epoch_loop.batch_progress.current.processed")
