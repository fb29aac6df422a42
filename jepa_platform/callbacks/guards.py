"""Guards that stop a run from wasting its budget or its checkpoints: non-finite training and collapse.

:class:`NonFiniteGuard` watches the loss, its terms and the gradients. ``policy="stop"`` keeps a flag and a
count of the steps since the first bad one on the device and reads them every ``check_every_n_steps`` steps and
before every checkpoint, so training pays no host sync per step; the run then ends with one line naming the step and the loss term, and the
bad weights are never written. ``policy="skip"`` must decide before each optimiser step, so it reads the flag every
step: a non-finite step's gradients are dropped (the optimiser leaves every parameter and its state as they
were), counted in ``train/nonfinite_steps``, and ``max_consecutive`` bad steps in a row stop the run.

:class:`CollapseMonitor` reads the embedding statistics the objective logs (``emb/rank``, ``emb/std_mean``) and
warns, tags the MLflow run (``collapse.step``) and optionally stops when they stay under their thresholds for
``patience`` checks in a row.
"""

from __future__ import annotations

import logging
from collections import deque
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
#: the most steps whose loss terms policy stop keeps for naming them
MAX_KEPT_STEPS = 100_000


class TrainingDiverged(JepaError):
    """The loss or the gradients became NaN or infinite."""


def _kinds(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``tensors`` grouped by (device, dtype), in order: a fused check takes one kind at a time."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


_ONES: dict[torch.device, torch.Tensor] = {}


def _one(device: torch.device) -> torch.Tensor:
    """A read-only ``(1,)`` one on ``device`` (the check's ``inv_scale``), made once per device."""
    one = _ONES.get(device)
    if one is None:
        one = _ONES[device] = torch.ones(1, device=device)
    return one


def _non_finite(groups: list[list[torch.Tensor]], into: torch.Tensor | None = None) -> torch.Tensor:
    """``(1,)`` device bool: whether any tensor of ``groups`` (each of one device and dtype) holds a NaN or an inf.

    One fused pass per group with torch's mixed-precision scaler's own check (``inv_scale`` 1: the tensors are
    multiplied by exactly one): a few times cheaper than a norm per tensor (0.09 -> 0.01 ms for H-JEPA's 71 gradients
    on this CPU) and one kernel per group on a GPU. With ``into`` (a ``(1,)`` float flag on the groups' device), the
    check raises that flag and leaves it raised (it is never cleared), and ``into`` itself is returned."""
    if into is not None:
        for tensors in groups:
            torch._amp_foreach_non_finite_check_and_unscale_(tensors, into, _one(into.device))
        return into
    found = []
    for tensors in groups:
        device = tensors[0].device
        flag = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, flag, _one(device))
        found.append(flag)
    total = found[0] if len(found) == 1 else torch.stack([f.to(found[0].device) for f in found]).sum(0)
    return total > 0


def _stacked(terms: list[torch.Tensor]) -> torch.Tensor | None:
    """The loss terms as one ``(T,)`` tensor (``None`` for none)."""
    return torch.stack([t.to(terms[0]) for t in terms]) if terms else None


def _grads_finite(parameters: list[torch.nn.Parameter], sharded: bool) -> torch.Tensor:
    """Whether every gradient is finite (a ``(1,)`` device bool, no host sync); FSDP: this rank's shards."""
    grads = [p.grad for p in parameters if p.grad is not None]
    grads = [local_tensor(g) for g in grads] if sharded else grads
    return ~_non_finite(_kinds(grads)) if grads else torch.ones(1, dtype=torch.bool)


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
        # policy stop, on the device: ``_found`` a (1,) float flag raised by the first non-finite loss or gradient and
        # never lowered; ``_bad_steps`` (1,) the steps checked since then, that one included (the first bad step is
        # ``_last_step - _bad_steps + 1``). On the host, references to the loss terms of the latest steps (no copies):
        # the check reads the first bad step's among them to name the terms
        self._found: torch.Tensor | None = None
        self._bad_steps: torch.Tensor | None = None
        self._last_step = -1
        self._recent: deque[tuple[int, tuple[str, ...], list[torch.Tensor]]] = deque(maxlen=1)
        self._due = False
        self._parameters: list[list[torch.nn.Parameter]] | None = None  # trainable ones, by (device, dtype)
        self._sharded = False

    # -- detection on the device --------------------------------------------------------------------------------
    def _step_inputs(self, pl_module: L.LightningModule) -> tuple[list[list[torch.Tensor]], tuple[str, ...], list[torch.Tensor]]:
        """This step's gradients and loss terms (detached, 0-d), grouped by (device, dtype) for the fused check, and
        the terms' names and tensors.

        Gradients and loss terms go through one fused check: at GPU step rates the guard's cost is its number of
        small operations, not their size."""
        out = getattr(pl_module, "last_loss", None)
        if self._parameters is None:  # listed once: walking the module tree costs more than the check itself
            self._parameters = _kinds([p for p in pl_module.parameters() if p.requires_grad])
            self._sharded = any(isinstance(p, DTensor) for group in self._parameters for p in group)
        groups = []
        for params in self._parameters:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                groups.append([local_tensor(g) for g in grads] if self._sharded else grads)
        if out is None:
            return groups, (), []
        terms = [v.detach() if v.dim() == 0 else v.detach().sum() for v in (out.total, *out.terms.values())]
        for kind in _kinds(terms):
            match = next((i for i, g in enumerate(groups) if g[0].device == kind[0].device and g[0].dtype == kind[0].dtype), None)
            if match is None:
                groups.append(kind)
            else:
                groups[match] = [*groups[match], *kind]
        return groups, ("total", *out.terms), terms

    def _step_check(self, pl_module: L.LightningModule) -> tuple[torch.Tensor, tuple[str, ...], torch.Tensor | None]:
        """Whether this step is non-finite (``(1,)`` device bool), the loss terms' names and their values ``(T,)``."""
        groups, names, terms = self._step_inputs(pl_module)
        bad = _non_finite(groups) if groups else torch.zeros(1, dtype=torch.bool)
        return bad, names, _stacked(terms)

    def _record(self, pl_module: L.LightningModule, step: int) -> None:
        """Policy stop's per-step work: two small operations on the device whatever the model (the fused check raises
        the sticky flag, the flag is added to the count of bad steps) and a reference to the loss terms kept on the
        host. Keeping the first bad step's number and terms on the device instead took eight (a fresh flag, the
        terms' stack, comparisons, an AND, masked writes): in place, 0.33 -> 0.14 ms a step for H-JEPA's tiny model here
        (benchmarks/framework_overhead.py), 0.19 -> 0.10 ms for LeJEPA's."""
        groups, names, terms = self._step_inputs(pl_module)
        if not groups:
            return
        if self._found is None:
            device = groups[0][0].device
            self._found, self._bad_steps = torch.zeros(1, device=device), torch.zeros(1, device=device)
        found = _non_finite([g for g in groups if g[0].device == self._found.device], self._found)
        for other in (g for g in groups if g[0].device != self._found.device):  # several devices (rare): raise it too
            torch.maximum(found, _non_finite([other]).to(found), out=found)
        self._bad_steps.add_(found)
        self._last_step = step
        if terms:
            self._recent.append((step, names, terms))

    def _first_bad(self) -> torch.Tensor | None:
        """``(1,)`` long: the first non-finite step on this rank, -1 if none (``None`` before the first recorded step)."""
        if self._bad_steps is None:
            return None
        bad = self._bad_steps.long()
        return torch.where(bad > 0, self._last_step - bad + 1, torch.full_like(bad, -1))

    def bad_terms(self, step: int) -> dict[str, torch.Tensor] | None:
        """Each loss term of ``step``, flagged if non-finite (device bools); ``None`` when that step's terms are no
        longer kept (more steps passed between two checks than :meth:`on_train_start` provided for)."""
        entry = next((e for e in self._recent if e[0] == step), None)
        if entry is None:
            return None
        _, names, terms = entry
        return dict(zip(names, (~torch.isfinite(_stacked(terms))).unbind(), strict=True))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._parameters = None  # the parameters as the strategy left them (FSDP replaces them with sharded ones)
        # the steps between two reads: check_every_n_steps, then up to the next step that logs; each step's terms are a
        # few 0-d tensors, so a long gap (rare logging) costs little
        self._recent = deque(maxlen=min(self.every + max(trainer.log_every_n_steps, 1) + 1, MAX_KEPT_STEPS))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        step = trainer.global_step
        if self.policy == "skip":
            bad, names, values = self._step_check(pl_module)
            flags = ~torch.isfinite(values) if values is not None else None
            # every rank skips or none does: a term may be non-finite on one rank only, and under FSDP each rank sees
            # only its shard of the gradients
            both = _any_rank(torch.cat([bad, flags.to(bad.device)]) if flags is not None else bad)
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
        self._record(pl_module, step)
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
        mine = self._first_bad()
        if mine is None:
            return
        first = int(_first_over_ranks(mine))  # the one host sync of a check
        if first < 0:
            return
        terms = self.bad_terms(first)
        if terms is not None:  # the first bad step is the same on every rank, so are its terms' names
            names = sorted(terms)
            terms = dict(zip(names, _any_rank(torch.stack([terms[n] for n in names])), strict=True))
        what = "loss or gradients" if terms is None else self._names(terms) or "gradients"
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
