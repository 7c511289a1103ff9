"""The acceptance checks of the reproduction (issue 7), from the tables' numbers."""

from __future__ import annotations

import math

from ..sections import MIN_CALIBRATION_EPISODES
from .tables import fmt, single_step

#: Acceptance thresholds of the reproduction (issue 7).
BASE_MIN_SUCCESS = 0.80
MIN_CHALLENGE_DROP = 0.15
MAX_FINETUNE_GRASPS = 800
MIN_RECOVERED_SHARE = 0.5  # of the challenge's drop
MIN_CHALLENGES_RECOVERED = 4 / 5  # "on >= 4 of 5 challenges"
MIN_CHALLENGES_BEAT_AGNOSTIC = 4 / 5  # issue 32: "on >= 4 of 5 challenges"
MAX_CONTINUAL_PENALTY = 0.10  # single-step minus continual
#: Comparisons of success rates (k/n) tolerate float rounding of their differences.
EPS = 1e-9


def best_tier(row: dict, max_grasps: int = MAX_FINETUNE_GRASPS) -> tuple[str, dict] | None:
    """Return the paper's "Best".

    The fine-tune with <= ``max_grasps`` grasps and the highest success, a tier (labelled by its
    grasps) or the online rounds ("online N") when they replaced the base policy at all; ties go to
    fewer grasps, then to a tier. None when there is none.
    """
    candidates = [(n, c, int(n)) for n, c in row["tiers"].items() if int(n) <= max_grasps]
    online = row.get("online")
    if online and online["accepted_rounds"] and online["grasps"] <= max_grasps:
        candidates.append((f"online {online['grasps']}", online["result"], online["grasps"]))
    if not candidates:
        return None
    label, c, _ = max(candidates, key=lambda x: (x[1]["success_rate"], -x[2]))
    return label, c


def largest_tier_versus(
    t2: dict, swept: list[str], column: str
) -> list[tuple[str, float, float]] | None:
    """Return (task, fine-tune at the largest tier, baseline ``column``) success per swept task.

    None when the baseline was not run on one of them.
    """
    rows = [t2["tasks"][n] for n in swept]
    if any(row.get(column) is None for row in rows):
        return None
    return [
        (n, row["tiers"][str(t2["largest_tier"])]["success_rate"], row[column]["success_rate"])
        for n, row in zip(swept, rows)
    ]


def acceptance(numbers: dict) -> list[dict]:
    """Return the acceptance checks of the reproduction, from :func:`tables`' numbers.

    (only ``success_rate``, ``drop``, Table I's ``solvable`` and ``calibration_episodes`` and
    the table layout are read, so synthetic numbers work).
    Each check: {"check", "passed" (True/False, None when its stage has not run), "detail"}.
    """
    t1, t2, t3 = numbers.get("table_i"), numbers.get("table_ii"), numbers.get("table_iii")
    checks = []

    def add(check: str, passed: bool | None, detail: str) -> None:
        checks.append({"check": check, "passed": passed, "detail": detail})

    # 1. The base policy.
    base = t1["base"]["base_policy"] if t1 else None
    add(
        f"base policy success >= {BASE_MIN_SUCCESS:.2f} (Table I, evaluation episodes)",
        None if base is None else base["success_rate"] >= BASE_MIN_SUCCESS - EPS,
        "calibrate has not run" if base is None else fmt(base),
    )

    # 2. Every challenge hurts the base policy and can still be done.
    challenge_check = (
        f"every challenge at its chosen severity is solvable and drops the base policy by >= "
        f"{MIN_CHALLENGE_DROP:.2f} (calibrated on >= {MIN_CALIBRATION_EPISODES} episodes per "
        "severity)"
    )
    challenges = [n for n in (t1 or {}) if n != "base"]
    if t1 and challenges:
        short = [n for n in challenges if t1[n]["drop"] < MIN_CHALLENGE_DROP - EPS]
        unsolvable = [n for n in challenges if t1[n].get("solvable") is not True]
        few = [
            n
            for n in challenges
            if (t1[n].get("calibration_episodes") or 0) < MIN_CALIBRATION_EPISODES
        ]
        problems = (
            (["too small on " + ", ".join(short)] if short else [])
            + (["not shown solvable: " + ", ".join(unsolvable)] if unsolvable else [])
            + (
                [f"fewer than {MIN_CALIBRATION_EPISODES} calibration episodes: " + ", ".join(few)]
                if few
                else []
            )
        )
        add(
            challenge_check,
            not problems,
            "; ".join(
                problems + ["drops: " + ", ".join(f"{n} {t1[n]['drop']:.3f}" for n in challenges)]
            ),
        )
    else:
        add(challenge_check, None, "calibrate has not run")

    # 3-5. Fine-tuning: recovery, and fine-tuning vs scratch and vs the task-agnostic trunk on
    # the same grasps.
    swept = [n for n in (t2["tasks"] if t2 else {}) if n != "base"]
    recovery_check = (
        f"fine-tuning with <= {MAX_FINETUNE_GRASPS} grasps recovers >= {MIN_RECOVERED_SHARE:.0%} "
        "of the "
        f"drop on >= {MIN_CHALLENGES_RECOVERED:.0%} of the challenges (4 of 5)"
    )
    scratch_check = "fine-tuning beats scratch on every challenge (same grasps: the largest tier)"
    agnostic_check = (
        "the RL-pre-trained trunk (the fine-tune at the largest tier) beats the task-agnostic "
        "trunk (the same fine-tune from a trunk trained without RL) on "
        f">= {MIN_CHALLENGES_BEAT_AGNOSTIC:.0%} of the challenges (4 of 5)"
    )
    if t1 and t2 and swept:
        recovered, details = 0, []
        for n in swept:
            best = best_tier(t2["tasks"][n])
            drop = t1.get(n, {}).get("drop")
            if best is None or drop is None:
                details.append(f"{n}: n/a (no tier <= {MAX_FINETUNE_GRASPS})")
                continue
            if drop < MIN_CHALLENGE_DROP - EPS:  # a share of a drop within noise means nothing
                details.append(
                    f"{n}: n/a (drop {drop:+.3f} < {MIN_CHALLENGE_DROP:.2f}: nothing to recover)"
                )
                continue
            share = (best[1]["success_rate"] - t1[n]["base_policy"]["success_rate"]) / drop
            recovered += share >= MIN_RECOVERED_SHARE - EPS
            details.append(f"{n}: {share:.0%} (best: {best[0]})")
        needed = math.ceil(MIN_CHALLENGES_RECOVERED * len(swept) - EPS)
        add(
            recovery_check,
            recovered >= needed,
            f"{recovered} of {len(swept)} (needs {needed}): " + "; ".join(details),
        )
        versus = largest_tier_versus(t2, swept, "scratch")
        if versus is None:
            add(scratch_check, None, "scratch not run (study.baselines false)")
        else:
            losses = [n for n, ft, other in versus if not ft > other + EPS]
            add(
                scratch_check,
                not losses,
                ("not better on: " + ", ".join(losses) + "; " if losses else "")
                + ", ".join(f"{n} {ft:.3f} vs {other:.3f}" for n, ft, other in versus),
            )
        versus = largest_tier_versus(t2, swept, "agnostic_trunk")
        if versus is None:
            add(
                agnostic_check,
                None,
                "task-agnostic trunk not run (study.baselines false, or a sweep stamped before "
                "it existed)",
            )
        else:
            wins = [n for n, ft, other in versus if ft > other + EPS]
            needed = math.ceil(MIN_CHALLENGES_BEAT_AGNOSTIC * len(swept) - EPS)
            add(
                agnostic_check,
                len(wins) >= needed,
                f"{len(wins)} of {len(swept)} (needs {needed}): "
                + ", ".join(f"{n} {ft:.3f} vs {other:.3f}" for n, ft, other in versus),
            )
    else:
        add(recovery_check, None, "calibrate and finetune_sweep have not both run")
        add(scratch_check, None, "finetune_sweep has not run")
        add(agnostic_check, None, "finetune_sweep has not run")

    # 6. Continual vs single-step.
    cont_check = (
        f"continual fine-tuning is within {MAX_CONTINUAL_PENALTY:.2f} of single-step on every task"
    )
    if t3 and t2:
        worse, details = [], []
        for s in t3["steps"]:
            single = single_step(numbers, s["task"])
            if single is None:
                worse.append(f"{s['task']} (no single-step run)")
                continue
            delta = s["continual"]["success_rate"] - single["success_rate"]
            details.append(f"{s['task']} {delta:+.3f}")
            if -delta > MAX_CONTINUAL_PENALTY + EPS:
                worse.append(s["task"])
        accepted = sum(bool(s.get("accepted", True)) for s in t3["steps"])
        gate = (
            (
                f" (validation-gated chain: {accepted} of {len(t3['steps'])} steps accepted; a "
                "rejected step "
                "keeps the previous policy)"
            )
            if t3.get("guard")
            else ""
        )
        add(
            cont_check,
            not worse,
            ("fails: " + ", ".join(worse) + "; " if worse else "")
            + "continual - single: "
            + ", ".join(details)
            + gate,
        )
    else:
        add(cont_check, None, "finetune_sweep and continual have not both run")
    return checks
