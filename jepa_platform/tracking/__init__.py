"""Everything MLflow: the training logger (:mod:`.logger`), the outbox that keeps a run's records through tracking
server outages (:mod:`.outbox`, ``jepa sync``), sweep grouping (:mod:`.sweeps`), the figures logged as artifacts
(:mod:`.figures`) and ``jepa compare`` (:mod:`.compare`)."""

from jepa_platform.tracking.logger import RunLogger, log_to_run, logged_steps, mark_dead_runs
from jepa_platform.tracking.store import check_tracking_uri

__all__ = ["RunLogger", "check_tracking_uri", "log_to_run", "logged_steps", "mark_dead_runs"]
