"""Which training steps reach a logger: per-step values logged on the other steps are never seen, and computing,
reducing and moving them costs device work, collectives (``sync_dist``) and host syncs on every step."""

from __future__ import annotations

import lightning as L


def logs_this_step(trainer: L.Trainer | None) -> bool:
    """True on the steps whose ``on_step`` values Lightning hands to the loggers (every ``log_every_n_steps``), on the
    last batch of an epoch and on the last step, so the run's final values are always logged; outside a fit: True."""
    if trainer is None or not trainer.training:
        return True
    # Lightning's own rule, read where it decides (it has no public name): the one read of its internals
    if trainer._logger_connector.should_update_logs or trainer.is_last_batch:
        return True
    return trainer.max_steps > 0 and trainer.global_step + 1 >= trainer.max_steps
