"""The experiment pipeline (nsl_bringup.experiment) on a tiny config: caching, resuming,
seeded data collection and evaluation with a confidence interval. ROS-free, < 60 s."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("pybullet")
pytest.importorskip("torch")

from nsl_bringup.experiment import ExperimentConfig, evaluate_checkpoint, run, wilson_interval  # noqa: E402
from nsl_bringup.experiment.stages import Context, collect_bootstrap  # noqa: E402

TINY = dict(image_size=32, max_steps=3, num_objects=1, chunk_episodes=2, bootstrap_episodes=4, pretrain_steps=3,
            rounds=1, round_episodes=2, round_steps=2, eval_episodes=3, validation_episodes=2, eval_tasks=("base",), model={"width": 8, "embed_width": 8, "fc_width": 8},
            qtopt={"batch_size": 8, "target_cem": {"population": 4, "elites": 2, "iterations": 1}},
            policy_cem={"population": 8, "elites": 2, "iterations": 1})


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    logs: list[str] = []
    results = run(ExperimentConfig(**TINY), out, None, logs.append)
    return out, results, logs


def test_run_writes_checkpoint_data_and_summary(first_run):
    out, results, _ = first_run
    assert (out / "checkpoints" / "base.safetensors").is_file()
    assert sorted(p.name for p in (out / "datasets" / "base" / "bootstrap").glob("chunk_???")) == ["chunk_000", "chunk_001"]
    assert (out / "datasets" / "base" / "round_1" / "chunk_000" / "metadata.yaml").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) == {"pretrain", "evaluate_base"}
    base = summary["stages"]["evaluate_base"]["results"]["base"]
    assert base["episodes"] == 3 and base["object_split"] == "test"
    lo, hi = base["ci95"]
    assert 0.0 <= lo <= base["success_rate"] <= hi <= 1.0


def test_second_run_skips_everything(first_run):
    out, results, _ = first_run
    stamps = sorted(out.rglob("*.json"))
    before = {p: p.read_text() for p in stamps if p.name not in ("summary.json", "pretrain.json", "evaluate_base.json")}
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.mcap")}
    logs: list[str] = []
    again = run(ExperimentConfig(**TINY), out, None, logs.append)
    assert not any("collecting" in m or "training" in m for m in logs), logs
    assert any("bootstrap: 2 bag(s) cached" in m for m in logs)
    assert any("evaluate_base/base: cached" in m for m in logs)
    assert {p: p.read_text() for p in before} == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mcap")} == mtimes
    assert again["stages"]["pretrain"]["checkpoint_id"] == results["stages"]["pretrain"]["checkpoint_id"]
    assert again["stages"]["evaluate_base"]["results"] == results["stages"]["evaluate_base"]["results"]


def test_resume_redoes_only_missing_work_and_config_changes_invalidate(first_run, tmp_path):
    out, results, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "datasets" / "base" / "bootstrap" / "chunk_001")  # as if killed mid-collection
    logs: list[str] = []
    run(ExperimentConfig(**TINY), copy, ["pretrain"], logs.append)
    assert any("collecting 2 episodes in 1 bag(s) (1 cached)" in m for m in logs), logs
    # Same seeds -> same data -> same checkpoint, so the training after it is a cache hit.
    assert any("pretrain_round_0: cached" in m for m in logs), logs
    logs.clear()
    run(ExperimentConfig(**{**TINY, "pretrain_steps": 4}), copy, ["pretrain"], logs.append)
    assert any("bootstrap: 2 bag(s) cached" in m for m in logs)
    assert any("pretrain_round_0: training 4 steps" in m for m in logs), logs


def test_collection_is_seeded(tmp_path):
    from nsl_collector.dataset import load_transitions

    cfg = ExperimentConfig(**{**TINY, "bootstrap_episodes": 3, "chunk_episodes": 3})
    sets = []
    for name in ("a", "b"):
        bags, outcomes, _ = collect_bootstrap(Context(cfg, tmp_path / name, lambda m: None))
        sets.append((load_transitions([str(b) for b in bags]), [o.success for o in outcomes]))
    (a, sa), (b, sb) = sets
    assert sa == sb
    for field in ("image", "state", "action", "reward", "done"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    other, _, _ = collect_bootstrap(Context(ExperimentConfig(**{**TINY, "bootstrap_episodes": 3, "chunk_episodes": 3,
                                                                   "seed": 1}), tmp_path / "c", lambda m: None))
    c = load_transitions([str(x) for x in other])
    assert len(c) != len(a) or not np.array_equal(c.image, a.image)


def test_evaluate_gives_wilson_interval(first_run):
    out, _, _ = first_run
    cfg = ExperimentConfig(**TINY)
    res = evaluate_checkpoint(out / "checkpoints" / "base.safetensors", "base", 2, cfg, "validation")
    assert res["episodes"] == 2 and res["seed_set"] == "validation"
    assert res["ci95"] == list(wilson_interval(res["successes"], 2))
    lo, hi = wilson_interval(160, 200)
    assert lo == pytest.approx(0.7391, abs=1e-3) and hi == pytest.approx(0.8496, abs=1e-3)


def test_config_validation():
    with pytest.raises(ValueError, match="init_scheme"):
        ExperimentConfig(init_scheme="xavier")
    with pytest.raises(ValueError, match="rounds"):
        ExperimentConfig(rounds=-1)
    with pytest.raises(ValueError, match="unknown"):
        ExperimentConfig(model={"widht": 3})
    with pytest.raises(ValueError, match="eval_tasks"):
        ExperimentConfig(eval_tasks=("nope",))
    with pytest.raises(ValueError, match="unknown ExperimentConfig fields"):
        ExperimentConfig.from_dict({"bogus": 1})
    assert ExperimentConfig().with_overrides(["rounds=2", "model={width: 48}"]).model == {"width": 48}


def test_kaiming_init_checkpoint_feeds_the_image_through(tmp_path):
    import torch
    from nsl_bringup.experiment.stages import initial_checkpoint
    from nsl_policy.checkpoint import load_checkpoint

    cfg = ExperimentConfig(**{**TINY, "init_scheme": "kaiming"})
    path = initial_checkpoint(Context(cfg, tmp_path, lambda m: None))
    model = load_checkpoint(path).model.eval()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float(model.encode(images).std(dim=0).mean()) > 1e-3
