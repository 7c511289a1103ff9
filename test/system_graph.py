"""Start and stop the node graphs of the system tests through the runner, with a loop client."""

from __future__ import annotations

from pathlib import Path

from node_output import GraphLog

from nsl_common.loop_client import LoopClient
from nsl_bringup.graph import NodeSpec, resolve
from nsl_bringup.runner import GraphRunner
from nsl_msgs.msg import TrainerStatus


def start_graph(
    nodes: list[NodeSpec], namespace: str, client_name: str
) -> tuple[GraphRunner, LoopClient, GraphLog]:
    """Start ``nodes`` in ``namespace`` and a loop client; return runner, client and node log."""
    log = GraphLog()
    runner = GraphRunner(nodes, namespace=namespace, output=log)
    runner.start()
    return runner, LoopClient(namespace=namespace, name=client_name), log


def start_sim_demo(
    namespace: str, checkpoint: Path, work: Path, client_name: str
) -> tuple[GraphRunner, LoopClient, GraphLog]:
    """Start the sim_demo graph on ``checkpoint``, also the trainer's default checkpoint.

    Epsilon 0.3, data in ``work/datasets`` and checkpoints in ``work/checkpoints``.
    """
    _, nodes = resolve(
        "sim_demo",
        {
            "namespace": namespace,
            "checkpoint": str(checkpoint),
            "epsilon": "0.3",
            "dataset_root": str(work / "datasets"),
            "checkpoint_dir": str(work / "checkpoints"),
        },
    )
    return start_graph(nodes, namespace, client_name)


def stop_graph(runner: GraphRunner, client: LoopClient) -> None:
    """Close the client, stop the graph and check no node died and every one stopped cleanly."""
    client.close()
    codes = runner.stop()
    assert runner.first_exit is None, f"a node died: {runner.first_exit.describe()}"
    assert all(code in (0, -2) for code in codes.values()), f"nodes did not stop cleanly: {codes}"


def wait_for_job_end(client: LoopClient, job_id: str, timeout: float, what: str) -> None:
    """Wait until the trainer's status shows job ``job_id`` succeeded or failed."""
    client.wait_until(
        lambda: (
            client.trainer_status is not None
            and client.trainer_status.job_id == job_id
            and client.trainer_status.state
            in (TrainerStatus.STATE_SUCCEEDED, TrainerStatus.STATE_FAILED)
        ),
        timeout,
        what,
    )
