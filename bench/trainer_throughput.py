"""Gradient steps/s of offline QT-Opt at batch 64 on 64x64 images, on this machine.

  full     the trainer as users run it: nsl_trainer.runs.train("finetune", ...) on rosbag2 bags
           (the package's one training loop, nsl_trainer.loop.run_steps)
           written here (bag reading, 50/50 sampling, augmentation, CEM Bellman targets with the
           two target nets, Adam update, TensorBoard logging), timed end to end;
  ideal    the same model, target computation (CEM on target 1, min with target 2) and update on
           one pre-loaded, pre-augmented batch (no loading, sampling or augmentation);
  nchw     the ideal loop with NCHW (contiguous) instead of channels_last tensors.

  nice -n 5 .venv/bin/python bench/trainer_throughput.py [--steps 300] [--threads 2]

Prints figures; the last line is one JSON object (steps_per_s, ideal_steps_per_s, ratio_vs_ideal,
channels_last_speedup, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nsl_collector.dataset import BagRecorder, EpisodeData, StepData, load_transitions
from nsl_policy.checkpoint import init_checkpoint, load_checkpoint
from nsl_policy.model import QNetwork, QNetworkConfig
from nsl_trainer.augment import augment_images
from nsl_trainer.config import QTOptConfig
from nsl_trainer.data import TrainingData
from nsl_trainer.runs import train
from nsl_trainer.trainer import QTOptTrainer

ROOT = Path(__file__).resolve().parents[1]


def write_bags(folder: Path, episodes: int, steps: int, size: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    out = []
    for name in ("base", "target"):
        with BagRecorder(
            folder / name,
            {"task": name},
            ROOT / "src" / "nsl_msgs" / "msg",
            flush_steps=False,
            fsync=False,
        ) as rec:
            for e in range(episodes):
                recs = [
                    StepData.from_vector(
                        rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                        [float(j == steps - 1), 0.3 - 0.05 * j, j / steps],
                        rng.uniform(-1, 1, 6),
                        stamp_ns=10**18 + (e * 100 + j) * 10**6,
                    )
                    for j in range(steps)
                ]
                rec.write_episode(
                    recs,
                    EpisodeData(
                        episode_id=f"{name}-{e}",
                        task=name,
                        seed=e,
                        success=bool(e % 3 == 0),
                        stamp_ns=10**18 + (e * 100 + 99) * 10**6,
                    ),
                )
        out.append(folder / name)
    return out[0], out[1]


def ideal_loop(trainer, batch, steps: int, nchw: bool = False) -> float:
    """Seconds per step of the update on one pre-loaded batch (same target computation)."""
    images, state, action, reward, done, next_images, next_state = batch
    fmt = torch.contiguous_format if nchw else torch.channels_last
    images, next_images = (
        images.contiguous(memory_format=fmt),
        next_images.contiguous(memory_format=fmt),
    )

    def one() -> None:
        y = trainer.bellman_target(reward, done, next_images, next_state)
        logits = trainer.model(images, state, action)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.grad_clip)
        trainer.optimizer.step()
        trainer.step_count += 1
        trainer.update_targets()
        float(loss.detach())

    for _ in range(2):
        one()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t) / steps


def nchw_network(config):
    """Return the same Q-network computing in NCHW (no channels_last inputs or features)."""

    class NCHW(QNetwork):
        def encode(self, images):
            return self.trunk(images.contiguous())

        def score(self, features, state, actions):
            b, n, _ = actions.shape
            x = torch.cat([actions, state.unsqueeze(1).expand(b, n, state.shape[1])], dim=2)
            emb = self.embed(x)
            merged = (features.unsqueeze(1) + emb[:, :, :, None, None]).reshape(
                b * n, *features.shape[1:]
            )
            return self.fc(self.head(merged.contiguous())).reshape(b, n)

    net = NCHW(config)
    return net.to(memory_format=torch.contiguous_format)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=300,
        help="timed steps of the full and ideal loops (default 300; the full "
        "run's start-up, bag loading and final save are included, so few steps understate it)",
    )
    ap.add_argument("--nchw-steps", type=int, default=5)
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating full/ideal rounds; the median ratio is reported",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    ap.add_argument("--episodes", type=int, default=100, help="episodes per bag (x5 steps)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = QTOptConfig(batch_size=64)
    net_config = QNetworkConfig(image_size=64)
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
        f"torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load {open('/proc/loadavg').read().split()[:3]}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, target = write_bags(tmp, args.episodes, 5, 64)
        init = tmp / "init.safetensors"
        init_checkpoint(init, net_config, seed=0)
        # Warm-up run (imports, allocator), then the timed run.
        train(
            "finetune",
            [base],
            [target],
            3,
            output_path=str(tmp / "warm.safetensors"),
            init_checkpoint=str(init),
            config=config,
            device="cpu",
            tensorboard=True,
        )

        trainer = QTOptTrainer(load_checkpoint(init).model, config, "cpu")
        data = TrainingData(
            load_transitions([base]),
            load_transitions([target]),
            64,
            trainer.device,
            crop_pad=config.crop_pad,
        )
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(0, data.n_base + data.n_target, (64,), generator=g)
        nidx = data.next_index[idx]
        batch = (
            augment_images(data.image[idx], config, g),
            data.state[idx],
            data.action[idx],
            data.reward[idx],
            data.done[idx],
            augment_images(data.image[nidx], config, g),
            data.state[nidx],
        )
        # Full and ideal runs alternate so that drift of the machine's speed hits both alike.
        fulls, ideals = [], []
        for r in range(args.rounds):
            t = time.perf_counter()
            result = train(
                "finetune",
                [base],
                [target],
                args.steps,
                output_path=str(tmp / f"ft{r}.safetensors"),
                init_checkpoint=str(init),
                config=config,
                device="cpu",
                tensorboard=True,
            )
            fulls.append(time.perf_counter() - t)
            ideals.append(ideal_loop(trainer, batch, args.steps))
            print(
                f"round {r + 1}: full trainer {args.steps / fulls[-1]:.2f} steps/s (incl. loading "
                f"{2 * args.episodes * 5} transitions, target fraction "
                f"{result.metrics['target_fraction']:.2f}); "
                f"ideal loop {1 / ideals[-1]:.2f} steps/s"
            )
        ratios = sorted((args.steps / f) * i for f, i in zip(fulls, ideals))
        full_s, ideal = float(np.median(fulls)), float(np.median(ideals))
        print(
            f"median: full {args.steps / full_s:.2f} steps/s, ideal {1 / ideal:.2f} steps/s; "
            f"ratio per round {[round(x, 3) for x in ratios]}"
        )
        nchw_trainer = QTOptTrainer(nchw_network(net_config), config, "cpu")
        nchw_trainer.model.to(memory_format=torch.contiguous_format)
        for tnet in (nchw_trainer.target1, nchw_trainer.target2):
            tnet.to(memory_format=torch.contiguous_format)
        nchw = ideal_loop(nchw_trainer, batch, args.nchw_steps, nchw=True)
        print(
            f"ideal loop in NCHW: {1 / nchw:.2f} steps/s; "
            f"channels_last speed-up x{nchw / ideal:.2f}"
        )
    out = {
        "steps_per_s": round(args.steps / full_s, 3),
        "ideal_steps_per_s": round(1 / ideal, 3),
        "ratio_vs_ideal": round(float(np.median(ratios)), 3),
        "ratio_min_max": [round(ratios[0], 3), round(ratios[-1], 3)],
        "channels_last_speedup": round(nchw / ideal, 2),
        "nchw_steps_per_s": round(1 / nchw, 3),
        "batch_size": 64,
        "image_size": 64,
        "threads": torch.get_num_threads(),
        "loadavg": open("/proc/loadavg").read().split()[0],
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
