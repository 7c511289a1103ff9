"""Fine-tune requests checked field by field (jobs.plan_job), without ROS.

Every refusal names the request field; nothing but RequestRefused is raised, whatever the
request holds; a fine-tune needs a start checkpoint and training from random weights is the
trainer's explicit mode scratch.
"""

from __future__ import annotations

import dataclasses
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from nsl_policy.checkpoint import init_checkpoint, load_checkpoint
from nsl_policy.model import QNetworkConfig
from nsl_trainer.config import QTOptConfig
from nsl_trainer.data import load_datasets
from nsl_trainer.recipe import FineTuneRecipe
from nsl_trainer.jobs import (
    FineTuneJob,
    RequestRefused,
    TrainerSettings,
    describe,
    plan_job,
    run_job,
)
from nsl_collector.dataset import BagRecorder, EpisodeData, StepData
from trainer_helpers import MSG_DIR, write_bag


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("jobs")
    base = write_bag(d / "base", 3, seed=1)
    target = write_bag(d / "target", 2, seed=2, task="target")
    init = d / "init.safetensors"
    init_checkpoint(init, QNetworkConfig(image_size=32, width=8), seed=0)
    return SimpleNamespace(dir=d, base=str(base), target=str(target), init=str(init))


def request(**fields) -> SimpleNamespace:
    """Return a FineTune.Request-like object (the .srv's defaults, then ``fields``)."""
    values = dict(
        base_datasets=[],
        target_datasets=[],
        init_checkpoint="",
        steps=0,
        learning_rate=0.0,
        target_fraction=0.0,
    )
    values.update(fields)
    return SimpleNamespace(**values)


def refusal(req, settings) -> RequestRefused:
    with pytest.raises(RequestRefused) as caught:
        plan_job(req, settings, "job1")
    return caught.value


def nested_header_checkpoint(path) -> str:
    """Write a file whose safetensors header is JSON nested 100,000 deep (RecursionError bait)."""
    body = ("[" * 100_000 + "]" * 100_000).encode()
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    return str(path)


@pytest.mark.parametrize(
    "fields,field,words",
    [
        ({"target_fraction": 2.0}, "target_fraction", "[0, 1]"),
        ({"target_fraction": -0.25}, "target_fraction", "[0, 1]"),
        ({"target_fraction": math.nan}, "target_fraction", "finite"),
        ({"target_fraction": math.inf}, "target_fraction", "finite"),
        ({"learning_rate": math.nan}, "learning_rate", "finite"),
        ({"learning_rate": -math.inf}, "learning_rate", "finite"),
        ({"learning_rate": -1e-4}, "learning_rate", "(0, 1]"),
        ({"learning_rate": 5.0}, "learning_rate", "(0, 1]"),
        ({"steps": 101}, "steps", "max_steps (100)"),
        ({"steps": -1}, "steps", ">= 0"),
        ({"target_datasets": []}, "target_datasets", "none given"),
        ({"target_datasets": [""]}, "target_datasets[0]", "empty path"),
        ({"target_datasets": ["TARGET", "   "]}, "target_datasets[1]", "empty path"),
        ({"base_datasets": [""]}, "base_datasets[0]", "empty path"),
        ({"target_datasets": ["/no/such/bag"]}, "target_datasets[0]", "/no/such/bag"),
        ({"base_datasets": ["/no/such/base"]}, "base_datasets[0]", "/no/such/base"),
        ({"target_datasets": ["bag\x00"]}, "target_datasets[0]", "NUL"),
        ({"base_datasets": ["TARGET"]}, "base_datasets[0]", "also a target dataset"),
        ({"init_checkpoint": "  "}, "init_checkpoint", "blank"),
        ({"init_checkpoint": "/no/such.safetensors"}, "init_checkpoint", "/no/such.safetensors"),
    ],
)
def test_each_bad_field_is_refused_by_name(files, fields, field, words):
    settings = TrainerSettings(
        checkpoint_dir=str(files.dir),
        default_checkpoint=files.init,
        default_steps=50,
        max_steps=100,
    )
    values = {"target_datasets": [files.target], **fields}
    for key in ("target_datasets", "base_datasets"):
        if key in values:
            values[key] = [files.target if p == "TARGET" else p for p in values[key]]
    exc = refusal(request(**values), settings)
    assert exc.field == field and str(exc).startswith(f"{field}: ")
    assert words in str(exc), str(exc)


def test_a_blank_dataset_path_never_means_the_working_directory(files, monkeypatch):
    """``target_datasets: [""]`` trained on every bag under the trainer's working directory."""
    monkeypatch.chdir(files.dir)  # bags are here: "" would find them all
    settings = TrainerSettings(checkpoint_dir=str(files.dir), default_checkpoint=files.init)
    assert "empty path" in str(refusal(request(target_datasets=[""]), settings))
    assert "empty path" in str(refusal(request(target_datasets=[" \t"]), settings))


def test_defaults_fill_zero_fields_with_the_recipes(files):
    settings = TrainerSettings(checkpoint_dir=str(files.dir), default_checkpoint=files.init)
    job = plan_job(request(target_datasets=[files.target]), settings, "abc")
    assert job.init_checkpoint == files.init and job.mode == "finetune"
    assert job.recipe == FineTuneRecipe() and job.steps == FineTuneRecipe().steps
    assert job.learning_rate == QTOptConfig().finetune_learning_rate()
    assert job.batch_size == QTOptConfig().batch_size
    assert os.path.basename(job.output_path) == "finetune-abc.safetensors"
    job = plan_job(
        request(
            base_datasets=[files.base],
            target_datasets=[files.target],
            target_fraction=1.0,
            steps=7,
            learning_rate=1e-5,
            init_checkpoint=files.init,
        ),
        TrainerSettings(checkpoint_dir=str(files.dir), target_fraction=0.25, mc_mix=0.0),
        "abc",
    )
    assert (job.recipe.target_fraction, job.steps, job.learning_rate) == (1.0, 7, 1e-5)
    assert job.recipe.mc_mix == 0.0 and job.qtopt_config().mc_mix == 0.0
    job = plan_job(
        request(target_datasets=[files.target], init_checkpoint=files.init),
        TrainerSettings(checkpoint_dir=str(files.dir), target_fraction=0.25, default_steps=9),
        "abc",
    )
    assert (job.recipe.target_fraction, job.steps) == (0.25, 9)


def test_the_job_runs_the_recipes_qtopt_settings(files):
    """A request at the trainer's defaults trains with FineTuneRecipe's QT-Opt overrides."""
    settings = TrainerSettings(
        checkpoint_dir=str(files.dir), default_checkpoint=files.init, batch_size=8
    )
    config = plan_job(request(target_datasets=[files.target]), settings, "abc").qtopt_config()
    recipe = FineTuneRecipe()
    assert config.batch_size == 8
    assert {k: config.to_dict()[k] for k in recipe.qtopt_overrides()} == recipe.qtopt_overrides()
    assert (config.policy_weights, config.mc_mix, config.location_weight) == ("polyak", 0.5, 1.0)
    assert config.location_labels == "hindsight"
    off = TrainerSettings(
        checkpoint_dir=str(files.dir),
        default_checkpoint=files.init,
        policy_weights="online",
        mc_mix=0.0,
        location_labels="none",
    )
    config = plan_job(request(target_datasets=[files.target]), off, "abc").qtopt_config()
    assert (config.policy_weights, config.mc_mix, config.location_weight) == ("online", 0.0, 0.0)
    assert describe(plan_job(request(target_datasets=[files.target]), off, "x")).count(
        "no location loss"
    )


def test_a_fine_tune_without_a_start_checkpoint_is_refused(files):
    """Neither the request nor the trainer names one: random weights are not a fine-tune."""
    exc = refusal(request(target_datasets=[files.target]), TrainerSettings(str(files.dir)))
    assert exc.field == "init_checkpoint" and "default_checkpoint" in str(exc)
    assert "scratch" in str(exc)


def test_scratch_is_its_own_mode_and_never_named_a_fine_tune(files):
    settings = TrainerSettings(checkpoint_dir=str(files.dir), mode="scratch")
    job = plan_job(request(target_datasets=[files.target]), settings, "abc")
    assert job.mode == "scratch" and job.init_checkpoint == ""
    assert os.path.basename(job.output_path) == "scratch-abc.safetensors"
    exc = refusal(request(target_datasets=[files.target], init_checkpoint=files.init), settings)
    assert exc.field == "init_checkpoint" and "scratch" in str(exc)
    with pytest.raises(ValueError, match="default_checkpoint must be empty"):
        TrainerSettings(str(files.dir), mode="scratch", default_checkpoint=files.init)
    with pytest.raises(ValueError, match="mode must be finetune or scratch"):
        TrainerSettings(str(files.dir), mode="pretrain")


def test_hostile_init_checkpoints_are_refused_with_the_loaders_message(files, tmp_path):
    nested = nested_header_checkpoint(tmp_path / "nested.safetensors")
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 100)
    settings = TrainerSettings(checkpoint_dir=str(files.dir))
    for path, words in ((nested, "nested"), (str(fifo), "regular file"), (str(garbage), "")):
        exc = refusal(request(target_datasets=[files.target], init_checkpoint=path), settings)
        assert exc.field == "init_checkpoint" and path in str(exc) and words in str(exc), exc
    with pytest.raises(ValueError, match="default_checkpoint: .*nested"):
        TrainerSettings(str(files.dir), default_checkpoint=nested).check_default_checkpoint()


@pytest.mark.parametrize(
    "fields",
    [
        {"steps": 2.5},
        {"steps": True},
        {"learning_rate": "0.1"},
        {"target_fraction": None},
        {"target_datasets": [None]},
        {"base_datasets": [3]},
        {"init_checkpoint": None},
        {"init_checkpoint": "\x00"},
    ],
)
def test_values_of_the_wrong_kind_are_refused_not_raised(files, fields):
    settings = TrainerSettings(checkpoint_dir=str(files.dir), default_checkpoint=files.init)
    refusal(request(**{"target_datasets": [files.target], **fields}), settings)


def test_settings_are_checked(files):
    with pytest.raises(ValueError, match="default_steps"):
        TrainerSettings(str(files.dir), default_steps=200, max_steps=100)
    for name, value in (
        ("policy_weights", "ema"),
        ("mc_mix", 1.5),
        ("location_weight", -1.0),
        ("location_labels", "sim"),
        ("target_fraction", 0.0),
    ):
        with pytest.raises(ValueError, match=f"FineTuneRecipe.{name} must be"):
            TrainerSettings(str(files.dir), **{name: value})


def test_a_job_checkpoint_records_its_job_id_and_mode(files, tmp_path):
    """policy/active_checkpoint takes job_id from the checkpoint's metadata."""

    class Pipe:
        messages: list = []

        def send(self, message):
            self.messages.append(message)

        def close(self):
            pass

    out = tmp_path / "scratch-j7.safetensors"
    run_job(
        FineTuneJob(
            job_id="j7",
            base_datasets=[],
            target_datasets=[files.target],
            init_checkpoint="",
            recipe=FineTuneRecipe(steps=2),
            learning_rate=1e-4,
            output_path=str(out),
            mode="scratch",
            batch_size=4,
            device="cpu",
            run_dir=str(tmp_path / "run"),
            num_threads=1,
        ),
        Pipe(),
    )
    assert Pipe.messages[-1]["event"] == "succeeded", Pipe.messages[-1]
    meta = load_checkpoint(out).metadata
    assert meta["job_id"] == "j7" and meta["kind"] == "scratch" and meta["parent"] is None
    assert meta["target_fraction"] == 1.0  # target data only: loop.sampled_fraction's answer


class Pipe:
    """The worker's end of a job's connection, collecting what run_job sends."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    def send(self, message: dict) -> None:
        self.messages.append(message)

    def close(self) -> None:
        pass

    def events(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["event"] == kind]


def damage_first_image(bag, seed: int, size: int = 32):
    """Invert the first image trainer_helpers.write_bag(seed=seed) wrote (only a CRC tells)."""
    image = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    assert data.count(image.tobytes()) == 1
    mcap.write_bytes(data.replace(image.tobytes(), (255 - image).tobytes()))
    return mcap


def write_bad_value_bag(path, steps: int = 3, size: int = 32):
    """Write a bag of episodes good-0, bad-1 (step 1's step_fraction is 7.0) and good-2."""
    rng = np.random.default_rng(8)
    with BagRecorder(path, {"task": "target"}, MSG_DIR, flush_steps=False, fsync=False) as rec:
        for e, name in enumerate(("good-0", "bad-1", "good-2")):
            recs = [
                StepData.from_vector(
                    rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                    [0.0, 0.3, 7.0 if (name == "bad-1" and j == 1) else j / steps],
                    rng.uniform(-1, 1, 6),
                    stamp_ns=10**18 + (e * 10 + j) * 10**6,
                )
                for j in range(steps)
            ]
            rec.write_episode(
                recs,
                EpisodeData(
                    episode_id=name,
                    task="target",
                    seed=e,
                    success=True,
                    stamp_ns=10**18 + (e * 10 + 9) * 10**6,
                ),
            )
    return path


@pytest.fixture
def damaged_dataset(tmp_path, monkeypatch):
    """Write a dataset folder of 3 bags, 2 of them damaged.

    An intact bag (2 episodes), one with a chunk whose bytes changed (its first episode of 3
    lost) and one with an out-of-range value in episode bad-1 (of 3).
    """
    monkeypatch.setenv("NSL_DATASET_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    write_bag(data / "intact", 2, seed=5, task="target")
    damaged = write_bag(data / "damaged", 3, seed=6)
    bad_value = write_bad_value_bag(data / "values")
    return SimpleNamespace(dir=data, mcap=damage_first_image(damaged, seed=6), values=bad_value)


def small_cpu_settings(files, tmp_path, **overrides) -> TrainerSettings:
    """Trainer settings for a fast CPU job from the fixture's initial checkpoint."""
    return TrainerSettings(
        checkpoint_dir=str(tmp_path / "out"),
        default_checkpoint=files.init,
        batch_size=4,
        device="cpu",
        num_threads=1,
        **overrides,
    )


def job_on(dataset, files, tmp_path, strict: bool) -> FineTuneJob:
    settings = small_cpu_settings(files, tmp_path, strict_datasets=strict)
    job = plan_job(request(target_datasets=[str(dataset.dir)], steps=2), settings, "j9")
    assert job.strict_datasets is strict
    return job


def test_a_job_trains_on_the_rest_of_a_damaged_dataset_and_says_so(
    files, tmp_path, damaged_dataset
):
    pipe = Pipe()
    job = job_on(damaged_dataset, files, tmp_path, strict=False)
    assert "damaged data skipped" in describe(job)
    run_job(job, pipe)
    final = pipe.messages[-1]
    assert final["event"] == "succeeded", final
    warned = " | ".join(m["message"] for m in pipe.events("warning"))
    assert str(damaged_dataset.mcap) in warned and "CRC mismatch" in warned, warned
    assert f"{damaged_dataset.values}: skipped the damaged episode bad-1" in warned, warned
    assert "step_fraction" in warned, warned
    assert final["data_warnings"] == len(pipe.events("warning")) >= 2
    meta = load_checkpoint(final["checkpoint_path"]).metadata
    # 2 intact + 2 of the damaged bag + 2 of the bad-value bag, 3 steps each.
    assert meta["num_transitions"] == {"base": 0, "target": 6 * 3}


def test_a_job_forwards_the_episodes_whose_hindsight_labels_were_skipped(
    files, tmp_path, monkeypatch
):
    """An unchained target episode (a crashed session's) costs its labels, not the job."""
    from nsl_trainer import runs

    def load_with_a_gap(paths, strict=False):
        data = load_datasets(paths, strict=strict)
        if data is not None and files.target in paths:
            next_index = np.array(data.next_index)
            next_index[0] = 2  # episode 0's step 1 skipped
            data = dataclasses.replace(data, next_index=next_index)
        return data

    monkeypatch.setattr(runs, "load_datasets", load_with_a_gap)
    settings = small_cpu_settings(files, tmp_path)
    assert settings.recipe().uses_location  # the recipe's hindsight labels are asked for
    job = plan_job(request(target_datasets=[files.target], steps=2), settings, "j10")
    pipe = Pipe()
    run_job(job, pipe)
    final = pipe.messages[-1]
    assert final["event"] == "succeeded", final
    [warning] = pipe.events("warning")
    assert "skipped 1 episode(s) (0) of the target data" in warning["message"], warning
    assert final["data_warnings"] == 1
    meta = load_checkpoint(final["checkpoint_path"]).metadata
    assert meta["num_transitions"] == {"base": 0, "target": 2 * 3}  # every row trained on


def test_strict_datasets_refuses_a_job_on_damaged_data(files, tmp_path, damaged_dataset):
    pipe = Pipe()
    job = job_on(damaged_dataset, files, tmp_path, strict=True)
    assert "damaged data refused" in describe(job)
    with pytest.raises(SystemExit):
        run_job(job, pipe)
    final = pipe.messages[-1]
    assert final["event"] == "failed" and final["message"].startswith("DatasetError"), final
    assert str(damaged_dataset.mcap) in final["message"], final
    assert not (tmp_path / "out" / "finetune-j9.safetensors").exists()


def test_an_unreadable_bag_refuses_a_request_only_when_strict(files, tmp_path):
    data = tmp_path / "data"
    write_bag(data / "intact", 1, seed=7, task="target")
    (data / "junk").mkdir()
    (data / "junk" / "junk.mcap").write_bytes(b"not an mcap file at all")
    settings = TrainerSettings(checkpoint_dir=str(tmp_path), default_checkpoint=files.init)
    job = plan_job(request(target_datasets=[str(data)]), settings, "j10")
    assert job.target_datasets == [str(data)]
    strict = TrainerSettings(
        checkpoint_dir=str(tmp_path), default_checkpoint=files.init, strict_datasets=True
    )
    caught = refusal(request(target_datasets=[str(data)]), strict)
    assert caught.field == "target_datasets[0]" and "junk" in str(caught), caught
    only_junk = refusal(request(target_datasets=[str(data / "junk")]), settings)
    assert only_junk.field == "target_datasets[0]" and "junk.mcap" in str(only_junk)
