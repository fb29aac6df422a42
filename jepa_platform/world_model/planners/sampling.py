"""Sampling planners: CEM, iCEM and MPPI over action sequences, batched on the world model's device.

- **CEM** (Rubinstein 1999; DINO-WM's planner): sample around a Gaussian, refit it to the elites, repeat.
- **iCEM** (Pinneri et al. 2020): CEM with temporally correlated (colored, 1/f^beta) noise, a population that
  shrinks each iteration, a fraction of the elites carried to the next iteration and, shifted, to the next replan,
  and the mean itself as a candidate: CEM's success with a fraction of the samples.
- **MPPI** (Williams et al. 2017; PLDM's and eb_jepa's planner): the new mean is the exponentially weighted average
  of all candidates, ``w ~ exp(-(cost - min) / temperature)``.

All three return the best *safe* candidate they evaluated (guardrail-violating candidates have infinite cost and
are never chosen; see :mod:`jepa_platform.world_model.costs`). All three plan a batch of episodes at once (each
iteration one world-model call over episodes x candidates) with the same noise for every episode, and refit their
distributions with masks, never with shapes that depend on the costs (module :mod:`.base`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from jepa_platform.registry import register_planner
from jepa_platform.world_model.costs import PlanningCost
from jepa_platform.world_model.planners.base import Planner, Scored, WorldModel, best_of, finite_mean_std, merge, shifted


def colored_noise(shape: tuple[int, int, int], beta: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """Unit-variance noise ``(N, H, A)`` with power spectrum ~ 1/f^beta along H (beta = 0: white, 2: smooth)."""
    n, h, a = shape
    if beta == 0 or h < 2:
        return torch.randn(shape, generator=generator, device=device)
    freqs = torch.fft.rfftfreq(h, device=device)
    freqs[0] = freqs[1]
    scale = freqs.pow(-beta / 2)
    spectrum = torch.complex(
        torch.randn(n, a, freqs.numel(), generator=generator, device=device), torch.randn(n, a, freqs.numel(), generator=generator, device=device)
    )
    x = torch.fft.irfft(spectrum * scale, n=h)  # (N, A, H)
    # unit power per sequence; the constant (f = 0) part is kept: subtracting each sequence's mean would leave no
    # candidate that keeps going one way (at horizon 2, every sequence would be (a, -a))
    x = x / x.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-6)
    return x.transpose(1, 2).contiguous()


@register_planner("cem")
class CEM(Planner):
    """Cross-entropy method: Gaussian over action sequences refitted to the elites each iteration.

    Args:
        num_samples: candidates per iteration.
        iterations: refits per plan.
        elites: candidates the Gaussian is refitted to.
        init_std: initial standard deviation (in action units).
        min_std: floor of the standard deviation.
        seed: see :class:`Planner`.
    """

    def __init__(
        self, num_samples: int = 300, iterations: int = 5, elites: int = 30, init_std: float = 1.0, min_std: float = 0.05, seed: int = 0
    ) -> None:
        super().__init__(seed)
        self.num_samples, self.iterations, self.elites, self.init_std, self.min_std = num_samples, iterations, elites, init_std, min_std

    def noise(self, n: int, horizon: int, wm: WorldModel) -> Tensor:
        return torch.randn((n, horizon, wm.action_dim), generator=self.rng(wm.device), device=wm.device)

    def search(self, wm: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, horizon: int) -> Tensor:
        mean = self.initial_mean(wm, z0.shape[0], horizon)  # (E, H, A)
        std = torch.full_like(mean, self.init_std)
        best: Scored | None = None
        for _ in range(self.iterations):
            samples = wm.clamp(mean[:, None] + std[:, None] * self.noise(self.num_samples, horizon, wm))  # (E, N, H, A)
            samples[:, 0] = wm.clamp(mean)
            scored = self.score(wm, z0, goal, cost, samples)
            best = best_of(scored if best is None else merge(best, scored), self.elites)
            mean, std = finite_mean_std(best.actions, best.costs, mean, std, self.min_std)
        return self.choose(wm, best, horizon)


@register_planner("icem")
class ICEM(CEM):
    """Improved CEM (Pinneri et al. 2020): colored noise, shrinking population, elites kept across iterations and
    replans (see module docstring).

    Args:
        num_samples: candidates in the first iteration.
        iterations: refits per plan.
        elites: candidates the Gaussian is refitted to.
        beta: colored-noise exponent (0 white, 2 smooth).
        decay: population divisor per iteration (``N_i = max(N / decay^i, 2 x elites)``).
        keep_fraction: fraction of the elites carried into the next iteration and (shifted) the next replan.
        init_std, min_std, seed: see :class:`CEM`.
    """

    episode_state = (*CEM.episode_state, "kept")

    def __init__(
        self,
        num_samples: int = 100,
        iterations: int = 4,
        elites: int = 10,
        beta: float = 2.0,
        decay: float = 1.25,
        keep_fraction: float = 0.3,
        init_std: float = 1.0,
        min_std: float = 0.05,
        seed: int = 0,
    ) -> None:
        super().__init__(num_samples, iterations, elites, init_std, min_std, seed)
        self.beta, self.decay, self.keep_fraction = beta, decay, keep_fraction
        #: ``(E, K, H, A)``: elites carried to the next replan
        self.kept: Tensor | None = None

    def shift(self, executed: int) -> None:
        super().shift(executed)
        if self.kept is not None:
            self.kept = shifted(self.kept, executed, dim=2)

    def search(self, wm: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, horizon: int) -> Tensor:
        episodes = z0.shape[0]
        mean = self.initial_mean(wm, episodes, horizon)
        std = torch.full_like(mean, self.init_std)
        kept = self.kept if self.kept is not None and (self.kept.shape[0], self.kept.shape[2]) == (episodes, horizon) else None
        best: Scored | None = None
        for i in range(self.iterations):
            n = max(int(self.num_samples / self.decay**i), 2 * self.elites)
            noise = colored_noise((n, horizon, wm.action_dim), self.beta, self.rng(wm.device), wm.device)
            samples = wm.clamp(mean[:, None] + std[:, None] * noise)  # (E, n, H, A)
            if kept is not None:
                samples = torch.cat([samples, wm.clamp(kept)], dim=1)
            if i == self.iterations - 1:
                samples = torch.cat([samples, wm.clamp(mean)[:, None]], dim=1)
            scored = self.score(wm, z0, goal, cost, samples)
            elite_set = best_of(scored, self.elites)
            best = elite_set if best is None else best_of(merge(best, elite_set), self.elites)
            mean, std = finite_mean_std(elite_set.actions, elite_set.costs, mean, std, self.min_std)
            kept = elite_set.actions[:, : max(1, int(self.keep_fraction * self.elites))]
        self.kept = kept
        return self.choose(wm, best, horizon)


@register_planner("mppi")
class MPPI(Planner):
    """Model-predictive path integral: the mean moves to the exp(-cost / temperature)-weighted average.

    Args:
        num_samples: candidates per iteration.
        iterations: updates per plan.
        noise_std: standard deviation of the perturbations (action units).
        temperature: lambda of the weights, relative to the spread of the costs (a scale-free choice).
        seed: see :class:`Planner`.
    """

    def __init__(self, num_samples: int = 300, iterations: int = 4, noise_std: float = 0.7, temperature: float = 0.05, seed: int = 0) -> None:
        super().__init__(seed)
        self.num_samples, self.iterations, self.noise_std, self.temperature = num_samples, iterations, noise_std, temperature

    def search(self, wm: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, horizon: int) -> Tensor:
        mean = self.initial_mean(wm, z0.shape[0], horizon)  # (E, H, A)
        best: Scored | None = None
        g = self.rng(wm.device)
        for _ in range(self.iterations):
            noise = self.noise_std * torch.randn((self.num_samples, horizon, wm.action_dim), generator=g, device=wm.device)
            samples = wm.clamp(mean[:, None] + noise)  # (E, N, H, A)
            samples[:, 0] = wm.clamp(mean)
            scored = self.score(wm, z0, goal, cost, samples)
            best = best_of(scored if best is None else merge(best, scored), 1)
            mean = torch.where(torch.isfinite(scored.costs).any(dim=1)[:, None, None], self.weighted_mean(wm, scored), mean)
        final = self.score(wm, z0, goal, cost, wm.clamp(mean)[:, None])
        return self.choose(wm, best_of(merge(best, final), 1), horizon)

    def weighted_mean(self, wm: WorldModel, scored: Scored) -> Tensor:
        """The ``exp(-(cost - min) / (temperature x spread))``-weighted mean of each episode's safe candidates (an
        episode without one gets a meaningless mean, which the caller discards)."""
        safe = torch.isfinite(scored.costs)
        low = torch.where(safe, scored.costs, torch.inf).amin(dim=1, keepdim=True)
        high = torch.where(safe, scored.costs, -torch.inf).amax(dim=1, keepdim=True)
        spread = (high - low).nan_to_num(0.0, 0.0, 0.0).clamp_min(1e-9)
        logits = torch.where(safe, -(scored.costs - low) / (self.temperature * spread), -torch.inf)
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # (E, N)
        return wm.clamp((weights[:, :, None, None] * scored.actions).sum(dim=1))
