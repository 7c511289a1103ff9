"""The report's plots: success vs exploration grasps (Table II), continual vs single-step (III).

matplotlib is imported inside the plotting functions: it is heavy and only the report needs it.
"""

from __future__ import annotations

import math
from pathlib import Path

from .tables import single_step

SWEEP_PLOT = "success_vs_grasps.png"
CONTINUAL_PLOT = "continual_vs_single.png"


def _errorbar(c: dict) -> tuple[float, float]:
    lo, hi = c["ci95"]
    return c["success_rate"] - lo, hi - c["success_rate"]


def plot_sweep(numbers: dict, path: Path) -> None:
    """Success vs exploration grasps per task.

    (log x), CI error bars, base policy and the baselines' markers.
    """
    import matplotlib  # heavy: only the report's plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"), so pyplot never needs a display

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
            ("agnostic_trunk", "^", "#d35400", "agnostic trunk", 0.86),
        ):
            c = row.get(key)  # sweeps stamped before the agnostic trunk have none
            if c is None:  # a sweep without its baselines (study.baselines false)
                continue
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
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.06 / rows, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_continual(numbers: dict, path: Path) -> None:
    """Per challenge of the chain.

    Base policy, single-step, continual and final policy, with CIs.
    """
    import matplotlib  # heavy: only the report's plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"), so pyplot never needs a display

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
