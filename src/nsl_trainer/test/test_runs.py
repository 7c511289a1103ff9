"""Training runs: learning on a visual task, 50/50 mixing, resume, modes, CLI, DDP (torchrun)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
import dataclasses

import numpy as np
import pytest
import torch

from nsl_policy.cem import CEMConfig, cem_maximize
from nsl_policy.checkpoint import init_checkpoint, load_checkpoint, weights_id
from nsl_policy.model import QNetwork, QNetworkConfig
from nsl_trainer.config import QTOptConfig
from nsl_trainer.loop import Cancelled
from nsl_trainer.runs import continual, default_run_dir, train_transitions
from nsl_trainer.state import load_state, save_state
from nsl_trainer.trainer import QTOptTrainer

from trainer_helpers import (
    episodes_task,
    fit,
    marker_images,
    marker_success,
    marker_task,
    write_bag,
)
from nsl_trainer.jobs import FineTuneJob, run_job
from nsl_trainer.recipe import FineTuneRecipe

TINY = QNetworkConfig(
    image_size=32, width=8, embed_width=16, fc_width=16, trunk_depth=0, head_depth=1
)
FAST = QTOptConfig(
    batch_size=16, target_cem=CEMConfig(population=8, elites=2, iterations=2), seed=0
)
SRC = Path(__file__).resolve().parents[2]


def test_default_run_dir_keeps_dots_in_the_name(tmp_path):
    # Two runs whose names differ after a dot must not share (and resume from) one run directory.
    a, b = (
        default_run_dir(tmp_path / "gf0.3.safetensors"),
        default_run_dir(tmp_path / "gf0.safetensors"),
    )
    assert a == str(tmp_path / "gf0.3.run") and b == str(tmp_path / "gf0.run")
    assert default_run_dir(tmp_path / "base") == str(tmp_path / "base.run")


TINY_KEYPOINTS = QNetworkConfig(
    image_size=32, width=8, fc_width=16, trunk_depth=0, feature_size=8, head="keypoints"
)


@pytest.mark.parametrize("head", ["conv", "keypoints"])
def test_offline_qtopt_learns_marker_task_from_random_data(head):
    """Offline QT-Opt's greedy policy finds the marker from random-policy data.

    Random-policy data succeeds ~18% of the time; the greedy (CEM) policy of the learned Q must
    point at the marker far more often on unseen images, with either head.
    """
    radius = 0.5
    data, _ = marker_task(2048, radius=radius, seed=0)
    data_rate = float(data.reward.mean())
    config = QNetworkConfig(
        image_size=32, width=32, embed_width=32, fc_width=32, trunk_depth=1, head_depth=1
    )
    if head == "keypoints":
        config = QNetworkConfig(
            image_size=32, width=32, fc_width=64, trunk_depth=1, feature_size=16, head=head
        )
    torch.manual_seed(0)
    model = QNetwork(config)
    # No random shift: it would move the marker relative to the recorded action.
    trainer = QTOptTrainer(
        model, QTOptConfig(batch_size=64, learning_rate=3e-3, augment=False, seed=0), "cpu"
    )
    images, centre = marker_images(256, seed=99)
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    state = torch.zeros(256, 3)

    def greedy_success() -> float:
        with torch.no_grad():
            feats = model.encode(x)
            actions, _ = cem_maximize(
                lambda a: model.score(feats, state, a),
                256,
                6,
                CEMConfig(),
                generator=torch.Generator().manual_seed(0),
            )
        return float(marker_success(actions.numpy(), centre, radius).mean())

    # Budget: at most 1200 steps (~30 s on one core); the Q-function typically finds the
    # marker/action correspondence after 300-900 steps, then greedy success jumps to ~1.
    history = []
    for _ in range(12):
        fit(trainer, data, None, steps=100)
        history.append(greedy_success())
        if history[-1] > 0.8:
            break
    greedy_rate = history[-1]
    print(f"data success {data_rate:.3f}, greedy success after each 100 steps {history}")
    assert 0.1 < data_rate < 0.25
    assert greedy_rate > 0.6 and greedy_rate > 3 * data_rate


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_mixing_by_counting_sampled_episodes(fraction):
    """Batches draw target rows with the set probability, whatever the sets' sizes.

    Base has 10x the episodes of target; batches still draw target with the set probability, and
    every episode of each set gets sampled.
    """
    base, target = episodes_task(200, steps=3, seed=1), episodes_task(20, steps=3, seed=2)
    trainer = QTOptTrainer(
        QNetwork(TINY),
        QTOptConfig(batch_size=64, augment=False, target_action="random", target_samples=4),
        "cpu",
    )
    n_base = len(base)
    counts = {"base": [], "target": []}

    def record(step, m):
        idx, from_target = trainer.last_batch
        assert bool(((idx >= n_base) == from_target).all())
        counts["base"] += base.episode[idx[~from_target].numpy()].tolist()
        counts["target"] += target.episode[(idx[from_target] - n_base).numpy()].tolist()

    summary = fit(trainer, base, target, steps=40, target_fraction=fraction, progress=record)
    nb, nt = len(counts["base"]), len(counts["target"])
    assert nb + nt == 40 * 64
    assert abs(nt / (nb + nt) - fraction) < 0.04  # binomial sd ~0.01
    assert summary["target_fraction"] == pytest.approx(nt / (nb + nt))
    assert len(set(counts["target"])) == 20  # every target episode was drawn
    per_target_episode = np.bincount(counts["target"], minlength=20)
    assert per_target_episode.min() > 0.4 * per_target_episode.mean()  # uniform within the set
    assert len(set(counts["base"])) > 150


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def _labelled(t, seed):
    """``t`` with random location labels (the auxiliary location loss trains on them)."""
    return t.with_location(np.random.default_rng(seed).uniform(-0.1, 0.1, (len(t), 2)))


@pytest.mark.parametrize(
    "net,location",
    [(TINY, 0.0), (TINY_KEYPOINTS, 0.0), (TINY, 1.0)],
    ids=["conv", "keypoints", "conv-location-loss"],
)
def test_interrupted_and_resumed_matches_uninterrupted(tmp_path, net, location):
    config = QTOptConfig.from_dict({**FAST.to_dict(), "location_weight": location})
    base, target = episodes_task(30, seed=3), episodes_task(10, seed=4)
    if location:  # the location head and its Adam moments are part of the state
        base, target = _labelled(base, 5), _labelled(target, 6)
    init = tmp_path / "init.safetensors"
    init_checkpoint(init, net, seed=1)
    kw = dict(
        init_checkpoint=str(init),
        config=config,
        device="cpu",
        checkpoint_every=4,
        tensorboard=True,
    )
    full = train_transitions(
        "finetune", base, target, 12, output_path=str(tmp_path / "full.safetensors"), **kw
    )

    stop_at = {"n": 0}

    def stop():  # interrupt after 6 steps (between two periodic checkpoints)
        stop_at["n"] += 1
        return stop_at["n"] > 6

    out = tmp_path / "resumed.safetensors"
    with pytest.raises(Cancelled) as info:
        train_transitions(
            "finetune", base, target, 12, output_path=str(out), should_stop=stop, **kw
        )
    assert info.value.step == 6 and not out.exists()
    run_dir = Path(info.value.state_path).parent
    assert (run_dir / "checkpoints" / "step_0000004.safetensors").is_file()
    assert (
        load_checkpoint(run_dir / "checkpoints" / "step_0000004.safetensors").metadata["steps"]
        == 4
    )
    resumed = train_transitions("finetune", base, target, 12, output_path=str(out), **kw)
    assert resumed.resumed_from == 6 and full.resumed_from == 0
    a, b = _weights(tmp_path / "full.safetensors"), _weights(out)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert (
        resumed.metrics["target_samples"] == full.metrics["target_samples"]
    )  # same batches drawn
    # Targets and optimizer state resumed too: both runs' final states agree.
    ta = QTOptTrainer(QNetwork(net), config, "cpu")
    tb = QTOptTrainer(QNetwork(net), config, "cpu")
    load_state(ta, Path(full.run_dir) / "state.safetensors")
    load_state(tb, run_dir / "state.safetensors")
    assert ("location" in ta.aux_losses) == bool(location)
    if location:
        assert "location_loss" in full.metrics and "location_loss" in resumed.metrics
        assert set(load_checkpoint(out).model.state_dict()) == set(
            QNetwork(net).state_dict()
        )  # no head in it
    for na, nb in ((ta.target1, tb.target1), (ta.target2, tb.target2)) + (
        ((ta.aux_losses["location"].module, tb.aux_losses["location"].module),) if location else ()
    ):
        for pa, pb in zip(na.parameters(), nb.parameters()):
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    sa, sb = ta.optimizer.state_dict()["state"], tb.optimizer.state_dict()["state"]
    for i in sa:
        torch.testing.assert_close(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=1e-4, atol=1e-9)
        assert float(sa[i]["step"]) == float(sb[i]["step"]) == 12
    assert any((run_dir / "tensorboard").iterdir())
    # The same run directory refuses a different run.
    with pytest.raises(ValueError, match="different run"):
        train_transitions(
            "finetune", base, target, 12, output_path=str(out), **{**kw, "learning_rate": 1e-2}
        )
    other_recipe = QTOptConfig.from_dict({**config.to_dict(), "mc_mix": 0.5})
    with pytest.raises(ValueError, match="other QT-Opt settings"):  # so is another recipe
        train_transitions(
            "finetune", base, target, 12, output_path=str(out), **{**kw, "config": other_recipe}
        )


def test_state_file_is_not_pickle(tmp_path):
    trainer = QTOptTrainer(QNetwork(TINY), FAST, "cpu")
    fit(trainer, episodes_task(4), None, steps=2)
    path = tmp_path / "s.safetensors"
    save_state(trainer, path, {"note": 1})
    blob = path.read_bytes()
    assert (
        b"\x80\x04" not in blob[:16] and blob[8:9] == b"{"
    )  # safetensors: u64 length + JSON header
    other = QTOptTrainer(QNetwork(TINY), FAST, "cpu")
    assert load_state(other, path) == {"note": 1} and other.step_count == 2
    with pytest.raises(ValueError, match="other QT-Opt settings"):
        load_state(QTOptTrainer(QNetwork(TINY), QTOptConfig(batch_size=8), "cpu"), path)


def test_modes_pretrain_scratch_continual(tmp_path):
    base, t1, t2 = episodes_task(12, seed=5), episodes_task(6, seed=6), episodes_task(6, seed=7)
    kw = dict(config=FAST, device="cpu", tensorboard=False, model_config=TINY)
    pre = train_transitions(
        "pretrain", base, None, 3, output_path=str(tmp_path / "pre.safetensors"), **kw
    )
    meta = load_checkpoint(pre.checkpoint_path).metadata
    assert (
        meta["kind"] == "pretrain"
        and meta["parent"] is None
        and meta["learning_rate"] == FAST.learning_rate
    )
    sc = train_transitions(
        "scratch", base, t1, 3, output_path=str(tmp_path / "sc.safetensors"), **kw
    )
    meta = load_checkpoint(sc.checkpoint_path).metadata
    assert meta["kind"] == "scratch" and meta["learning_rate"] == pytest.approx(
        0.25 * FAST.learning_rate
    )
    with pytest.raises(ValueError, match="init checkpoint"):
        train_transitions(
            "finetune", base, t1, 3, output_path=str(tmp_path / "x.safetensors"), **kw
        )
    sets = {"b": base, "t1": t1, "t2": t2}
    load = lambda paths: None if not paths else sets[paths[0]]  # noqa: E731
    kw.pop("model_config")
    chain = continual(
        pre.checkpoint_path,
        ["b"],
        [("one", ["t1"]), ("two", ["t2"])],
        3,
        output_dir=str(tmp_path / "cl"),
        load=load,
        **kw,
    )
    m1, m2 = (load_checkpoint(r.checkpoint_path).metadata for r in chain)
    assert m1["parent"] == pre.checkpoint_id and m2["parent"] == chain[0].checkpoint_id
    assert m1["kind"] == m2["kind"] == "finetune" and m2["continual"]["chain"] == [
        pre.checkpoint_id,
        chain[0].checkpoint_id,
    ]
    assert Path(chain[1].checkpoint_path).name == "02-two.safetensors"
    again = continual(
        pre.checkpoint_path,
        ["b"],
        [("one", ["t1"]), ("two", ["t2"])],
        3,
        output_dir=str(tmp_path / "cl"),
        load=load,
        **kw,
    )
    assert [r.checkpoint_id for r in again] == [
        r.checkpoint_id for r in chain
    ]  # already done: not retrained


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    d = tmp_path_factory.mktemp("bags")
    return write_bag(d / "base", 6, seed=1), write_bag(d / "target", 4, seed=2, task="target")


def _cli(*args, env=None, module=("-m", "nsl_trainer.cli")):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, *module, *args], capture_output=True, text=True, timeout=240, env=e
    )


def test_cli_finetune_and_clear_errors(tmp_path, bags):
    base, target = bags
    init = tmp_path / "init.safetensors"
    init_checkpoint(init, QNetworkConfig(image_size=32, width=8), seed=0)
    out = tmp_path / "ft.safetensors"
    r = _cli(
        "finetune",
        "--init",
        str(init),
        "--base",
        str(base),
        "--target",
        str(target),
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--output",
        str(out),
        "--threads",
        "1",
        "--checkpoint-every",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and "4/4" in r.stderr  # tqdm progress on the console
    meta = load_checkpoint(out).metadata
    assert meta["kind"] == "finetune" and meta["datasets"] == {
        "base": [str(base)],
        "target": [str(target)],
    }
    r = _cli(
        "finetune",
        "--init",
        str(tmp_path / "missing.safetensors"),
        "--target",
        str(target),
        "--steps",
        "2",
        "--output",
        str(tmp_path / "y.safetensors"),
    )
    assert (
        r.returncode == 1
        and "missing.safetensors does not exist" in r.stderr
        and "Traceback" not in r.stderr
    )
    r = _cli(
        "scratch",
        "--target",
        str(tmp_path / "nope"),
        "--steps",
        "2",
        "--output",
        str(tmp_path / "z.safetensors"),
    )
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr
    kp = tmp_path / "kp.safetensors"
    r = _cli(
        "scratch",
        "--target",
        str(target),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--head",
        "keypoints",
        "--policy-weights",
        "polyak",
        "--output",
        str(kp),
        "--threads",
        "1",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert (
        load_checkpoint(kp).config.head == "keypoints"
        and load_checkpoint(kp).config.feature_size == 16
    )
    assert load_checkpoint(kp).metadata["qtopt_config"]["policy_weights"] == "polyak"


def test_cli_finetune_skips_a_damaged_bag_and_strict_refuses_it(tmp_path):
    data = tmp_path / "data"
    write_bag(data / "intact", 2, seed=3, task="target")
    damaged = write_bag(data / "damaged", 2, seed=4, task="target")
    (damaged / "damaged.mcap").write_bytes(b"not an mcap file at all")
    init = tmp_path / "init.safetensors"
    init_checkpoint(init, QNetworkConfig(image_size=32, width=8), seed=0)
    env = {"NSL_DATASET_CACHE": str(tmp_path / "cache")}
    args = ["finetune", "--init", str(init), "--target", str(data), "--steps", "2"]
    args += ["--batch-size", "4", "--threads", "1", "--quiet", "--no-tensorboard"]
    out = tmp_path / "ft.safetensors"
    r = _cli(*args, "--output", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert f"skipped the damaged bag {damaged}" in r.stderr, r.stderr
    assert load_checkpoint(out).metadata["num_transitions"]["target"] == 2 * 3
    strict = tmp_path / "strict.safetensors"
    r = _cli(*args, "--output", str(strict), "--strict", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "nsl train finetune: error:" in r.stderr and str(damaged / "damaged.mcap") in r.stderr
    assert not strict.exists()


def test_ddp_two_processes_gloo_identical_weights(tmp_path, bags):
    base, target = bags
    init = tmp_path / "init.safetensors"
    init_checkpoint(init, QNetworkConfig(image_size=32, width=8), seed=0)
    out = tmp_path / "ddp.safetensors"
    r = _cli(
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "nsl_trainer.cli",
        "finetune",
        "--init",
        str(init),
        "--base",
        str(base),
        "--target",
        str(target),
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--location-weight",  # the location loss trains in one process only
        "0",
        "--output",
        str(out),
        "--threads",
        "1",
        "--quiet",
        "--device",
        "cpu",
        module=("-m", "torch.distributed.run"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    ids = dict(re.findall(r"rank (\d)/2: checkpoint ([0-9a-f]{12})", r.stdout))
    assert set(ids) == {"0", "1"}, r.stdout
    assert (
        ids["0"] == ids["1"] == load_checkpoint(out).checkpoint_id
    )  # bitwise-identical weights on both ranks
    assert load_checkpoint(out).metadata["world_size"] == 2
    assert load_checkpoint(out).checkpoint_id != load_checkpoint(init).checkpoint_id


def test_policy_weights_polyak_exports_the_averaged_network(tmp_path):
    """``policy_weights="polyak"`` writes target network 1 (the Polyak average).

    The default writes the online network; both runs train identically, only the exported weights
    differ.
    """
    base = episodes_task(20, seed=3)
    init = tmp_path / "init.safetensors"
    init_checkpoint(init, TINY, seed=1)
    runs = {}
    for weights in ("online", "polyak"):
        cfg = dataclasses.replace(FAST, policy_weights=weights)
        runs[weights] = train_transitions(
            "finetune",
            base,
            None,
            6,
            output_path=str(tmp_path / f"{weights}.safetensors"),
            init_checkpoint=str(init),
            config=cfg,
            device="cpu",
            tensorboard=False,
            run_dir=str(tmp_path / f"run_{weights}"),
        )
    states = {}
    for weights, res in runs.items():
        trainer = QTOptTrainer(
            QNetwork(TINY), dataclasses.replace(FAST, policy_weights=weights), "cpu"
        )
        load_state(trainer, Path(res.run_dir) / "state.safetensors")
        states[weights] = trainer
    assert weights_id(states["online"].model.state_dict()) == weights_id(
        states["polyak"].model.state_dict()
    )
    assert runs["online"].checkpoint_id == weights_id(states["online"].model.state_dict())
    assert runs["polyak"].checkpoint_id == weights_id(states["polyak"].target1.state_dict())
    assert runs["polyak"].checkpoint_id != runs["online"].checkpoint_id
    with pytest.raises(ValueError, match="policy_weights"):
        QTOptConfig(policy_weights="ema")


def test_a_worker_job_writes_the_network_it_is_asked_for(tmp_path, bags):
    """The job's recipe reaches the worker: a job's checkpoint records its QT-Opt settings."""
    base, target = bags
    init = tmp_path / "init.safetensors"
    init_checkpoint(init, QNetworkConfig(image_size=32, width=8), seed=0)

    class Pipe:
        def __init__(self):
            self.messages = []

        def send(self, message):
            self.messages.append(message)

        def close(self):
            pass

    for weights, mc_mix in (("online", 0.0), ("polyak", 0.5)):
        pipe = Pipe()
        out = tmp_path / f"{weights}.safetensors"
        run_job(
            FineTuneJob(
                job_id=weights,
                base_datasets=[str(base)],
                target_datasets=[str(target)],
                init_checkpoint=str(init),
                recipe=FineTuneRecipe(steps=2, policy_weights=weights, mc_mix=mc_mix),
                learning_rate=1e-4,
                output_path=str(out),
                batch_size=8,
                device="cpu",
                run_dir=str(tmp_path / weights),
                num_threads=1,
            ),
            pipe,
        )
        assert pipe.messages[-1]["event"] == "succeeded", pipe.messages[-1]
        meta = load_checkpoint(out).metadata
        assert meta["qtopt_config"]["policy_weights"] == weights
        assert meta["qtopt_config"]["mc_mix"] == mc_mix
        assert meta["qtopt_config"]["location_labels"] == "hindsight"
        assert meta["labelled_transitions"]["target"] > 0  # hindsight labels of its successes


def test_cli_grasp_values_then_finetune_from_them(tmp_path, bags):
    base, target = bags
    gv = tmp_path / "gv.safetensors"
    r = _cli(
        "grasp-values",
        "--data",
        str(base),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--width",
        "8",
        "--output",
        str(gv),
        "--threads",
        "1",
    )
    assert r.returncode == 0, r.stderr
    assert "6 grasps" in r.stderr and "3/3" in r.stderr and f"wrote {gv}" in r.stdout
    meta = load_checkpoint(gv).metadata
    assert (
        meta["kind"] == "grasp_values" and meta["steps"] == 3 and meta["datasets"] == [str(base)]
    )
    out = tmp_path / "ft.safetensors"
    r = _cli(
        "finetune",
        "--init",
        str(gv),
        "--base",
        str(base),
        "--target",
        str(target),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--output",
        str(out),
        "--threads",
        "1",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(out).metadata["parent"] == load_checkpoint(gv).checkpoint_id
    r = _cli(
        "grasp-values",
        "--data",
        str(tmp_path / "nope"),
        "--steps",
        "2",
        "--output",
        str(tmp_path / "x.safetensors"),
    )
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = _cli(
        "grasp-values",
        "--data",
        str(base),
        "--steps",
        "0",
        "--output",
        str(tmp_path / "x.safetensors"),
    )
    assert r.returncode == 1 and "steps" in r.stderr and "Traceback" not in r.stderr
