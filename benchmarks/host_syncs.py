"""Host syncs per training step, for every registered objective: the table behind
``tests/integration/test_host_syncs.py`` (which fails on any sync in a quiet step).

Each objective trains 6 steps of its debug recipe with the default callbacks and one loader worker, logging every
4 steps (steps 0-2 and 4 are quiet, 3 logs, 5 logs and validates); ``jepa_platform.testing.host_syncs`` counts
every tensor-to-host conversion and data-dependent shape in each step window, by call site.

    python -m benchmarks.host_syncs [--objectives vicreg,ema_jepa] [--sites]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from jepa_platform.config import compose_config
from jepa_platform.registry import OBJECTIVES
from jepa_platform.testing import encoder_overrides
from jepa_platform.train import run_train


def count(name: str, root: Path, data_dir: str) -> list[dict]:
    runs = root / "runs"
    cfg = compose_config(
        [
            encoder_overrides(name)[0],
            f"objective={name}",
            "callbacks=default",
            "data.num_workers=1",
            "++trainer.limit_train_batches=6",
            "++trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=4",
            "++trainer.enable_progress_bar=false",
            f"paths.runs_dir={runs}",
            f"paths.data_dir={data_dir}",
        ],
        output_dir=str(runs / name),
    )
    path = root / f"{name}.json"
    with open_dict(cfg):
        counter = {"_target_": "jepa_platform.testing.host_syncs.HostSyncCounter", "path": str(path)}
        cfg.callbacks = OmegaConf.merge({"host_syncs": counter}, cfg.callbacks)  # first: its window opens the step
    run_train(cfg)
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", default=",".join(OBJECTIVES.names()))
    p.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "jepa-bench-data"))
    p.add_argument("--sites", action="store_true", help="list the call sites of every sync")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [n for n in args.objectives.split(",") if n]:
            steps = count(name, Path(tmp), args.data_dir)
            groups = {
                "quiet": [s for s in steps if not s["logs"] and not s["validates"]],
                "logging": [s for s in steps if s["logs"] and not s["validates"]],
                "validating": [s for s in steps if s["validates"]],
            }
            row = {"objective": name}
            for group, chosen in groups.items():
                row[group] = [sum(s["syncs"].values()) for s in chosen]
                row[f"{group}_sites"] = sum((Counter(s["syncs"]) for s in chosen), Counter())
            rows.append(row)
    print(f"{'objective':<22}{'quiet steps':>12}{'syncs each':>12}{'logging steps':>15}{'syncs each':>12}{'validating step':>17}")
    for r in rows:
        print(
            f"{r['objective']:<22}{len(r['quiet']):>12}{'/'.join(map(str, r['quiet'])):>12}{len(r['logging']):>15}"
            f"{'/'.join(map(str, r['logging'])):>12}{'/'.join(map(str, r['validating'])):>17}"
        )
    if args.sites:
        for r in rows:
            for group in ("quiet", "logging", "validating"):
                for site, n in r[f"{group}_sites"].most_common():
                    print(f"{r['objective']:<22}{group:<12}{n:>4} x {site}")
    return rows


if __name__ == "__main__":
    main()
