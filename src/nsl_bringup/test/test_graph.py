"""The graph description and the runner's command lines (no ROS needed)."""

from __future__ import annotations

import sys
import textwrap

import pytest
import yaml

from nsl_bringup.graph import GRAPHS, NodeSpec, config_dir, resolve
from nsl_bringup.runner import GraphRunner, isolated_environment
from nsl_common import names


def test_collect_sim_has_sim_policy_collector_and_robot_has_no_sim():
    _, sim_nodes = resolve("collect", {"sim": "true"})
    _, robot_nodes = resolve(
        "collect", {"sim": "false", "camera_topic": "/camera/color/image_raw"}
    )
    assert [n.name for n in sim_nodes] == ["sim", "policy", "collector"]
    assert [n.name for n in robot_nodes] == ["arm", "policy", "collector"]
    assert robot_nodes[0].package == "nsl_kuka"
    assert robot_nodes[1].remappings == ((names.CAMERA_TOPIC, "/camera/color/image_raw"),)
    assert robot_nodes[2].parameters["robot"] == "robot"


def test_unknown_argument_and_bad_choice_are_refused():
    with pytest.raises(ValueError, match="no argument"):
        resolve("collect", {"taks": "base"})
    with pytest.raises(ValueError, match="sim:=maybe"):
        resolve("collect", {"sim": "maybe"})
    with pytest.raises(ValueError, match="unknown graph"):
        resolve("nope")


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_runner_commands_carry_the_graph_parameters(graph, tmp_path):
    namespace, nodes = resolve(graph, {"namespace": "robot7"})
    runner = GraphRunner(nodes, namespace=namespace)
    commands = runner.commands()
    for spec in nodes:
        cmd = commands[spec.name]
        assert cmd[1] == "--ros-args"
        assert f"__node:={spec.name}" in cmd and "__ns:=/robot7" in cmd
        files = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--params-file"]
        assert files[0] == str(config_dir() / spec.params_file)
        assert yaml.safe_load(open(files[1]))["/**"]["ros__parameters"] == spec.parameters
        # Every parameter a graph sets is declared in the node's params file.
        declared = yaml.safe_load(open(files[0]))["/**"]["ros__parameters"]
        assert set(spec.parameters) <= set(declared), (
            f"{spec.name}: {set(spec.parameters) - set(declared)}"
        )
    runner._tmp.cleanup()


def test_isolated_environment():
    env = isolated_environment(42)
    assert env == {"ROS_DOMAIN_ID": "42", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    with pytest.raises(ValueError):
        isolated_environment(300)


def fake_node(tmp_path, name, body):
    script = tmp_path / name
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return script


def test_runner_prefixes_output_and_reports_a_dying_node(tmp_path, monkeypatch):
    import nsl_bringup.runner as runner_module

    scripts = {
        # crashy dies only once steady handles SIGINT: a SIGINT that came earlier would be lost
        # when the suite runs in a background job (which starts with SIGINT ignored).
        "steady": fake_node(
            tmp_path,
            "steady",
            f"""
            import pathlib, signal, sys, time
            signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
            pathlib.Path({str(tmp_path / "steady.ready")!r}).touch()
            print("hello from steady", flush=True)
            signal.pause()
        """,
        ),
        "crashy": fake_node(
            tmp_path,
            "crashy",
            f"""
            import pathlib, sys, time
            while not pathlib.Path({str(tmp_path / "steady.ready")!r}).exists():
                time.sleep(0.01)
            print("about to fail", flush=True)
            sys.exit(3)
        """,
        ),
    }
    monkeypatch.setattr(runner_module, "find_executable", lambda package, exe: str(scripts[exe]))
    nodes = [
        NodeSpec("steady", "pkg", "steady", "sim.yaml"),
        NodeSpec("crashy", "pkg", "crashy", "sim.yaml"),
    ]

    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    out = Sink()
    runner = GraphRunner(nodes, output=out)
    runner.start()
    died = runner.wait(timeout=30)
    codes = runner.stop(grace=10)
    assert died is not None and died.name == "crashy" and died.returncode == 3
    assert "node 'crashy' exited with code 3" == died.describe()
    assert codes["steady"] == 0, "the surviving node got SIGINT and stopped cleanly"
    assert "[steady] hello from steady" in out.text and "[crashy] about to fail" in out.text
