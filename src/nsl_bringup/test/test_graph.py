"""The graph description and the runner's command lines (no ROS needed)."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import textwrap
import time

import pytest
import yaml

from nsl_bringup.graph import GRAPHS, NodeSpec, config_dir, resolve
from nsl_bringup.runner import GraphRunner, isolated_environment
from nsl_common import names
import nsl_bringup.runner as runner_module


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


class Sink:
    """A thread-safe enough output for the runner (lines appended to ``text``)."""

    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_collector_and_trainer_respawn_and_the_policy_does_not():
    _, nodes = resolve("sim_demo")
    respawn = {n.name: n.respawn for n in nodes}
    assert respawn == {
        names.SIM_NODE: False,
        names.POLICY_NODE: False,  # restarts only through its own checkpoint validation
        names.COLLECTOR_NODE: True,
        names.TRAINER_NODE: True,
    }
    assert all(n.respawn_delay > 0 and n.respawn_max_retries >= 1 for n in nodes)


def test_sim_demo_checkpoint_is_the_trainers_default_start():
    _, nodes = resolve("sim_demo", {"checkpoint": "/m/base.safetensors"})
    trainer = next(n for n in nodes if n.name == names.TRAINER_NODE)
    assert trainer.parameters["default_checkpoint"] == "/m/base.safetensors"
    _, nodes = resolve(
        "sim_demo", {"checkpoint": "/m/base.safetensors", "default_checkpoint": "/m/other"}
    )
    trainer = next(n for n in nodes if n.name == names.TRAINER_NODE)
    assert trainer.parameters["default_checkpoint"] == "/m/other"


def test_runner_restarts_a_respawning_node_and_the_graph_goes_on(tmp_path, monkeypatch):
    """A respawning node killed twice comes back each time; the other node keeps running."""
    starts = tmp_path / "starts"
    scripts = {
        "steady": fake_node(
            tmp_path,
            "steady",
            """
            import signal, sys
            signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
            print("steady up", flush=True)
            signal.pause()
        """,
        ),
        "worker": fake_node(
            tmp_path,
            "worker",
            f"""
            import os, signal, sys
            signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
            with open({str(starts)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            print("worker up", flush=True)
            signal.pause()
        """,
        ),
    }
    monkeypatch.setattr(runner_module, "find_executable", lambda package, exe: str(scripts[exe]))
    nodes = [
        NodeSpec("steady", "pkg", "steady", "sim.yaml"),
        NodeSpec("worker", "pkg", "worker", "sim.yaml", respawn=True, respawn_delay=0.1),
    ]
    out = Sink()
    runner = GraphRunner(nodes, output=out)
    runner.start()
    try:
        steady_pid = runner.pid("steady")
        for count in (1, 2):
            up = time.monotonic() + 30
            while out.text.count("[worker] worker up") < count and time.monotonic() < up:
                time.sleep(0.01)  # kill each process only once it is up
            first = runner.pid("worker")
            os.kill(first, signal.SIGKILL)
            assert runner.wait_for_restart("worker", count, timeout=30), out.text
            assert runner.pid("worker") != first
        up = time.monotonic() + 30
        while out.text.count("[worker] worker up") < 3 and time.monotonic() < up:
            time.sleep(0.01)
        assert runner.wait(timeout=0.5) is None, "a respawning node's death ended the graph"
        assert runner.pid("steady") == steady_pid and runner.restarts("steady") == 0
    finally:
        codes = runner.stop(grace=10)
    assert codes == {"steady": 0, "worker": 0}, codes
    assert out.text.count("[worker] worker up") == 3, out.text
    assert "node 'worker' killed by SIGKILL; restarting it in 0.1 s (restart 1 of" in out.text
    assert len(starts.read_text().split()) == 3


@pytest.mark.parametrize("code,retries,why", [(2, 5, "configuration was refused"), (1, 2, "")])
def test_runner_gives_up_on_a_refused_configuration_and_spent_retries(
    tmp_path, monkeypatch, code, retries, why
):
    script = fake_node(
        tmp_path, "bad", f"import sys\nprint('bad up', flush=True)\nsys.exit({code})\n"
    )
    monkeypatch.setattr(runner_module, "find_executable", lambda package, exe: str(script))
    spec = NodeSpec("bad", "pkg", "bad", "sim.yaml", respawn=True, respawn_delay=0.05)
    spec = dataclasses.replace(spec, respawn_max_retries=retries)
    out = Sink()
    runner = GraphRunner([spec], output=out)
    runner.start()
    died = runner.wait(timeout=30)
    runner.stop(grace=5)
    assert died is not None and died.returncode == code, out.text
    expected_starts = 1 if code == 2 else 1 + retries
    assert out.text.count("[bad] bad up") == expected_starts, out.text
    assert "not restarted" in out.text and why in out.text
