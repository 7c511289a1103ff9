"""Hindsight location labels (nsl_trainer.hindsight) and the location loss on them.

The labels are checked against hand-made episodes here; against the simulator's own labels in
nsl_experiment's test_hindsight_labels.py.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from nsl_collector.transitions import Transitions
from nsl_policy.action_space import ActionSpace
from nsl_policy.cem import CEMConfig
from nsl_policy.model import QNetwork, QNetworkConfig
from nsl_trainer.config import QTOptConfig
from nsl_trainer.data import LOCATION_SCALE
from nsl_trainer.hindsight import (
    closing_step,
    episode_rows,
    hindsight_locations,
    split_episodes,
)
from nsl_trainer.losses import LossInputs
from nsl_trainer.loop import training_data
from nsl_trainer.trainer import QTOptTrainer

from trainer_helpers import fit

CFG = QNetworkConfig(
    image_size=32, width=8, embed_width=16, fc_width=16, trunk_depth=0, head_depth=1
)
FAST = QTOptConfig(
    batch_size=16, target_cem=CEMConfig(population=8, elites=2, iterations=1), seed=0
)
HINDSIGHT = QTOptConfig.from_dict(
    {**FAST.to_dict(), "location_weight": 1.0, "location_labels": "hindsight"}
)
MT = ActionSpace().max_translation


def action(x: float, y: float, close: bool = False, terminate: bool = False) -> list[float]:
    return [x, y, -0.5, 0.1, 1.0 if close else -1.0, 1.0 if terminate else -1.0]


def episodes(actions: list[list[list[float]]], success: list[bool], seed: int = 0) -> Transitions:
    """Return the transitions of episodes with the given actions and outcomes."""
    rng = np.random.default_rng(seed)
    lengths = [len(a) for a in actions]
    n = sum(lengths)
    ends = np.cumsum(lengths) - 1
    done = np.zeros(n, bool)
    done[ends] = True
    reward = np.zeros(n, np.float32)
    reward[ends] = np.asarray(success, np.float32)
    next_index = np.where(done, np.arange(n), np.arange(n) + 1)
    return Transitions(
        image=rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
        state=rng.random((n, 3)).astype(np.float32),
        action=np.asarray([a for ep in actions for a in ep], np.float32),
        reward=reward,
        done=done,
        next_index=next_index,
        episode=np.repeat(np.arange(len(actions)), lengths),
    )


def test_each_step_is_labelled_with_the_moves_up_to_where_the_grasp_closed():
    data = episodes(
        [
            # Moves, then terminates: the terminating step's move happens before the close.
            [action(0.5, -1.0), action(1.0, 0.25), action(-0.25, 0.5, terminate=True)],
            # Closes at step 1 and moves on holding the object: step 2 has no label.
            [action(0.5, 0.5), action(-1.0, 0.0, close=True), action(1.0, 1.0, terminate=True)],
            # A failed grasp: no label anywhere.
            [action(0.5, 0.5), action(0.5, 0.5, terminate=True)],
            # Never closes nor terminates: the forced close after the last step's move.
            [action(0.25, 0.0), action(3.0, -2.0)],  # beyond the box: clipped, as the arm does
        ],
        [True, True, False, True],
    )
    labels = hindsight_locations(data)
    assert labels.dtype == np.float32 and labels.shape == (len(data), 2)
    expected = MT * np.array(
        [
            [1.25, -0.25],
            [0.75, 0.75],
            [-0.25, 0.5],
            [-0.5, 0.5],
            [-1.0, 0.0],
            [np.nan, np.nan],
            [np.nan, np.nan],
            [np.nan, np.nan],
            [1.25, -1.0],
            [1.0, -1.0],
        ]
    )
    np.testing.assert_allclose(labels, expected, rtol=1e-6, atol=1e-9)
    # The scale is the action space's: twice the step, twice the offset.
    doubled = hindsight_locations(data, ActionSpace(max_translation=2 * MT))
    np.testing.assert_allclose(doubled, 2 * labels, rtol=1e-6)


def test_the_closing_step_is_the_first_close_or_terminate_else_the_last():
    assert closing_step(np.array([action(0, 0), action(0, 0, close=True)])) == 1
    assert closing_step(np.array([action(0, 0, terminate=True), action(0, 0)])) == 0
    assert closing_step(np.array([action(0, 0), action(0, 0), action(0, 0)])) == 2


def test_episodes_need_their_rows_linked_step_after_step():
    data = episodes([[action(0, 0), action(0, 0)], [action(0, 0)]], [True, True])
    assert [list(r) for r in episode_rows(data)] == [[0, 1], [2]]
    broken = Transitions(**{**vars(data), "next_index": np.array([0, 1, 2])})
    with pytest.raises(ValueError, match=r"linked step after step.*1 episode\(s\) \(0\)"):
        episode_rows(broken)
    assert hindsight_locations(data.rows(0)).shape == (0, 2)


def with_next_index(data: Transitions, row: int, points_at: int) -> Transitions:
    """Return ``data`` with row ``row`` linked to ``points_at`` instead of its next step."""
    next_index = np.array(data.next_index)
    next_index[row] = points_at
    return Transitions(**{**vars(data), "next_index": next_index})


SUCCESSES = [
    [action(0.5, 0.5), action(0.5, -0.5, terminate=True)],
    [action(0.25, 0.0), action(0.0, 0.25), action(1.0, 1.0, terminate=True)],
    [action(-0.5, 0.5), action(0.5, 0.5, terminate=True)],
]
"""Three successful episodes of rows 0-1, 2-4 and 5-6."""


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: with_next_index(d, 2, 4), id="gap"),  # step 1 of 3 missing
        pytest.param(lambda d: with_next_index(d, 3, 2), id="out-of-order"),  # loops back
        pytest.param(
            lambda d: Transitions(**{**vars(d), "done": np.r_[d.done[:3], True, d.done[4:]]}),
            id="done-early",
        ),
    ],
)
def test_an_unchained_episode_loses_its_labels_only_and_is_reported(damage, caplog):
    """A crashed session's broken episode gets NaN labels and a warning; the rest keep theirs."""
    whole = episodes(SUCCESSES, [True, True, True])
    broken = damage(whole)
    chained, unchained = split_episodes(broken)
    assert unchained == [1] and [list(r) for r in chained] == [[0, 1], [5, 6]]
    with caplog.at_level(logging.WARNING, logger="nsl_trainer.hindsight"):
        labels = hindsight_locations(broken, name="target")
    assert np.isnan(labels[2:5]).all()
    np.testing.assert_array_equal(labels[[0, 1, 5, 6]], hindsight_locations(whole)[[0, 1, 5, 6]])
    assert not np.isnan(labels[[0, 1, 5, 6]]).any()
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "skipped 1 episode(s) (1) of the target data" in record.getMessage()
    assert "still train the Q-function" in record.getMessage()


def test_a_warning_names_at_most_ten_unchained_episodes(caplog):
    data = episodes([[action(0, 0), action(0, 0, terminate=True)]] * 12, [True] * 12)
    broken = Transitions(**{**vars(data), "next_index": np.arange(len(data))})  # no links
    with caplog.at_level(logging.WARNING, logger="nsl_trainer.hindsight"):
        assert np.isnan(hindsight_locations(broken)).all()
    message = caplog.records[0].getMessage()
    assert "12 episode(s) (0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more) of the data" in message


def test_a_fine_tune_on_an_unchained_episode_trains_on_all_its_transitions(caplog):
    """The broken episode's rows stay in the data the Q-function trains on, without labels."""
    base = episodes(SUCCESSES, [True, True, True])
    target = with_next_index(episodes(SUCCESSES, [True, True, True], seed=1), 2, 4)
    torch.manual_seed(0)
    trainer = QTOptTrainer(QNetwork(CFG), HINDSIGHT, "cpu")
    with caplog.at_level(logging.WARNING, logger="nsl_trainer.hindsight"):
        data = training_data(trainer, base, target)
    assert (data.n_base, data.n_target) == (7, 7)  # nothing recorded is dropped
    assert data.labelled == (7, 4)  # the target's episode 1 (3 rows) has no labels
    assert "of the target data" in caplog.records[0].getMessage()
    seen = []
    summary = fit(trainer, base, target, steps=3, progress=lambda i, m: seen.append(m))
    assert np.isfinite(summary["loss"]) and all(np.isfinite(m["location_loss"]) for m in seen)


def location_inputs(trainer: QTOptTrainer, data, rows: torch.Tensor) -> LossInputs:
    images = data.image[rows].permute(0, 3, 1, 2).float() / 255
    features = trainer.model.encode(images)
    logits = torch.zeros(len(rows))
    return LossInputs(
        images, rows, data.state[rows], data.action[rows], features, logits, logits[:, None], data
    )


def test_the_location_loss_skips_unlabelled_rows():
    """Rows without a label add nothing, and a batch without one gives 0 and no NaN gradient."""
    base = episodes(
        [[action(0.5, 0.5), action(0.5, -0.5, terminate=True)], [action(1, 1, terminate=True)]],
        [True, False],
    )
    torch.manual_seed(0)
    trainer = QTOptTrainer(QNetwork(CFG), HINDSIGHT, "cpu")
    data = training_data(trainer, base)
    assert data.labelled == (2, 0)
    loss = trainer.aux_losses["location"]
    head = loss.module

    def term_and_grads(rows):
        trainer.optimizer.zero_grad(set_to_none=True)
        value = loss(location_inputs(trainer, data, torch.tensor(rows)))
        value.backward()
        grads = [p.grad for p in head.parameters()]
        return value.detach(), grads

    value, grads = term_and_grads([2, 2])  # the failed episode's row only
    assert float(value) == 0.0
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)
    value, grads = term_and_grads([0, 2, 1, 2])
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)
    with torch.no_grad():
        inputs = location_inputs(trainer, data, torch.tensor([0, 1]))
        predicted = head(inputs.features, inputs.state)
        labelled_sum = torch.nn.functional.smooth_l1_loss(
            predicted, data.location[[0, 1]], reduction="sum"
        )
    # Sum over the labelled rows / the batch's elements: 4 rows, of which 2 are labelled.
    assert float(value) == pytest.approx(float(labelled_sum) / 8, rel=1e-5)


def test_hindsight_fine_tunes_train_on_unlabelled_data_of_both_parts():
    """Data without simulator labels trains with hindsight labels; without a success, loss 0."""
    base = episodes([[action(0.5, 0.5), action(0.5, -0.5, terminate=True)]] * 4, [True] * 4)
    target = episodes([[action(1, 0), action(0, 1, terminate=True)]] * 4, [False] * 4, seed=1)
    assert base.location is None and target.location is None
    torch.manual_seed(0)
    trainer = QTOptTrainer(QNetwork(CFG), HINDSIGHT, "cpu")
    data = training_data(trainer, base, target)
    expected = np.concatenate([hindsight_locations(base), hindsight_locations(target)])
    np.testing.assert_allclose(data.location.numpy(), expected / LOCATION_SCALE, rtol=1e-6)
    assert data.labelled == (8, 0)
    seen = []
    summary = fit(trainer, base, target, steps=3, progress=lambda i, m: seen.append(m))
    assert all(np.isfinite(m["location_loss"]) and m["location_loss"] > 0 for m in seen)
    assert np.isfinite(summary["loss"])
    failed_only = QTOptTrainer(QNetwork(CFG), HINDSIGHT, "cpu")
    seen.clear()
    fit(failed_only, None, target, steps=2, progress=lambda i, m: seen.append(m))
    assert [m["location_loss"] for m in seen] == [0.0, 0.0]
    assert all(bool(torch.isfinite(p).all()) for p in failed_only.model.parameters())
    # Simulator labels are still required where they are asked for.
    sim = QTOptConfig.from_dict({**HINDSIGHT.to_dict(), "location_labels": "sim"})
    with pytest.raises(ValueError, match="base data have none"):
        training_data(QTOptTrainer(QNetwork(CFG), sim, "cpu"), base, target)
