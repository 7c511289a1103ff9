"""The report stage: the paper's Tables I-III, the acceptance checks, plots and summary.json,
rendered from a run folder's stage stamps (stages/<stage>.json) only. It runs no episodes and
trains nothing, so ``nsl experiment report`` re-renders it in seconds.

Every success rate comes with its episode count and 95% Wilson interval as the stage recorded
it. Acceptance checks (issue 7) are computed from these numbers by :func:`acceptance`.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from pathlib import Path
from typing import Any, Callable

from .config import KEYED_WHEN_SET, ExperimentConfig

#: Acceptance thresholds of the reproduction (issue 7).
BASE_MIN_SUCCESS = 0.80
MIN_CHALLENGE_DROP = 0.15
MAX_FINETUNE_GRASPS = 800
MIN_RECOVERED_SHARE = 0.5  # of the challenge's drop
MIN_CHALLENGES_RECOVERED = 4 / 5  # "on >= 4 of 5 challenges"
MAX_CONTINUAL_PENALTY = 0.10  # single-step minus continual
#: Comparisons of success rates (k/n) tolerate float rounding of their differences.
EPS = 1e-9

#: The paper's Table I categories.
CHALLENGE_TYPE = {
    "checkerboard": "background",
    "harsh_light": "lighting conditions",
    "extend_gripper_1cm": "gripper shape",
    "offset_gripper_10cm": "robot morphology",
    "transparent_objects": "unseen objects",
}
STAGE_ORDER = (
    "pretrain",
    "evaluate_base",
    "calibrate",
    "collect_targets",
    "finetune_sweep",
    "online_finetune",
    "continual",
)
REPORT_NAME = "paper_reproduction.md"
SUMMARY_NAME = "summary.json"
SWEEP_PLOT = "success_vs_grasps.png"
CONTINUAL_PLOT = "continual_vs_single.png"


# ------------------------------------------------------------------ numbers from the stamps
def load_stamps(run_dir: Path) -> dict[str, dict]:
    """The stage stamps of a run folder that exist, by stage name."""
    stamps = {}
    for name in STAGE_ORDER:
        try:
            stamps[name] = json.loads((run_dir / "stages" / f"{name}.json").read_text())
        except FileNotFoundError:
            continue
        except ValueError as exc:
            raise ValueError(
                f"{run_dir / 'stages' / f'{name}.json'}: not valid JSON ({exc})"
            ) from None
    return stamps


def cell(result: dict) -> dict:
    """The reported numbers of one evaluation: success rate, successes, episodes, 95% CI."""
    keys = ("success_rate", "successes", "episodes", "ci95", "checkpoint_id", "task", "severity")
    return {k: result[k] for k in keys if k in result}


def tables(stamps: dict[str, dict]) -> dict[str, Any]:
    """Tables I-III as plain numbers (cells of :func:`cell`); a table is None when its stage has no stamp."""
    out: dict[str, Any] = {"table_i": None, "table_ii": None, "table_iii": None}
    cal = stamps.get("calibrate")
    if cal:
        out["table_i"] = {
            name: {
                "severity": row["severity"],
                "reached": row["reached"],
                "drop": row["drop"],
                "base_policy": cell(row["result"]),
                "validation_drop": cal["calibration"]["challenges"].get(name, {}).get("drop"),
            }
            for name, row in cal["table_i"].items()
        }
    sweep = stamps.get("finetune_sweep")
    if sweep:
        out["table_ii"] = {
            "tiers": sweep["tiers"],
            "largest_tier": sweep["largest_tier"],
            "finetune_steps": sweep["finetune_steps"],
            "scratch_steps": sweep["scratch_steps"],
            "learning_rate": sweep["learning_rate"],
            "scratch_learning_rate": sweep["scratch_learning_rate"],
            "target_fraction": sweep["target_fraction"],
            "tasks": {
                name: {
                    "severity": row["task"]["severity"],
                    "tiers": {n: cell(e["result"]) for n, e in row["tiers"].items()},
                    "scratch": cell(row["scratch"]["result"]),
                    "reinit_head": cell(row["reinit_head"]["result"]),
                    "reinit_modules": row["reinit_head"].get("modules"),
                }
                for name, row in sweep["tasks"].items()
            },
        }
    online = stamps.get("online_finetune")
    if out["table_ii"] and online and online.get("tasks"):
        out["table_ii"]["online"] = {
            "rounds": online["online_rounds"],
            "grasps_per_round": online["grasps_per_round"],
        }
        for name, row in online["tasks"].items():
            if name in out["table_ii"]["tasks"]:
                out["table_ii"]["tasks"][name]["online"] = {
                    "grasps": row["grasps"],
                    "validation_episodes": row["validation_episodes"],
                    "gate_seed_set": row["rounds"][0]["validation"]["seed_set"]
                    if row["rounds"]
                    else None,
                    "accepted_rounds": [r["round"] for r in row["rounds"] if r["accepted"]],
                    "result": cell(row["result"]),
                }
    cont = stamps.get("continual")
    if cont:
        out["table_iii"] = {
            "order": cont["order"],
            "episodes_per_step": cont["episodes_per_step"],
            "recollect": cont["recollect"],
            "guard": cont.get("guard", False),
            "steps": [
                {
                    "step": s["step"],
                    "task": s["task"],
                    "severity": s["severity"],
                    "checkpoint_id": s["checkpoint_id"],
                    "continual": cell(s["result"]),
                    "accepted": s.get("accepted", True),
                    "candidate": cell(s["candidate"]["result"]) if "candidate" in s else None,
                    "validation": None
                    if not s.get("guard")
                    else {
                        "candidate": s["guard"]["candidate_validation"]["success_rate"],
                        "in_force": s["guard"]["previous_validation"]["success_rate"],
                        "episodes": s["guard"]["candidate_validation"]["episodes"],
                    },
                }
                for s in cont["steps"]
            ],
            "final": {name: cell(r) for name, r in cont["final"].items()},
        }
    return out


def _rate(c: dict | None) -> float | None:
    return None if c is None else c["success_rate"]


def single_step(numbers: dict, task: str) -> dict | None:
    """The sweep's fine-tuning of the base policy on ``task`` at its largest tier (the grasps
    one continual step uses), or None.
    """
    t2 = numbers.get("table_ii")
    row = t2["tasks"].get(task) if t2 else None
    return row["tiers"].get(str(t2["largest_tier"])) if row else None


def best_tier(row: dict, max_grasps: int = MAX_FINETUNE_GRASPS) -> tuple[str, dict] | None:
    """The paper's "Best": the fine-tune with <= ``max_grasps`` grasps and the highest success, a
    tier (labelled by its grasps) or the online rounds ("online N") when they replaced the base
    policy at all; ties go to fewer grasps, then to a tier. None when there is none.
    """
    candidates = [(n, c, int(n)) for n, c in row["tiers"].items() if int(n) <= max_grasps]
    online = row.get("online")
    if online and online["accepted_rounds"] and online["grasps"] <= max_grasps:
        candidates.append((f"online {online['grasps']}", online["result"], online["grasps"]))
    if not candidates:
        return None
    label, c, _ = max(candidates, key=lambda x: (x[1]["success_rate"], -x[2]))
    return label, c


def acceptance(numbers: dict) -> list[dict]:
    """The acceptance checks of the reproduction, from :func:`tables`' numbers (only
    ``success_rate``, ``drop`` and the table layout are read, so synthetic numbers work).
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

    # 2. Every challenge hurts the base policy.
    challenges = [n for n in (t1 or {}) if n != "base"]
    if t1 and challenges:
        short = [n for n in challenges if t1[n]["drop"] < MIN_CHALLENGE_DROP - EPS]
        add(
            f"every challenge drops the base policy by >= {MIN_CHALLENGE_DROP:.2f}",
            not short,
            ("too small on " + ", ".join(short) + "; " if short else "")
            + "drops: "
            + ", ".join(f"{n} {t1[n]['drop']:.3f}" for n in challenges),
        )
    else:
        add(
            f"every challenge drops the base policy by >= {MIN_CHALLENGE_DROP:.2f}",
            None,
            "calibrate has not run",
        )

    # 3-4. Fine-tuning: recovery, and fine-tuning vs scratch on the same grasps.
    swept = [n for n in (t2["tasks"] if t2 else {}) if n != "base"]
    recovery_check = (
        f"fine-tuning with <= {MAX_FINETUNE_GRASPS} grasps recovers >= {MIN_RECOVERED_SHARE:.0%} of the "
        f"drop on >= {MIN_CHALLENGES_RECOVERED:.0%} of the challenges (4 of 5)"
    )
    scratch_check = "fine-tuning beats scratch on every challenge (same grasps: the largest tier)"
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
        losses, details = [], []
        for n in swept:
            row = t2["tasks"][n]
            ft, sc = (
                row["tiers"][str(t2["largest_tier"])]["success_rate"],
                row["scratch"]["success_rate"],
            )
            details.append(f"{n} {ft:.3f} vs {sc:.3f}")
            if not ft > sc + EPS:
                losses.append(n)
        add(
            scratch_check,
            not losses,
            ("not better on: " + ", ".join(losses) + "; " if losses else "") + ", ".join(details),
        )
    else:
        add(recovery_check, None, "calibrate and finetune_sweep have not both run")
        add(scratch_check, None, "finetune_sweep has not run")

    # 5. Continual vs single-step.
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
                f" (validation-gated chain: {accepted} of {len(t3['steps'])} steps accepted; a rejected step "
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


def consistency_warnings(stamps: dict[str, dict]) -> list[str]:
    """Stamps that do not belong together (another base checkpoint or calibration)."""
    warnings = []
    base_ids = {
        name: stamps[name].get("checkpoint_id")
        for name in ("calibrate", "finetune_sweep", "collect_targets", "online_finetune")
        if name in stamps and stamps[name].get("checkpoint_id")
    }
    if "continual" in stamps:
        base_ids["continual"] = stamps["continual"].get("base_checkpoint_id")
    if len(set(base_ids.values())) > 1:
        warnings.append(
            f"stages used different base checkpoints: {base_ids}; re-run the later stages"
        )
    cal = stamps.get("calibrate")
    if cal:
        severity = {n: c["severity"] for n, c in cal["calibration"]["challenges"].items()}
        used = []
        if "finetune_sweep" in stamps:
            used += [
                ("finetune_sweep", n, r["task"]["severity"])
                for n, r in stamps["finetune_sweep"]["tasks"].items()
            ]
        if "online_finetune" in stamps:
            used += [
                ("online_finetune", n, r["task"]["severity"])
                for n, r in stamps["online_finetune"].get("tasks", {}).items()
            ]
        if "continual" in stamps:
            used += [("continual", s["task"], s["severity"]) for s in stamps["continual"]["steps"]]
        for stage, name, s in used:
            if name != "base" and severity.get(name) != s:
                warnings.append(
                    f"{stage} used {name} at severity {s}, calibrate chose {severity.get(name)}; "
                    f"re-run {stage}"
                )
    return warnings


# ------------------------------------------------------------------ provenance
def reproduce_commands(stamps: dict[str, dict], run_dir: Path) -> list[str]:
    """``nsl experiment run`` command lines that redo the stamped stages with the configs they
    were produced with (one line per distinct config; overrides of the defaults only).
    """
    defaults = ExperimentConfig().to_dict()
    groups: list[tuple[dict, list[str]]] = []
    for name in STAGE_ORDER:
        config = stamps.get(name, {}).get("provenance", {}).get("config")
        if config is None:
            continue
        for cfg, names in groups:
            if cfg == config:
                names.append(name)
                break
        else:
            groups.append((config, [name]))
    lines = []
    for config, names in groups:
        words = ["./nsl", "experiment", "run", "--output", str(run_dir)]
        if names != list(STAGE_ORDER):  # else the default: every stage, the report included
            words += ["--stages", ",".join(names)]
        # A field newer than the stamp had the value of KEYED_WHEN_SET when the stamp was made.
        config = {**KEYED_WHEN_SET, **config}
        for key in sorted(config):
            if key in defaults and config[key] != defaults[key]:
                words += ["--set", f"{key}={json.dumps(config[key])}"]
        lines.append(" ".join(shlex.quote(w) for w in words))
    return lines


# ------------------------------------------------------------------ rendering
def fmt(c: dict | None) -> str:
    """A cell as "rate [lo, hi]" (just the rate when it has no interval, e.g. synthetic numbers)."""
    if c is None:
        return "n/a"
    if "ci95" not in c:
        return f"{c['success_rate']:.2f}"
    lo, hi = c["ci95"]
    return f"{c['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _episodes(cells: list[dict]) -> str:
    ns = sorted({c["episodes"] for c in cells if c})
    return "/".join(str(n) for n in ns) if ns else "?"


def render_markdown(
    numbers: dict,
    checks: list[dict],
    stamps: dict[str, dict],
    run_dir: Path,
    commands: list[str],
    warnings: list[str],
    plots: dict[str, str],
) -> str:
    t1, t2, t3 = numbers["table_i"], numbers["table_ii"], numbers["table_iii"]
    verdict = {True: "PASS", False: "FAIL", None: "NOT RUN"}
    passed = sum(1 for c in checks if c["passed"])
    out = [
        "# Never Stop Learning: the simulated reproduction",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from the stage stamps of `{run_dir}` "
        "by the report stage (no episodes are run to make it). Every success rate is grasp success on "
        "held-out test objects with evaluation seeds, shown as `rate [95% Wilson CI]`.",
        "",
        f"**Acceptance: {passed} of {len(checks)} checks pass.**",
        "",
    ]
    imported = stamps.get("pretrain", {}).get("imported_from")
    if imported:
        out += [
            f"The base policy `{stamps['pretrain']['checkpoint_id']}` was imported from `{imported}` "
            "(`base_checkpoint`), not pre-trained in this run. Its pre-training data is not part of the run, so "
            "every fine-tune mixes in the base control's exploration grasps (the base row of Table II) as its base "
            "data instead.",
            "",
        ]
    if warnings:
        out += (
            ["**Warning: the stamps do not all belong to one run:**", ""]
            + [f"- {w}" for w in warnings]
            + [""]
        )

    out += ["## Acceptance checks", ""]
    out += _table(
        ["check", "result", "numbers"],
        [[c["check"], f"**{verdict[c['passed']]}**", c["detail"]] for c in checks],
    )
    rerender = f"./nsl experiment report --output {shlex.quote(str(run_dir))}   # re-render this page from the stamps"
    out += ["", "## Reproduce", "", "```bash", *commands, rerender, "```", ""]

    out += ["## Table I: the challenges and the base policy", ""]
    if t1:
        rows = []
        for name, r in t1.items():
            if name == "base":
                rows.append(["base (no change)", "-", "-", fmt(r["base_policy"]), "-", "-"])
                continue
            rows.append(
                [
                    name,
                    CHALLENGE_TYPE.get(name, ""),
                    f"{r['severity']:g}" + ("" if r["reached"] else " (drop not reached)"),
                    fmt(r["base_policy"]),
                    f"{-r['drop']:+.2f}",
                    "n/a" if r["validation_drop"] is None else f"{-r['validation_drop']:+.2f}",
                ]
            )
        seed_set = (
            stamps.get("calibrate", {})
            .get("calibration", {})
            .get("base_validation", {})
            .get("seed_set", "validation")
        )
        out += _table(
            [
                "task",
                "type",
                "severity",
                "base policy",
                "Δ vs base",
                f"Δ on {seed_set} episodes (calibration)",
            ],
            rows,
        )
        out += [
            "",
            f"n = {_episodes([r['base_policy'] for r in t1.values()])} evaluation episodes per task. The "
            "severity (nsl_sim.tasks.TaskConfig.severity; 1 = the named variation, > 1 exaggerates it) is the "
            f"first whose drop on the {seed_set} episodes reached the calibration margin"
            + (
                " (the seeds the base policy was chosen on, so its figure there is optimistic)"
                if seed_set == "validation"
                else " (seeds used for nothing else)"
            )
            + "; Δ is on evaluation episodes.",
            "",
        ]
    else:
        out += ["Not run (no stages/calibrate.json).", ""]

    out += ["## Table II: fine-tuning vs exploration grasps", ""]
    if t2:
        tiers = [str(n) for n in t2["tiers"]]
        largest = t2["largest_tier"]
        online = t2.get("online")
        rows = []
        for name, row in t2["tasks"].items():
            base_cell = (t1.get(name) or {}).get("base_policy") if t1 else None
            best = best_tier(row)
            best_txt = "n/a"
            if best is not None:
                best_txt = f"{best[1]['success_rate']:.2f} ({best[0]})"
                if base_cell is not None:
                    best_txt += f" {best[1]['success_rate'] - base_cell['success_rate']:+.2f}"
            online_row = row.get("online")
            online_cell = (
                [
                    fmt(online_row and online_row["result"])
                    + (
                        ""
                        if not online_row or online_row["accepted_rounds"]
                        else " (no round accepted)"
                    )
                ]
                if online
                else []
            )
            rows.append(
                [
                    f"{name} ({row['severity']:g})" if name != "base" else "base (control)",
                    fmt(base_cell),
                ]
                + [fmt(row["tiers"].get(n)) for n in tiers]
                + online_cell
                + [best_txt, fmt(row["scratch"]), fmt(row["reinit_head"])]
            )
        out += _table(
            ["task (severity)", "base policy"]
            + tiers
            + ([f"online ({largest})"] if online else [])
            + ["best (Δ)", f"scratch ({largest})", f"reinit head ({largest})"],
            rows,
        )
        cells = [
            c
            for row in t2["tasks"].values()
            for c in [
                *row["tiers"].values(),
                row["scratch"],
                row["reinit_head"],
                *([row["online"]["result"]] if row.get("online") else []),
            ]
        ]
        modules = next(iter(t2["tasks"].values()))["reinit_modules"] if t2["tasks"] else None
        out += [
            "",
            f"n = {_episodes(cells)} evaluation episodes per cell. Columns are exploration grasps collected "
            "with the base policy (nested tiers). Fine-tuning: the base checkpoint on base data + the tier sampled "
            f"{t2['target_fraction']:.0%}/{1 - t2['target_fraction']:.0%} (target/base), {t2['finetune_steps']} "
            f"gradient steps at learning rate {t2['learning_rate']:g}. Best (Δ): the best tier <= "
            f"{MAX_FINETUNE_GRASPS} and its gain over the base policy (chosen on the evaluation episodes, as the "
            f"paper's Best). Scratch: a freshly initialised network on the {largest} grasps only, "
            f"{t2['scratch_steps']} steps at learning rate {t2['scratch_learning_rate']:g}. Reinit head: the base "
            f"checkpoint with its {', '.join(modules or [])} re-initialised, then fine-tuned like the "
            f"{largest}-grasp tier.",
        ]
        if online:
            first = next((r["online"] for r in t2["tasks"].values() if r.get("online")), {})
            n_val, gate_set = (
                first.get("validation_episodes", "?"),
                first.get("gate_seed_set") or "validation",
            )
            out += [
                "",
                f"Online ({largest}): the same {largest} grasps spent in {online['rounds']} rounds of "
                f"{online['grasps_per_round']} (stage online_finetune, the paper's Sec. VI-B proposal). Round 1 "
                "is the base policy fine-tuned on its first grasps; every later round explores with the policy "
                "in force and fine-tunes it on all grasps so far, and a round's checkpoint becomes the policy in "
                f"force only if it does at least as well on {gate_set} episodes of the task (online evaluation: "
                f"{n_val} {gate_set} episodes per task, never the evaluation seeds). The cell is the policy in "
                "force after the last round.",
            ]
        out += [""]
        if "sweep" in plots:
            out += [f"![success vs exploration grasps]({plots['sweep']})", ""]
    else:
        out += ["Not run (no stages/finetune_sweep.json).", ""]

    out += ["## Table III: continual fine-tuning", ""]
    if t3:
        rows = []
        guarded = bool(t3.get("guard"))
        for s in t3["steps"]:
            base_cell = (t1.get(s["task"]) or {}).get("base_policy") if t1 else None
            single = single_step(numbers, s["task"])
            row = [
                f"{s['step']}: {s['task']}",
                fmt(s["continual"]),
                "n/a" if base_cell is None else f"{_rate(s['continual']) - _rate(base_cell):+.2f}",
                fmt(single),
                "n/a" if single is None else f"{_rate(s['continual']) - _rate(single):+.2f}",
            ]
            if guarded:
                v = s.get("validation") or {}
                row += [
                    f"{v['candidate']:.2f} vs {v['in_force']:.2f}: {'accepted' if s['accepted'] else 'rejected'}"
                    if v
                    else "n/a",
                    fmt(s.get("candidate")),
                ]
            rows.append(row)
        head = [
            "step: challenge",
            "continual",
            "Δ vs base policy",
            f"single-step ({t3['episodes_per_step']})",
            "Δ vs single",
        ]
        out += _table(
            head
            + (["gate: validation, step vs in force", "the step's checkpoint"] if guarded else []),
            rows,
        )
        data = (
            "from step 1 on, fresh grasps collected with the policy in force"
            if t3["recollect"]
            else "the grasps collected with the base policy, as in the paper"
        )
        out += [
            "",
            f"Each step fine-tunes the policy in force on base data + {t3['episodes_per_step']} "
            f"grasps of its challenge ({data}); step 0's checkpoint is the single-step run itself. Single-step: "
            "the base policy fine-tuned on the same grasps (Table II).",
        ]
        if guarded:
            n_val = next(
                (s["validation"]["episodes"] for s in t3["steps"] if s.get("validation")), "?"
            )
            out += [
                "",
                "Validation gate (`continual_guard`): a step's checkpoint replaces the policy in force only "
                f"if its success on {n_val} validation episodes of that challenge (never the evaluation seeds) "
                'is at least the policy in force\'s. "continual" is the policy in force after the step; "the '
                "step's checkpoint\" is what the step trained, accepted or not (evaluation episodes).",
            ]
        out += ["", "### The final policy on every task of the chain", ""]
        own = {s["task"]: s["continual"] for s in t3["steps"]}
        rows = []
        for name, c in t3["final"].items():
            base_cell = (t1.get(name) or {}).get("base_policy") if t1 else None
            after = own.get(name)
            rows.append(
                [
                    name,
                    fmt(base_cell),
                    fmt(after),
                    fmt(c),
                    "n/a" if after is None else f"{_rate(c) - _rate(after):+.2f}",
                ]
            )
        out += _table(
            ["task", "base policy", "after its own step", "final policy", "Δ final vs own step"],
            rows,
        )
        out += [
            "",
            f"n = {_episodes([s['continual'] for s in t3['steps']] + list(t3['final'].values()))} evaluation "
            "episodes per cell. The last column is what the later steps did to an earlier task (forgetting "
            "when negative).",
            "",
        ]
        if "continual" in plots:
            out += [f"![continual vs single-step]({plots['continual']})", ""]
    else:
        out += ["Not run (no stages/continual.json).", ""]

    out += ["## Wall-clock and hardware", ""]
    rows = []
    for name in STAGE_ORDER:
        p = stamps.get(name, {}).get("provenance")
        if p is None:
            continue
        hw = p["hardware"]
        rows.append(
            [
                name,
                f"{p['wall_clock_s']:.0f} s",
                str(p.get("work_units", "?")),
                p["finished"],
                hw["platform"],
                str(hw["cpus"]),
                hw["torch"],
                ("yes: " + str(hw["cuda_device"])) if hw["cuda"] else "no",
            ]
        )
    out += (
        _table(
            [
                "stage",
                "wall-clock",
                "units computed",
                "finished (UTC)",
                "platform",
                "CPUs",
                "torch",
                "CUDA",
            ],
            rows,
        )
        if rows
        else ["No stage stamps."]
    )
    out += [
        "",
        "Wall-clock of the invocation that last computed work for the stage (cached units cost ~0; an "
        "interrupted and resumed stage shows only its last invocation). Training uses CUDA when present; "
        "episodes always run on the CPU.",
        "",
    ]
    return "\n".join(out)


def _errorbar(c: dict) -> tuple[float, float]:
    lo, hi = c["ci95"]
    return c["success_rate"] - lo, hi - c["success_rate"]


def plot_sweep(numbers: dict, path: Path) -> None:
    """Success vs exploration grasps per task (log x), CI error bars, base policy and scratch markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t1, t2 = numbers["table_i"] or {}, numbers["table_ii"]
    names = list(t2["tasks"])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), dpi=110, squeeze=False)
    largest = t2["largest_tier"]
    for ax, name in zip(axes.flat, names):
        row = t2["tasks"][name]
        # Stamps are JSON with sorted keys ("200" < "50"): order the tiers by grasps.
        tiers = sorted(row["tiers"].items(), key=lambda kv: int(kv[0]))
        xs, cs = [int(n) for n, _ in tiers], [c for _, c in tiers]
        ax.errorbar(
            xs,
            [c["success_rate"] for c in cs],
            yerr=list(zip(*[_errorbar(c) for c in cs])),
            marker="o",
            capsize=3,
            color="#2a7ab9",
            label="fine-tuned",
        )
        base_cell = (t1.get(name) or {}).get("base_policy")
        if base_cell is not None:
            lo, hi = base_cell["ci95"]
            ax.axhline(base_cell["success_rate"], color="#777777", ls="--", label="base policy")
            ax.axhspan(lo, hi, color="#777777", alpha=0.12)
        for key, marker, color, label, shift in (
            ("scratch", "x", "#c0392b", "scratch", 0.93),
            ("reinit_head", "s", "#8e44ad", "reinit head", 1.07),
        ):
            c = row[key]
            ax.errorbar(
                [largest * shift],
                [c["success_rate"]],
                yerr=[[e] for e in _errorbar(c)],
                marker=marker,
                capsize=3,
                color=color,
                ls="none",
                label=label,
            )
        if row.get("online"):
            c = row["online"]["result"]
            ax.errorbar(
                [row["online"]["grasps"] * 1.2],
                [c["success_rate"]],
                yerr=[[e] for e in _errorbar(c)],
                marker="D",
                capsize=3,
                color="#27ae60",
                ls="none",
                label="online rounds",
            )
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.minorticks_off()
        ax.set_ylim(0, 1)
        ax.set_title(
            name if name == "base" else f"{name} (severity {row['severity']:g})", fontsize=9
        )
        ax.set_xlabel("exploration grasps")
        ax.set_ylabel("grasp success (95% CI)")
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.06 / rows, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_continual(numbers: dict, path: Path) -> None:
    """Per challenge of the chain: base policy, single-step, continual and final policy, with CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t1, t3 = numbers["table_i"] or {}, numbers["table_iii"]
    tasks = [s["task"] for s in t3["steps"]]
    series = [
        ("base policy", "#999999", [(t1.get(t) or {}).get("base_policy") for t in tasks]),
        ("single-step", "#2a7ab9", [single_step(numbers, t) for t in tasks]),
        ("continual (its step)", "#e67e22", [s["continual"] for s in t3["steps"]]),
        ("final policy", "#27ae60", [t3["final"].get(t) for t in tasks]),
    ]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(2.4 + 1.5 * len(tasks), 4.0), dpi=110)
    for i, (label, color, cells) in enumerate(series):
        xs = [
            k + (i - (len(series) - 1) / 2) * width for k, c in enumerate(cells) if c is not None
        ]
        present = [c for c in cells if c is not None]
        if present:
            ax.bar(
                xs,
                [c["success_rate"] for c in present],
                width,
                color=color,
                label=label,
                yerr=list(zip(*[_errorbar(c) for c in present])),
                capsize=3,
            )
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{k}: {t}" for k, t in enumerate(tasks)], fontsize=8, rotation=15)
    ax.set_ylim(0, 1)
    ax.set_ylabel("grasp success (95% CI)")
    ax.set_title("continual vs single-step fine-tuning", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=len(series))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(run_dir: Path, report_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Render the report of ``run_dir`` into ``report_dir``: paper_reproduction.md, summary.json
    and the plots of the tables that exist. Returns {"stage", "files", "acceptance", "warnings"}.
    """
    stamps = load_stamps(run_dir)
    numbers = tables(stamps)
    checks = acceptance(numbers)
    warnings = consistency_warnings(stamps)
    commands = reproduce_commands(stamps, run_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    plots = {}
    if numbers["table_ii"] and numbers["table_ii"]["tasks"]:
        plot_sweep(numbers, report_dir / SWEEP_PLOT)
        plots["sweep"] = SWEEP_PLOT
    if numbers["table_iii"] and numbers["table_iii"]["steps"]:
        plot_continual(numbers, report_dir / CONTINUAL_PLOT)
        plots["continual"] = CONTINUAL_PLOT
    markdown = render_markdown(numbers, checks, stamps, run_dir, commands, warnings, plots)
    (report_dir / REPORT_NAME).write_text(markdown + "\n")
    summary = {
        "run": str(run_dir),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commands": commands,
        "acceptance": checks,
        "warnings": warnings,
        **numbers,
        "stages": {
            name: stamps[name]["provenance"]
            for name in STAGE_ORDER
            if "provenance" in stamps.get(name, {})
        },
        "thresholds": {
            "base_min_success": BASE_MIN_SUCCESS,
            "min_challenge_drop": MIN_CHALLENGE_DROP,
            "max_finetune_grasps": MAX_FINETUNE_GRASPS,
            "min_recovered_share": MIN_RECOVERED_SHARE,
            "min_challenges_recovered": MIN_CHALLENGES_RECOVERED,
            "max_continual_penalty": MAX_CONTINUAL_PENALTY,
        },
    }
    (report_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, sort_keys=True))
    files = [str(report_dir / f) for f in (REPORT_NAME, SUMMARY_NAME, *plots.values())]
    log(
        f"report: acceptance {sum(1 for c in checks if c['passed'])} of {len(checks)} checks pass; "
        f"wrote {', '.join(files)}"
    )
    return {"stage": "report", "files": files, "acceptance": checks, "warnings": warnings}
