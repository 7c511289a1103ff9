r"""Ask whether an auxiliary object-location loss makes QT-Opt's first moves aim (offline A/B).

Probes 10-12 (docs/results/decisions.md) found that QT-Opt's Q-function does not steer towards
the objects it sees, while the same trunk, trained supervised, locates them. This probe adds a
second, supervised task to QT-Opt: from the trunk's feature map and the gripper state, a small
head regresses the horizontal offset from the commanded gripper position to the nearest object's
centre. Its loss is added to the QT-Opt loss, so the trunk's features must encode where the
nearest object is relative to the gripper; the Q-head may then use them.

The labels are read from the simulator, which the policy never sees: each recorded episode is
reset again with its seed and task (the same objects, settled the same way) and the commanded
position is integrated from the recorded actions exactly as ``GraspEnv.step`` clips it. Objects
the gripper pushed later in an episode keep their settled position, so late labels are
approximate. The bags carry no such labels, so this works on simulated data only.

It trains the same offline QT-Opt twice on the same bags, seed and steps: with ``--aux-weight``
0 (plain QT-Opt) and with the given weight, and writes both checkpoints; the command prints
both ``nsl experiment evaluate`` lines to run next (validation seeds, never evaluation ones).

    .venv/bin/python research/aux_location_probe.py --data runs/pk/datasets/base/bootstrap \
        --steps 4000 --aux-weight 1.0 --output runs/aux

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

_ENV = None


def _init_worker(sim_kwargs: dict, split: str) -> None:
    global _ENV
    from nsl_sim.env import GraspEnv, SimConfig

    _ENV = GraspEnv(SimConfig(**sim_kwargs, object_split=split))


def _episode_offsets(job: tuple[int, str, np.ndarray]) -> np.ndarray:
    """Return one episode's (steps, 2) offsets (m) to the nearest settled object centre.

    Each offset is from the commanded gripper position before a recorded step (the pipeline's
    labels: episodes.episode_locations).
    """
    from nsl_experiment.episodes import episode_locations
    from nsl_sim.tasks import get_task

    seed, task, actions = job
    return episode_locations(_ENV, seed, get_task(task), actions)


def dataset_offsets(data: str, split: str, sim_kwargs: dict, workers: int, cache: Path | None):
    """Return the episodes of the dataset folder ``data`` and their location labels.

    The labels are (rows, 2) float32 offsets in metres, row for row with
    ``transitions_from_episodes(episodes)``, cached in ``cache``.
    """
    from multiprocessing import get_context

    from nsl_collector.reader import read_episodes

    episodes = read_episodes(data)
    rows = sum(e.num_steps for e in episodes)
    if cache is not None and cache.exists():
        offsets = np.load(cache)["offsets"]
        if len(offsets) == rows:
            print(f"labels: {data}: {rows} rows from {cache}", file=sys.stderr, flush=True)
            return episodes, offsets
        print(
            f"labels: {cache} has {len(offsets)} rows, {data} {rows}: recomputing", file=sys.stderr
        )
    jobs = [(e.seed, e.task, e.actions) for e in episodes]
    t0 = time.perf_counter()
    parts = []
    with get_context("spawn").Pool(workers, _init_worker, (sim_kwargs, split)) as pool:
        for k, part in enumerate(pool.imap(_episode_offsets, jobs, chunksize=16)):
            parts.append(part)
            if (k + 1) % 500 == 0:
                elapsed = time.perf_counter() - t0
                print(
                    f"labels: {data}: {k + 1}/{len(jobs)} episodes ({elapsed:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    offsets = np.concatenate(parts)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, offsets=offsets)
    return episodes, offsets


def labelled_transitions(
    data: list[str], split: str, sim_kwargs: dict, workers: int, cache_dir: Path
):
    """Return the folders' Transitions and their (N, 2) float32 offsets (m), row for row."""
    from nsl_collector.reader import transitions_from_episodes

    episodes, offsets = [], []
    for d in data:
        name = "_".join(Path(d).resolve().parts[-2:])
        eps, off = dataset_offsets(d, split, sim_kwargs, workers, cache_dir / f"labels_{name}.npz")
        episodes += eps
        offsets.append(off)
    transitions = transitions_from_episodes(episodes)
    offsets = np.concatenate(offsets)
    assert len(offsets) == len(transitions), "labels and transitions are out of step"
    return transitions, offsets


def train(
    transitions,
    offsets: np.ndarray,
    steps: int,
    aux_weight: float,
    seed: int,
    threads: int,
    output: Path,
    log_every: int,
) -> dict:
    """Offline QT-Opt from a fresh network, with the location loss at ``aux_weight`` (0: none)."""
    import torch
    from torch.nn import functional as F

    from nsl_experiment.config import ExperimentConfig
    from nsl_policy.checkpoint import save_checkpoint
    from nsl_policy.model import QNetwork
    from nsl_trainer.data import LOCATION_SCALE
    from nsl_trainer.loop import run_steps, training_data
    from nsl_trainer.losses import AuxLoss, LocationHead
    from nsl_trainer.trainer import QTOptTrainer

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    # The pre-training recipe's network and QT-Opt settings; the probe adds the location loss
    # itself, through the aux_loss hook, so the recipe's own (pretrain_location_weight) is off.
    recipe = ExperimentConfig.from_dict({"seed": seed, "pretrain_location_weight": 0.0})
    model = QNetwork(recipe.model_config())
    labels = torch.as_tensor(offsets / LOCATION_SCALE)
    states = torch.as_tensor(transitions.state)
    aux_losses: list[float] = []

    class ProbeLocationLoss(AuxLoss):
        """QTOptConfig.location_weight's head, driven here through the aux-loss hook."""

        name = "probe_location"

        def __init__(self) -> None:
            self.module = LocationHead(model)

        def __call__(self, inputs) -> torch.Tensor:
            feats = inputs.features
            if aux_weight == 0:
                # The plain run still fits the head, on detached features, so both runs report
                # how well their trunk encodes the offset; the network's gradients are plain
                # QT-Opt's.
                feats = feats.detach()
            rows = inputs.rows
            loss = F.smooth_l1_loss(self.module(feats, states[rows]), labels[rows])
            aux_losses.append(float(loss.detach()))
            return loss * (aux_weight or 1.0)

    trainer = QTOptTrainer(
        model, recipe.qtopt_config(), device="cpu", aux_losses=[ProbeLocationLoss()]
    )
    t0 = time.perf_counter()

    def progress(step: int, m: dict) -> None:
        if step % log_every == 0 or step == steps:
            window = aux_losses[-log_every:]
            print(
                f"[aux {aux_weight:g}] step {step}/{steps} total loss {m['loss']:.4f} "
                f"mean_q {m['mean_q']:.3f} "
                f"location {np.mean(window):.4f} ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    data = training_data(trainer, transitions)
    summary = run_steps(trainer, data, steps, 0.0, progress=progress)
    output.parent.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(
        output, model, {"probe": "aux_location", "aux_weight": aux_weight, "steps": steps}
    )
    return {
        "aux_weight": aux_weight,
        "checkpoint": str(output),
        "checkpoint_id": ckpt,
        "location_loss_last10pct": float(np.mean(aux_losses[-max(1, steps // 10) :])),
        "total_loss": summary["loss"],
        "mean_q": summary["mean_q"],
        "seconds": summary["seconds"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", nargs="+", required=True, help="dataset folders (simulated episodes)"
    )
    ap.add_argument(
        "--split", default="train", help="object split the data was collected on (default train)"
    )
    ap.add_argument("--steps", type=int, default=4000, help="QT-Opt steps per run (default 4000)")
    ap.add_argument(
        "--aux-weight", type=float, default=1.0, help="weight of the location loss (default 1.0)"
    )
    ap.add_argument("--only", choices=("plain", "aux"), help="train one of the two runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument(
        "--workers", type=int, default=2, help="simulator processes for the labels (default 2)"
    )
    ap.add_argument(
        "--output", type=Path, required=True, help="folder for the labels and checkpoints"
    )
    ap.add_argument("--log-every", type=int, default=250)
    args = ap.parse_args()
    if args.aux_weight <= 0:
        ap.error("--aux-weight must be > 0 (the plain run is the weight-0 one)")
    from nsl_experiment.config import ExperimentConfig
    from nsl_trainer.data import LOCATION_SCALE

    sim_kwargs = ExperimentConfig().sim_kwargs()  # the world the pipeline collects in
    transitions, offsets = labelled_transitions(
        args.data, args.split, sim_kwargs, args.workers, args.output
    )
    dist = np.linalg.norm(offsets, axis=1)
    centred = np.abs(offsets - offsets.mean(0)) / LOCATION_SCALE
    blind = float(np.mean(np.where(centred < 1, 0.5 * centred**2, centred - 0.5)))
    print(
        f"labels: {len(offsets)} rows, nearest object median {100 * np.median(dist):.1f} cm; "
        f"predicting the mean gives a location loss of {blind:.4f}",
        file=sys.stderr,
        flush=True,
    )
    runs = [("plain", 0.0), ("aux", args.aux_weight)]
    results = []
    for name, weight in runs:
        if args.only and args.only != name:
            continue
        results.append(
            train(
                transitions,
                offsets,
                args.steps,
                weight,
                args.seed,
                args.threads,
                args.output / f"{name}.safetensors",
                args.log_every,
            )
        )
        print(
            f"next: ./nsl experiment evaluate --checkpoint {results[-1]['checkpoint']} "
            f"--task base --episodes 100 --seeds validation",
            file=sys.stderr,
            flush=True,
        )
    print(json.dumps({"rows": len(offsets), "runs": results}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
