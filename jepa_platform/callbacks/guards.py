"""Guards that stop a run from wasting its budget or its checkpoints: non-finite training and collapse.

:class:`NonFiniteGuard` watches the loss, its terms and the gradients. ``policy="stop"`` keeps a flag and the
first bad step on the device and reads them every ``check_every_n_steps`` steps and before every checkpoint, so
training pays no host sync per step; the run then ends with one line naming the step and the loss term, and the
bad weights are never written. ``policy="skip"`` must decide before each optimiser step, so it reads the flag every
step: a non-finite step's gradients are dropped (the optimiser leaves every parameter and its state as they
were), counted in ``train/nonfinite_steps``, and ``max_consecutive`` bad steps in a row stop the run.

:class:`CollapseMonitor` reads the embedding statistics the objective logs (``emb/rank``, ``emb/std_mean``) and
warns, tags the MLflow run (``collapse.step``) and optionally stops when they stay under their thresholds for
``patience`` checks in a row.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch.distributed.tensor import DTensor

from jepa_platform.callbacks.cadence import HostMetrics, logged_on_host, logs_this_step
from jepa_platform.callbacks.evaluation import EmbeddingMonitor
from jepa_platform.distributed import world_size
from jepa_platform.errors import JepaError
from jepa_platform.parallel import local_tensor
from jepa_platform.tracking.logger import set_tags

log = logging.getLogger(__name__)
POLICIES = ("stop", "skip")


class TrainingDiverged(JepaError):
    """The loss or the gradients became NaN or infinite."""


def _grads_finite(parameters: list[torch.nn.Parameter], sharded: bool) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if sharded:  # FSDP: this rank's shards
        grads = [local_tensor(g) for g in grads]
    if not grads:
        return torch.tensor(True)
    return torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()


def _any_rank(flags: torch.Tensor) -> torch.Tensor:
    """Element-wise OR of a bool tensor over ranks (every rank must call it): ranks must take the same decision,
    or the ones that stop leave the others waiting in their next collective."""
    if world_size() == 1:
        return flags
    out = flags.to(torch.int32)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out.bool()


def _first_over_ranks(step: torch.Tensor) -> torch.Tensor:
    """The smallest non-negative ``step`` over ranks, -1 when every rank holds -1 (every rank must call it)."""
    if world_size() == 1:
        return step
    never = torch.iinfo(torch.long).max
    out = torch.where(step >= 0, step, torch.full_like(step, never))
    dist.all_reduce(out, op=dist.ReduceOp.MIN)
    return torch.where(out == never, torch.full_like(out, -1), out)


class NonFiniteGuard(Callback):
    """Stops (or skips) non-finite training steps; see the module docstring.

    Args:
        policy: ``stop`` or ``skip``.
        check_every_n_steps: how often ``stop`` reads its device flag: on the first step that logs once this many
            steps have passed (a logging step reads the device anyway), before every checkpoint and at the end.
        max_consecutive: under ``skip``, bad steps in a row after which the run stops.
    """

    def __init__(self, policy: str, check_every_n_steps: int, max_consecutive: int) -> None:
        if policy not in POLICIES:
            raise ValueError(f"callbacks.nonfinite_guard.policy={policy!r} is not one of {', '.join(POLICIES)}")
        if check_every_n_steps < 1 or max_consecutive < 1:
            raise ValueError("callbacks.nonfinite_guard: check_every_n_steps and max_consecutive must be >= 1")
        self.policy, self.every, self.max_consecutive = policy, check_every_n_steps, max_consecutive
        self.skipped = 0
        self.in_a_row = 0
        self._first_bad: torch.Tensor | None = None  # step of the first non-finite loss/grad, -1 if none (device)
        # per set of loss-term names (an objective returns one): (T,) device bools, the term non-finite on the first
        # bad step
        self._term_flags: dict[tuple[str, ...], torch.Tensor] = {}
        self._due = False
        self._parameters: list[torch.nn.Parameter] | None = None
        self._sharded = False

    # -- detection on the device --------------------------------------------------------------------------------
    def _step_flags(self, pl_module: L.LightningModule) -> tuple[torch.Tensor, tuple[str, ...], torch.Tensor | None]:
        """Whether this step is non-finite (device bool), the loss terms' names and their flags ``(T,)``."""
        out = getattr(pl_module, "last_loss", None)
        terms = {"total": out.total, **out.terms} if out is not None else {}
        if self._parameters is None:  # listed once: walking the module tree costs more than the check itself
            self._parameters = [p for p in pl_module.parameters() if p.requires_grad]
            self._sharded = any(isinstance(p, DTensor) for p in self._parameters)
        bad = ~_grads_finite(self._parameters, self._sharded)
        if not terms:
            return bad, (), None
        # one stack and one check for every term (each term on its own costs a few kernels per step)
        values = [v.detach() if v.dim() == 0 else v.detach().sum() for v in terms.values()]
        flags = ~torch.isfinite(torch.stack(values).to(bad.device))
        return bad | flags.any(), tuple(terms), flags

    def _mark_terms(self, names: tuple[str, ...], flags: torch.Tensor, step: int) -> None:
        """Remember which terms were non-finite on the first bad step: one vector of flags per set of term names."""
        new = flags & (self._first_bad == step)
        seen = self._term_flags.get(names)
        self._term_flags[names] = new if seen is None else seen | new

    def bad_terms(self) -> dict[str, torch.Tensor]:
        """Each loss term seen so far, flagged if it was non-finite on the first bad step (device bools)."""
        out: dict[str, torch.Tensor] = {}
        for names, flags in self._term_flags.items():
            for name, flag in zip(names, flags.unbind(), strict=True):
                out[name] = out[name] | flag if name in out else flag
        return out

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._parameters = None  # the parameters as the strategy left them (FSDP replaces them with sharded ones)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        bad, names, flags = self._step_flags(pl_module)
        step = trainer.global_step
        if self.policy == "skip":
            # every rank skips or none does: a term may be non-finite on one rank only, and under FSDP each rank sees
            # only its shard of the gradients
            both = _any_rank(torch.cat([bad[None], flags]) if flags is not None else bad[None])
            bad, term_flags = both[0], dict(zip(names, both[1:], strict=True))
            if bool(bad):  # one host sync per step: the decision is needed now
                self.skipped += 1
                self.in_a_row += 1
                optimizer.zero_grad(set_to_none=True)  # the optimiser leaves parameters without gradients untouched
                log.warning("step %d: non-finite loss or gradients (%s): step skipped", step, self._names(term_flags) or "gradients")
                if self.in_a_row >= self.max_consecutive:
                    raise TrainingDiverged(
                        f"{self.in_a_row} training steps in a row were non-finite (last: step {step}, {self._names(term_flags) or 'gradients'}): "
                        "lower optimizer.lr, add trainer.gradient_clip_val, or resume from an earlier checkpoint"
                    )
            else:
                self.in_a_row = 0
            pl_module.log("train/nonfinite_steps", float(self.skipped), on_step=True, on_epoch=False, batch_size=1)
            return
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=bad.device)
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)
        if flags is not None:
            self._mark_terms(names, flags, step)
        # read on a step that logs (which reads the device anyway), the first one once check_every_n_steps have passed
        self._due = self._due or (step + 1) % self.every == 0
        if self._due and logs_this_step(trainer):
            self._due = False
            self.check(trainer)

    @staticmethod
    def _names(flags: dict[str, torch.Tensor]) -> str:
        return ", ".join(f"loss term {name}" for name, flag in flags.items() if bool(flag))

    def check(self, trainer: L.Trainer) -> None:
        """Read the device flag (a host sync); raise :class:`TrainingDiverged` if a step was non-finite on any rank.
        Every rank calls it at the same steps (and before each checkpoint), so all ranks stop together."""
        if self._first_bad is None:
            return
        first_bad = _first_over_ranks(self._first_bad)
        terms = self.bad_terms()
        if terms:
            names = sorted(terms)
            terms = dict(zip(names, _any_rank(torch.stack([terms[n].to(first_bad.device) for n in names])), strict=True))
        first = int(first_bad)
        if first >= 0:
            what = self._names(terms) or "gradients"
            set_tags(trainer, {"nonfinite.step": first})
            raise TrainingDiverged(
                f"training became non-finite at step {first} ({what} NaN or infinite): lower optimizer.lr, add "
                "trainer.gradient_clip_val, or resume from an earlier checkpoint; nothing of this state was saved"
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # runs while the checkpoint is assembled, before anything is written: a non-finite model is never saved
        self.check(trainer)
        names = [name for name, _ in pl_module.named_parameters()]
        finite = [torch.isfinite(local_tensor(p.detach())).all() for p in pl_module.parameters()]
        flags = _any_rank(~torch.stack(finite)) if finite else torch.zeros(0, dtype=torch.bool)
        bad = [name for name, flag in zip(names, flags.tolist(), strict=True) if flag]  # one transfer for all parameters
        if bad:
            raise TrainingDiverged(
                f"the weights are non-finite at step {trainer.global_step} (e.g. {bad[0]}): not saved; resume from an earlier checkpoint"
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped, self.in_a_row = int(state_dict.get("skipped", 0)), int(state_dict.get("in_a_row", 0))


class CollapseMonitor(Callback):
    """Warns (and with ``stop=True`` stops) when the embeddings collapse; see the module docstring.

    Args:
        min_rank: ``emb/rank`` (effective rank) under which a check counts as collapsed.
        min_std: ``emb/std_mean`` under which a check counts as collapsed.
        patience: collapsed checks in a row that raise the alarm.
        stop: end the run (cleanly, with its checkpoint) when the alarm is raised.
        where: the statistics group to read (``emb`` or ``repr``).
    """

    def __init__(self, min_rank: float, min_std: float, patience: int, stop: bool, where: str) -> None:
        if patience < 1:
            raise ValueError("callbacks.collapse_monitor.patience must be >= 1")
        self.min_rank, self.min_std, self.patience, self.stop, self.where = min_rank, min_std, patience, stop, where
        self.in_a_row = 0
        self.tripped_at: int | None = None
        self._host: HostMetrics | None = None  # set up by setup(): the host copy of the logging steps' values
        self._seen = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._host = logged_on_host(trainer)
        self._seen = self._host.seq

    # Decided from the host copy of the values a logging step transferred (cadence.logged_on_host), after that
    # transfer: at the next step's start or the epoch's end. Reading them itself would be a second wait per step.
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        host = self._host
        if host is None or host.seq == self._seen:
            return
        self._seen = host.seq
        monitor = next((c for c in trainer.callbacks if isinstance(c, EmbeddingMonitor)), None)
        # the transfer came after the step, when global_step already counted it: were the statistics that step's?
        if monitor is None or not monitor.due(host.step - 1):
            return
        rank, std = host.values.get(f"{self.where}/rank"), host.values.get(f"{self.where}/std_mean")
        if rank is None and std is None:
            return
        collapsed = (rank is not None and rank < self.min_rank) or (std is not None and std < self.min_std)
        self.in_a_row = self.in_a_row + 1 if collapsed else 0
        if self.in_a_row >= self.patience and self.tripped_at is None:
            self.tripped_at = host.step
            rank_v, std_v = (v if v is not None else float("nan") for v in (rank, std))
            detail = f"{self.where}/rank={rank_v:.3f} (min {self.min_rank}), {self.where}/std_mean={std_v:.2e} (min {self.min_std})"
            log.warning("collapse: %s for %d checks in a row at step %d%s", detail, self.in_a_row, host.step, ": stopping" if self.stop else "")
            set_tags(trainer, {"collapse.step": host.step, "collapse.detail": detail})
            pl_module.log("collapse/detected", 1.0, on_step=True, on_epoch=False, batch_size=1)
            if self.stop:
                trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"in_a_row": self.in_a_row, "tripped_at": self.tripped_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.in_a_row, self.tripped_at = int(state_dict.get("in_a_row", 0)), state_dict.get("tripped_at")
