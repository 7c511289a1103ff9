"""The sequential tests on simulated Bernoulli streams: decisions, error rates and the cap."""

from __future__ import annotations

import math

import pytest

from nsl_policy.sequential import (
    CONTINUE,
    PROMOTE,
    REJECT,
    TrialSettings,
    TrialTest,
    WatchTest,
    compare_counts,
    simulate_trials,
)

UNCAPPED = TrialSettings(max_episodes=100_000)


def three_se(rate: float, trials: int) -> float:
    """Return three standard errors of a share ``rate`` estimated from ``trials`` trials."""
    return 3.0 * math.sqrt(rate * (1.0 - rate) / trials)


def test_a_clearly_better_candidate_is_promoted_and_a_worse_one_rejected():
    better = simulate_trials(UNCAPPED, 0.3, 0.7, 300, seed=1)
    worse = simulate_trials(UNCAPPED, 0.6, 0.1, 300, seed=2)
    assert better.promoted > 0.97 and worse.rejected == 1.0
    assert worse.mean_episodes < 30, "a much worse candidate must be stopped within a few pairs"


def test_the_error_rates_hold_within_sampling_error(capsys):
    """Promotions of a not-better candidate stay under alpha; rejections of a better one near beta.

    alpha is a bound (Ville's inequality); beta is Wald's approximation, which the
    log(1/alpha) promotion bound and the estimated alternative push up by a few points at
    mid rates, so the rejections are checked against beta + 0.05.
    """
    s = UNCAPPED
    rows = []
    for rate in (0.2, 0.5, 0.8):
        null = simulate_trials(s, rate, rate, 2000, seed=10 + int(rate * 10))
        alt = simulate_trials(s, rate, rate + s.min_improvement, 1000, seed=20 + int(rate * 10))
        rows.append((null, alt))
    with capsys.disabled():
        print(f"\nalpha={s.alpha} beta={s.beta} min_improvement={s.min_improvement}")
        print("incumbent candidate trials promoted rejected mean_episodes")
        for point in (p for row in rows for p in row):
            print(
                f"{point.incumbent_rate:9.2f} {point.candidate_rate:9.2f} {point.trials:6d} "
                f"{point.promoted:8.3f} {point.rejected:8.3f} {point.mean_episodes:13.1f}"
            )
    for null, alt in rows:
        assert null.promoted <= s.alpha + three_se(s.alpha, null.trials), null
        assert alt.rejected <= s.beta + 0.05 + three_se(s.beta, alt.trials), alt
        assert null.at_cap == alt.at_cap == 0.0


def test_a_worse_candidate_is_promoted_less_often_than_alpha():
    point = simulate_trials(UNCAPPED, 0.5, 0.4, 1000, seed=3)
    assert point.promoted <= UNCAPPED.alpha / 2


def test_the_trial_respects_its_cap_and_the_cap_rule():
    capped = TrialSettings(max_episodes=20)
    point = simulate_trials(capped, 0.5, 0.5, 300, seed=4)
    assert point.mean_episodes <= 20 and point.at_cap > 0.5
    test = TrialTest(capped)
    for k in range(20):
        # Equal outcomes: no discordant pair, no evidence, so only the cap decides.
        assert test.decision == CONTINUE
        test.add(test.next_is_candidate(), k % 2 == 0 or k % 4 == 1)
    assert test.decision == REJECT and test.episodes == 20 and "episode cap 20" in test.reason


def test_extend_doubles_the_cap_once_and_promote_if_not_worse_compares_rates():
    extend = TrialTest(TrialSettings(max_episodes=10, on_cap="extend"))
    for _ in range(10):
        extend.add(extend.next_is_candidate(), True)
    assert extend.decision == CONTINUE and extend.extended and extend.cap == 20
    for _ in range(10):
        extend.add(extend.next_is_candidate(), True)
    assert extend.decision == REJECT and extend.episodes == 20
    level = TrialTest(TrialSettings(max_episodes=10, on_cap="promote_if_not_worse"))
    for _ in range(10):
        level.add(level.next_is_candidate(), True)
    assert level.decision == PROMOTE and "not below" in level.reason


def test_episodes_alternate_and_the_evidence_names_counts_and_statistic():
    test = TrialTest(TrialSettings(), prior_successes=6, prior_episodes=10)
    assert test.next_is_candidate()
    test.add(True, True)
    assert not test.next_is_candidate()
    test.add(False, False)
    evidence = test.evidence()
    assert evidence["candidate"] == {"successes": 1, "episodes": 1}
    assert evidence["incumbent"] == {"successes": 0, "episodes": 1}
    assert evidence["discordant_pairs"] == {"candidate_won": 1, "incumbent_won": 0}
    assert evidence["incumbent_record"] == {"successes": 6, "episodes": 10}
    assert evidence["log_likelihood_ratio"] > 0 and 0.5 < evidence["posterior_candidate_better"]
    assert evidence["promote_at"] == pytest.approx(math.log(20), abs=1e-3)


def test_the_watch_rolls_back_a_worse_checkpoint_and_settles_a_good_one():
    s = TrialSettings(watch_episodes=60)
    worse = WatchTest(0.6, s)
    outcomes = [k % 5 == 0 for k in range(60)]  # 0.2 against a record of 0.6
    decisions = [worse.add(o) for o in outcomes]
    assert "rollback" in decisions and worse.episodes < 30
    good = WatchTest(0.6, s)
    for k in range(60):
        good.add(k % 5 < 3)  # 0.6, the record itself
    assert good.decision == "settled" and good.episodes == 60


def test_settings_are_checked():
    with pytest.raises(ValueError, match="alpha.*on_cap"):
        TrialSettings(alpha=0.7, on_cap="maybe")


def test_fixed_sample_counts_use_the_cap_rule():
    decision, evidence = compare_counts(30, 60, 30, 60)
    assert decision == PROMOTE and "not below" in evidence["reason"]
    assert evidence["posterior_candidate_better"] == pytest.approx(0.5, abs=0.02)
    decision, evidence = compare_counts(20, 60, 30, 60)
    assert decision == REJECT and evidence["posterior_candidate_better"] < 0.05
