"""``nsl sim ...``: simulator commands (plugged into the nsl CLI by nsl_bringup.cli).

nsl sim gallery [--output docs/gallery.png] [--size 128] [--seed 0] [--severity S]
                [--task-severity NAME=S ...]
    render the camera view of every named task (at reset and at the oracle's grasp pose)
nsl sim solvability --task T [--severity S] [--episodes N] [--seed N] [--json]
    the solvability check of a challenge at a severity (nsl_sim.solvability) and its figures
nsl sim eval-oracle --task T --episodes N [--seed 0] [--size 64] [--reference-physics] [--json]
    scripted oracle success on a task (name or YAML file) with a 95% Wilson interval
"""

from __future__ import annotations

import argparse
import json
import sys

from nsl_sim.config import camera_fields
from nsl_sim.tasks import TASKS


def cmd_gallery(args) -> int:
    # pybullet, which nsl_sim.env loads, is slow to import and prints a banner: only here.
    from nsl_sim.evaluate import render_gallery, write_png

    tasks = args.tasks or list(TASKS)
    try:
        severities = _severities(tasks, args.severity, args.task_severity)
        img = render_gallery(
            tasks,
            seed=args.seed,
            size=args.size,
            severities=severities,
            **_camera(args),
        )
    except ValueError as exc:
        print(f"nsl sim gallery: {exc}", file=sys.stderr)
        return 2
    n = write_png(args.output, img)
    print(
        f"wrote {args.output} ({img.shape[1]}x{img.shape[0]} px, {n / 1024:.0f} KiB): "
        f"columns {', '.join(tasks)}; top row at reset (seed {args.seed}), "
        "bottom row at the oracle's grasp pose"
    )
    return 0


def _severities(tasks: list[str], every: float | None, pairs: list[str]) -> dict[str, float]:
    """Severity per task name: ``every`` for all tasks, then the NAME=S pairs."""
    out = {t: every for t in tasks if every is not None}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--task-severity expects NAME=SEVERITY, got {pair!r}")
    return out


def _camera(args) -> dict:
    """Return the SimConfig camera fields the command line sets (none: the sim's defaults)."""
    return camera_fields(args.camera_fov)


def _add_camera_fov(parser) -> None:
    parser.add_argument(
        "--camera-fov",
        type=float,
        default=None,
        metavar="DEG",
        help="camera field of view in degrees (default: the sim's, SimConfig.camera_fov)",
    )


def cmd_solvability(args) -> int:
    # pybullet, which nsl_sim.env loads, is slow to import and prints a banner: only here.
    from nsl_sim.env import SimConfig
    from nsl_sim.solvability import SolvabilityChecker

    try:
        config = SimConfig(image_size=args.size, object_split=args.object_split, **_camera(args))
        checker = SolvabilityChecker(config, episodes=args.episodes, seed=args.seed)
        result = checker.check(args.task, args.severity)
    except ValueError as exc:
        print(f"nsl sim solvability: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(result.line())
        for criterion in result.criteria:
            print(f"  {criterion}")
    return 0 if result.passed else 1


def cmd_eval_oracle(args) -> int:
    # pybullet, which nsl_sim.env loads, is slow to import and prints a banner: only here.
    from nsl_sim.env import SimConfig
    from nsl_sim.evaluate import evaluate_oracle

    try:
        kw = dict(image_size=args.size, num_objects=args.num_objects)
        config = SimConfig.reference_physics(**kw) if args.reference_physics else SimConfig(**kw)

        def progress(done: int, ok: int) -> None:
            if not args.json and (done % 20 == 0 or done == args.episodes):
                print(
                    f"  {done}/{args.episodes} episodes, {ok} successes",
                    file=sys.stderr,
                    flush=True,
                )

        result = evaluate_oracle(
            args.task, args.episodes, seed=args.seed, config=config, progress=progress
        )
    except ValueError as exc:
        print(f"nsl sim eval-oracle: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    **result.as_dict(),
                    "seed": args.seed,
                    "image_size": args.size,
                    "physics": "reference" if args.reference_physics else "default",
                }
            )
        )
    else:
        print(result.line() + (" (reference physics)" if args.reference_physics else ""))
    return 0


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "sim", help="simulator tools: task gallery, oracle evaluation, solvability checks"
    )
    sub = p.add_subparsers(dest="sim_command", required=True)

    g = sub.add_parser("gallery", help="render the camera view of every task into a PNG")
    g.add_argument(
        "--output", default="docs/gallery.png", help="PNG to write (default docs/gallery.png)"
    )
    g.add_argument(
        "--size", type=int, default=128, help="camera image size in pixels (default 128)"
    )
    g.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    g.add_argument(
        "--tasks",
        nargs="*",
        default=None,
        metavar="TASK",
        help="tasks or YAML task files to show (default: every named task)",
    )
    g.add_argument(
        "--severity",
        type=float,
        default=None,
        help="show every challenge at this severity (default: each task's own)",
    )
    g.add_argument(
        "--task-severity",
        action="append",
        default=[],
        metavar="NAME=S",
        help="show task NAME at severity S (repeatable; e.g. the calibration's choices)",
    )
    _add_camera_fov(g)
    g.set_defaults(fn=cmd_gallery)

    s = sub.add_parser(
        "solvability",
        help="solvability check of a challenge at a severity: figures and pass/fail (exit 1)",
    )
    s.add_argument("--task", required=True, help="task name or YAML task file")
    s.add_argument(
        "--severity", type=float, default=None, help="severity (default: the task's own)"
    )
    s.add_argument(
        "--episodes",
        type=_positive,
        default=None,
        help="scenes (default: 200 for appearance challenges, 100 for geometry ones)",
    )
    s.add_argument(
        "--seed", type=int, default=6_050_000, help="first scene seed (default 6050000)"
    )
    s.add_argument("--size", type=int, default=64, help="camera image size (default 64)")
    s.add_argument(
        "--object-split", default="test", choices=("train", "test"), help="objects (default test)"
    )
    s.add_argument("--json", action="store_true", help="print one JSON object")
    _add_camera_fov(s)
    s.set_defaults(fn=cmd_solvability)

    e = sub.add_parser(
        "eval-oracle", help="scripted oracle success rate on a task, with a 95%% Wilson interval"
    )
    e.add_argument("--task", default="base", help="task name or YAML task file (default base)")
    e.add_argument(
        "--episodes",
        type=_positive,
        default=100,
        help="episodes, on seeds seed..seed+N-1 (default 100)",
    )
    e.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    e.add_argument("--size", type=int, default=64, help="camera image size (default 64)")
    e.add_argument("--num-objects", type=int, default=3, help="objects per episode (default 3)")
    e.add_argument(
        "--reference-physics",
        action="store_true",
        help="use pybullet_envs' physics settings (SimConfig.reference_physics), not the defaults",
    )
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(fn=cmd_eval_oracle)
