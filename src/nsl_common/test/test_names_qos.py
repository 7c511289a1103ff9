"""The graph's names are valid relative ROS names and its QoS pairs match."""

from __future__ import annotations

import pytest

from nsl_common import names

NAMES = {k: v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
ENDPOINTS = {k: v for k, v in NAMES.items() if k.endswith(("_TOPIC", "_SERVICE"))}


def test_every_endpoint_name_is_relative_valid_and_defined_once():
    validate_topic_name = pytest.importorskip("rclpy.validate_topic_name").validate_topic_name
    assert len(ENDPOINTS) >= 17
    for constant, name in ENDPOINTS.items():
        assert not name.startswith(("/", "~")), f"{constant}={name!r} must be relative"
        validate_topic_name(name)  # raises on an invalid ROS name
    assert len(set(ENDPOINTS.values())) == len(ENDPOINTS), "two constants name the same endpoint"


def test_node_scoped_names_sit_under_their_node():
    assert names.LOAD_CHECKPOINT_SERVICE.split("/")[0] == names.POLICY_NODE
    assert names.POLICY_SET_PARAMETERS_SERVICE == f"{names.POLICY_NODE}/set_parameters"
    for constant in ("FINE_TUNE_SERVICE", "CANCEL_JOB_SERVICE", "CHECKPOINT_ANNOUNCE_TOPIC"):
        assert NAMES[constant].startswith(names.TRAINER_NODE + "/")
    for constant in ("START_SESSION_SERVICE", "STOP_SESSION_SERVICE", "COLLECTOR_STATUS_TOPIC"):
        assert NAMES[constant].startswith(names.COLLECTOR_NODE + "/")


def test_bag_topics_are_absolute():
    assert names.bag_topic(names.STEP_RECORDS_TOPIC) == "/step_records"
    assert names.bag_topic(names.CAMERA_TOPIC) == "/camera/image_raw"


def test_qualified_node_names_sit_under_the_namespace():
    assert names.qualified_node_name("", names.POLICY_NODE) == "/policy"
    assert names.qualified_node_name("/robot1/", names.POLICY_NODE) == "/robot1/policy"


def test_publisher_and_subscriber_profiles_are_compatible():
    rclpy_qos = pytest.importorskip("rclpy.qos")
    from nsl_common import qos  # after the skip: it needs rclpy

    def compatible(publisher, subscription) -> bool:
        result, _reason = rclpy_qos.qos_check_compatible(publisher, subscription)
        return result != rclpy_qos.QoSCompatibility.ERROR

    # (publisher, subscriber) pairs the graph uses.
    for publisher, subscription in (
        (qos.CAMERA_QOS, qos.SENSOR_QOS),
        (qos.RECORD_QOS, qos.RECORD_QOS),
        (qos.LATCHED_QOS, qos.LATCHED_QOS),
        (qos.ANNOUNCE_QOS, qos.ANNOUNCE_QOS),
        (qos.LATCHED_QOS, qos.ANNOUNCE_QOS),
    ):
        assert compatible(publisher, subscription), (publisher, subscription)
    # A volatile publisher must never be mistaken for a latched one: late joiners would wait.
    assert not compatible(qos.RECORD_QOS, qos.LATCHED_QOS)
    durable = rclpy_qos.QoSDurabilityPolicy.TRANSIENT_LOCAL
    assert qos.LATCHED_QOS.durability == durable and qos.ANNOUNCE_QOS.durability == durable
    assert qos.ANNOUNCE_QOS.depth > qos.LATCHED_QOS.depth


def test_descriptor_carries_ranges_and_read_only():
    pytest.importorskip("rcl_interfaces")
    from nsl_common.parameters import descriptor  # after the skip: needs rcl_interfaces

    d = descriptor("steps", int_range=(1, 10))
    assert d.read_only and d.description == "steps"
    assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (1, 10)
    assert not d.floating_point_range
    d = descriptor("epsilon", float_range=(0, 1), read_only=False)
    assert not d.read_only and d.floating_point_range[0].to_value == 1.0
