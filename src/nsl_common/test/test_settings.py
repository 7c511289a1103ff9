"""A table of Settings declared on a node: defaults, descriptions, ranges and read-only flags."""

from __future__ import annotations

import dataclasses

import pytest

from nsl_common.settings import Setting

TABLE = {
    "steps": Setting(5, "gradient steps", int_range=(1, 10)),
    "epsilon": Setting(0.1, "exploration rate", float_range=(0.0, 1.0), runtime=True),
    "task": Setting("base", "task of the episodes"),
}


def test_a_setting_is_frozen_and_fixed_at_start_up_unless_marked_runtime():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TABLE["steps"].default = 6
    assert not TABLE["task"].runtime and TABLE["epsilon"].runtime


def test_declare_settings_declares_the_table_and_returns_the_nodes_values():
    rclpy = pytest.importorskip("rclpy")
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from nsl_common.parameters import declare_settings  # after the skip: needs rcl_interfaces

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = Node(
            "settings_test",
            context=context,
            parameter_overrides=[Parameter("steps", value=7)],
        )
        try:
            values = declare_settings(node, TABLE)
            assert values == {"steps": 7, "epsilon": 0.1, "task": "base"}
            steps = node.describe_parameter("steps")
            assert steps.read_only and steps.description == "gradient steps"
            assert (steps.integer_range[0].from_value, steps.integer_range[0].to_value) == (1, 10)
            epsilon = node.describe_parameter("epsilon")
            assert not epsilon.read_only and epsilon.floating_point_range[0].to_value == 1.0
            assert node.describe_parameter("task").read_only
            refused = node.set_parameters([Parameter("epsilon", value=2.0)])[0]
            assert not refused.successful  # outside the declared range
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
