"""The report's numbers: Tables I-III from a run folder's stage stamps, and their consistency.

Every success rate comes with its episode count and 95% Wilson interval as the stage recorded it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The paper's Table I categories.
CHALLENGE_TYPE = {
    "checkerboard": "background",
    "harsh_light": "lighting conditions",
    "extend_gripper_1cm": "gripper shape",
    "offset_gripper_10cm": "robot morphology",
    "transparent_objects": "unseen objects",
}
#: The solvability figures Table I reports, per kind of check (nsl_sim.solvability).
SOLVABILITY_FIGURES = {
    "appearance": (
        "pixel_share",
        "changed_px",
        "base_changed_px",
        "probe_error_px",
        "base_probe_error_px",
        "chance_error_px",
        "scenes",
    ),
    "geometry": ("aware_oracle", "aware_oracle_ci95", "base_oracle", "episodes"),
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


def load_stamps(run_dir: Path) -> dict[str, dict]:
    """Return the stage stamps of a run folder that exist, by stage name."""
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
    """Return the reported numbers of one evaluation: success rate, successes, episodes, 95% CI."""
    keys = ("success_rate", "successes", "episodes", "ci95", "checkpoint_id", "task", "severity")
    return {k: result[k] for k in keys if k in result}


def table_i_row(cal: dict, name: str, row: dict) -> dict:
    """Return one row of Table I from the calibrate stamp.

    The base policy's evaluation, the chosen severity with its drop and solvability, and every
    severity the calibration tried. ``solvable`` and ``status`` are None in stamps from before
    the solvability checks.
    """
    challenge = cal["calibration"]["challenges"].get(name, {})
    return {
        "severity": row["severity"],
        "reached": row["reached"],
        "status": row.get("status"),
        "solvable": row.get("solvable"),
        "solvability": solvability_cell(row.get("solvability")),
        "drop": row["drop"],
        "base_policy": cell(row["result"]),
        "validation_drop": challenge.get("drop"),
        "calibration_episodes": cal.get("calibration_episodes"),
        "trials": [
            {
                "severity": t["severity"],
                "solvable": (t.get("solvability") or {}).get("passed"),
                "drop": t["drop"],
            }
            for t in challenge.get("trials", [])
        ],
    }


def solvability_cell(check: dict | None) -> dict | None:
    """Return the reported figures of one solvability check (nsl_sim.solvability).

    Appearance: pixel share and probe error against base; geometry: the aware oracle against
    the base oracle; with the kind, the verdict and the saturated knobs.
    """
    if check is None:
        return None
    figures = check["figures"]
    return {
        "kind": check["kind"],
        "passed": check["passed"],
        "saturated": list(check["saturated"]),
        **{k: figures[k] for k in SOLVABILITY_FIGURES[check["kind"]] if k in figures},
    }


def tables(stamps: dict[str, dict]) -> dict[str, Any]:
    """Tables I-III as plain numbers (cells of :func:`cell`).

    A table is None when its stage has no stamp.
    """
    out: dict[str, Any] = {"table_i": None, "table_ii": None, "table_iii": None}
    cal = stamps.get("calibrate")
    if cal:
        out["table_i"] = {
            name: table_i_row(cal, name, row) for name, row in cal["table_i"].items()
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
            # Sweeps stamped before the task-agnostic trunk existed have none.
            "agnostic_trunk": sweep.get("agnostic_trunk"),
            "tasks": {
                name: {
                    "severity": row["task"]["severity"],
                    "tiers": {n: cell(e["result"]) for n, e in row["tiers"].items()},
                    "scratch": cell(row["scratch"]["result"]) if row["scratch"] else None,
                    "reinit_head": (
                        cell(row["reinit_head"]["result"]) if row["reinit_head"] else None
                    ),
                    "reinit_modules": (row["reinit_head"] or {}).get("modules"),
                    "agnostic_trunk": (
                        cell(row["agnostic_trunk"]["result"])
                        if row.get("agnostic_trunk")
                        else None
                    ),
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


def rate(c: dict | None) -> float | None:
    return None if c is None else c["success_rate"]


def single_step(numbers: dict, task: str) -> dict | None:
    """Return the sweep's fine-tuning of the base policy on ``task`` at its largest tier.

    (the grasps one continual step uses), or None.
    """
    t2 = numbers.get("table_ii")
    row = t2["tasks"].get(task) if t2 else None
    return row["tiers"].get(str(t2["largest_tier"])) if row else None


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


def fmt(c: dict | None) -> str:
    """Return a cell as "rate [lo, hi]" (just the rate when it has no interval, e.g.

    synthetic numbers).
    """
    if c is None:
        return "n/a"
    if "ci95" not in c:
        return f"{c['success_rate']:.2f}"
    lo, hi = c["ci95"]
    return f"{c['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Return the lines of a Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]
