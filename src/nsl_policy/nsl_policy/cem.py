"""Batched cross-entropy method (CEM) over the action box [-1, 1]^A.

QT-Opt uses it to pick argmax_a Q(s, a): sample a Gaussian population, keep the elites, refit,
repeat.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class CEMConfig:
    """CEM hyper-parameters.

    Defaults are QT-Opt's (Kalashnikov et al. 2018): 64 samples, 6 elites, 2 iterations.
    """

    population: int = 64
    """Actions sampled per observation and iteration."""
    elites: int = 6
    """Best samples the Gaussian is refitted to."""
    iterations: int = 2
    """Sample/refit rounds."""
    initial_std: float = 0.5
    """Standard deviation of the first Gaussian (mean 0), per action dimension. Samples are
    clipped to [-1, 1], so part of the first population sits on the box's faces."""
    min_std: float = 1e-3
    """Floor of the refitted standard deviation, so the search never collapses to a point."""

    def __post_init__(self) -> None:
        for name in ("population", "elites", "iterations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CEMConfig.{name} must be a positive integer, got {v!r}")
        if self.elites > self.population:
            raise ValueError(
                f"CEMConfig.elites ({self.elites}) must not exceed population ({self.population})"
            )
        for name in ("initial_std", "min_std"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"CEMConfig.{name} must be a positive finite number, got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)


ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def cem_maximize(
    score_fn: ScoreFn,
    batch_size: int,
    action_dim: int,
    config: CEMConfig | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise ``score_fn`` over [-1, 1]^action_dim for ``batch_size`` independent problems.

    ``score_fn(actions (B, N, A)) -> scores (B, N)``. Returns the best sampled action of every
    problem over all iterations, (B, A), and its score, (B,). ``generator`` (on ``device``)
    makes the search reproducible. Non-finite scores never win an elite slot. ``project`` maps
    every sample before it is scored (e.g. nsl_policy.action_space.policy_actions snaps the
    on/off components); the returned action is a projected one and the Gaussian is refitted to
    the projected elites (for a snapped component: it tracks the elites' vote).
    """
    config = config or CEMConfig()
    device = torch.device(device)
    b, n, a = batch_size, config.population, action_dim
    mean = torch.zeros(b, 1, a, device=device)
    std = torch.full((b, 1, a), float(config.initial_std), device=device)
    best_action = torch.zeros(b, a, device=device)
    best_value = torch.full((b,), -math.inf, device=device)
    rows = torch.arange(b, device=device)
    for _ in range(config.iterations):
        noise = torch.randn(b, n, a, generator=generator, device=device)
        samples = (mean + std * noise).clamp_(-1.0, 1.0)
        if project is not None:
            samples = project(samples)
        scores = score_fn(samples)
        if scores.shape != (b, n):
            raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected {(b, n)}")
        scores = torch.where(
            torch.isfinite(scores),
            scores.float(),
            torch.full_like(scores, -math.inf, dtype=torch.float32),
        )
        top_values, top_idx = scores.topk(config.elites, dim=1)  # (B, E), sorted
        elites = samples[rows[:, None], top_idx]  # (B, E, A)
        better = top_values[:, 0] > best_value
        best_value = torch.where(better, top_values[:, 0], best_value)
        best_action = torch.where(better[:, None], elites[:, 0], best_action)
        mean = elites.mean(dim=1, keepdim=True)
        std = (
            elites.std(dim=1, unbiased=False, keepdim=True).clamp_(min=config.min_std)
            if config.elites > 1
            else torch.full_like(std, config.min_std)
        )
    return best_action, best_value
