"""The report page's Table I: each challenge's severity, drop and solvability, and the base policy.

Rendered from :func:`nsl_experiment.report.tables.tables`' ``table_i`` rows.
"""

from __future__ import annotations

import shlex

from nsl_sim.config import SimConfig
from nsl_sim.solvability import MAX_ORACLE_DROP, MAX_PROBE_RATIO, MIN_PIXEL_SHARE

from ..sections import MIN_CALIBRATION_EPISODES
from ..units.calibration import DROP_NOT_REACHED, NONE_SOLVABLE, REACHED
from .tables import CHALLENGE_TYPE, fmt, markdown_table


def solvability_text(s: dict | None) -> str:
    """Return a solvability check's figures against base, or "not checked" (older stamps)."""
    if s is None:
        return "not checked"
    if s["kind"] == "geometry":
        lo, hi = s.get("aware_oracle_ci95", (None, None))
        ci = "" if lo is None else f" [{lo:.2f}, {hi:.2f}]"
        return f"aware oracle {s['aware_oracle']:.2f}{ci} vs base oracle {s['base_oracle']:.2f}"
    return (
        f"pixel share {s['pixel_share']:.2f} ({s['changed_px']:.1f} / "
        f"{s['base_changed_px']:.1f} px); probe {s['probe_error_px']:.2f} px vs base "
        f"{s['base_probe_error_px']:.2f} (chance {s['chance_error_px']:.2f}"
        + (f", gain {s['probe_gain']:.2f}" if "probe_gain" in s else "")
        + ")"
    )


def _verdict(solvable: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: "not checked"}[solvable]


def _drop(drop: float | None) -> str:
    """Return a drop as the change it is, "-0.20" (n/a when not measured)."""
    return "n/a" if drop is None else f"{0.0 - drop:+.2f}"


def table_i_lines(
    t1: dict, seed_set: str, margin: float | None, camera_fov: float | None = None
) -> list[str]:
    """Return Table I and its notes.

    ``seed_set``: the calibration's episode seeds; ``margin``: its ``calibration_drop``.
    """
    margin_text = "the calibration margin" if margin is None else f"{margin:.2f}"
    rows = []
    for name, r in t1.items():
        if name == "base":
            rows.append(
                ["base (no change)", "-", "-", "-", "-", "-", fmt(r["base_policy"]), "-", "-"]
            )
            continue
        status = r.get("status") or (REACHED if r["reached"] else DROP_NOT_REACHED)
        solv = r.get("solvability")
        rows.append(
            [
                name,
                CHALLENGE_TYPE.get(name, ""),
                f"{r['severity']:g}" + ("" if status == REACHED else f" ({status})"),
                ", ".join(solv["saturated"]) if solv and solv["saturated"] else "-",
                solvability_text(solv),
                _verdict(r.get("solvable")),
                fmt(r["base_policy"]),
                _drop(r["drop"]),
                _drop(r["validation_drop"]),
            ]
        )
    out = markdown_table(
        [
            "task",
            "type",
            "severity",
            "saturated knobs",
            "solvability (challenge vs base)",
            "solvable",
            "base policy",
            "Δ vs base",
            f"Δ while calibrating ({seed_set} episodes)",
        ],
        rows,
    )
    challenges = {n: r for n, r in t1.items() if n != "base"}
    episodes = {r.get("calibration_episodes") for r in challenges.values()} - {None}
    n_eval = sorted({r["base_policy"]["episodes"] for r in t1.values() if r["base_policy"]})
    out += [
        "",
        f"n = {'/'.join(map(str, n_eval)) or '?'} evaluation episodes per task. The severity "
        "(nsl_sim.tasks.TaskConfig.severity; 1 = the named variation, > 1 exaggerates it up to "
        "each knob's physical bound) is the lowest solvable one whose drop on the "
        f"{seed_set} episodes"
        + (f" ({'/'.join(map(str, sorted(episodes)))} per severity)" if episodes else "")
        + f" reached {margin_text}"
        + (
            " (the seeds the base policy was chosen on, so its figure there is optimistic)"
            if seed_set == "validation"
            else " (seeds used for nothing else)"
        )
        + "; Δ vs base is on evaluation episodes. Solvable: for appearance challenges the "
        f"objects change >= {MIN_PIXEL_SHARE:g} of the pixels they change on base and a "
        f"localisation probe trained on the challenge's images errs <= {MAX_PROBE_RATIO:g}x its "
        "error on base (pixels of a 64-pixel image) and keeps half of base's gain over a blind "
        "guess, in scenes with the study's number of objects; for geometry challenges the "
        "oracle that "
        f"knows the change succeeds within {MAX_ORACLE_DROP:.2f} of the nominal oracle on base "
        "(nsl_sim.solvability).",
        "",
    ]
    few = sorted(e for e in episodes if e < MIN_CALIBRATION_EPISODES)
    if few:
        out += [
            f"**Not a calibration: {few[0]} calibration episodes per severity, fewer than "
            f"{MIN_CALIBRATION_EPISODES} (allow_few_calibration_episodes, a smoke test).**",
            "",
        ]
    for name, r in challenges.items():
        status = r.get("status")
        if status == DROP_NOT_REACHED:
            out.append(
                f"- **{name}: no solvable severity tried drops the base policy by "
                f"{margin_text}**; the study uses {r['severity']:g}, the solvable one with the "
                f"largest drop (Δ {_drop(r['validation_drop'])})."
            )
        elif status == NONE_SOLVABLE:
            out.append(
                f"- **{name}: no severity tried is solvable**; the study uses the least one "
                f"tried, {r['severity']:g}, which is not solvable."
            )
    tried = [
        f"{name}: "
        + ", ".join(
            f"{t['severity']:g} ("
            + ("solvable" if t["solvable"] else "not solvable" if t["solvable"] is False else "?")
            + ("" if t["drop"] is None else f", Δ {_drop(t['drop'])}")
            + ")"
            for t in r["trials"]
        )
        for name, r in challenges.items()
        if r.get("trials")
    ]
    if tried:
        out += ["", f"Severities tried in order (Δ on {seed_set} episodes):", ""]
        out += [f"- {line}" for line in tried]
    if challenges:
        gallery = ["./nsl", "sim", "gallery", "--output", "gallery_table_i.png", "--tasks"]
        gallery += ["base", *challenges]
        for name, r in challenges.items():
            gallery += ["--task-severity", f"{name}={r['severity']:g}"]
        if camera_fov is not None and camera_fov != SimConfig.camera_fov:
            gallery += ["--camera-fov", f"{camera_fov:g}"]  # the framing the run saw
        out += [
            "",
            "Every challenge at its chosen severity beside base:",
            "",
            "```bash",
            " ".join(shlex.quote(w) for w in gallery),
            "```",
        ]
    return out + [""]
