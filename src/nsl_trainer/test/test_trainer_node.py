"""The trainer node as a separate process.

Quick validation, refusals while serving, progress and metrics on the status topic, cancel,
announcement of the result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from node_output import GraphLog
from safetensors import safe_open

pytest.importorskip("rclpy")
# After the skip: the graph, its client and messages need ROS 2.
import rclpy  # noqa: E402
from nsl_common.loop_client import LoopClient  # noqa: E402
from nsl_bringup.graph import resolve  # noqa: E402
from nsl_bringup.runner import GraphRunner, isolated_environment  # noqa: E402
from nsl_common import names  # noqa: E402
from nsl_common.qos import LATCHED_QOS  # noqa: E402
from nsl_msgs.msg import CheckpointInfo, TrainerStatus  # noqa: E402
from nsl_msgs.srv import FineTune  # noqa: E402
from nsl_policy.checkpoint import init_checkpoint, load_checkpoint  # noqa: E402
from nsl_policy.model import QNetworkConfig  # noqa: E402
from nsl_trainer.config import QTOptConfig  # noqa: E402
from nsl_trainer.recipe import FineTuneRecipe  # noqa: E402
from rcl_interfaces.msg import ParameterType  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from system_graph import wait_for_job_end  # noqa: E402
from trainer_helpers import write_bag  # noqa: E402


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    work = tmp_path_factory.mktemp("trainer_node")
    env = isolated_environment(1 + (os.getpid() + 37) % 100)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    bag = write_bag(work / "target", 4, seed=3, task="target")
    init = work / "init.safetensors"
    init_checkpoint(init, QNetworkConfig(image_size=32, width=8), seed=0)
    namespace = "trainertest"
    _, nodes = resolve(
        "finetune", {"namespace": namespace, "checkpoint_dir": str(work / "checkpoints")}
    )
    log = GraphLog()
    runner = GraphRunner(nodes, namespace=namespace, env=env, output=log)
    runner.start()
    runner.log = log
    # The trainer graph runs on its own DDS domain: the client joins it through a context of its
    # own, whatever other tests of this session have initialised.
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(env["ROS_DOMAIN_ID"]))
    client = LoopClient(namespace=namespace, name="trainer_test_client", context=context)
    runner.namespace = namespace
    yield runner, client, work, bag, init
    client.close()
    rclpy.try_shutdown(context=context)
    codes = runner.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    assert runner.first_exit is None, f"the trainer died: {runner.first_exit.describe()}"
    assert all(code in (0, -2) for code in codes.values()), codes


def test_refuses_bad_requests_cancels_and_keeps_serving(trainer, tmp_path):
    runner, client, work, bag, init = trainer
    announced = []
    client.create_subscription(
        CheckpointInfo, names.CHECKPOINT_ANNOUNCE_TOPIC, announced.append, LATCHED_QOS
    )
    cancel = client.create_client(Trigger, names.CANCEL_JOB_SERVICE)
    fine_tune = client.fine_tune_client
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    nested = tmp_path / "nested.safetensors"  # its header is JSON nested 100,000 deep
    body = ("[" * 100_000 + "]" * 100_000).encode()
    nested.write_bytes(len(body).to_bytes(8, "little") + body)
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    ok = {"target_datasets": [str(bag)], "init_checkpoint": str(init)}
    cases = [
        (FineTune.Request(**{**ok, "target_fraction": 2.0}), "target_fraction: "),
        (FineTune.Request(**{**ok, "target_fraction": float("nan")}), "target_fraction: "),
        (FineTune.Request(**{**ok, "target_datasets": [""]}), "target_datasets[0]: empty path"),
        (FineTune.Request(**{**ok, "base_datasets": ["  "]}), "base_datasets[0]: empty path"),
        (FineTune.Request(**{**ok, "learning_rate": float("inf")}), "learning_rate: "),
        (FineTune.Request(**{**ok, "init_checkpoint": str(nested)}), "nested"),
        (FineTune.Request(**{**ok, "init_checkpoint": str(fifo)}), str(fifo)),
        # No init checkpoint and no default_checkpoint: random weights are not a fine-tune.
        (FineTune.Request(target_datasets=[str(bag)]), "init_checkpoint: none given"),
        (FineTune.Request(target_datasets=["/nonexistent/bag_42"]), "/nonexistent/bag_42"),
        (FineTune.Request(target_datasets=[str(empty_dir)]), str(empty_dir)),
        (
            FineTune.Request(target_datasets=[str(bag)], base_datasets=["/nonexistent/b"]),
            "/nonexistent/b",
        ),
        (FineTune.Request(target_datasets=[str(bag)], init_checkpoint=str(garbage)), str(garbage)),
        (
            FineTune.Request(
                target_datasets=[str(bag)], init_checkpoint=str(init), learning_rate=-1.0
            ),
            "learning_rate",
        ),
        (FineTune.Request(), "target_datasets: none given"),
    ]
    for request, expected in cases:
        reply = client.call(fine_tune, request)
        assert not reply.accepted and expected in reply.message, reply.message
    reply = client.call(cancel, Trigger.Request())
    assert not reply.success and "no job" in reply.message

    # A long job: refused concurrent request, progress with metrics, then cancel.
    long = client.call(
        fine_tune,
        FineTune.Request(target_datasets=[str(bag)], init_checkpoint=str(init), steps=1_000_000),
    )
    assert long.accepted, long.message
    busy = client.call(
        fine_tune, FineTune.Request(target_datasets=[str(bag)], init_checkpoint=str(init), steps=2)
    )
    assert not busy.accepted and "busy" in busy.message and long.job_id in busy.message
    client.wait_until(
        lambda: f"refused: busy: job {long.job_id}" in runner.log.text(), 10, "the busy log line"
    )
    started = next(line for line in runner.log.lines if f"job {long.job_id}: " in line)
    assert f"finetune from {init}" in started and "target data only" in started, started
    assert "target fraction" not in started  # a target-only job samples target rows only
    client.wait_until(
        lambda: client.trainer_status.job_id == long.job_id and client.trainer_status.step > 0,
        120,
        "progress of the long job",
    )
    s = client.trainer_status
    assert s.state == TrainerStatus.STATE_RUNNING and s.total_steps == 1_000_000
    assert (
        0 <= s.mean_q <= 1
        and s.td_error >= 0
        and 0 <= s.target_fraction <= 1
        and s.learning_rate > 0
    )
    assert s.run_dir.endswith(long.job_id)
    reply = client.call(cancel, Trigger.Request())
    assert reply.success and long.job_id in reply.message
    client.wait_until(
        lambda: client.trainer_status.state == TrainerStatus.STATE_CANCELLED,
        60,
        "the cancellation",
    )
    assert client.trainer_status.job_id == long.job_id
    assert (Path(s.run_dir) / "state.safetensors").is_file()  # resumable state saved on cancel

    # Still serving: a short job runs to completion and is announced.
    short = client.call(
        fine_tune, FineTune.Request(target_datasets=[str(bag)], init_checkpoint=str(init), steps=3)
    )
    assert short.accepted, short.message
    wait_for_job_end(client, short.job_id, 120, "the short job")
    assert client.trainer_status.state == TrainerStatus.STATE_SUCCEEDED, (
        client.trainer_status.message
    )
    client.wait_until(
        lambda: any(a.job_id == short.job_id for a in announced), 30, "the announcement"
    )
    info = next(a for a in announced if a.job_id == short.job_id)
    assert Path(info.path).is_file() and info.path == client.trainer_status.checkpoint_path

    assert info.parent_id == load_checkpoint(init).checkpoint_id
    written = load_checkpoint(info.path)
    assert written.metadata["job_id"] == short.job_id  # policy/active_checkpoint's job_id
    assert Path(info.path).name == f"finetune-{short.job_id}.safetensors"
    assert runner.first_exit is None


def test_a_fine_tune_without_a_learning_rate_uses_the_recipes(trainer):
    """The node at its defaults fine-tunes at ``QTOptConfig().finetune_learning_rate()``.

    The rate shows on the status topic, in the checkpoint's metadata and in the optimiser state
    the job saved, so a request without a rate (the demo's) gets the library's recipe.
    """
    runner, client, work, bag, init = trainer
    expected = QTOptConfig().finetune_learning_rate()
    reply = client.call(
        client.fine_tune_client,
        FineTune.Request(target_datasets=[str(bag)], init_checkpoint=str(init), steps=2),
    )
    assert reply.accepted, reply.message
    wait_for_job_end(client, reply.job_id, 120, "the fine-tune")
    status = client.trainer_status
    assert status.state == TrainerStatus.STATE_SUCCEEDED, status.message
    assert status.learning_rate == np.float32(expected)  # the status field is a float32
    assert load_checkpoint(status.checkpoint_path).metadata["learning_rate"] == expected
    with safe_open(Path(status.run_dir) / "state.safetensors", framework="pt") as f:
        state = json.loads(f.metadata()["state"])
    assert state["extra"]["run"]["learning_rate"] == expected
    assert {g["lr"] for g in state["optimizer_param_groups"]} == {expected}
    assert runner.first_exit is None


def test_the_node_started_from_trainer_yaml_runs_the_fine_tuning_recipe(trainer):
    """The running node's recipe parameters are FineTuneRecipe()'s (trainer.yaml sets none)."""
    runner, client, *_ = trainer
    recipe = FineTuneRecipe()
    wanted = {
        "default_steps": recipe.steps,
        "target_fraction": recipe.target_fraction,
        "policy_weights": recipe.policy_weights,
        "mc_mix": recipe.mc_mix,
        "location_weight": recipe.location_weight,
        "location_labels": recipe.location_labels,
    }
    service = client.create_client(
        GetParameters,
        names.qualified_node_name(runner.namespace, names.TRAINER_NODE) + "/get_parameters",
    )
    reply = client.call(service, GetParameters.Request(names=list(wanted)))
    field = {
        ParameterType.PARAMETER_INTEGER: "integer_value",
        ParameterType.PARAMETER_DOUBLE: "double_value",
        ParameterType.PARAMETER_STRING: "string_value",
    }
    got = {n: getattr(v, field[v.type]) for n, v in zip(wanted, reply.values)}
    assert got == wanted


def test_a_job_on_a_damaged_dataset_trains_on_the_rest_and_logs_the_skip(trainer, tmp_path):
    """The worker's dataset warnings reach the trainer's log, naming the job and the file."""
    runner, client, work, bag, init = trainer
    data = tmp_path / "data"
    write_bag(data / "intact", 2, seed=4, task="target")
    damaged = write_bag(data / "damaged", 2, seed=5, task="target")
    (damaged / "damaged.mcap").write_bytes(b"not an mcap file at all")
    reply = client.call(
        client.fine_tune_client,
        FineTune.Request(target_datasets=[str(data)], init_checkpoint=str(init), steps=2),
    )
    assert reply.accepted, reply.message
    wait_for_job_end(client, reply.job_id, 120, "the fine-tune on the damaged dataset")
    status = client.trainer_status
    assert status.state == TrainerStatus.STATE_SUCCEEDED, status.message
    assert load_checkpoint(status.checkpoint_path).metadata["num_transitions"]["target"] == 2 * 3
    client.wait_until(
        lambda: f"job {reply.job_id} succeeded" in runner.log.text(), 10, "the success line"
    )
    text = runner.log.text()
    assert f"job {reply.job_id}: skipped the damaged bag {damaged}" in text, text[-3000:]
    assert "announced (trained on the rest after" in text, text[-3000:]
    assert runner.first_exit is None
