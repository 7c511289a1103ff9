"""The ``nsl`` command: start node graphs and run the simulated demo.

nsl up GRAPH [name:=value ...]     start a graph as processes (where ros2 launch is unavailable)
nsl graph GRAPH [name:=value ...]  print the nodes, parameters and command lines of a graph
nsl status [--namespace NS]        print the running policy's learning monitor (/diagnostics)
nsl demo [--task T ...]            the main job in sim: base, the world changes, fine-tune, recover
nsl checkpoint init PATH           write a randomly initialised Q-function checkpoint
plus the commands of the packages (nsl sim ..., nsl data ..., nsl train ...): nsl --help
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import textwrap
from pathlib import Path

import yaml

from nsl_bringup.demo_config import OPTIONS as DEMO_OPTIONS
from nsl_bringup.demo_config import DemoConfig
from nsl_bringup.graph import GRAPHS, resolve
from nsl_bringup.runner import GraphRunner, isolated_environment, run_until_interrupted


def parse_assignments(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        if ":=" not in item:
            raise SystemExit(f"nsl: expected name:=value, got '{item}'")
        name, value = item.split(":=", 1)
        values[name] = value
    return values


def cmd_up(args) -> int:
    namespace, nodes = resolve(args.graph, parse_assignments(args.assignments))
    env = (
        isolated_environment(args.domain_id) if args.isolate or args.domain_id is not None else {}
    )
    if env:
        print(f"[runner] isolated run: {env}", file=sys.stderr)
    return run_until_interrupted(GraphRunner(nodes, namespace=namespace, env=env))


def cmd_graph(args) -> int:
    namespace, nodes = resolve(args.graph, parse_assignments(args.assignments))
    runner = GraphRunner(nodes, namespace=namespace)
    commands = runner.commands()
    out = {
        "graph": args.graph,
        "namespace": namespace,
        "nodes": [
            {
                "name": n.name,
                "package": n.package,
                "executable": n.executable,
                "params_file": n.params_file,
                "parameters": n.parameters,
                "remappings": [list(r) for r in n.remappings],
                "command": commands[n.name],
            }
            for n in nodes
        ],
    }
    print(yaml.safe_dump(out, sort_keys=False))
    return 0


def cmd_status(args) -> int:
    if args.domain_id is not None:
        os.environ.update(isolated_environment(args.domain_id))
    # rclpy and the messages: only this command needs them.
    from nsl_bringup.status import format_status, read_status

    status = read_status(args.namespace, args.timeout)
    if not status:
        where = f"namespace '{args.namespace}'" if args.namespace is not None else "any namespace"
        print(
            f"nsl status: no policy is running: no learning monitor report on /diagnostics "
            f"within {args.timeout:g} s ({where}); start one with `nsl up collect` or "
            "`nsl up sim_demo`",
            file=sys.stderr,
        )
        return 1
    print(format_status(status))
    return 0


def cmd_demo(args) -> int:
    config = DemoConfig(**{option.name: getattr(args, option.name) for option in DEMO_OPTIONS})
    # rclpy and pybullet: only the demo needs them, so `nsl --help` stays fast.
    from nsl_bringup.demo import run_demo

    run_demo(config)
    return 0


def cmd_checkpoint_init(args) -> int:
    # torch: only this command needs it, so the other commands start fast.
    from nsl_policy.checkpoint import init_checkpoint
    from nsl_policy.model import QNetworkConfig

    checkpoint_id = init_checkpoint(
        args.path, QNetworkConfig(image_size=args.image_size), seed=args.seed
    )
    print(f"wrote {args.path} (checkpoint {checkpoint_id})")
    return 0


# Each package contributes its own subcommands: a module with add_commands(subparsers), where
# every added parser sets ``fn`` (a function of the parsed args returning an exit code).
def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


PACKAGE_COMMANDS = [
    m
    for m in (
        "nsl_sim.cli",
        "nsl_policy.cli",
        "nsl_collector.cli",
        "nsl_trainer.cli",
        "nsl_experiment.cli",
    )
    if _module_exists(m)
]


def cmd_docs_parameters(args) -> int:
    # rclpy and the node modules: only this command starts nodes to read their parameters.
    from nsl_bringup.paramdoc import collect_parameter_docs, render_markdown

    text = render_markdown(collect_parameter_docs())
    Path(args.output).write_text(text + "\n")
    print(f"wrote {args.output}")
    return 0


def graph_arguments_help(graphs: dict) -> str:
    """Return the ``name:=value`` arguments of every graph, with defaults, for ``--help``."""
    lines = ["launch arguments (name:=value):"]
    seen: dict[str, list[str]] = {}
    for graph in graphs.values():
        for argument in graph.arguments:
            seen.setdefault(argument.name, []).append(graph.name)
    described = set()
    for graph in graphs.values():
        for a in graph.arguments:
            if a.name in described:
                continue
            described.add(a.name)
            choices = f"{{{','.join(a.choices)}}}" if a.choices else ""
            default = f"default '{a.default}'"
            lines.append(
                f"  {a.name}:={choices or 'VALUE'}  ({default}; {', '.join(seen[a.name])})"
            )
            lines += textwrap.wrap(
                a.description, width=95, initial_indent="      ", subsequent_indent="      "
            )
    return "\n".join(lines)


def demo_option_help(option) -> str:
    """Return the ``--help`` line of a demo option: its meaning and its default."""
    text = option.metadata["help"]
    if option.default != "":  # an empty default is explained in the text
        text += f" (default {option.default!r})"
    return text.replace("%", "%%")  # argparse formats help strings with %


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsl", description="NSL: never-stop-learning grasping on ROS 2"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (
        ("up", cmd_up, "start a graph's nodes as processes"),
        ("graph", cmd_graph, "show a resolved graph"),
    ):
        p = sub.add_parser(
            name,
            help=help_,
            description="\n".join(f"{g.name}: {g.description}" for g in GRAPHS.values()),
            epilog=graph_arguments_help(GRAPHS),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("graph", choices=sorted(GRAPHS))
        p.add_argument("assignments", nargs="*", metavar="name:=value", help="launch arguments")
        p.set_defaults(fn=fn)
        if name == "up":
            p.add_argument(
                "--isolate",
                action="store_true",
                help="own ROS_DOMAIN_ID and localhost-only discovery",
            )
            p.add_argument(
                "--domain-id", type=int, default=None, help="ROS_DOMAIN_ID for an isolated run"
            )
    p = sub.add_parser(
        "status",
        help="print the running policy's learning monitor (success rates, trial, stopped flag)",
    )
    p.add_argument(
        "--namespace", default=None, help="the robot's namespace (default: every policy found)"
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for a report (default 5)"
    )
    p.add_argument(
        "--domain-id", type=int, default=None, help="ROS_DOMAIN_ID of an isolated run (nsl up)"
    )
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser(
        "demo",
        help="the paper's story in simulation: base, the world changes, fine-tune, recover",
        description="Runs the sim_demo graph in three phases: (1) greedy episodes on the base "
        "task, recorded as the base data; (2) the task changes to a challenge at run time: "
        "greedy evaluation, then exploration grasps, recorded as the new data; (3) the "
        "trainer's fine_tune service on base + new data, the policy hot-swaps, greedy "
        "evaluation again. Prints a table with 95% CIs, writes summary.json and phases.png.",
    )
    for option in DEMO_OPTIONS:
        # A True/False option is a switch (--x, --no-x): bool("False") would be True.
        kind = type(option.default)
        typed = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
        p.add_argument(
            f"--{option.name.replace('_', '-')}",
            dest=option.name,
            default=option.default,
            help=demo_option_help(option),
            **typed,
        )
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("checkpoint", help="checkpoint tools")
    csub = p.add_subparsers(dest="checkpoint_command", required=True)
    c = csub.add_parser("init", help="write a randomly initialised checkpoint")
    c.add_argument("path")
    c.add_argument("--image-size", type=int, default=64)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(fn=cmd_checkpoint_init)
    p = sub.add_parser("docs", help="generate documentation from the code")
    dsub = p.add_subparsers(dest="docs_command", required=True)
    c = dsub.add_parser("parameters", help="write the node parameters reference")
    c.add_argument("--output", default="docs/parameters.md")
    c.set_defaults(fn=cmd_docs_parameters)
    for module_name in PACKAGE_COMMANDS:
        importlib.import_module(module_name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print(f"nsl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
