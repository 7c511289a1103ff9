"""Operating characteristics of the rollout trial (nsl_policy.sequential) on simulated streams.

For each incumbent rate, the share of trials that promote, reject, reach the cap, and the mean
trial episodes, for a candidate as good as the incumbent (the promotion share is the false
promotion rate, bounded by alpha), better by min_improvement (the rejection share is beta),
much worse, and slightly better. Run: ``.venv/bin/python bench/rollout_oc.py [--trials N]``;
docs/policy.md records its table at the defaults.
"""

from __future__ import annotations

import argparse
import time

from nsl_policy.sequential import ON_CAP, TrialSettings, simulate_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000, help="simulated trials per row")
    parser.add_argument("--alpha", type=float, default=TrialSettings.alpha)
    parser.add_argument("--beta", type=float, default=TrialSettings.beta)
    parser.add_argument("--min-improvement", type=float, default=TrialSettings.min_improvement)
    parser.add_argument("--max-episodes", type=int, default=TrialSettings.max_episodes)
    parser.add_argument("--on-cap", choices=ON_CAP, default=TrialSettings.on_cap)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = TrialSettings(
        alpha=args.alpha,
        beta=args.beta,
        min_improvement=args.min_improvement,
        max_episodes=args.max_episodes,
        on_cap=args.on_cap,
    )
    d = settings.min_improvement
    print(
        f"alpha={settings.alpha} beta={settings.beta} min_improvement={d} "
        f"max_episodes={settings.max_episodes} on_cap={settings.on_cap} trials={args.trials}"
    )
    print("| incumbent | candidate | promoted | rejected | at cap | mean episodes |")
    print("|---:|---:|---:|---:|---:|---:|")
    start = time.perf_counter()
    for row, incumbent in enumerate((0.2, 0.4, 0.6, 0.8)):
        for k, candidate in enumerate((incumbent, incumbent + d, incumbent + d / 2, 0.0)):
            if candidate > 1.0:
                continue
            p = simulate_trials(
                settings, incumbent, candidate, args.trials, seed=args.seed + 10 * row + k
            )
            print(
                f"| {incumbent:.2f} | {candidate:.2f} | {p.promoted:.3f} | {p.rejected:.3f} "
                f"| {p.at_cap:.3f} | {p.mean_episodes:.1f} |"
            )
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
