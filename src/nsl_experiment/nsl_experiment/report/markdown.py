"""The report page: paper_reproduction.md, rendered from the tables and the stamps."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from ..config import ExperimentConfig, flatten
from .acceptance import MAX_FINETUNE_GRASPS, best_tier
from .table_i import table_i_lines
from .tables import STAGE_ORDER, fmt, markdown_table, rate, single_step


def reproduce_commands(stamps: dict[str, dict], run_dir: Path) -> list[str]:
    """Return ``nsl experiment run`` command lines that redo the stamped stages.

    Each line has the config its stages were produced with (one line per distinct config;
    overrides of the defaults only).
    """
    defaults = flatten(ExperimentConfig().to_dict())
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
        values = flatten(config)
        for key in sorted(values):
            if key in defaults and values[key] != defaults[key]:
                words += ["--set", f"{key}={json.dumps(values[key])}"]
        lines.append(" ".join(shlex.quote(w) for w in words))
    return lines


def _episodes(cells: list[dict]) -> str:
    ns = sorted({c["episodes"] for c in cells if c})
    return "/".join(str(n) for n in ns) if ns else "?"


def agnostic_note(t2: dict) -> str:
    """Return Table II's sentence on the agnostic-trunk column: what the trunk is, or not run."""
    trunk = t2.get("agnostic_trunk")
    if trunk is None:
        return (
            "The task-agnostic trunk was not run (study.baselines false, or a sweep stamped "
            "before it existed)."
        )
    m = trunk["metrics"]
    error = (
        f"; on {m['scenes'] - m['train_scenes']} held-out scenes an object is "
        f"{m['held_out_error_px']:.1f} px from the nearest predicted point, against "
        f"{m['blind_error_px']:.1f} px for a blind guess"
        if m.get("held_out_error_px") is not None
        else ""
    )
    return (
        "Agnostic trunk (the paper's ImageNet comparison, without ImageNet): a fresh network "
        f"whose {', '.join(trunk['trained_modules'])} was trained without RL, {trunk['steps']} "
        f"supervised steps regressing the image positions of the objects ({m['objects']} a "
        f"scene) in {m['train_scenes']} rendered base scenes with the train objects (at reset: "
        f"no grasp action, no reward{error}), its other parts random, then fine-tuned like the "
        f"{t2['largest_tier']}-grasp tier."
    )


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
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from the stage stamps "
        f"of `{run_dir}` "
        "by the report stage (no episodes are run to make it). Every success rate is grasp "
        "success on "
        "held-out test objects with evaluation seeds, shown as `rate [95% Wilson CI]`.",
        "",
        f"**Acceptance: {passed} of {len(checks)} checks pass.**",
        "",
    ]
    imported = stamps.get("pretrain", {}).get("imported_from")
    if imported:
        out += [
            f"The base policy `{stamps['pretrain']['checkpoint_id']}` was imported from "
            f"`{imported}` "
            "(`base_checkpoint`), not pre-trained in this run. Its pre-training data is not part "
            "of the run, so "
            "every fine-tune mixes in the base control's exploration grasps (the base row of "
            "Table II) as its base "
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
    out += markdown_table(
        ["check", "result", "numbers"],
        [[c["check"], f"**{verdict[c['passed']]}**", c["detail"]] for c in checks],
    )
    rerender = (
        f"./nsl experiment report --output {shlex.quote(str(run_dir))}"
        "   # re-render this page from the stamps"
    )
    out += ["", "## Reproduce", "", "```bash", *commands, rerender, "```", ""]

    out += ["## Table I: the challenges and the base policy", ""]
    if t1:
        cal = stamps.get("calibrate", {})
        seed_set = cal.get("calibration", {}).get("base_validation", {}).get("seed_set")
        sim = cal.get("provenance", {}).get("config", {}).get("sim", {})
        out += table_i_lines(
            t1, seed_set or "validation", cal.get("calibration_drop"), sim.get("camera_fov")
        )
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
                + [
                    best_txt,
                    fmt(row["scratch"]),
                    fmt(row["reinit_head"]),
                    fmt(row.get("agnostic_trunk")),
                ]
            )
        out += markdown_table(
            ["task (severity)", "base policy"]
            + tiers
            + ([f"online ({largest})"] if online else [])
            + [
                "best (Δ)",
                f"scratch ({largest})",
                f"reinit head ({largest})",
                f"agnostic trunk ({largest})",
            ],
            rows,
        )
        cells = [
            c
            for row in t2["tasks"].values()
            for c in [
                *row["tiers"].values(),
                row["scratch"],
                row["reinit_head"],
                row.get("agnostic_trunk"),
                *([row["online"]["result"]] if row.get("online") else []),
            ]
            if c is not None
        ]
        modules = next(iter(t2["tasks"].values()))["reinit_modules"] if t2["tasks"] else None
        out += [
            "",
            f"n = {_episodes(cells)} evaluation episodes per cell. Columns are exploration "
            "grasps collected "
            "with the base policy (nested tiers). Fine-tuning: the base checkpoint on base data "
            "+ the tier sampled "
            f"{t2['target_fraction']:.0%}/{1 - t2['target_fraction']:.0%} (target/base), "
            f"{t2['finetune_steps']} "
            f"gradient steps at learning rate {t2['learning_rate']:g}. Best (Δ): the best tier <= "
            f"{MAX_FINETUNE_GRASPS} and its gain over the base policy (chosen on the evaluation "
            "episodes, as the "
            f"paper's Best). "
            + (
                f"Scratch: a freshly initialised network on the {largest} grasps only, "
                f"{t2['scratch_steps']} steps at learning rate {t2['scratch_learning_rate']:g}. "
                "Reinit head: the base "
                f"checkpoint with its {', '.join(modules or [])} re-initialised, then fine-tuned "
                f"like the {largest}-grasp tier."
                if any(r["scratch"] for r in t2["tasks"].values())
                else "Scratch and the re-initialised head were not run (study.baselines false)."
            )
            + " "
            + agnostic_note(t2),
        ]
        if online:
            first = next((r["online"] for r in t2["tasks"].values() if r.get("online")), {})
            n_val, gate_set = (
                first.get("validation_episodes", "?"),
                first.get("gate_seed_set") or "validation",
            )
            out += [
                "",
                f"Online ({largest}): the same {largest} grasps spent in {online['rounds']} "
                "rounds of "
                f"{online['grasps_per_round']} (stage online_finetune, the paper's Sec. VI-B "
                "proposal). Round 1 "
                "is the base policy fine-tuned on its first grasps; every later round explores "
                "with the policy "
                "in force and fine-tunes it on all grasps so far, and a round's checkpoint "
                "becomes the policy in "
                f"force only if it does at least as well on {gate_set} episodes of the task "
                "(online evaluation: "
                f"{n_val} {gate_set} episodes per task, never the evaluation seeds). The cell is "
                "the policy in "
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
                "n/a" if base_cell is None else f"{rate(s['continual']) - rate(base_cell):+.2f}",
                fmt(single),
                "n/a" if single is None else f"{rate(s['continual']) - rate(single):+.2f}",
            ]
            if guarded:
                v = s.get("validation") or {}
                row += [
                    f"{v['candidate']:.2f} vs {v['in_force']:.2f}: "
                    f"{'accepted' if s['accepted'] else 'rejected'}"
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
        out += markdown_table(
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
            f"grasps of its challenge ({data}); step 0's checkpoint is the single-step run "
            "itself. Single-step: "
            "the base policy fine-tuned on the same grasps (Table II).",
        ]
        if guarded:
            n_val = next(
                (s["validation"]["episodes"] for s in t3["steps"] if s.get("validation")), "?"
            )
            out += [
                "",
                "Validation gate (`continual_guard`): a step's checkpoint replaces the policy in "
                "force only "
                f"if its success on {n_val} validation episodes of that challenge (never the "
                "evaluation seeds) "
                'is at least the policy in force\'s. "continual" is the policy in force after '
                'the step; "the '
                "step's checkpoint\" is what the step trained, accepted or not (evaluation "
                "episodes).",
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
                    "n/a" if after is None else f"{rate(c) - rate(after):+.2f}",
                ]
            )
        out += markdown_table(
            ["task", "base policy", "after its own step", "final policy", "Δ final vs own step"],
            rows,
        )
        out += [
            "",
            "n = "
            f"{_episodes([s['continual'] for s in t3['steps']] + list(t3['final'].values()))} "
            "evaluation "
            "episodes per cell. The last column is what the later steps did to an earlier task "
            "(forgetting "
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
        markdown_table(
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
        "Wall-clock of the invocation that last computed work for the stage (cached units cost "
        "~0; an "
        "interrupted and resumed stage shows only its last invocation). Training uses CUDA when "
        "present; "
        "episodes always run on the CPU.",
        "",
    ]
    return "\n".join(out)
