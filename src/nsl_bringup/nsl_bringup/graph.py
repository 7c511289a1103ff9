"""The NSL node graphs, described once as data.

Both starters read this module: the launch files (``ros2 launch nsl_bringup collect.launch.py``)
turn a resolved graph into launch_ros ``Node`` actions, and the process runner (``nsl up``)
starts the same nodes as processes with ``--ros-args``. A test checks they agree.

Names inside a graph are relative (``nsl_common.names``), so every topic and service lands
under the graph's namespace: several robots (or simulated robots) run side by side under
different namespaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from nsl_common import names


RESPAWN_DELAY = 2.0
"""Seconds before a dead node is restarted: long enough for DDS to notice it left."""

RESPAWN_MAX_RETRIES = 20
"""Restarts of one node before it is given up: a node that keeps dying is broken, not unlucky."""


@dataclass(frozen=True)
class LaunchArgument:
    """One launch argument (``name:=value`` on both starters)."""

    name: str
    default: str
    description: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeSpec:
    """One node of a resolved graph: what to start and with which parameters."""

    name: str
    """Node name (``__node``)."""
    package: str
    executable: str
    """console_scripts entry of ``package`` (``ros2 run package executable``)."""
    params_file: str
    """File name in nsl_bringup's config/ (installed to share/nsl_bringup/config)."""
    parameters: dict = field(default_factory=dict)
    """Values that override the params file (from launch arguments)."""
    remappings: tuple[tuple[str, str], ...] = ()
    respawn: bool = False
    """Restart the node when it dies (both starters); only for nodes whose restart is safe."""
    respawn_delay: float = RESPAWN_DELAY
    """Seconds between a death and the restart."""
    respawn_max_retries: int = RESPAWN_MAX_RETRIES
    """Restarts after which a node that keeps dying is given up (the runner then stops the
    graph; ``ros2 launch`` stops restarting it where launch supports the limit)."""
    lifecycle: bool = False
    """A managed node: both starters configure and activate it once it is up."""


@dataclass(frozen=True)
class Graph:
    """A deployment: its launch arguments and how they select and parameterise nodes."""

    name: str
    description: str
    arguments: tuple[LaunchArgument, ...]

    def defaults(self) -> dict[str, str]:
        return {a.name: a.default for a in self.arguments}

    def check_arguments(self, values: dict[str, str]) -> dict[str, str]:
        """Merge ``values`` over the defaults; refuse unknown names and values outside choices."""
        known = {a.name: a for a in self.arguments}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"graph '{self.name}' has no argument(s) {unknown}; valid: {sorted(known)}"
            )
        merged = {**self.defaults(), **values}
        for name, value in merged.items():
            choices = known[name].choices
            if choices and value not in choices:
                raise ValueError(f"argument {name}:={value} is not one of {list(choices)}")
        return merged


def _bool(value: str) -> bool:
    return value.lower() in ("true", "1", "yes")


_COMMON_ARGS = (
    LaunchArgument("namespace", "", "namespace of every node, topic and service (one per robot)"),
)
_COLLECT_ARGS = (
    LaunchArgument(
        "sim",
        "true",
        "true: the PyBullet sim node plays arm and camera; "
        "false: a real arm node and camera driver",
        ("true", "false"),
    ),
    LaunchArgument(
        "task",
        "base",
        "task (world variation) recorded with every episode; the sim also builds it",
    ),
    LaunchArgument(
        "dataset_root", "datasets", "folder under which the collector writes <task>/<session> bags"
    ),
    LaunchArgument(
        "checkpoint",
        "",
        "Q-function checkpoint the policy starts with (it does not move the arm without one)",
    ),
    LaunchArgument("epsilon", "0.1", "probability of a random exploration action per step"),
    LaunchArgument(
        "rollout_mode",
        "",
        "how a validated checkpoint goes in force: immediate, manual or trial "
        "(empty: immediate in the sim, trial on a robot; docs/policy.md)",
        ("", "immediate", "manual", "trial"),
    ),
    LaunchArgument("seed", "0", "seed of the first episode (episode k uses seed+k)"),
    LaunchArgument("image_size", "64", "camera image size the sim renders"),
    LaunchArgument(
        "camera_topic", names.CAMERA_TOPIC, "image topic of the camera driver (robot) or sim"
    ),
)
_TRAINER_ARGS = (
    LaunchArgument(
        "checkpoint_dir", "checkpoints", "folder where the trainer writes fine-tuned checkpoints"
    ),
    LaunchArgument(
        "default_checkpoint",
        "",
        "checkpoint fine-tuning starts from when a request names none (sim_demo: empty means "
        "the policy's checkpoint:=); without one, requests must name an init_checkpoint",
    ),
)

GRAPHS: dict[str, Graph] = {
    "collect": Graph(
        "collect",
        "run grasp episodes with the policy and record them (sim or robot)",
        _COMMON_ARGS + _COLLECT_ARGS,
    ),
    "finetune": Graph(
        "finetune", "the trainer node with its fine-tune service", _COMMON_ARGS + _TRAINER_ARGS
    ),
    "sim_demo": Graph(
        "sim_demo",
        "the whole loop in simulation: collect, fine-tune, hot-swap",
        _COMMON_ARGS + _COLLECT_ARGS + _TRAINER_ARGS,
    ),
}


def resolve(
    graph_name: str, arguments: dict[str, str] | None = None
) -> tuple[str, list[NodeSpec]]:
    """Return the namespace and the nodes of ``graph_name`` for the launch argument values."""
    if graph_name not in GRAPHS:
        raise ValueError(f"unknown graph '{graph_name}'; valid: {sorted(GRAPHS)}")
    graph = GRAPHS[graph_name]
    args = graph.check_arguments(arguments or {})
    nodes: list[NodeSpec] = []
    if "sim" in args:
        camera_remapping = (
            ((names.CAMERA_TOPIC, args["camera_topic"]),)
            if args["camera_topic"] != names.CAMERA_TOPIC
            else ()
        )
        if not _bool(args["sim"]):
            nodes.append(
                NodeSpec(names.ARM_NODE, "nsl_kuka", "kuka_arm_node", "kuka_arm.yaml", {})
            )
        if _bool(args["sim"]):
            nodes.append(
                NodeSpec(
                    names.SIM_NODE,
                    "nsl_sim",
                    "sim_node",
                    "sim.yaml",
                    {
                        "task": args["task"],
                        "image_size": int(args["image_size"]),
                    },
                    remappings=camera_remapping,
                )
            )
        nodes.append(
            NodeSpec(
                names.POLICY_NODE,
                "nsl_policy",
                "policy_node",
                "policy.yaml",
                {
                    "checkpoint": args["checkpoint"],
                    "task": args["task"],
                    "epsilon": float(args["epsilon"]),
                    "seed": int(args["seed"]),
                    "rollout_mode": args["rollout_mode"]
                    or ("immediate" if _bool(args["sim"]) else "trial"),
                },
                remappings=camera_remapping,
                # It moves the arm: configured (checkpoint validated) before it is activated.
                lifecycle=True,
            )
        )
        nodes.append(
            NodeSpec(
                names.COLLECTOR_NODE,
                "nsl_collector",
                "collector_node",
                "collector.yaml",
                {
                    "dataset_root": args["dataset_root"],
                    "task": args["task"],
                    "robot": "sim" if _bool(args["sim"]) else "robot",
                },
                # A restart opens a new session; the dead one's bag stays readable.
                respawn=True,
            )
        )
    if "checkpoint_dir" in args:
        nodes.append(
            NodeSpec(
                names.TRAINER_NODE,
                "nsl_trainer",
                "trainer_node",
                "trainer.yaml",
                {
                    "checkpoint_dir": args["checkpoint_dir"],
                    # With the policy in the graph, its checkpoint is what fine-tunes start from.
                    "default_checkpoint": args["default_checkpoint"] or args.get("checkpoint", ""),
                },
                # A restart loses only the job in flight (its run folder keeps the saved state).
                respawn=True,
            )
        )
    return args["namespace"], nodes


def config_dir() -> Path:
    """Return the folder of the params YAML files (installed to share/nsl_bringup/config)."""
    return Path(str(resources.files("nsl_bringup") / "config"))
