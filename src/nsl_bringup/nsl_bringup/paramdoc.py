"""The parameters reference (docs/parameters.md), read from the nodes themselves.

Each node of the sim_demo graph is started as a process and asked over ROS for its declared
parameters (names, types, defaults from its params file, descriptions). The real-arm node needs
MoveIt to start, so its declarations are read in-process from ``declare_arm_parameters``.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, replace

import rclpy
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from nsl_bringup.graph import resolve
from nsl_bringup.runner import GraphRunner, isolated_environment
from nsl_common.service_call import call_service
from nsl_kuka.kuka_arm_node import declare_arm_parameters

_TYPE_NAMES = {
    ParameterType.PARAMETER_BOOL: "bool",
    ParameterType.PARAMETER_INTEGER: "int",
    ParameterType.PARAMETER_DOUBLE: "float",
    ParameterType.PARAMETER_STRING: "string",
    ParameterType.PARAMETER_BOOL_ARRAY: "bool[]",
    ParameterType.PARAMETER_INTEGER_ARRAY: "int[]",
    ParameterType.PARAMETER_DOUBLE_ARRAY: "float[]",
    ParameterType.PARAMETER_STRING_ARRAY: "string[]",
}
_VALUE_FIELDS = {
    ParameterType.PARAMETER_BOOL: "bool_value",
    ParameterType.PARAMETER_INTEGER: "integer_value",
    ParameterType.PARAMETER_DOUBLE: "double_value",
    ParameterType.PARAMETER_STRING: "string_value",
    ParameterType.PARAMETER_BOOL_ARRAY: "bool_array_value",
    ParameterType.PARAMETER_INTEGER_ARRAY: "integer_array_value",
    ParameterType.PARAMETER_DOUBLE_ARRAY: "double_array_value",
    ParameterType.PARAMETER_STRING_ARRAY: "string_array_value",
}


@dataclass
class ParameterDoc:
    node: str
    name: str
    type: str
    default: str
    description: str


def _value_text(value) -> str:
    field = _VALUE_FIELDS.get(value.type)
    if field is None:
        return ""
    v = getattr(value, field)
    return repr(list(v)) if "array" in field else repr(v)


def _call(node, srv_type, name: str, request, timeout: float = 20.0):
    return call_service(node.create_client(srv_type, name), request, timeout)


def describe_running_node(client_node, full_name: str) -> list[ParameterDoc]:
    names = [
        n
        for n in _call(
            client_node, ListParameters, f"{full_name}/list_parameters", ListParameters.Request()
        ).result.names
        if n not in ("use_sim_time", "start_type_description_service")
    ]
    descriptors = _call(
        client_node,
        DescribeParameters,
        f"{full_name}/describe_parameters",
        DescribeParameters.Request(names=names),
    ).descriptors
    values = _call(
        client_node,
        GetParameters,
        f"{full_name}/get_parameters",
        GetParameters.Request(names=names),
    ).values
    short = full_name.rsplit("/", 1)[-1]
    return [
        ParameterDoc(short, d.name, _TYPE_NAMES.get(d.type, "?"), _value_text(v), d.description)
        for d, v in zip(descriptors, values)
    ]


def describe_arm_node() -> list[ParameterDoc]:
    node = Node("arm_paramdoc")
    try:
        declare_arm_parameters(node)
        docs = []
        for name in sorted(node._parameters):
            if name in ("use_sim_time", "start_type_description_service"):
                continue
            p = node.get_parameter(name)
            d = node.describe_parameter(name)
            docs.append(
                ParameterDoc(
                    "arm",
                    name,
                    _TYPE_NAMES.get(d.type, "?"),
                    _value_text(p.get_parameter_value()),
                    d.description,
                )
            )
        return docs
    finally:
        node.destroy_node()


def collect_parameter_docs() -> list[ParameterDoc]:
    """Start the sim_demo nodes (isolated) and read every declared parameter."""
    env = isolated_environment()
    os.environ.update(env)
    with tempfile.TemporaryDirectory() as tmp:
        # Params files only (no launch-argument overrides): the reference shows their defaults.
        nodes = [replace(spec, parameters={}) for spec in resolve("sim_demo")[1]]
        runner = GraphRunner(
            nodes, namespace="paramdoc", env=env, output=open(os.devnull, "w"), cwd=tmp
        )
        started = not rclpy.ok()
        if started:
            rclpy.init()
        client = rclpy.create_node("paramdoc_client")
        executor = SingleThreadedExecutor()
        executor.add_node(client)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        runner.start()
        try:
            docs = []
            for spec in nodes:
                docs += describe_running_node(client, f"/paramdoc/{spec.name}")
            docs += describe_arm_node()
            if runner.first_exit is not None:
                raise RuntimeError(runner.first_exit.describe())
            return docs
        finally:
            runner.stop()
            executor.shutdown()
            client.destroy_node()
            if started:
                rclpy.try_shutdown()


PACKAGES = {
    "sim": "nsl_sim",
    "policy": "nsl_policy",
    "collector": "nsl_collector",
    "trainer": "nsl_trainer",
    "arm": "nsl_kuka",
}


def render_markdown(docs: list[ParameterDoc]) -> str:
    lines = [
        "# Node parameters reference",
        "",
        "Generated from the nodes' own declarations by `nsl docs parameters` "
        "(do not edit by hand).",
        "Defaults are those of the params files in `src/nsl_bringup/nsl_bringup/config/`; "
        "set them with",
        "`name:=value` launch arguments where a graph exposes them, "
        "`--ros-args -p name:=value`, or a",
        "params file. Invalid values are refused at start-up with a message naming the parameter.",
        "",
    ]
    for node in PACKAGES:
        rows = [d for d in docs if d.node == node]
        if not rows:
            continue
        lines += [
            f"## {node} (`{PACKAGES[node]}`)",
            "",
            "| parameter | type | default | description |",
            "|---|---|---|---|",
        ]
        lines += [f"| `{d.name}` | {d.type} | `{d.default}` | {d.description} |" for d in rows]
        lines.append("")
    return "\n".join(lines)
