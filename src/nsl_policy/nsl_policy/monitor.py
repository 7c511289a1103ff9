"""The learning monitor: how each checkpoint grasps, the trial's progress, and when to stop.

ROS-free; the policy node feeds it every episode and publishes its report on ``/diagnostics``
(:mod:`nsl_policy.diagnostics`), and ``nsl status`` prints it. The report has:

- per checkpoint and task: successes over the last ``window`` complete episodes and their 95%
  Wilson score interval (aborted episodes are not evidence, as in the rollout);
- the candidate's trial progress and the watch of a promoted checkpoint (or why it is not
  watched), from :meth:`nsl_policy.rollout.Rollout.status`;
- the "stopped improving" signal, defined precisely as either of:

  * **live**: the last ``patience`` judged fine-tunes each show no significant gain over the
    best checkpoint before them. Fine-tunes are the checkpoints after the first one this node
    saw, in the order it first saw them (in force or on trial). Rates are compared on one
    task only: a fine-tune is judged on each task where it has ``min_episodes`` complete
    episodes in its window and an earlier checkpoint has as many (its gain there: a one-sided
    two-proportion z-test at 5% against the best such earlier checkpoint on that task), and
    it gained when it gained on any of them; it is judged at once when the rollout rejected it
    or rolled it back (no gain went live);
  * **validation**: the fine-tunes' validation scores (higher is better; from the checkpoint's
    metadata when the trainer wrote one) turned down: there are more than ``patience`` scores
    and each of the last ``patience`` is below the best score before them (early stopping's
    patience rule).

  The signal says that more fine-tunes of the same kind are unlikely to pay (the paper's
  "knowing when to stop"); it changes nothing by itself.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

Z95 = 1.959963984540054
"""Two-sided 95% normal quantile (the intervals)."""
Z_ONE_SIDED_5 = 1.6448536269514722
"""One-sided 5% normal quantile (the gain test)."""

OK, WARN, ERROR = 0, 1, 2
"""Levels of a status entry, as diagnostic_msgs/DiagnosticStatus numbers them."""
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", 3: "STALE"}


def wilson_interval(successes: int, episodes: int, z: float = Z95) -> tuple[float, float]:
    """Return the Wilson score interval of a success rate ((0, 1) without episodes)."""
    if episodes <= 0:
        return 0.0, 1.0
    p = successes / episodes
    denominator = 1 + z * z / episodes
    centre = (p + z * z / (2 * episodes)) / denominator
    half = z * math.sqrt(p * (1 - p) / episodes + z * z / (4 * episodes * episodes)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def significant_gain(successes: int, episodes: int, ref_successes: int, ref_episodes: int) -> bool:
    """Return whether the first rate is significantly above the second.

    One-sided pooled two-proportion z-test at 5%; False without episodes on either side.
    """
    if episodes <= 0 or ref_episodes <= 0:
        return False
    p1, p0 = successes / episodes, ref_successes / ref_episodes
    pooled = (successes + ref_successes) / (episodes + ref_episodes)
    variance = pooled * (1 - pooled) * (1 / episodes + 1 / ref_episodes)
    if variance <= 0:
        return False  # both all-success or all-failure: equal rates, no gain
    return (p1 - p0) / math.sqrt(variance) > Z_ONE_SIDED_5


VALIDATION_KEYS = {"val_success": 1.0, "val_loss": -1.0}
"""Checkpoint metadata ``metrics`` that give a validation score, with the sign that makes
higher better; the trainer writes none today, so only the live rule applies to its
checkpoints."""


def validation_score(metadata: dict) -> float | None:
    """Return a checkpoint's validation score from its metadata (None when it has none)."""
    metrics = metadata.get("metrics") if isinstance(metadata, dict) else None
    if not isinstance(metrics, dict):
        return None
    for key, sign in VALIDATION_KEYS.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return sign * float(value)
    return None


@dataclass(frozen=True)
class MonitorSettings:
    """The monitor's window and its stopped-improving rule."""

    window: int = 100
    """Complete episodes per checkpoint and task the rates use: recent enough to follow a
    changing world, enough for an interval about +-0.1 wide near a rate of 0.5."""
    patience: int = 3
    """Fine-tunes without a gain (or with a falling validation score) before learning is
    called stopped: one flat fine-tune is common noise, three in a row is a trend."""
    min_episodes: int = 20
    """Complete episodes before a fine-tune's live rate is judged: fewer give an interval
    too wide (about +-0.2) to tell a gain from luck."""

    def __post_init__(self) -> None:
        for name in ("window", "patience", "min_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"monitor {name} must be >= 1 (got {getattr(self, name)})")


@dataclass
class FineTune:
    """What the rule needs of one checkpoint: its windowed counts, rollout verdict, score."""

    checkpoint_id: str
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Windowed (successes, episodes) per task."""
    rejected: bool = False
    """The rollout rejected it or rolled it back."""
    validation: float | None = None

    @property
    def successes(self) -> int:
        """Return the windowed successes over all tasks."""
        return sum(s for s, _ in self.counts.values())

    @property
    def episodes(self) -> int:
        """Return the windowed complete episodes over all tasks."""
        return sum(n for _, n in self.counts.values())


def stopped_improving(
    checkpoints: list[FineTune], settings: MonitorSettings = MonitorSettings()
) -> tuple[bool, str]:
    """Apply the stopped-improving rule (module doc) to checkpoints in the order seen.

    The first entry is the starting checkpoint, the rest are fine-tunes. Returns the flag and
    the reason (what was compared), also when the flag is False.
    """
    k, least = settings.patience, settings.min_episodes
    judged: list[tuple[str, bool]] = []  # (checkpoint id, gained)
    for i, tune in enumerate(checkpoints[1:], start=1):
        if tune.rejected:
            judged.append((tune.checkpoint_id, False))
            continue
        gains = []  # one per task it shares with an earlier checkpoint
        for task, (successes, episodes) in tune.counts.items():
            earlier = [
                c.counts[task] for c in checkpoints[:i] if c.counts.get(task, (0, 0))[1] >= least
            ]
            if episodes >= least and earlier:
                best_s, best_n = max(earlier, key=lambda counts: counts[0] / counts[1])
                gains.append(significant_gain(successes, episodes, best_s, best_n))
        if gains:
            judged.append((tune.checkpoint_id, any(gains)))
    if len(judged) >= k and not any(gained for _, gained in judged[-k:]):
        ids = ", ".join(cid for cid, _ in judged[-k:])
        return True, f"no significant gain over the last {k} fine-tunes ({ids})"
    scores = [c for c in checkpoints[1:] if c.validation is not None]
    if len(scores) > k:
        best_before = max(c.validation for c in scores[:-k])
        if all(c.validation < best_before for c in scores[-k:]):
            return True, (
                f"validation score fell: the last {k} fine-tunes are below the best earlier "
                f"score {best_before:.4g}"
            )
    gains = sum(gained for _, gained in judged)
    return False, (
        f"{len(judged)} fine-tunes judged, {gains} with a significant gain"
        if judged
        else "no fine-tune judged yet"
    )


@dataclass
class _Window:
    outcomes: deque = field(default_factory=deque)

    def counts(self) -> tuple[int, int]:
        return sum(self.outcomes), len(self.outcomes)


class LearningMonitor:
    """Collects episodes and checkpoints and reports them (see the module doc); thread-safe."""

    def __init__(self, settings: MonitorSettings = MonitorSettings()) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._order: list[str] = []  # checkpoint ids in the order first seen
        self._validation: dict[str, float] = {}
        self._rejected: set[str] = set()
        self._windows: dict[tuple[str, str], _Window] = {}

    def checkpoint_seen(self, checkpoint_id: str, validation: float | None = None) -> None:
        """Note a checkpoint (in force or on trial) and its validation score, if any."""
        with self._lock:
            if checkpoint_id not in self._order:
                self._order.append(checkpoint_id)
            if validation is not None and math.isfinite(validation):
                self._validation[checkpoint_id] = float(validation)

    def decision(self, decision: str, checkpoint_id: str) -> None:
        """Note a rollout decision (``reject`` and ``rollback`` count as no gain)."""
        if decision in ("reject", "rollback"):
            with self._lock:
                self._rejected.add(checkpoint_id)

    def episode(self, checkpoint_id: str, task: str, success: bool, complete: bool) -> None:
        """Count an episode in its checkpoint's and task's window (aborted ones are not)."""
        if not complete:
            return
        self.checkpoint_seen(checkpoint_id)
        with self._lock:
            window = self._windows.setdefault((checkpoint_id, task), _Window())
            window.outcomes.append(int(bool(success)))
            while len(window.outcomes) > self.settings.window:
                window.outcomes.popleft()

    def fine_tunes(self) -> list[FineTune]:
        """Return the checkpoints in the order seen with their windowed counts per task."""
        with self._lock:
            result = []
            for cid in self._order:
                tune = FineTune(cid, rejected=cid in self._rejected)
                tune.validation = self._validation.get(cid)
                for (wid, task), window in self._windows.items():
                    if wid == cid:
                        tune.counts[task] = window.counts()
                result.append(tune)
            return result

    def report(self, rollout_status: dict | None = None) -> dict:
        """Return the monitor's report; ``rollout_status`` is :meth:`Rollout.status`'s dict."""
        rollout_status = rollout_status or {}
        in_force = rollout_status.get("in_force", "")
        trial = rollout_status.get("trial")
        roles = {in_force: "in force"}
        if trial:
            roles[trial["candidate_id"]] = "candidate"
        watch = rollout_status.get("watch")
        if watch:
            roles[watch["promoted_id"]] = "in force, watched"
        with self._lock:
            windows = sorted(
                self._windows.items(),
                key=lambda item: (self._order.index(item[0][0]), item[0][1]),
            )
            rows = []
            for (cid, task), window in windows:
                s, n = window.counts()
                low, high = wilson_interval(s, n)
                rows.append(
                    {
                        "checkpoint_id": cid,
                        "task": task,
                        "successes": s,
                        "episodes": n,
                        "rate": s / n if n else 0.0,
                        "ci95": [round(low, 4), round(high, 4)],
                        "role": roles.get(cid, "rejected" if cid in self._rejected else ""),
                    }
                )
        stopped, reason = stopped_improving(self.fine_tunes(), self.settings)
        return {
            "mode": rollout_status.get("mode", ""),
            "in_force": in_force,
            "checkpoints": rows,
            "trial": trial,
            "watch": watch,
            "unwatched": rollout_status.get("unwatched", ""),
            "stopped_improving": stopped,
            "stopped_reason": reason,
            "window": self.settings.window,
        }


@dataclass(frozen=True)
class StatusEntry:
    """One line of the report as a diagnostics status: level, name, message, key-values."""

    level: int
    name: str
    message: str
    values: dict[str, str] = field(default_factory=dict)


def status_entries(report: dict, running: str = "active") -> list[StatusEntry]:
    """Return the report as status entries: learning, trial, watch, one per checkpoint/task.

    ``running`` is the node's lifecycle state; any other than ``active`` is a warning (no
    episodes run).
    """
    stopped = report["stopped_improving"]
    if not report["in_force"]:
        level, message = ERROR, "no checkpoint in force: the arm does not move"
    elif running != "active":
        level, message = WARN, f"{running}: no episodes run"
    elif stopped:
        level, message = WARN, f"stopped improving: {report['stopped_reason']}"
    else:
        level, message = OK, f"in force {report['in_force']}; {report['stopped_reason']}"
    entries = [
        StatusEntry(
            level,
            "learning",
            message,
            {
                "state": running,
                "rollout_mode": report["mode"],
                "in_force": report["in_force"],
                "stopped_improving": str(stopped).lower(),
                "stopped_reason": report["stopped_reason"],
                "window": str(report["window"]),
            },
        )
    ]
    trial = report.get("trial")
    if trial:
        cand, inc = trial["candidate"], trial["incumbent"]
        entries.append(
            StatusEntry(
                OK,
                "trial",
                f"candidate {trial['candidate_id']} {cand['successes']}/{cand['episodes']} vs "
                f"incumbent {trial['incumbent_id']} {inc['successes']}/{inc['episodes']}, "
                f"log LR {trial['log_likelihood_ratio']:g} (promote at {trial['promote_at']:g}, "
                f"reject at {trial['reject_at']:g}), "
                f"{cand['episodes'] + inc['episodes']}/{trial['cap']} episodes",
                {
                    "trial_id": trial["trial_id"],
                    "candidate_id": trial["candidate_id"],
                    "incumbent_id": trial["incumbent_id"],
                    "candidate": f"{cand['successes']}/{cand['episodes']}",
                    "incumbent": f"{inc['successes']}/{inc['episodes']}",
                    "log_likelihood_ratio": f"{trial['log_likelihood_ratio']:g}",
                    "posterior_candidate_better": f"{trial['posterior_candidate_better']:g}",
                    "cap": str(trial["cap"]),
                },
            )
        )
    watch = report.get("watch")
    if watch:
        promoted = watch["promoted"]
        entries.append(
            StatusEntry(
                OK,
                "watch",
                f"{watch['promoted_id']} {promoted['successes']}/{promoted['episodes']} on "
                f"{watch['task']} against {watch['previous_id']}'s record "
                f"{watch['reference_rate']:.2f} there, log LR {watch['log_likelihood_ratio']:g} "
                f"(roll back at {watch['rollback_at']:g}), "
                f"{promoted['episodes']}/{watch['watch_episodes']} episodes",
                {
                    "promoted_id": watch["promoted_id"],
                    "previous_id": watch["previous_id"],
                    "task": watch["task"],
                    "promoted": f"{promoted['successes']}/{promoted['episodes']}",
                    "reference_rate": f"{watch['reference_rate']:g}",
                },
            )
        )
    elif report.get("unwatched"):
        entries.append(StatusEntry(OK, "watch", report["unwatched"]))
    for row in report["checkpoints"]:
        low, high = row["ci95"]
        role = f", {row['role']}" if row["role"] else ""
        entries.append(
            StatusEntry(
                OK,
                f"success {row['checkpoint_id']} {row['task']}",
                f"{row['rate']:.2f} ({row['successes']}/{row['episodes']}), "
                f"95% CI {low:.2f}-{high:.2f}{role}",
                {
                    "checkpoint_id": row["checkpoint_id"],
                    "task": row["task"],
                    "successes": str(row["successes"]),
                    "episodes": str(row["episodes"]),
                    "ci95_low": f"{low:.4f}",
                    "ci95_high": f"{high:.4f}",
                    "role": row["role"],
                },
            )
        )
    return entries


def format_entries(entries: list[tuple[int, str, str]]) -> str:
    """Return ``(level, name, message)`` entries as terminal lines (``nsl status``)."""
    width = max((len(name) for _, name, _ in entries), default=0)
    return "\n".join(
        f"{LEVEL_NAMES.get(level, str(level)):<5} {name:<{width}}  {message}"
        for level, name, message in entries
    )
