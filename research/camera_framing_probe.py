"""Measure whether camera framing or trunk design lets a supervised trunk localise objects.

Issue 31's perception probe: does a tighter camera, a finer merge map, CoordConv, GroupNorm
or the keypoint head lower the localisation error at the first frame?

Renders the noisy oracle's frames at 256 px with the sim's camera (FOV 38 deg), then makes the
64 px image a narrower-FOV camera on the same axis would see by cropping the centre and
resizing (area filter; the FOV 38 row is resized the same way, so rows compare fairly). Trains
the QNetwork trunk (given feature_size) + MLP to regress the offset gripper -> nearest object
and reports test-object errors at the first frame and over all frames.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from nsl_policy.model import QNetwork, QNetworkConfig
from nsl_sim.env import CAMERA_FOV, GraspEnv, SimConfig

RENDER = 256


def collect(split: str, seeds: range, noise_max: float = 0.5):
    images, states, offsets, first = [], [], [], []
    with GraspEnv(SimConfig(image_size=RENDER, object_split=split)) as env:
        for seed in seeds:
            rng = np.random.default_rng([7, seed])
            noise = rng.uniform(0.0, noise_max)
            obs = env.reset(seed=seed, task="base")
            done, k = False, 0
            while not done:
                off = env.nearest_object_offset(env.commanded_pose()[0])
                if off is not None:
                    images.append(obs.image)
                    states.append([float(obs.gripper_closed), obs.height, obs.step_fraction])
                    offsets.append(off.astype(np.float32))
                    first.append(k == 0)
                t, r, c, term = env.oracle_action()
                t = np.asarray(t, float) + rng.normal(0, noise * env.config.max_translation, 3)
                res = env.step(
                    np.clip(t, -env.config.max_translation, env.config.max_translation), r, c, term
                )
                done, obs, k = res.done, res.observation, k + 1
    return (np.stack(images), np.array(states, np.float32), np.stack(offsets), np.array(first))


def cached(path: Path, split: str, seeds: range):
    if path.exists():
        d = np.load(path)
        return d["images"], d["states"], d["offsets"], d["first"]
    out = collect(split, seeds)
    np.savez(path, images=out[0], states=out[1], offsets=out[2], first=out[3])
    return out


def framed(images: np.ndarray, fov: float, size: int = 64, dy: float = 0.0) -> np.ndarray:
    frac = math.tan(math.radians(fov / 2)) / math.tan(math.radians(CAMERA_FOV / 2))
    side = int(round(RENDER * frac))
    y0 = int(round((RENDER - side) / 2 + dy * RENDER))
    y0 = min(max(y0, 0), RENDER - side)
    x0 = (RENDER - side) // 2
    return np.stack(
        [
            cv2.resize(
                im[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=cv2.INTER_AREA
            )
            for im in images
        ]
    )


def train_eval(train, test, fov, feature_size, steps, seed, dy, extra=None):
    torch.manual_seed(seed)
    cfg = QNetworkConfig(image_size=64, feature_size=feature_size, **(extra or {}))
    net = QNetwork(cfg)
    xtr = torch.from_numpy(framed(train[0], fov, dy=dy)).permute(0, 3, 1, 2).float().div(255)
    xte = torch.from_numpy(framed(test[0], fov, dy=dy)).permute(0, 3, 1, 2).float().div(255)
    with torch.no_grad():
        fd = net.encode(xtr[:1]).flatten(1).shape[1]
    head = nn.Sequential(nn.Linear(fd + 3, 128), nn.ReLU(), nn.Linear(128, 2))
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, 1e-3)
    st_tr, st_te = torch.from_numpy(train[1]), torch.from_numpy(test[1])
    y_tr, y_te = torch.from_numpy(train[2]) / 0.05, torch.from_numpy(test[2])
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(xtr), (64,), generator=g)
        pred = head(torch.cat([net.encode(xtr[i]).flatten(1), st_tr[i]], 1))
        loss = nn.functional.smooth_l1_loss(pred, y_tr[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (
            torch.cat(
                [
                    head(
                        torch.cat([net.encode(xte[j : j + 256]).flatten(1), st_te[j : j + 256]], 1)
                    )
                    for j in range(0, len(xte), 256)
                ]
            )
            * 0.05
        )
    err = (pred - y_te).norm(dim=1).numpy() * 100
    first = test[3]
    return {
        "fov": fov,
        "feature_size": feature_size,
        "dy": dy,
        "median_cm_all": round(float(np.median(err)), 2),
        "median_cm_first": round(float(np.median(err[first])), 2),
        "within_2cm_first": round(float((err[first] < 2).mean()), 3),
        "frames_test": int(len(err)),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="runs/camera_framing")
    ap.add_argument("--train-episodes", type=int, default=200)
    ap.add_argument("--test-episodes", type=int, default=50)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--configs", default="38:4,26:4,26:8")
    ap.add_argument("--dy", type=float, default=0.0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    Path(a.cache).mkdir(parents=True, exist_ok=True)
    t = time.time()
    train = cached(
        Path(a.cache) / f"train_{a.train_episodes}.npz", "train", range(a.train_episodes)
    )
    test = cached(
        Path(a.cache) / f"test_{a.test_episodes}.npz",
        "test",
        range(5_000_000, 5_000_000 + a.test_episodes),
    )
    print(
        f"frames {len(train[0])} train {len(test[0])} test in {time.time() - t:.0f}s",
        file=sys.stderr,
        flush=True,
    )
    blind = np.median(np.linalg.norm(test[2] - train[2].mean(0), axis=1)) * 100
    blind_first = np.median(np.linalg.norm(test[2][test[3]] - train[2].mean(0), axis=1)) * 100
    print(
        json.dumps(
            {
                "blind_median_cm_all": round(float(blind), 2),
                "blind_median_cm_first": round(float(blind_first), 2),
            }
        ),
        flush=True,
    )
    for c in a.configs.split(","):
        parts = c.split(":")
        fov, fs = parts[0], parts[1]
        extra = {}
        for opt in parts[2:]:
            if opt == "coord":
                extra["coord_channels"] = True
            if opt == "group":
                extra["norm"] = "group"
            if opt == "kp":
                extra.update(head="keypoints", fc_width=256)
        t = time.time()
        r = train_eval(train, test, float(fov), int(fs), a.steps, 0, a.dy, extra)
        r["extra"] = extra
        r["seconds"] = round(time.time() - t)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
