"""Safe rollout across processes on the sim: a worse checkpoint is tried, rejected and recorded.

sim + policy (trial mode) + collector, started by the runner. The incumbent is the shipped base
checkpoint; a random-init checkpoint of the same architecture is announced on
``trainer/checkpoints``. The trial (capped at a few episodes, so the test stays short) rejects
it; the base keeps running; the decision is on the latched ``policy/rollout_decision`` and in
the bag (``EpisodeResult.rollout``); and every recorded episode names its checkpoint, with no
episode lost or unattributed. The other way round (random-init incumbent, base announced) the
trial promotes the base by its sequential test, before the cap.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from system_graph import start_graph, stop_graph
from test_loop_across_processes import read_bag_independently

from nsl_bringup.graph import resolve
from nsl_common import names

pytestmark = pytest.mark.system

TRIAL_CAP = 20
PROMOTE_CAP = 160
"""Room for the base (about 0.55 here) against random weights (about 0.15): the test needs
about 50 episodes on average; at 160 a miss is more than 3 standard deviations away."""


def base_checkpoint(folder: Path) -> Path:
    """Return a copy of the shipped base in ``folder``: decision records land beside it."""
    from nsl_policy.shipped import base_checkpoint as shipped

    base = shipped()
    if not base.is_file():
        pytest.skip(f"the shipped base checkpoint {base} is absent in this checkout")
    copy = folder / "base.safetensors"
    shutil.copyfile(base, copy)
    return copy


def random_like(base: Path, path: Path) -> str:
    """Write a random-init checkpoint in ``base``'s architecture; return its id."""
    from nsl_policy.checkpoint import init_checkpoint, load_checkpoint

    return init_checkpoint(str(path), load_checkpoint(str(base)).config, seed=0)


def start_trial_graph(namespace: str, incumbent: Path, work: Path, cap: int):
    """Start sim + policy (trial mode, ``cap``) + collector; return runner, client, log."""
    _, nodes = resolve(
        "collect",
        {
            "namespace": namespace,
            "checkpoint": str(incumbent),
            "epsilon": "0.0",
            "rollout_mode": "trial",
            "dataset_root": str(work / "datasets"),
        },
    )
    trial = {"rollout_max_episodes": cap, "rollout_on_cap": "reject"}
    nodes = [
        dataclasses.replace(n, parameters={**n.parameters, **trial})
        if n.name == names.POLICY_NODE
        else n
        for n in nodes
    ]
    return start_graph(nodes, namespace, "rollout_test_client")


def watch_decisions(client) -> tuple[list, object]:
    """Subscribe to the latched decisions; return (their list, an announcement publisher)."""
    from nsl_common.qos import ANNOUNCE_QOS, LATCHED_QOS
    from nsl_msgs.msg import CheckpointInfo, RolloutDecision

    decisions: list = []
    lock = threading.Lock()

    def on_decision(msg) -> None:
        with lock:
            decisions.append(msg)

    client.create_subscription(
        RolloutDecision, names.ROLLOUT_DECISION_TOPIC, on_decision, LATCHED_QOS
    )
    announce = client.create_publisher(
        CheckpointInfo, names.CHECKPOINT_ANNOUNCE_TOPIC, ANNOUNCE_QOS
    )
    return decisions, announce


@pytest.fixture
def graphs(rclpy_context):
    started = []

    def start(*args, **kwargs):
        runner, client, log = start_trial_graph(*args, **kwargs)
        started.append((runner, client))
        return runner, client, log

    yield start
    for runner, client in started:
        stop_graph(runner, client)


def test_a_worse_checkpoint_is_tried_rejected_and_recorded(graphs, tmp_path):
    from std_srvs.srv import Trigger

    from nsl_msgs.msg import CheckpointInfo

    base = base_checkpoint(tmp_path)
    runner, client, log = graphs("rollout_reject", base, tmp_path, TRIAL_CAP)
    decisions, announce = watch_decisions(client)
    client.wait_until(lambda: client.active_checkpoint is not None, 120, "the base in force")
    base_id = client.active_checkpoint.checkpoint_id
    client.wait_for_episodes(base_id, 2, 180)

    # A deliberately worse candidate: random weights in the base's architecture.
    candidate_path = tmp_path / "random_init.safetensors"
    candidate_id = random_like(base, candidate_path)
    announce.publish(CheckpointInfo(checkpoint_id=candidate_id, path=str(candidate_path)))

    client.wait_until(lambda: bool(decisions), 600, "the trial's decision")
    decision = decisions[0]
    assert (decision.decision, decision.mode) == ("reject", "trial"), decision.reason
    assert (decision.candidate_id, decision.incumbent_id) == (candidate_id, base_id)
    trial_episodes = decision.candidate_episodes + decision.incumbent_episodes
    assert 2 <= trial_episodes <= TRIAL_CAP
    assert json.loads(decision.evidence)["evidence"]["cap"] == TRIAL_CAP
    assert Path(f"{candidate_path}.rollout.json").is_file()

    # The incumbent keeps running, in force, after the rejection.
    with client._cond:
        seen = len(client.results)
    client.wait_until(
        lambda: sum(r.checkpoint_id == base_id and r.complete for r in client.results[seen:]) >= 2,
        180,
        "base episodes after the rejection",
    )
    assert client.active_checkpoint.checkpoint_id == base_id
    assert runner.first_exit is None, log.text()[-3000:]

    # The bag: every episode names its checkpoint, none lost, the decision recorded.
    reply = client.call(client.stop_session_client, Trigger.Request())
    assert reply.success, reply.message
    messages = read_bag_independently(Path(reply.message))
    results = [m for _, m in messages[names.EPISODE_RESULTS_TOPIC]]
    steps = [m for _, m in messages[names.STEP_RECORDS_TOPIC]]
    by_episode = defaultdict(list)
    for s in steps:
        by_episode[s.episode_id].append(s)
    assert set(by_episode) == {r.episode_id for r in results}, "steps without a result"
    for r in results:
        assert r.checkpoint_id in (base_id, candidate_id), r.checkpoint_id
        assert {s.checkpoint_id for s in by_episode[r.episode_id]} == {r.checkpoint_id}
        assert [s.step_index for s in by_episode[r.episode_id]] == list(range(r.num_steps))
    # The test's client may join after the first episode (results are volatile), so the
    # published list can start later than the bag; every episode it saw up to the bag's last
    # one must be in the bag.
    published = [r.episode_id for r in client.results]
    bagged = {r.episode_id for r in results}
    seen_in_bag = [published.index(e) for e in bagged if e in published]
    assert seen_in_bag, "the bag holds none of the episodes the policy published"
    last = max(seen_in_bag)
    assert set(published[: last + 1]) <= bagged, "an episode the policy published is not bagged"

    tags = [(r, json.loads(r.rollout)) for r in results]
    trial = [(r, t) for r, t in tags if t.get("trial_id") == decision.trial_id]
    assert {(r.checkpoint_id, t["role"]) for r, t in trial} == {
        (candidate_id, "candidate"),
        (base_id, "incumbent"),
    }
    candidate_results = [r for r, t in trial if t["role"] == "candidate" and r.complete]
    assert len(candidate_results) == decision.candidate_episodes
    assert all(r.checkpoint_id == base_id for r, t in tags if "trial_id" not in t)
    bagged_decisions = [d for _, t in tags for d in t.get("decisions", [])]
    assert [(d["decision"], d["candidate_id"]) for d in bagged_decisions] == [
        ("reject", candidate_id)
    ]


def test_a_better_checkpoint_is_promoted_by_the_trial(graphs, tmp_path):
    from nsl_msgs.msg import CheckpointInfo

    base = base_checkpoint(tmp_path)
    incumbent = tmp_path / "random_init.safetensors"
    incumbent_id = random_like(base, incumbent)
    runner, client, log = graphs("rollout_promote", incumbent, tmp_path, PROMOTE_CAP)
    decisions, announce = watch_decisions(client)
    client.wait_until(lambda: client.active_checkpoint is not None, 120, "the incumbent")
    assert client.active_checkpoint.checkpoint_id == incumbent_id
    client.wait_for_episodes(incumbent_id, 2, 180)
    announce.publish(CheckpointInfo(path=str(base)))
    client.wait_until(lambda: bool(decisions), 600, "the trial's decision")
    decision = decisions[0]
    assert (decision.decision, decision.incumbent_id) == ("promote", incumbent_id), decision.reason
    assert "cap" not in decision.reason, "promoted by the sequential test, not at the cap"
    client.wait_until(
        lambda: client.active_checkpoint.checkpoint_id == decision.candidate_id,
        60,
        "the promoted base in force",
    )
    client.wait_for_episodes(decision.candidate_id, 2, 180)
    assert Path(f"{base}.rollout.json").is_file()
    assert runner.first_exit is None, log.text()[-3000:]
