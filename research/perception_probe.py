r"""Check, supervised and outside QT-Opt, whether the Q-network's trunk sees where objects are.

Runs the scripted oracle with per-episode Gaussian motion noise, as in the bootstrap mix (but
without its random steps), on train objects, and at
every step records the camera image, the gripper state and, read from the simulator (the
policy never sees it), the horizontal offset from the commanded gripper position to the nearest
object's centre: the thing a grasping policy must find. Then it trains the QNetwork trunk of the
chosen head and image size, plus a small MLP, to regress that offset from the image and state,
and reports the error on frames of held-out test objects (validation seeds, never evaluation).

    .venv/bin/python research/perception_probe.py --image-size 64 --head conv \
        --cache runs/perception

If the trunk can localise the nearest object to well under the 3 cm that separates a grasp
from a miss (docs/results/decisions.md), the base policy's misses are a learning problem of
QT-Opt, not a limit of what the network can see at that resolution. The "blind" line is the
error of predicting the training mean: what a network that ignores the image gets. The "start"
figures are each episode's first frame, where the policy chooses which way to go.
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def collect(
    image_size: int, split: str, seeds: range, noise_max: float, progress_every: int = 100
):
    """(images uint8 (N,S,S,3), states float32 (N,3), offsets float32 (N,2) in metres)."""
    import numpy as np

    from nsl_experiment.episodes import policy_state
    from nsl_sim.env import GraspEnv, SimConfig

    images, states, offsets = [], [], []
    with GraspEnv(SimConfig(image_size=image_size, object_split=split)) as env:
        for n, seed in enumerate(seeds):
            rng = np.random.default_rng([7, seed])
            noise = rng.uniform(0.0, noise_max)
            obs = env.reset(seed=seed, task="base")
            done = False
            while not done:
                offset = env.nearest_object_offset(env.commanded_pose()[0])
                if offset is not None:
                    images.append(obs.image)
                    states.append(policy_state(obs))
                    offsets.append(offset.astype(np.float32))
                t, r, c, term = env.oracle_action()
                t = np.asarray(t, dtype=float) + rng.normal(
                    0.0, noise * env.config.max_translation, 3
                )
                res = env.step(
                    np.clip(t, -env.config.max_translation, env.config.max_translation), r, c, term
                )
                done, obs = res.done, res.observation
            if progress_every and (n + 1) % progress_every == 0:
                print(
                    f"  {split}: {n + 1}/{len(seeds)} episodes, {len(images)} frames",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"  {split}: collected {len(seeds)} episodes, {len(images)} frames",
        file=sys.stderr,
        flush=True,
    )
    return np.stack(images), np.stack(states).astype(np.float32), np.stack(offsets)


def cached_frames(image_size: int, split: str, seeds: range, noise_max: float, cache: str | None):
    """Return ``collect``'s frames, kept in and reused from ``cache`` when a folder is given.

    The cache holds one .npz per size, split, seeds and noise.
    """
    import numpy as np

    if cache is None:
        return collect(image_size, split, seeds, noise_max)
    path = (
        Path(cache)
        / f"frames_{image_size}px_{split}_{seeds.start}_{len(seeds)}_noise{noise_max:g}.npz"
    )
    if path.exists():
        with np.load(path) as data:
            return data["images"], data["states"], data["offsets"]
    images, states, offsets = collect(image_size, split, seeds, noise_max)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=images, states=states, offsets=offsets)
    tmp.replace(path)
    return images, states, offsets


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="camera image and network input size (default 64)",
    )
    ap.add_argument(
        "--head",
        choices=("conv", "keypoints"),
        default="conv",
        help="which QNetwork trunk: the conv head's (4x4 map) or the keypoint head's (16x16 map)",
    )
    ap.add_argument(
        "--train-episodes",
        type=int,
        default=2400,
        help="oracle episodes on train objects (default 2400)",
    )
    ap.add_argument(
        "--test-episodes",
        type=int,
        default=150,
        help="oracle episodes on test objects (default 150)",
    )
    ap.add_argument(
        "--noise-max",
        type=float,
        default=0.5,
        help="per-episode motion noise std, drawn from U(0, this), in units of the step clip "
        "(default 0.5)",
    )
    ap.add_argument("--steps", type=int, default=4000, help="gradient steps (default 4000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cache",
        default=None,
        help="folder to keep the collected frames in (.npz per size, split and count) and reuse "
        "them from",
    )
    args = ap.parse_args()
    if min(args.train_episodes, args.test_episodes, args.steps, args.batch_size) < 1:
        ap.error("--train-episodes, --test-episodes, --steps and --batch-size must be >= 1")

    import numpy as np
    import torch
    from torch import nn

    from nsl_experiment.seeds import VALIDATION_SEEDS
    from nsl_policy.model import QNetwork, QNetworkConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.monotonic()

    # Train seeds sit in the bootstrap range; test seeds are validation seeds on test objects.
    def frames(split: str, seeds: range):
        return cached_frames(args.image_size, split, seeds, args.noise_max, args.cache)

    train = frames("train", range(args.train_episodes))
    test = frames("test", range(VALIDATION_SEEDS, VALIDATION_SEEDS + args.test_episodes))
    collect_s = time.monotonic() - t0
    print(
        f"frames: {len(train[0])} train, {len(test[0])} test ({collect_s:.0f} s)", file=sys.stderr
    )

    config = QNetworkConfig(
        image_size=args.image_size,
        head=args.head,
        **({"feature_size": 16, "fc_width": 256} if args.head == "keypoints" else {}),
    )
    trunk = QNetwork(config)
    with torch.no_grad():
        feat_dim = (
            trunk.encode(torch.zeros(1, 3, args.image_size, args.image_size)).flatten(1).shape[1]
        )
    readout = nn.Sequential(
        nn.Linear(feat_dim + 3, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2)
    )
    params = list(trunk.parameters()) + list(readout.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    scale = 10.0  # regress offsets in units of 10 cm

    def to_tensors(images, states, offsets):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        return x, torch.from_numpy(states), torch.from_numpy(offsets) * scale

    xtr, str_, ytr = to_tensors(*train)
    xte, ste, yte = to_tensors(*test)

    def predict(x, s):
        return readout(torch.cat([trunk.encode(x).flatten(1), s], dim=1))

    gen = torch.Generator().manual_seed(args.seed)
    t1 = time.monotonic()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(xtr), (args.batch_size,), generator=gen)
        loss = nn.functional.mse_loss(predict(xtr[idx], str_[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 10) == 0:
            print(
                f"  step {step}/{args.steps} train mse {loss.item():.4f}",
                file=sys.stderr,
                flush=True,
            )
    train_s = time.monotonic() - t1

    with torch.no_grad():
        pred = torch.cat(
            [predict(xte[i : i + 256], ste[i : i + 256]) for i in range(0, len(xte), 256)]
        )
    err_cm = ((pred - yte).norm(dim=1) / scale * 100).numpy()
    blind_cm = ((ytr.mean(0) - yte).norm(dim=1) / scale * 100).numpy()
    far = (
        yte.norm(dim=1) / scale > 0.03
    ).numpy()  # frames where the object is not yet under the gripper
    cos = torch.nn.functional.cosine_similarity(pred, yte, dim=1).numpy()
    start = (
        ste[:, 2] == 0
    ).numpy()  # each episode's first frame: where the policy must choose a direction
    result = {
        "image_size": args.image_size,
        "head": args.head,
        "train_frames": int(len(xtr)),
        "test_frames": int(len(xte)),
        "steps": args.steps,
        "median_error_cm": round(float(np.median(err_cm)), 2),
        "rmse_cm": round(float(np.sqrt(np.mean(err_cm**2))), 2),
        "blind_median_error_cm": round(float(np.median(blind_cm)), 2),
        "blind_rmse_cm": round(float(np.sqrt(np.mean(blind_cm**2))), 2),
        "within_3cm": round(float(np.mean(err_cm < 3.0)), 3),
        "start_median_error_cm": round(float(np.median(err_cm[start])), 2),
        "start_blind_median_error_cm": round(float(np.median(blind_cm[start])), 2),
        "direction_within_45deg_far": round(float(np.mean(cos[far] > np.cos(np.pi / 4))), 3)
        if far.any()
        else None,
        "collect_s": round(collect_s),
        "train_s": round(train_s),
    }
    within_45deg_far = 100 * (result["direction_within_45deg_far"] or 0)
    print(
        f"{args.head} trunk at {args.image_size}px: nearest-object offset error median "
        f"{result['median_error_cm']} cm (blind {result['blind_median_error_cm']} cm); at the "
        f"start pose {result['start_median_error_cm']} cm "
        f"(blind {result['start_blind_median_error_cm']} cm); "
        f"{100 * result['within_3cm']:.0f}% of test frames within 3 cm, direction within 45 deg "
        f"on {within_45deg_far:.0f}% of frames with the object > 3 cm away"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
