"""Walking skeleton across processes: sim + policy + collector + trainer started by the runner.

Runs episodes, reads the recorded bag with an independent reader (mcap + mcap-ros2-support),
fine-tunes through the ROS service and checks the policy hot-swaps the announced checkpoint.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from system_graph import start_sim_demo, stop_graph, wait_for_job_end

from nsl_common import names
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from nsl_msgs.msg import TrainerStatus
from nsl_msgs.srv import FineTune
from std_srvs.srv import Trigger

pytestmark = pytest.mark.system

EPISODES = 5


@pytest.fixture(scope="module")
def loop(rclpy_context, random_checkpoint, tmp_path_factory):
    work = tmp_path_factory.mktemp("loop")
    runner, client, log = start_sim_demo("systest", random_checkpoint, work, "system_test_client")
    yield runner, client, work, log
    stop_graph(runner, client)


def read_bag_independently(bag: Path) -> dict[str, list]:
    """Decode every message of the bag's MCAP file with mcap + mcap-ros2-support only."""
    (mcap_file,) = sorted(bag.glob("*.mcap"))
    messages = defaultdict(list)
    with open(mcap_file, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for schema, channel, _message, decoded in reader.iter_decoded_messages():
            messages[channel.topic.lstrip("/")].append((schema.name, decoded))
    return messages


def test_collect_record_finetune_and_hot_swap(loop, random_checkpoint):
    runner, client, work, log = loop
    client.wait_until(
        lambda: client.active_checkpoint is not None, 120, "the policy's first checkpoint"
    )
    initial = client.active_checkpoint.checkpoint_id
    client.wait_for_episodes(initial, EPISODES, 300)
    client.wait_for_recorded(EPISODES, 120)
    assert runner.first_exit is None, log.text()[-3000:]

    reply = client.call(client.stop_session_client, Trigger.Request())
    assert reply.success, reply.message
    bag = Path(reply.message)
    assert (bag / "metadata.yaml").is_file()

    # Independent reader: message counts and fields.
    messages = read_bag_independently(bag)
    results = [m for schema, m in messages[names.EPISODE_RESULTS_TOPIC]]
    steps = [m for schema, m in messages[names.STEP_RECORDS_TOPIC]]
    assert {s for s, _ in messages[names.STEP_RECORDS_TOPIC]} == {"nsl_msgs/msg/StepRecord"}
    assert len(results) >= EPISODES
    by_episode = defaultdict(list)
    for s in steps:
        by_episode[s.episode_id].append(s)
    assert set(by_episode) == {r.episode_id for r in results}
    for r in results:
        assert r.complete and r.task == "base" and r.checkpoint_id == initial
        recorded = by_episode[r.episode_id]
        assert [s.step_index for s in recorded] == list(range(r.num_steps))
        for s in recorded:
            assert (s.image.width, s.image.height, s.image.encoding) == (64, 64, "rgb8")
            assert len(s.image.data) == 64 * 64 * 3
            assert s.checkpoint_id == initial
            assert all(abs(t) <= 0.03 + 1e-6 for t in s.action.translation)
        assert recorded[-1].action.terminate or r.num_steps == 10

    # Fine-tune through the ROS service; the policy must swap to the announced checkpoint.
    reply = client.call(
        client.fine_tune_client,
        FineTune.Request(
            target_datasets=[str(bag)], init_checkpoint=str(random_checkpoint), steps=5
        ),
    )
    assert reply.accepted, reply.message
    job = reply.job_id
    wait_for_job_end(client, job, 300, "the job")
    assert client.trainer_status.state == TrainerStatus.STATE_SUCCEEDED, (
        client.trainer_status.message
    )
    new_path = Path(client.trainer_status.checkpoint_path)
    assert new_path.is_file() and new_path.parent == work / "checkpoints"
    client.wait_until(
        lambda: client.active_checkpoint.checkpoint_id != initial, 120, "the hot-swap"
    )
    swapped = client.active_checkpoint
    assert swapped.path == str(new_path)
    after = client.wait_for_episodes(swapped.checkpoint_id, 1, 120)
    assert after[0].checkpoint_id == swapped.checkpoint_id
    assert runner.first_exit is None


def recorded_bag(client) -> str:
    """Close the collector's current session (after one more episode) and return its bag."""
    start = len(client.results)
    client.wait_until(lambda: len(client.results) > start, 120, "one more episode")
    reply = client.call(client.stop_session_client, Trigger.Request())
    assert reply.success, reply.message
    return reply.message


def test_trainer_refuses_bad_requests_and_keeps_serving(loop, tmp_path):
    runner, client, work, log = loop
    bag = recorded_bag(client)
    cases = [
        (
            FineTune.Request(target_datasets=["/nonexistent/bag_42"], steps=5),
            "/nonexistent/bag_42",
        ),
        (
            FineTune.Request(
                target_datasets=[bag], base_datasets=["/nonexistent/base_1"], steps=5
            ),
            "/nonexistent/base_1",
        ),
        (
            FineTune.Request(
                target_datasets=[bag], init_checkpoint="/nonexistent/model_7.safetensors", steps=5
            ),
            "/nonexistent/model_7.safetensors",
        ),
        (FineTune.Request(target_datasets=[str(tmp_path)], steps=5), str(tmp_path)),
        (FineTune.Request(steps=5), "target_datasets: none given"),
    ]
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    cases.append(
        (
            FineTune.Request(target_datasets=[bag], init_checkpoint=str(garbage), steps=5),
            str(garbage),
        )
    )
    for request, expected in cases:
        reply = client.call(client.fine_tune_client, request)
        assert not reply.accepted, f"accepted a bad request: {request}"
        assert expected in reply.message, reply.message
    # The node kept serving: a good request right after is accepted and runs to completion.
    from nsl_msgs.msg import TrainerStatus

    reply = client.call(client.fine_tune_client, FineTune.Request(target_datasets=[bag], steps=2))
    assert reply.accepted, reply.message
    # A second request while the job runs is refused with a clear reason.
    busy = client.call(client.fine_tune_client, FineTune.Request(target_datasets=[bag], steps=2))
    assert not busy.accepted and "busy" in busy.message and reply.job_id in busy.message
    client.wait_until(
        lambda: (
            client.trainer_status.job_id == reply.job_id
            and client.trainer_status.state == TrainerStatus.STATE_SUCCEEDED
        ),
        300,
        "the good job",
    )
    assert runner.first_exit is None
