"""A killed trainer or collector comes back and the graph goes on (the runner's respawn).

The whole sim_demo graph runs; the trainer is killed with SIGKILL during a fine-tune and the
collector while it records. Each is restarted, serves again, and the policy keeps running
episodes throughout: only the job in flight and the episode in flight are lost.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from system_graph import start_sim_demo, stop_graph, wait_for_job_end

from nsl_common import names
from nsl_msgs.msg import TrainerStatus
from nsl_msgs.srv import FineTune
from std_srvs.srv import Trigger

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def graph(rclpy_context, random_checkpoint, tmp_path_factory):
    work = tmp_path_factory.mktemp("restarts")
    # The graph's checkpoint:= is also the trainer's default_checkpoint.
    runner, client, log = start_sim_demo(
        "restarts", random_checkpoint, work, "restart_test_client"
    )
    yield runner, client, work, log
    stop_graph(runner, client)


def children(pid: int) -> list[int]:
    """Return the ids of the direct child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_killed_trainer_and_collector_come_back_and_the_graph_goes_on(graph):
    runner, client, work, log = graph
    client.wait_until(lambda: len(client.results) >= 2, 300, "the first episodes")
    client.wait_for_recorded(2, 120)
    reply = client.call(client.stop_session_client, Trigger.Request())
    assert reply.success, reply.message
    bag = reply.message

    # A long job (no init checkpoint: the graph's checkpoint:= is the trainer's default).
    job = client.call(
        client.fine_tune_client, FineTune.Request(target_datasets=[bag], steps=1_000_000)
    )
    assert job.accepted, job.message
    client.wait_until(
        lambda: client.trainer_status.job_id == job.job_id and client.trainer_status.step > 0,
        120,
        "the job's progress",
    )
    trainer_pid = runner.pid(names.TRAINER_NODE)
    workers = children(trainer_pid)
    assert workers, "the job runs in a worker process"
    os.kill(trainer_pid, signal.SIGKILL)
    assert runner.wait_for_restart(names.TRAINER_NODE, 1, timeout=60), log.text()[-3000:]
    assert runner.pid(names.TRAINER_NODE) != trainer_pid
    # The restarted trainer serves again: its latched status is idle and a new job runs.
    client.wait_until(
        lambda: client.trainer_status.state == TrainerStatus.STATE_IDLE, 120, "the new trainer"
    )
    deadline = time.monotonic() + 60
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), "the dead trainer's worker kept training"
    short = None
    deadline = time.monotonic() + 60
    while short is None or not short.accepted:
        short = client.call(
            client.fine_tune_client, FineTune.Request(target_datasets=[bag], steps=2)
        )
        if short.accepted or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert short.accepted, short.message
    wait_for_job_end(client, short.job_id, 300, "the job after the restart")
    assert client.trainer_status.state == TrainerStatus.STATE_SUCCEEDED

    # The collector, killed while it records, comes back with a new session.
    client.wait_until(lambda: client.collector_status.get("session"), 300, "a new session")
    dead_session = client.collector_status["session"]
    collector_pid = runner.pid(names.COLLECTOR_NODE)
    os.kill(collector_pid, signal.SIGKILL)
    assert runner.wait_for_restart(names.COLLECTOR_NODE, 1, timeout=60), log.text()[-3000:]
    client.wait_until(
        lambda: (
            client.collector_status.get("session", dead_session) not in ("", dead_session)
            and client.collector_status.get("session_episodes", 0) >= 1
        ),
        300,
        "episodes recorded by the restarted collector",
    )
    assert Path(dead_session).is_dir()  # the killed session's bag stays on disk
    assert runner.restarts(names.POLICY_NODE) == 0 and runner.restarts(names.SIM_NODE) == 0
    assert runner.first_exit is None, runner.first_exit.describe()
    assert "restarting it in" in log.text()
