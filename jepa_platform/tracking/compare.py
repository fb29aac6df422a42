"""``jepa compare``: objectives side by side from any MLflow store, mean ± std over seeds, with curves.

Runs are chosen by experiment, by sweep (the parent run that ``jepa train -m`` opens) or by id, and grouped by what
distinguishes them: a sweep job by its overrides without ``seed=...`` (and without the overrides every chosen run
shares), any other run by its objective; ``--group-by`` names a param (``optimizer.lr``) or tag (``tag:NAME``)
instead. Each group's row holds the final value of each column (the last one logged) as mean ± std over its runs;
rows are sorted by ``--sort`` (probe accuracy by default, best first). Curves: for each chosen metric, one line per
group (the mean over its runs) with a band of one standard deviation, against the step and against wall time
since the run started.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jepa_platform.errors import ConfigError

#: (column, metric key) of the table; ``wall_s`` is the run's duration
COLUMNS: tuple[tuple[str, str], ...] = (
    ("probe_acc", "val/probe_acc"),
    ("knn_acc", "val/knn_acc"),
    # frozen-encoder evaluation (jepa eval, or jepa train final_eval=true): trained, randomly initialised, the gain
    ("linear", "eval/linear_probe_acc"),
    ("linear_random", "eval/random_init/linear_probe_acc"),
    ("linear_gain", "eval/gain/linear_probe_acc"),
    ("knn", "eval/knn_acc"),
    ("knn_random", "eval/random_init/knn_acc"),
    ("rank", "val/repr/rank"),
    ("std", "val/repr/std_mean"),
    ("uniformity", "val/repr/uniformity"),
    ("alignment", "emb/alignment"),
    ("energy", "train/energy"),
    ("wall_s", ""),
    ("samples_per_s", "perf/samples_per_sec"),
)
#: columns where lower is better (the sort puts them ascending)
LOWER_IS_BETTER = {"energy", "wall_s", "alignment", "uniformity"}
DEFAULT_CURVES = ("val/probe_acc", "val/knn_acc", "train/energy", "val/repr/rank")


@dataclass
class RunRecord:
    """One run's final values and what groups it."""

    run_id: str
    group: str
    seed: str
    values: dict[str, float]
    start_ms: int


@dataclass
class Row:
    group: str
    runs: list[RunRecord]

    def values(self, column: str) -> list[float]:
        return [r.values[column] for r in self.runs if column in r.values and math.isfinite(r.values[column])]

    def mean_std(self, column: str) -> tuple[float, float] | None:
        v = self.values(column)
        if not v:
            return None
        mean = sum(v) / len(v)
        std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        return mean, std


@dataclass
class Comparison:
    """The compared runs, grouped, sorted rows, and the columns that have values."""

    rows: list[Row]
    columns: list[str]

    def table(self, fmt: str = "markdown") -> str:
        """The table as ``markdown``, ``csv`` or ``json``."""
        if fmt == "json":
            return json.dumps(self.records(), indent=2)
        if fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["group", "runs", *(f"{c}_{s}" for c in self.columns for s in ("mean", "std"))])
            for row in self.rows:
                stats = [row.mean_std(c) for c in self.columns]
                writer.writerow([row.group, len(row.runs), *(f"{v:.6g}" if s else "" for s in stats for v in (s or (0, 0)))])
            return buffer.getvalue()
        if fmt != "markdown":
            raise ConfigError(f"unknown format {fmt!r}: use markdown, csv or json")
        header = ["group", "runs", *self.columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(self.columns)) + "|"]
        for row in self.rows:
            cells = [row.group, str(len(row.runs))]
            for c in self.columns:
                s = row.mean_std(c)
                cells.append("–" if s is None else _fmt(c, s, len(row.values(c))))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def records(self) -> list[dict[str, Any]]:
        out = []
        for row in self.rows:
            metrics = {}
            for c in self.columns:
                s = row.mean_std(c)
                if s is not None:
                    metrics[c] = {"mean": s[0], "std": s[1], "values": row.values(c)}
            out.append({"group": row.group, "runs": [r.run_id for r in row.runs], "seeds": [r.seed for r in row.runs], "metrics": metrics})
        return out


def _fmt(column: str, stat: tuple[float, float], n: int) -> str:
    digits = 0 if column in ("wall_s", "samples_per_s") else (2 if column == "rank" else 4)
    mean, std = stat
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _without_seed(overrides: str) -> list[str]:
    return [o for o in overrides.split() if not re.match(r"^\+*seed=", o)]


def _objective(run: Any) -> str:
    tags, params = run.data.tags, run.data.params
    return tags.get("jepa.objective") or params.get("objective._target_", "?").rsplit(".", 1)[-1]


def _label(run: Any, group_by: str, shared: set[str]) -> str:
    if group_by.startswith("tag:"):
        return run.data.tags.get(group_by[4:], "?")
    if group_by != "auto":
        return f"{group_by}={run.data.params.get(group_by, '?')}"
    overrides = run.data.tags.get("jepa.sweep.overrides")
    if overrides is not None:
        varied = [o for o in _without_seed(overrides) if o not in shared]
        return " ".join(varied) or _objective(run)
    return _objective(run)


def select_runs(
    client: Any, experiments: Sequence[str] = (), sweep: str | None = None, run_ids: Sequence[str] = (), statuses: Sequence[str] = ("FINISHED",)
) -> list[Any]:
    """The runs to compare (sweep parents left out), one-line errors for names and ids the store does not hold."""
    from mlflow.exceptions import MlflowException

    runs: dict[str, Any] = {}
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise ConfigError(f"no experiment named {name!r} in this store (experiments: {known})")
        for run in client.search_runs([experiment.experiment_id], max_results=5000):
            runs[run.info.run_id] = run
    for run_id in ([sweep] if sweep else []) + list(run_ids):
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            raise ConfigError(f"no run {run_id!r} in this store: check the id (jepa compare --experiment NAME lists by experiment)") from exc
        if run_id == sweep:
            children = client.search_runs([run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{sweep}'", max_results=5000)
            if not children:
                raise ConfigError(f"run {sweep} has no child runs: give the parent run that jepa train -m printed (sweep: MLflow parent run ...)")
            runs.update({c.info.run_id: c for c in children})
        else:
            runs[run_id] = run
    chosen = [r for r in runs.values() if r.data.tags.get("jepa.sweep") != "parent"]
    return [r for r in chosen if not statuses or r.info.status in statuses]


def compare(
    client: Any,
    experiments: Sequence[str] = (),
    sweep: str | None = None,
    run_ids: Sequence[str] = (),
    group_by: str = "auto",
    sort: str = "probe_acc",
    statuses: Sequence[str] = ("FINISHED",),
) -> Comparison:
    """Group and aggregate the chosen runs (see the module docstring)."""
    runs = select_runs(client, experiments, sweep, run_ids, statuses)
    what = ", ".join([*(f"experiment {e}" for e in experiments), *([f"sweep {sweep}"] if sweep else []), *run_ids])
    if not runs:
        raise ConfigError(f"no {'/'.join(statuses) or 'any'} runs in {what}: finished runs only by default (--status all for every run)")
    override_sets = [set(_without_seed(r.data.tags["jepa.sweep.overrides"])) for r in runs if "jepa.sweep.overrides" in r.data.tags]
    shared = set.intersection(*override_sets) if len(override_sets) > 1 else set()
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        values = {col: run.data.metrics[key] for col, key in COLUMNS if key and key in run.data.metrics}
        if run.info.end_time and run.info.start_time:
            values["wall_s"] = (run.info.end_time - run.info.start_time) / 1000
        record = RunRecord(
            run.info.run_id,
            _label(run, group_by, shared),
            run.data.params.get("seed", "?"),
            values,
            run.info.start_time or 0,
        )
        groups.setdefault(record.group, []).append(record)
    rows = [Row(g, sorted(rs, key=lambda r: r.seed)) for g, rs in groups.items()]
    columns = [c for c, _ in COLUMNS if any(row.values(c) for row in rows)]
    if sort not in dict(COLUMNS):
        raise ConfigError(f"cannot sort by {sort!r}: use one of {', '.join(c for c, _ in COLUMNS)}")
    sign = 1 if sort in LOWER_IS_BETTER else -1
    rows.sort(key=lambda row: (row.mean_std(sort) is None, sign * (row.mean_std(sort) or (0.0, 0.0))[0], row.group))
    return Comparison(rows, columns)


Series = dict[str, list[tuple[list[float], list[float]]]]


def curve_series(client: Any, comparison: Comparison, key: str) -> tuple[Series, Series]:
    """For one metric, each group's runs as ``(x, y)`` curves against the step and against wall time (seconds since
    each run started): what :func:`jepa_platform.tracking.figures.band_curves` draws."""
    by_step: Series = {}
    by_time: Series = {}
    for row in comparison.rows:
        for record in row.runs:
            history = sorted(client.get_metric_history(record.run_id, key), key=lambda m: (m.step, m.timestamp))
            if history:
                values = [m.value for m in history]
                by_step.setdefault(row.group, []).append(([m.step for m in history], values))
                by_time.setdefault(row.group, []).append(([(m.timestamp - record.start_ms) / 1000 for m in history], values))
    return by_step, by_time


def curves(client: Any, comparison: Comparison, metrics: Sequence[str], out: Path) -> list[Path]:
    """For each metric: ``<slug>_step.png`` and ``<slug>_time.png``, one line per group with a band over its runs."""
    from jepa_platform.tracking import figures

    written = []
    for key in metrics:
        by_step, by_time = curve_series(client, comparison, key)
        if not by_step:
            continue
        slug = re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")
        written.append(figures.save(figures.band_curves(by_step, "step", key), out / f"{slug}_step.png"))
        written.append(figures.save(figures.band_curves(by_time, "wall time (s)", key), out / f"{slug}_time.png"))
    return written


def write_comparison(client: Any, comparison: Comparison, out: Path, metrics: Sequence[str] = DEFAULT_CURVES) -> list[Path]:
    """The table (``table.md``, ``.csv``, ``.json``) and the curves in ``out``; returns the curve files."""
    out.mkdir(parents=True, exist_ok=True)
    for fmt, suffix in (("markdown", "md"), ("csv", "csv"), ("json", "json")):
        (out / f"table.{suffix}").write_text(comparison.table(fmt))
    return curves(client, comparison, metrics, out)


def log_comparison(client: Any, run_id: str, out: Path) -> None:
    """Log what :func:`write_comparison` wrote in ``out`` to ``run_id`` (a sweep's parent run) under ``compare/``."""
    client.log_artifacts(run_id, str(out), "compare")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the local store of ``jepa train`` (``$JEPA_RUNS_DIR`` or ``./runs``)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    runs = Path(os.environ.get("JEPA_RUNS_DIR", "runs")).resolve()
    return f"sqlite:///{runs}/mlflow.db"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="MLflow run ids to compare")
    p.add_argument("--experiment", action="append", default=[], help="compare every run of this MLflow experiment (repeatable)")
    p.add_argument("--sweep", default=None, help="compare the jobs of a jepa train -m sweep (its parent run id)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///$JEPA_RUNS_DIR/mlflow.db)")
    p.add_argument("--group-by", default="auto", help="auto (sweep overrides without seed, else objective), a param key, or tag:NAME")
    p.add_argument("--sort", default="probe_acc", help=f"column to sort by ({', '.join(c for c, _ in COLUMNS)})")
    p.add_argument("--status", default="FINISHED", help="run statuses to include, comma-separated, or 'all' (default: FINISHED)")
    p.add_argument("--format", default="markdown", choices=("markdown", "csv", "json"), help="table format on stdout")
    p.add_argument("--metrics", default=",".join(DEFAULT_CURVES), help="metrics to draw as curves, comma-separated ('' for none)")
    p.add_argument("--out", type=Path, default=Path("jepa-compare"), help="directory for the curve PNGs and table files")
    p.add_argument("--no-log", action="store_true", help="do not log the table and curves to the sweep's parent run")


def main(args: list[str]) -> int:
    """``jepa compare``: a table of final metrics (mean ± std over seeds) and curves, from any MLflow store."""
    from mlflow import MlflowClient

    from jepa_platform.tracking.store import check_tracking_uri

    parser = argparse.ArgumentParser(prog="jepa compare", description=main.__doc__.splitlines()[0].split(": ", 1)[1])
    add_arguments(parser)
    a = parser.parse_args(args)
    if not (a.experiment or a.sweep or a.run_ids):
        raise ConfigError("nothing to compare: give --experiment NAME, --sweep PARENT_RUN_ID or run ids")
    uri = a.tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"no MLflow store at {uri}: pass --tracking-uri (or set JEPA_RUNS_DIR to the runs directory of jepa train)")
    check_tracking_uri(uri, timeout=15)
    client = MlflowClient(uri)
    statuses = () if a.status == "all" else tuple(s.strip().upper() for s in a.status.split(",") if s.strip())
    comparison = compare(client, a.experiment, a.sweep, a.run_ids, a.group_by, a.sort, statuses)
    sys.stdout.write(comparison.table(a.format))
    written = write_comparison(client, comparison, a.out, [m for m in a.metrics.split(",") if m])
    print(f"table and {len(written)} curve PNGs in {a.out}", file=sys.stderr)
    if a.sweep and not a.no_log:
        log_comparison(client, a.sweep, a.out)
        print(f"logged to the sweep's parent run {a.sweep} (artifacts compare/)", file=sys.stderr)
    return 0
