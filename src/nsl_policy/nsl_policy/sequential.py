"""Sequential tests on grasp success rates: is a candidate better, is a promoted one worse.

ROS-free and dependency-free (math only); the rollout gate (:mod:`nsl_policy.rollout`) and the
experiment's continual guard use them.

:class:`TrialTest` compares a candidate with the incumbent from interleaved episodes. Outcomes
are paired in arrival order (candidate k with incumbent k); only discordant pairs (one
succeeded, the other failed) carry evidence about which is better. Among them the candidate
wins with probability ``theta = pc(1-pi) / (pc(1-pi) + pi(1-pc))``, which is exactly 1/2 when
the two rates are equal, whatever they are. The test is Wald's SPRT of ``theta = 1/2`` (no
improvement) against the ``theta`` of a candidate better by ``min_improvement``, where the
incumbent's rate in that alternative is estimated from outcomes seen *before* each pair (its
record counts too). Because each likelihood-ratio factor's alternative depends only on the past,
the ratio is a martingale under "no improvement" and, by Ville's inequality, a candidate that is
not better is promoted with probability at most ``alpha`` (the promotion bound is
``log(1/alpha)``), whatever the incumbent's rate; a
worse one even less often. A candidate better by ``min_improvement`` is rejected with
probability about ``beta`` (Wald's approximation, checked by simulation in the tests and in
``bench/rollout_oc.py``). At the episode cap the trial ends with ``on_cap``.

:class:`WatchTest` watches a promoted checkpoint against the incumbent's record rate ``p0``: an
SPRT of ``p0`` against ``p0 - min_drop`` that only ever concludes "worse" (roll back); a
checkpoint as good as the record rolls back with probability at most ``alpha``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

ON_CAP = ("reject", "promote_if_not_worse", "extend")
"""What a trial does at its episode cap without a decision (see :class:`TrialSettings`)."""

PROMOTE, REJECT, CONTINUE = "promote", "reject", "continue"


@dataclass(frozen=True)
class TrialSettings:
    """The trial's error rates, the improvement it must detect, and its cap."""

    alpha: float = 0.05
    """Largest probability of promoting a candidate that is not better (the costly error: a
    worse policy goes live), 5% as in most acceptance tests."""
    beta: float = 0.2
    """Probability of rejecting a candidate that is better by ``min_improvement`` (a missed
    gain costs only a fine-tune); 20% keeps trials short (the usual power of 80%)."""
    min_improvement: float = 0.15
    """Smallest gain in success rate worth detecting, absolute; smaller gains need
    quadratically more episodes (0.15 decides in about 100-250 episodes near a rate of 0.5)."""
    max_episodes: int = 400
    """Trial episodes (candidate and incumbent together) before ``on_cap`` applies; bounds
    the time a robot spends on a candidate that is about as good as the incumbent (400 keeps
    the power near 1 - beta at the defaults; 200 halves it, see bench/rollout_oc.py)."""
    on_cap: str = "reject"
    """At the cap: ``reject`` (default: the burden of proof is on the candidate, the
    incumbent keeps running), ``promote_if_not_worse`` (promote when the candidate's rate is
    at least the incumbent's: a fixed-sample comparison, no error-rate guarantee) or
    ``extend`` (one more ``max_episodes`` of trial, then ``reject``)."""
    watch_episodes: int = 100
    """Episodes a promoted checkpoint stays watched for a roll back (0: not watched)."""
    watch_alpha: float = 0.05
    """Largest probability of rolling back a promoted checkpoint that is as good as the
    incumbent's record."""
    min_drop: float = 0.15
    """Fall in success rate below the incumbent's record the watch is built to detect."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("alpha", "beta", "watch_alpha"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                problems.append(f"{name} must be in (0, 0.5) (got {value})")
        for name in ("min_improvement", "min_drop"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                problems.append(f"{name} must be in (0, 1) (got {value})")
        if self.max_episodes < 2:
            problems.append(f"max_episodes must be >= 2 (got {self.max_episodes})")
        if self.watch_episodes < 0:
            problems.append(f"watch_episodes must be >= 0 (got {self.watch_episodes})")
        if self.on_cap not in ON_CAP:
            problems.append(f"on_cap must be one of {', '.join(ON_CAP)} (got {self.on_cap!r})")
        if problems:
            raise ValueError("invalid trial settings: " + "; ".join(problems))

    @property
    def upper(self) -> float:
        """Log-likelihood ratio at which the candidate is promoted.

        log(1/alpha), not Wald's log((1-beta)/alpha): Ville's inequality then bounds the
        promotion of a candidate that is not better by alpha itself.
        """
        return math.log(1.0 / self.alpha)

    @property
    def lower(self) -> float:
        """Log-likelihood ratio at which the candidate is rejected."""
        return math.log(self.beta / (1.0 - self.alpha))


def improved_theta(incumbent_rate: float, improvement: float) -> float:
    """Return the chance that a discordant pair is a candidate win, for a better candidate."""
    pi = min(max(incumbent_rate, 0.01), 0.98)
    pc = min(pi + improvement, 0.99)
    return pc * (1.0 - pi) / (pc * (1.0 - pi) + pi * (1.0 - pc))


def beta_cdf_greater(a1: float, b1: float, a2: float, b2: float, grid: int = 400) -> float:
    """Return P(X > Y) for X ~ Beta(a1, b1), Y ~ Beta(a2, b2) (midpoint rule, for reports)."""

    def log_pdf(x: float, a: float, b: float) -> float:
        return (
            (a - 1) * math.log(x)
            + (b - 1) * math.log1p(-x)
            - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
        )

    h = 1.0 / grid
    xs = [(k + 0.5) * h for k in range(grid)]
    px = [math.exp(log_pdf(x, a1, b1)) * h for x in xs]
    py = [math.exp(log_pdf(x, a2, b2)) * h for x in xs]
    total, below = 0.0, 0.0
    for x_mass, y_mass in zip(px, py):
        total += x_mass * below  # Y in a lower cell than X
        below += y_mass
    total += 0.5 * sum(x * y for x, y in zip(px, py))  # same cell: half each way
    return min(max(total, 0.0), 1.0)


@dataclass
class TrialTest:
    """The sequential comparison of one candidate with the incumbent (see the module doc)."""

    settings: TrialSettings = field(default_factory=TrialSettings)
    prior_successes: int = 0
    """The incumbent's record before the trial: it sharpens the alternative, not the counts."""
    prior_episodes: int = 0
    candidate_successes: int = 0
    candidate_episodes: int = 0
    incumbent_successes: int = 0
    incumbent_episodes: int = 0
    candidate_wins: int = 0
    """Discordant pairs the candidate won (it succeeded, the incumbent failed)."""
    incumbent_wins: int = 0
    log_lr: float = 0.0
    """log of P(pairs | candidate better by min_improvement) / P(pairs | no improvement)."""
    decision: str = CONTINUE
    reason: str = ""
    extended: bool = False
    _pending_candidate: list[bool] = field(default_factory=list, repr=False)
    _pending_incumbent: list[bool] = field(default_factory=list, repr=False)

    @property
    def episodes(self) -> int:
        """Return the trial episodes counted so far (candidate and incumbent)."""
        return self.candidate_episodes + self.incumbent_episodes

    @property
    def cap(self) -> int:
        """Return the episode cap in force (twice ``max_episodes`` once extended)."""
        return self.settings.max_episodes * (2 if self.extended else 1)

    def next_is_candidate(self) -> bool:
        """Return whether the next episode should run the candidate (keeps the arms level)."""
        return self.candidate_episodes <= self.incumbent_episodes

    def add(self, candidate: bool, success: bool) -> str:
        """Count one complete trial episode and return the decision (``continue`` until one)."""
        if self.decision != CONTINUE:
            return self.decision
        if candidate:
            self.candidate_episodes += 1
            self.candidate_successes += int(success)
            self._pending_candidate.append(bool(success))
        else:
            self.incumbent_episodes += 1
            self.incumbent_successes += int(success)
            self._pending_incumbent.append(bool(success))
        while self._pending_candidate and self._pending_incumbent:
            # The alternative uses only outcomes before this pair: the ratio stays a martingale.
            theta = improved_theta(self._incumbent_estimate(), self.settings.min_improvement)
            self._pair(self._pending_candidate.pop(0), self._pending_incumbent.pop(0), theta)
        if self.decision == CONTINUE and self.episodes >= self.cap:
            self._at_cap()
        return self.decision

    def _incumbent_estimate(self) -> float:
        """Return the incumbent's rate from the record and paired outcomes (Laplace prior)."""
        paired = self.incumbent_episodes - len(self._pending_incumbent)
        paired_successes = self.incumbent_successes - sum(self._pending_incumbent)
        s = self.prior_successes + paired_successes
        n = self.prior_episodes + paired
        return (s + 1.0) / (n + 2.0)

    def _pair(self, candidate: bool, incumbent: bool, theta: float) -> None:
        if candidate != incumbent:
            if candidate:
                self.candidate_wins += 1
                self.log_lr += math.log(theta / 0.5)
            else:
                self.incumbent_wins += 1
                self.log_lr += math.log((1.0 - theta) / 0.5)
        if self.log_lr >= self.settings.upper:
            self._decide(PROMOTE, "the candidate is better by at least the minimum improvement")
        elif self.log_lr <= self.settings.lower:
            self._decide(REJECT, "the candidate is not better by the minimum improvement")

    def _at_cap(self) -> None:
        on_cap = self.settings.on_cap
        if on_cap == "extend" and not self.extended:
            self.extended = True
            return
        cap = f"episode cap {self.cap} reached without a decision"
        if on_cap == "promote_if_not_worse" and self.candidate_rate >= self.incumbent_rate:
            self._decide(PROMOTE, f"{cap}; the candidate's rate is not below the incumbent's")
        elif on_cap == "promote_if_not_worse":
            self._decide(REJECT, f"{cap}; the candidate's rate is below the incumbent's")
        else:
            self._decide(REJECT, f"{cap}; the incumbent stays (on_cap {on_cap})")

    def _decide(self, decision: str, reason: str) -> None:
        if self.decision == CONTINUE:
            self.decision, self.reason = decision, reason

    @property
    def candidate_rate(self) -> float:
        """Return the candidate's observed success rate (0 before any episode)."""
        return (
            self.candidate_successes / self.candidate_episodes if self.candidate_episodes else 0.0
        )

    @property
    def incumbent_rate(self) -> float:
        """Return the incumbent's observed success rate in the trial (0 before any episode)."""
        return (
            self.incumbent_successes / self.incumbent_episodes if self.incumbent_episodes else 0.0
        )

    def posterior_better(self) -> float:
        """Return P(candidate rate > incumbent rate) under uniform priors on the trial counts."""
        return beta_cdf_greater(
            1 + self.candidate_successes,
            1 + self.candidate_episodes - self.candidate_successes,
            1 + self.incumbent_successes,
            1 + self.incumbent_episodes - self.incumbent_successes,
        )

    def evidence(self) -> dict:
        """Return the counts and the statistic, as a decision records them."""
        return {
            "candidate": {
                "successes": self.candidate_successes,
                "episodes": self.candidate_episodes,
            },
            "incumbent": {
                "successes": self.incumbent_successes,
                "episodes": self.incumbent_episodes,
            },
            "incumbent_record": {
                "successes": self.prior_successes,
                "episodes": self.prior_episodes,
            },
            "discordant_pairs": {
                "candidate_won": self.candidate_wins,
                "incumbent_won": self.incumbent_wins,
            },
            "log_likelihood_ratio": round(self.log_lr, 4),
            "promote_at": round(self.settings.upper, 4),
            "reject_at": round(self.settings.lower, 4),
            "posterior_candidate_better": round(self.posterior_better(), 4),
            "cap": self.cap,
            "settings": asdict(self.settings),
        }


@dataclass
class WatchTest:
    """Watches a promoted checkpoint's outcomes for a fall below the incumbent's record rate."""

    reference_rate: float
    """The incumbent's record rate the promoted checkpoint must not fall below."""
    settings: TrialSettings = field(default_factory=TrialSettings)
    successes: int = 0
    episodes: int = 0
    log_lr: float = 0.0
    """log of P(outcomes | rate reference - min_drop) / P(outcomes | rate reference)."""
    decision: str = CONTINUE
    """``continue`` while watched, ``rollback`` when worse, ``settled`` at watch_episodes."""

    def add(self, success: bool) -> str:
        """Count one complete episode of the promoted checkpoint and return the decision."""
        if self.decision != CONTINUE:
            return self.decision
        p0 = min(max(self.reference_rate, 0.01), 0.99)
        p1 = max(p0 - self.settings.min_drop, 0.005)
        self.episodes += 1
        self.successes += int(success)
        self.log_lr += math.log(p1 / p0) if success else math.log((1 - p1) / (1 - p0))
        # One-sided: only "worse" concludes early, so the bound is Ville's 1/alpha.
        if self.log_lr >= math.log(1.0 / self.settings.watch_alpha):
            self.decision = "rollback"
        elif self.episodes >= self.settings.watch_episodes:
            self.decision = "settled"
        return self.decision

    def evidence(self) -> dict:
        """Return the counts and the statistic, as a decision records them."""
        return {
            "promoted": {"successes": self.successes, "episodes": self.episodes},
            "reference_rate": round(self.reference_rate, 4),
            "log_likelihood_ratio": round(self.log_lr, 4),
            "rollback_at": round(math.log(1.0 / self.settings.watch_alpha), 4),
            "watch_episodes": self.settings.watch_episodes,
        }


@dataclass(frozen=True)
class OperatingPoint:
    """How a trial behaves at one pair of true rates, over many simulated trials."""

    incumbent_rate: float
    candidate_rate: float
    trials: int
    promoted: float
    """Share of trials that promoted the candidate."""
    rejected: float
    at_cap: float
    """Share of trials that reached the episode cap (their decision is in the two above)."""
    mean_episodes: float


def simulate_trials(
    settings: TrialSettings,
    incumbent_rate: float,
    candidate_rate: float,
    trials: int,
    seed: int = 0,
    prior_episodes: int = 0,
) -> OperatingPoint:
    """Run ``trials`` trials on simulated Bernoulli streams and return their outcome shares.

    Episodes alternate as the rollout gate schedules them; ``prior_episodes`` of the incumbent
    (drawn at its rate) form its record.
    """
    import random  # only simulations draw random numbers

    rng = random.Random(seed)
    promoted = rejected = capped = episodes = 0
    for _ in range(trials):
        prior = sum(rng.random() < incumbent_rate for _ in range(prior_episodes))
        test = TrialTest(settings, prior_successes=prior, prior_episodes=prior_episodes)
        while test.decision == CONTINUE:
            candidate = test.next_is_candidate()
            rate = candidate_rate if candidate else incumbent_rate
            test.add(candidate, rng.random() < rate)
        promoted += test.decision == PROMOTE
        rejected += test.decision == REJECT
        capped += test.reason.startswith("episode cap")
        episodes += test.episodes
    return OperatingPoint(
        incumbent_rate,
        candidate_rate,
        trials,
        promoted / trials,
        rejected / trials,
        capped / trials,
        episodes / trials,
    )


def compare_counts(
    candidate_successes: int,
    candidate_episodes: int,
    incumbent_successes: int,
    incumbent_episodes: int,
    on_cap: str = "promote_if_not_worse",
) -> tuple[str, dict]:
    """Decide on fixed-sample counts with the trial's cap rule; return (decision, evidence).

    For comparisons that have only counts (the experiment's continual guard): no pairing, so
    no sequential statistic, only the cap rule applied to the two rates and the trial's
    evidence (counts and the posterior that the candidate is better).
    """
    episodes = candidate_episodes + incumbent_episodes
    test = TrialTest(TrialSettings(max_episodes=max(episodes, 2), on_cap=on_cap))
    test.candidate_successes, test.candidate_episodes = candidate_successes, candidate_episodes
    test.incumbent_successes, test.incumbent_episodes = incumbent_successes, incumbent_episodes
    test._at_cap()
    return test.decision, {"reason": test.reason, **test.evidence()}
