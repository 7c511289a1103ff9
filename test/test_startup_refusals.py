"""A wrong parameter value is refused at start-up.

The node exits with code 2 and a message naming the parameter and the value, before it touches
the arm or any data.
"""

from __future__ import annotations

import pytest
from node_output import GraphLog
from nsl_bringup.graph import NodeSpec
from nsl_bringup.runner import GraphRunner

pytestmark = pytest.mark.system

CASES = [
    (
        "sim",
        "nsl_sim",
        "sim_node",
        "sim.yaml",
        {"task": "nosuchtask"},
        "unknown task 'nosuchtask'",
    ),
    ("sim", "nsl_sim", "sim_node", "sim.yaml", {"camera_rate": -5.0}, "camera_rate"),
    (
        "collector",
        "nsl_collector",
        "collector_node",
        "collector.yaml",
        {"dataset_root": "/proc/no/such/dir"},
        "dataset_root '/proc/no/such/dir'",
    ),
    (
        "trainer",
        "nsl_trainer",
        "trainer_node",
        "trainer.yaml",
        {"checkpoint_dir": "/proc/no/ckpt"},
        "checkpoint_dir '/proc/no/ckpt'",
    ),
    (
        "trainer",
        "nsl_trainer",
        "trainer_node",
        "trainer.yaml",
        {"policy_weights": "ema"},
        'policy_weights must be "online" or "polyak"',
    ),
    (
        "trainer",
        "nsl_trainer",
        "trainer_node",
        "trainer.yaml",
        {"mode": "pretrain"},
        "mode must be finetune or scratch",
    ),
    (
        "trainer",
        "nsl_trainer",
        "trainer_node",
        "trainer.yaml",
        {"default_checkpoint": "/no/such/base.safetensors"},
        "default_checkpoint: '/no/such/base.safetensors' cannot be used",
    ),
    ("policy", "nsl_policy", "policy_node", "policy.yaml", {"control_rate": -1.0}, "control_rate"),
    ("policy", "nsl_policy", "policy_node", "policy.yaml", {"epsilon": 2.0}, "epsilon"),
]


@pytest.mark.parametrize(
    "name,package,executable,params_file,params,expected",
    CASES,
    ids=[f"{c[0]}-{next(iter(c[4]))}" for c in CASES],
)
def test_bad_parameter_is_refused_at_start(
    ros_isolation, tmp_path, name, package, executable, params_file, params, expected
):
    log = GraphLog()
    runner = GraphRunner(
        [NodeSpec(name, package, executable, params_file, params)],
        namespace="refusals",
        env=ros_isolation,
        output=log,
        cwd=tmp_path,
    )
    runner.start()
    died = runner.wait(timeout=60)
    runner.stop()
    assert died is not None, f"{name} kept running with {params}"
    assert died.returncode == 2, log.text()[-2000:]
    assert expected in log.text()
    assert "Traceback" not in log.text(), log.text()[-2000:]
