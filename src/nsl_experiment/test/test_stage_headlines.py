"""The pipeline's one-line stage summaries name every baseline, run or not."""

from nsl_experiment.cli import headlines


def sweep_result(baselines: dict | None) -> dict:
    """Return a finetune_sweep stamp of one task with a 400 tier and the given baselines."""

    def entry(rate):
        return {"result": {"success_rate": rate}}

    row = {"tiers": {"400": entry(0.38)}}
    for key in ("scratch", "reinit_head", "agnostic_trunk"):
        row[key] = None if baselines is None else entry(baselines[key])
    return {"tasks": {"harsh_light": row}}


def test_the_sweep_line_prints_every_baseline():
    rates = {"scratch": 0.025, "reinit_head": 0.305, "agnostic_trunk": 0.02}
    (line,) = headlines("finetune_sweep", sweep_result(rates))
    assert line == (
        "harsh_light: 400: 0.380 | scratch 0.025 | reinit head 0.305 | agnostic trunk 0.020"
    )


def test_the_sweep_line_says_not_run_when_baselines_are_off():
    (line,) = headlines("finetune_sweep", sweep_result(None))
    assert line.count("not run") == 3 and line.startswith("harsh_light: 400: 0.380")
