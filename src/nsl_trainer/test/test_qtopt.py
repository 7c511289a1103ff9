import math
import sys
import types

import numpy as np
import pytest
import torch

from nsl_collector.transitions import Transitions
from nsl_policy.checkpoint import init_checkpoint, load_checkpoint
from nsl_policy.cem import CEMConfig
from nsl_policy.model import QNetwork, QNetworkConfig
from nsl_trainer.augment import augment_images
from nsl_trainer.config import QTOptConfig
from nsl_trainer.data import TrainingData
from nsl_trainer.losses import AuxLoss
from nsl_trainer.runs import train, train_transitions
from nsl_trainer.trainer import QTOptTrainer, td_target

from trainer_helpers import fit

CFG = QNetworkConfig(
    image_size=32, width=8, embed_width=16, fc_width=16, trunk_depth=0, head_depth=1
)
FAST = QTOptConfig(
    batch_size=32, target_cem=CEMConfig(population=8, elites=2, iterations=1), seed=0
)


def one_step_task(n, size=32, seed=0, shade=None):
    """One-step episodes; reward 1 iff action[0] > 0."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    if shade is not None:
        image[:] = shade
    action = rng.uniform(-1, 1, (n, 6)).astype(np.float32)
    return Transitions(
        image=image,
        state=rng.random((n, 3)).astype(np.float32),
        action=action,
        reward=(action[:, 0] > 0).astype(np.float32),
        done=np.ones(n, bool),
        next_index=np.arange(n),
        episode=np.arange(n),
    )


def multi_step(n_episodes, steps=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    n = n_episodes * steps
    done = (np.arange(n) % steps) == steps - 1
    next_index = np.where(done, np.arange(n), np.arange(n) + 1)
    return Transitions(
        image=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
        state=rng.random((n, 3)).astype(np.float32),
        action=rng.uniform(-1, 1, (n, 6)).astype(np.float32),
        reward=(done & (rng.random(n) < 0.5)).astype(np.float32),
        done=done,
        next_index=next_index,
        episode=np.arange(n) // steps,
    )


def test_config_validation():
    for bad in (
        {"batch_size": 0},
        {"learning_rate": 0},
        {"discount": 1.0},
        {"polyak": 1.0},
        {"target_action": "argmax"},
        {"target2_lag": 0},
        {"grad_clip": -1},
        {"augment": 1},
        {"learning_rate": math.nan},
        {"conservative_weight": -0.1},
        {"conservative_weight": math.inf},
        {"conservative_samples": 0},
        {"grasp_fraction": -0.1},
        {"grasp_fraction": 1.5},
        {"grasp_fraction": math.nan},
        {"location_weight": -1.0},
        {"location_weight": math.nan},
    ):
        with pytest.raises(ValueError):
            QTOptConfig(**bad)
    c = QTOptConfig(target_action="random", target_cem=CEMConfig(population=10, elites=3))
    assert QTOptConfig.from_dict(c.to_dict()) == c


def test_td_target_uses_min_of_target_nets():
    reward = torch.tensor([0.0, 0.0, 1.0, 0.0])
    done = torch.tensor([False, False, True, False])
    l1 = torch.tensor([2.0, -1.0, 5.0, 0.0])
    l2 = torch.tensor([-1.0, 3.0, 5.0, 0.0])
    y = td_target(reward, done, l1, l2, discount=0.9)
    expected = torch.tensor(
        [
            0.9 * torch.sigmoid(torch.tensor(-1.0)),
            0.9 * torch.sigmoid(torch.tensor(-1.0)),
            1.0,
            0.9 * 0.5,
        ]
    )
    torch.testing.assert_close(y, expected)


def test_bellman_target_takes_min_over_both_networks():
    torch.manual_seed(0)
    trainer = QTOptTrainer(QNetwork(CFG), FAST, "cpu")
    with torch.no_grad():  # target 2 pessimistic everywhere, then target 1 pessimistic everywhere
        trainer.target2.fc[-1].bias.fill_(-4.0)
    imgs = torch.rand(6, 3, 32, 32)
    st = torch.rand(6, 3)
    reward = torch.zeros(6)
    done = torch.tensor([False] * 5 + [True])
    trainer._dev_gen.manual_seed(7)
    y = trainer.bellman_target(reward, done, imgs, st)
    trainer._dev_gen.manual_seed(7)
    a_star, l1 = trainer.target_action(imgs[:5], st[:5])
    with torch.no_grad():
        l2 = trainer.target2(imgs[:5], st[:5], a_star)
    assert (l2 < l1).all()
    torch.testing.assert_close(y[:5], 0.9 * torch.sigmoid(l2))
    assert y[5] == 0.0
    with torch.no_grad():
        trainer.target2.fc[-1].bias.fill_(4.0)
        trainer.target1.fc[-1].bias.fill_(-4.0)
    trainer._dev_gen.manual_seed(7)
    y = trainer.bellman_target(reward, done, imgs, st)
    trainer._dev_gen.manual_seed(7)
    a_star, l1 = trainer.target_action(imgs[:5], st[:5])
    torch.testing.assert_close(y[:5], 0.9 * torch.sigmoid(l1))


def test_target_action_is_argmax_of_target1():
    trainer = QTOptTrainer(
        QNetwork(CFG), QTOptConfig(target_action="random", target_samples=32), "cpu"
    )
    imgs, st = torch.rand(4, 3, 32, 32), torch.rand(4, 3)
    a, logit = trainer.target_action(imgs, st)
    with torch.no_grad():
        torch.testing.assert_close(trainer.target1(imgs, st, a), logit)
        others = trainer.target1.score(
            trainer.target1.encode(imgs), st, torch.rand(4, 32, 6) * 2 - 1
        )
    assert (others.max(dim=1).values <= logit + 0.5).all()  # loose: the best of 32 is near the top


def test_mixing_counts():
    trainer = QTOptTrainer(QNetwork(CFG), FAST, "cpu")
    n_base, n_target = 100, 10
    idx, from_t = trainer.sample_indices(n_base, n_target, 0.5, 20000)
    assert abs(float(from_t.float().mean()) - 0.5) < 0.02
    assert bool(((idx >= n_base) == from_t).all())  # target rows are exactly the target samples
    assert idx.min() >= 0 and idx.max() < n_base + n_target
    assert len(torch.unique(idx[from_t])) == n_target  # small target set is fully covered
    idx, from_t = trainer.sample_indices(n_base, n_target, 0.2, 20000)
    assert abs(float(from_t.float().mean()) - 0.2) < 0.02
    idx, from_t = trainer.sample_indices(n_base, 0, 0.5, 1000)
    assert not from_t.any() and idx.max() < n_base


def test_grasp_fraction_draws_grasps_from_the_same_part():
    base, target = multi_step(30, steps=4, seed=1), multi_step(10, steps=5, seed=2)
    data = TrainingData(base, target, 32, torch.device("cpu"))
    n_base = len(base.reward)
    assert data.final_rows[0].tolist() == list(range(3, n_base, 4))
    assert data.final_rows[1].tolist() == list(range(n_base + 4, n_base + 50, 5))
    final = set(data.final_rows[0].tolist()) | set(data.final_rows[1].tolist())

    def batch(fraction):
        trainer = QTOptTrainer(QNetwork(CFG), QTOptConfig(grasp_fraction=fraction, seed=0), "cpu")
        idx, from_t = trainer.sample_indices(data.n_base, data.n_target, 0.5, 20000)
        return trainer.with_grasps(idx, from_t, data), from_t

    idx, from_t = batch(0.0)  # off: the uniform rows, a quarter or a fifth of them grasps
    assert abs(np.mean([i in final for i in idx.tolist()]) - (0.5 / 4 + 0.5 / 5)) < 0.02
    idx, from_t = batch(1.0)  # only grasps, each from the part its row was drawn for
    assert all(i in final for i in idx.tolist()) and bool(((idx >= n_base) == from_t).all())
    idx, from_t = batch(0.5)  # half replaced: 0.5 + 0.5 x the natural share
    assert abs(np.mean([i in final for i in idx.tolist()]) - (0.5 + 0.5 * 0.225)) < 0.02
    assert abs(float(from_t.float().mean()) - 0.5) < 0.02 and bool(
        ((idx >= n_base) == from_t).all()
    )


def test_train_reports_fractions_and_decreases_loss():
    torch.manual_seed(0)
    base, target = multi_step(16, seed=1), one_step_task(24, seed=2)
    trainer = QTOptTrainer(
        QNetwork(CFG),
        QTOptConfig(
            batch_size=32,
            learning_rate=3e-3,
            augment=False,
            target_cem=CEMConfig(population=8, elites=2, iterations=1),
        ),
        "cpu",
    )
    seen = []
    metrics = fit(
        trainer,
        base,
        target,
        steps=60,
        target_fraction=0.5,
        progress=lambda s, m: seen.append((s, m)),
    )
    assert [s for s, _ in seen] == list(range(1, 61))
    assert metrics["base_samples"] + metrics["target_samples"] == 60 * 32
    assert (
        abs(metrics["target_fraction"] - 0.5) < 0.06 and abs(metrics["base_fraction"] - 0.5) < 0.06
    )
    for key in ("loss", "mean_q", "td_error", "initial_loss"):
        assert math.isfinite(metrics[key])
    assert metrics["loss"] < metrics["initial_loss"] - 0.05


def test_conservative_term_lowers_actions_the_data_never_tried():
    """Half the recorded grasps succeed, whatever the action, and all move in -x.

    Plain QT-Opt extrapolates that success rate to +x moves it never saw; the conservative term
    lowers them.
    """
    data = one_step_task(256, seed=5)
    data.action[:, 0] = -np.abs(data.action[:, 0])
    data.reward[:] = np.random.default_rng(7).random(256) < 0.5
    test = one_step_task(64, seed=6)
    imgs = torch.as_tensor(test.image).permute(0, 3, 1, 2).float() / 255
    st = torch.as_tensor(test.state)
    tried, untried = torch.zeros(64, 6), torch.zeros(64, 6)
    tried[:, 0], untried[:, 0] = -0.7, 0.9
    gaps = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        cfg = QTOptConfig(
            batch_size=32,
            learning_rate=3e-3,
            augment=False,
            conservative_weight=weight,
            conservative_samples=8,
            target_cem=CEMConfig(population=8, elites=2, iterations=1),
            seed=1,
        )
        trainer = QTOptTrainer(QNetwork(CFG), cfg, "cpu")
        metrics = fit(trainer, data, None, steps=60)
        assert math.isfinite(metrics["loss"])
        with torch.no_grad():
            gaps[weight] = float(
                (
                    torch.sigmoid(trainer.model(imgs, st, tried))
                    - torch.sigmoid(trainer.model(imgs, st, untried))
                ).mean()
            )
    assert gaps[0.0] < 0.15, gaps  # plain QT-Opt rates the untried moves about as high
    assert gaps[1.0] > gaps[0.0] + 0.2, gaps


def test_polyak_and_lagged_target():
    torch.manual_seed(0)
    cfg = QTOptConfig(
        batch_size=8,
        polyak=0.9,
        target2_lag=3,
        augment=False,
        target_cem=CEMConfig(population=4, elites=2, iterations=1),
    )
    trainer = QTOptTrainer(QNetwork(CFG), cfg, "cpu")
    data = one_step_task(16)
    before = [p.clone() for p in trainer.target1.parameters()]
    t2_before = [p.clone() for p in trainer.target2.parameters()]
    fit(trainer, data, None, steps=1)
    for old, new, online in zip(before, trainer.target1.parameters(), trainer.model.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)
    assert all(torch.equal(a, b) for a, b in zip(t2_before, trainer.target2.parameters()))
    fit(trainer, data, None, steps=2)  # step 3: target 2 <- target 1
    assert all(
        torch.equal(a, b)
        for a, b in zip(trainer.target1.parameters(), trainer.target2.parameters())
    )
    assert not all(torch.equal(a, b) for a, b in zip(t2_before, trainer.target2.parameters()))


def test_augmentation():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 255, (5, 32, 32, 3), dtype=torch.uint8)
    plain = augment_images(imgs, QTOptConfig(augment=False), g)
    assert plain.shape == (5, 3, 32, 32) and plain.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(plain, imgs.permute(0, 3, 1, 2).float() / 255)
    aug = augment_images(imgs, QTOptConfig(), g)
    assert aug.shape == plain.shape and aug.is_contiguous(memory_format=torch.channels_last)
    assert 0 <= float(aug.min()) and float(aug.max()) <= 1 and not torch.allclose(aug, plain)
    shift_only = augment_images(
        imgs, QTOptConfig(brightness=0, contrast=0, crop_pad=2), torch.Generator().manual_seed(1)
    )
    # A pure shift keeps pixel values: each output pixel exists in the source image.
    src = set(map(tuple, imgs[0].reshape(-1, 3).tolist()))
    out = (shift_only[0].permute(1, 2, 0) * 255).round().to(torch.uint8).reshape(-1, 3).tolist()
    assert all(tuple(p) in src for p in out)


def test_learns_one_step_task():
    torch.manual_seed(0)
    data = one_step_task(256, seed=3)
    trainer = QTOptTrainer(
        QNetwork(CFG), QTOptConfig(batch_size=64, learning_rate=3e-3, seed=1), "cpu"
    )
    metrics = fit(trainer, data, None, steps=80)
    assert metrics["loss"] < metrics["initial_loss"]
    test = one_step_task(64, seed=4)
    imgs = torch.as_tensor(test.image).permute(0, 3, 1, 2).float() / 255
    st = torch.as_tensor(test.state)
    pos, neg = torch.zeros(64, 6), torch.zeros(64, 6)
    pos[:, 0], neg[:, 0] = 0.6, -0.6
    with torch.no_grad():
        q_pos = torch.sigmoid(trainer.model(imgs, st, pos))
        q_neg = torch.sigmoid(trainer.model(imgs, st, neg))
    assert float(q_pos.mean()) > float(q_neg.mean()) + 0.3
    assert float((q_pos > q_neg).float().mean()) > 0.95


def test_train_transitions_scratch_then_finetune(tmp_path):
    base, target = (
        one_step_task(64, size=48, seed=5),
        one_step_task(32, size=48, seed=6),
    )  # resized to 32
    out1 = tmp_path / "scratch.safetensors"
    id1 = train_transitions(
        "scratch",
        base,
        None,
        5,
        output_path=str(out1),
        config=FAST,
        model_config=CFG,
        device="cpu",
        datasets={"base": ["b"]},
    ).checkpoint_id
    c1 = load_checkpoint(out1, CFG)
    assert c1.checkpoint_id == id1
    m = c1.metadata
    assert m["parent"] is None and m["kind"] == "scratch" and m["steps"] == 5
    assert m["learning_rate"] == pytest.approx(
        FAST.learning_rate * 0.25
    )  # scratch = the fine-tune recipe
    assert m["metrics"]["target_fraction"] == 0.0
    out2 = tmp_path / "ft.safetensors"
    id2 = train_transitions(
        "finetune",
        base,
        target,
        5,
        output_path=str(out2),
        init_checkpoint=str(out1),
        config=FAST,
        device="cpu",
    ).checkpoint_id
    c2 = load_checkpoint(out2, CFG)
    assert id2 != id1 and c2.metadata["parent"] == id1 and c2.metadata["kind"] == "finetune"
    assert c2.metadata["learning_rate"] == pytest.approx(FAST.learning_rate * 0.25)
    assert 0.2 < c2.metadata["metrics"]["target_fraction"] < 0.8


def test_train_loads_bags_through_collector(tmp_path, monkeypatch):
    calls = []
    sets = {"base.mcap": one_step_task(40, seed=7), "target.mcap": one_step_task(20, seed=8)}

    def load_transitions(paths, strict=False):
        calls.append((list(paths), strict))
        return Transitions.concatenate([sets[p] for p in paths])

    fake = types.ModuleType("nsl_collector.dataset")
    fake.load_transitions = load_transitions
    monkeypatch.setitem(sys.modules, "nsl_collector.dataset", fake)
    init = tmp_path / "init.safetensors"
    parent = init_checkpoint(init, CFG, seed=0)
    out = tmp_path / "out.safetensors"
    ckpt_id = train(
        "finetune",
        ["base.mcap"],
        ["target.mcap"],
        4,
        output_path=str(out),
        init_checkpoint=str(init),
        learning_rate=1e-4,
        config=FAST,
        device="cpu",
        seed=3,
    ).checkpoint_id
    assert calls == [(["base.mcap"], False), (["target.mcap"], False)]  # damaged data skipped
    meta = load_checkpoint(out, CFG).metadata
    assert meta["checkpoint_id"] == ckpt_id and meta["parent"] == parent
    assert meta["datasets"] == {"base": ["base.mcap"], "target": ["target.mcap"]}
    assert meta["learning_rate"] == 1e-4 and meta["seed"] == 3 and meta["steps"] == 4
    with pytest.raises(ValueError):
        train("scratch", [], [], 1, output_path=str(tmp_path / "x.safetensors"), device="cpu")


def two_step_task(n_episodes, seed=0, success_possible=True):
    """Two-step episodes whose first step's value comes only through the Bellman target.

    Step 0 (dark image): any action, reward 0, episode goes on. Step 1 (bright image): reward
    1 iff action[0] > 0 (never when success is impossible), then done. Q(s0, .) must learn
    discount x max_a Q(s1, a) through the Bellman target.
    """
    rng = np.random.default_rng(seed)
    n = 2 * n_episodes
    image = np.empty((n, 32, 32, 3), np.uint8)
    image[0::2] = rng.integers(0, 60, (n_episodes, 32, 32, 3))
    image[1::2] = rng.integers(190, 255, (n_episodes, 32, 32, 3))
    action = rng.uniform(-1, 1, (n, 6)).astype(np.float32)
    done = np.tile([False, True], n_episodes)
    reward = np.where(done & (action[:, 0] > 0) & success_possible, 1.0, 0.0).astype(np.float32)
    state = np.zeros((n, 3), np.float32)
    state[1::2, 2] = 0.5
    return Transitions(
        image=image,
        state=state,
        action=action,
        reward=reward,
        done=done,
        next_index=np.where(done, np.arange(n), np.arange(n) + 1),
        episode=np.arange(n) // 2,
    )


@pytest.mark.parametrize("possible", [True, False])
def test_bellman_backup_propagates_value(possible):
    torch.manual_seed(0)
    data = two_step_task(96, seed=9, success_possible=possible)
    cfg = QTOptConfig(
        batch_size=64,
        learning_rate=3e-3,
        polyak=0.9,
        target2_lag=10,
        augment=False,
        target_cem=CEMConfig(population=16, elites=4, iterations=2),
        seed=2,
    )
    trainer = QTOptTrainer(QNetwork(CFG), cfg, "cpu")
    fit(trainer, data, None, steps=150)
    first = np.arange(0, len(data), 2)[:32]
    imgs = torch.as_tensor(data.image[first]).permute(0, 3, 1, 2).float() / 255
    st = torch.as_tensor(data.state[first])
    with torch.no_grad():
        q0 = torch.sigmoid(trainer.model(imgs, st, torch.rand(32, 6) * 2 - 1)).mean()
    if possible:
        assert 0.6 < float(q0) < 0.98  # ~ discount * 1
    else:
        assert float(q0) < 0.15


def test_mc_lower_bound_raises_targets_to_the_recorded_return(monkeypatch):
    data = multi_step(6, steps=4, seed=3)
    d = TrainingData(data, None, 32, torch.device("cpu"))
    g = d.mc_return(0.9).numpy()
    assert data.reward.sum() > 0
    for e in range(6):
        rows = np.arange(e * 4, e * 4 + 4)
        assert np.allclose(g[rows], data.reward[rows[-1]] * 0.9 ** np.arange(3, -1, -1), atol=1e-6)

    captured = []
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    monkeypatch.setattr(
        torch.nn.functional,
        "binary_cross_entropy_with_logits",
        lambda logits, y: captured.append(y.clone()) or bce(logits, y),
    )
    for bound in (False, True):
        trainer = QTOptTrainer(
            QNetwork(CFG),
            QTOptConfig.from_dict({**FAST.to_dict(), "mc_lower_bound": bound, "batch_size": 24}),
            "cpu",
        )
        trainer.train_step(d, 0.0)
        ret = torch.as_tensor(g)[trainer.last_batch[0]]
        below = bool((captured[-1] < ret - 1e-6).any())
        # A fresh network's bootstrapped targets (~0.45) undercut successful episodes' returns;
        # the bound lifts them to the return.
        assert below != bound
    with pytest.raises(ValueError, match="mc_lower_bound"):
        QTOptConfig(mc_lower_bound=1)


def test_mc_mix_blends_the_target_with_the_recorded_return(monkeypatch):
    data = multi_step(6, steps=4, seed=3)
    d = TrainingData(data, None, 32, torch.device("cpu"))
    captured = []
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    monkeypatch.setattr(
        torch.nn.functional,
        "binary_cross_entropy_with_logits",
        lambda logits, y: captured.append(y.clone()) or bce(logits, y),
    )
    targets = {}
    for mix in (0.0, 0.25, 1.0):
        torch.manual_seed(0)
        trainer = QTOptTrainer(
            QNetwork(CFG),
            QTOptConfig.from_dict({**FAST.to_dict(), "mc_mix": mix, "batch_size": 24}),
            "cpu",
        )
        trainer.train_step(d, 0.0)
        targets[mix] = (captured[-1], d.mc_return(0.9)[trainer.last_batch[0]])
    bellman, ret = targets[0.0]
    assert torch.allclose(targets[1.0][0], ret)  # all Monte-Carlo
    assert not torch.allclose(bellman, ret)
    assert torch.allclose(targets[0.25][0], 0.75 * bellman + 0.25 * ret, atol=1e-5)
    with pytest.raises(ValueError, match="mc_mix"):
        QTOptConfig(mc_mix=1.5)


def test_aux_loss_sees_the_batch_and_trains_the_trunk():
    """A registered aux loss gets each batch's images, rows and trunk features.

    A term that only the trunk can lower changes the trunk's training, and with no term training is
    what it was.
    """
    data = one_step_task(64, seed=3)
    labels = torch.as_tensor(data.image.reshape(64, -1).mean(1) / 255.0, dtype=torch.float32)

    def run(with_aux):
        torch.manual_seed(0)
        model = QNetwork(CFG)
        seen = []

        class Brightness(AuxLoss):
            name = "brightness"

            def __init__(self):
                self.module = torch.nn.Linear(CFG.width, 1)  # trained with the network

            def __call__(self, inputs):
                seen.append((inputs.images.shape, inputs.rows.clone()))
                pred = self.module(inputs.features.mean(dim=(2, 3))).squeeze(1)
                return torch.nn.functional.mse_loss(pred, labels[inputs.rows])

        trainer = QTOptTrainer(model, FAST, "cpu", aux_losses=[Brightness()] if with_aux else [])
        fit(trainer, data, None, steps=5, target_fraction=0.0)
        return model, trainer, seen

    plain_a, _, _ = run(False)
    plain_b, _, _ = run(False)
    aux, trainer, seen = run(True)
    assert len(seen) == 5
    shape, rows = seen[-1]
    assert tuple(shape) == (FAST.batch_size, 3, CFG.image_size, CFG.image_size)
    assert torch.equal(rows.cpu(), trainer.last_batch[0])
    trunk = [n for n, _ in plain_a.named_parameters() if n.startswith("trunk")]
    pa, pb, px = (dict(m.named_parameters()) for m in (plain_a, plain_b, aux))
    assert all(torch.equal(pa[n], pb[n]) for n in trunk)
    assert any(not torch.equal(pa[n], px[n]) for n in trunk)


def _location_task(n, seed=0):
    """One-step episodes whose location label is where a bright square sits in the image."""
    data = one_step_task(n, seed=seed, shade=0)
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 24, (n, 2))
    for k, (x, y) in enumerate(xy):
        data.image[k, y : y + 8, x : x + 8] = 255
    return data.with_location(((xy - 12) / 12 * 0.1).astype(np.float32))


def test_location_loss_needs_labels_and_learns_them():
    """``location_weight`` > 0 needs labels and learns them; weight 0 changes nothing.

    Data without labels is refused with the reason; with labels the head learns them through the
    trunk (the loss falls well below predicting their mean), and weight 0 leaves QT-Opt exactly as
    it was.
    """
    config = QTOptConfig.from_dict({**FAST.to_dict(), "location_weight": 1.0, "augment": False})
    data = _location_task(256)
    unlabelled = data.with_location(None)
    with pytest.raises(ValueError, match="location labels"):
        fit(
            QTOptTrainer(QNetwork(CFG), config, "cpu"),
            unlabelled,
            None,
            steps=1,
            target_fraction=0.0,
        )
    with pytest.raises(ValueError, match="target data have none"):
        fit(
            QTOptTrainer(QNetwork(CFG), config, "cpu"),
            data,
            unlabelled,
            steps=1,
            target_fraction=0.5,
        )
    torch.manual_seed(0)
    trainer = QTOptTrainer(QNetwork(CFG), config, "cpu")
    losses = []
    fit(
        trainer,
        data,
        None,
        steps=300,
        target_fraction=0.0,
        progress=lambda i, m: losses.append(m["location_loss"]),
    )
    scaled = torch.as_tensor(data.location / 0.05)
    blind = float(torch.nn.functional.smooth_l1_loss(scaled.mean(0).expand_as(scaled), scaled))
    assert np.mean(losses[-30:]) < 0.5 * blind, (np.mean(losses[-30:]), blind)
    # Weight 0: no head, no metric, and the same weights as a run on unlabelled data.
    plain = QTOptConfig.from_dict({**config.to_dict(), "location_weight": 0.0})

    def weights(d):
        torch.manual_seed(0)
        t = QTOptTrainer(QNetwork(CFG), plain, "cpu")
        keys = set()
        fit(t, d, None, steps=3, target_fraction=0.0, progress=lambda i, m: keys.update(m))
        assert "location" not in t.aux_losses and "location_loss" not in keys and "loss" in keys
        return t.model.state_dict()

    a, b = weights(data), weights(unlabelled)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_location_loss_refuses_combinations_it_does_not_support():
    with pytest.raises(ValueError, match="conservative_weight"):
        QTOptTrainer(
            QNetwork(CFG), QTOptConfig(location_weight=1.0, conservative_weight=1.0), "cpu"
        )
