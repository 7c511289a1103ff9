"""The update core of offline QT-Opt (Kalashnikov et al. 2018), as "Never Stop Learning" uses it.

One update step:
  1. sample a batch: each element comes from the target-task data with probability
     ``target_fraction`` and from the base data otherwise;
  2. a* = argmax_a' Q_targ1(s', a') by CEM (or the best of N uniform samples) on target network 1;
  3. y = r + discount * (1 - done) * min(sigmoid Q_targ1(s', a*), sigmoid Q_targ2(s', a*))
     (clipped double Q-learning; Q_targ1 is a Polyak average of the online network, Q_targ2 a
     lagged copy of Q_targ1 refreshed every ``target2_lag`` steps); optionally lower-bounded by
     (``mc_lower_bound``) or mixed with (``mc_mix``) the recorded episode's discounted return;
  4. loss = binary cross-entropy of sigmoid Q(s, a) against y, plus the registered auxiliary
     losses (:mod:`.losses`); one Adam step; then the target networks follow.
Images are augmented (:mod:`.augment`) on the fly.

Random numbers (batch sampling, augmentation, target-action search) are counter-based: before
every step the trainer's generators are seeded from (config.seed, process rank, step number).
The sampler's whole state is therefore the step counter, so a resumed run draws exactly the
batches an uninterrupted one would, also under DistributedDataParallel (each rank draws its own
batches; gradients are averaged by DDP, so all ranks keep identical weights).
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from nsl_policy.action_space import ACTION_DIM, policy_actions
from nsl_policy.cem import cem_maximize
from nsl_policy.model import QNetwork, default_device

from .config import QTOptConfig
from .data import TrainingData
from .losses import AuxLoss, ConservativeLoss, LocationLoss, LossInputs

METRIC_KEYS = (
    "loss",
    "mean_q",
    "q_std",
    "q_min",
    "q_max",
    "mean_target",
    "td_error",
    "td_error_max",
    "grad_norm",
    "batch_target_fraction",
)
"""Per-step metrics returned by ``QTOptTrainer.train_step`` (floats), besides the aux losses'."""


def stream_seed(seed: int, rank: int, step: int, stream: int) -> int:
    """Return the seed of random stream ``stream`` for gradient step ``step`` on ``rank``."""
    digest = hashlib.blake2b(f"{seed}:{rank}:{step}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def dist_info() -> tuple[int, int]:
    """Return (world size, rank) of the default process group, (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def td_target(
    reward: torch.Tensor,
    done: torch.Tensor,
    next_logit1: torch.Tensor,
    next_logit2: torch.Tensor,
    discount: float,
) -> torch.Tensor:
    """Return the clipped double-Q Bellman target in probability space.

    y = r + discount * (1 - done) * min(sigmoid(l1), sigmoid(l2)), clamped to [0, 1] (the
    cross-entropy needs a probability; with QT-Opt's 0/1 terminal reward it already is one).
    """
    not_done = 1.0 - done.to(reward.dtype)
    next_q = torch.minimum(torch.sigmoid(next_logit1), torch.sigmoid(next_logit2))
    return (reward + discount * not_done * next_q).clamp(0.0, 1.0)


class QTOptTrainer:
    """Offline QT-Opt updates of ``model`` (trained in place) with its two target networks.

    ``learning_rate`` (default ``config.learning_rate``) is the optimiser's rate from the start.
    ``aux_losses`` are added to the built-in ones that ``config`` switches on.
    """

    def __init__(
        self,
        model: QNetwork,
        config: QTOptConfig | None = None,
        device: torch.device | str | None = None,
        learning_rate: float | None = None,
        aux_losses: Sequence[AuxLoss] = (),
    ) -> None:
        self.config = config or QTOptConfig()
        lr = self.config.learning_rate if learning_rate is None else float(learning_rate)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a positive number, got {learning_rate!r}")
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(device=self.device, memory_format=torch.channels_last).train()
        self.world_size, self.rank = dist_info()
        losses = self._builtin_losses() + list(aux_losses)
        self.aux_losses: dict[str, AuxLoss] = {}
        """The registered auxiliary losses by name, in the order their terms are added."""
        for loss in losses:
            if loss.name in self.aux_losses:
                raise ValueError(f"two auxiliary losses are named {loss.name!r}")
            if self.world_size > 1:  # its trunk pass would bypass DDP's gradient averaging
                raise ValueError(
                    f"{loss.setting} is not supported with several processes "
                    "(DistributedDataParallel); train in one process or switch it off"
                )
            if loss.module is not None:
                loss.module.to(self.device)
            self.aux_losses[loss.name] = loss
        self.ddp: torch.nn.Module | None = None
        if self.world_size > 1:
            # DDP broadcasts rank 0's weights here and averages gradients in backward(); the
            # target networks are copied afterwards, so every rank starts from the same ones.
            ids = None
            if self.device.type == "cuda":
                index = self.device.index
                ids = [index if index is not None else torch.cuda.current_device()]
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.target1 = self._frozen_copy(self.model)
        self.target2 = self._frozen_copy(self.model)
        groups = [{"params": list(self.model.parameters())}] + [
            {"params": list(loss.module.parameters())}
            for loss in self.aux_losses.values()
            if loss.module is not None
        ]
        self.optimizer = torch.optim.Adam(groups, lr=lr)
        self._gen = torch.Generator().manual_seed(self.config.seed)  # CPU: batches, augmentation
        self._dev_gen = torch.Generator(device=self.device).manual_seed(self.config.seed + 1)
        self.step_count = 0
        self.samples_base = 0
        self.samples_target = 0
        self.last_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        """(row indices, from_target) of the latest batch (CPU tensors), for inspection."""

    def _builtin_losses(self) -> list[AuxLoss]:
        cfg = self.config
        if cfg.location_weight > 0 and cfg.conservative_weight > 0:
            raise ValueError(
                "QTOptConfig.location_weight and conservative_weight cannot both be > 0 (not "
                "implemented together)"
            )
        losses: list[AuxLoss] = []
        if cfg.conservative_weight > 0:
            losses.append(
                ConservativeLoss(cfg.conservative_weight, cfg.conservative_samples, cfg.target_cem)
            )
        if cfg.location_weight > 0:
            # Its own seed, so the network's init and the global RNG stay as without the head.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stream_seed(cfg.seed, self.rank, 0, 2))
                losses.append(LocationLoss(self.model, cfg.location_weight))
        return losses

    @staticmethod
    def _frozen_copy(model: QNetwork) -> QNetwork:
        m = copy.deepcopy(model).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    @property
    def learning_rate(self) -> float:
        """The optimiser's learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def needs_location(self) -> bool:
        """Whether a registered loss trains on location labels."""
        return any(loss.needs_location for loss in self.aux_losses.values())

    # --- pieces of one step (public so tests can check them one by one) -------------------
    def sample_indices(
        self, n_base: int, n_target: int, target_fraction: float, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return rows of the combined set (base rows first) and which are target rows.

        Each element is a target row with probability ``target_fraction``. Returns (indices
        (B,) int64, from_target (B,) bool).
        """
        if n_target == 0:
            from_target = torch.zeros(batch_size, dtype=torch.bool)
        elif n_base == 0:
            from_target = torch.ones(batch_size, dtype=torch.bool)
        else:
            from_target = torch.rand(batch_size, generator=self._gen) < target_fraction
        base_idx = torch.randint(0, max(n_base, 1), (batch_size,), generator=self._gen)
        target_idx = n_base + torch.randint(
            0, max(n_target, 1), (batch_size,), generator=self._gen
        )
        return torch.where(from_target, target_idx, base_idx), from_target

    def with_grasps(
        self, idx: torch.Tensor, from_target: torch.Tensor, data: TrainingData
    ) -> torch.Tensor:
        """Return ``idx`` with rows redrawn, with probability ``grasp_fraction``, as grasps.

        A redrawn row is a random episode-final row of the same part (base or target).
        """
        frac = self.config.grasp_fraction
        if frac <= 0:
            return idx
        out = idx.clone()
        swap = torch.rand(len(idx), generator=self._gen) < frac
        for part, rows in ((~from_target, data.final_rows[0]), (from_target, data.final_rows[1])):
            pick = swap & part
            if len(rows) and bool(pick.any()):
                out[pick] = rows[
                    torch.randint(0, len(rows), (int(pick.sum()),), generator=self._gen)
                ]
        return out

    @torch.no_grad()
    def target_action(
        self, next_images: torch.Tensor, next_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return a* = argmax_a Q_targ1(s', a) and its target-1 logit, ((B, 6), (B,))."""
        net = self.target1
        feats = net.encode(next_images)
        b = next_images.shape[0]
        if self.config.target_action == "cem":
            return cem_maximize(
                lambda a: net.score(feats, next_state, a),
                b,
                ACTION_DIM,
                self.config.target_cem,
                generator=self._dev_gen,
                device=self.device,
                project=policy_actions,
            )
        shape = (b, self.config.target_samples, ACTION_DIM)
        actions = torch.rand(shape, generator=self._dev_gen, device=self.device) * 2 - 1
        actions = policy_actions(actions)
        logits = net.score(feats, next_state, actions)
        best, idx = logits.max(dim=1)
        return actions[torch.arange(b, device=self.device), idx], best

    @torch.no_grad()
    def bellman_target(
        self,
        reward: torch.Tensor,
        done: torch.Tensor,
        next_images: torch.Tensor,
        next_state: torch.Tensor,
    ) -> torch.Tensor:
        """Return y for a batch; next states are only evaluated where the episode goes on."""
        y = reward.clone().clamp_(0.0, 1.0)
        live = (~done).nonzero(as_tuple=True)[0]
        if live.numel() == 0:
            return y
        ni, ns = next_images[live], next_state[live]
        a_star, logit1 = self.target_action(ni, ns)
        logit2 = self.target2(ni, ns, a_star)
        y[live] = td_target(reward[live], done[live], logit1, logit2, self.config.discount)
        return y

    @torch.no_grad()
    def update_targets(self) -> None:
        """Polyak-average target 1 towards the online network; refresh the lagged target 2."""
        p = self.config.polyak
        for t, s in zip(self.target1.parameters(), self.model.parameters()):
            t.lerp_(s, 1.0 - p)
        if self.step_count % self.config.target2_lag == 0:
            self.target2.load_state_dict(self.target1.state_dict())

    def seed_step(self) -> None:
        """Seed the generators for the next step from (seed, rank, step) (see the module doc)."""
        self._gen.manual_seed(stream_seed(self.config.seed, self.rank, self.step_count, 0))
        self._dev_gen.manual_seed(stream_seed(self.config.seed, self.rank, self.step_count, 1))

    def _loss(
        self, data: TrainingData, idx: torch.Tensor, images: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Return (total loss, online logits of the data actions, reported aux terms)."""
        state, action = data.state[idx], data.action[idx]
        if not self.aux_losses:
            logits = (self.ddp or self.model)(images, state, action)
            return F.binary_cross_entropy_with_logits(logits, y), logits, []
        features = self.model.encode(images)  # one trunk pass for every term
        candidates = [action.unsqueeze(1)]
        for aux in self.aux_losses.values():
            extra = aux.candidate_actions(self.model, features, state, self._dev_gen, self.device)
            if extra is not None:
                candidates.append(extra)
        candidate_logits = self.model.score(features, state, torch.cat(candidates, dim=1))
        logits = candidate_logits[:, 0]
        inputs = LossInputs(images, idx, state, action, features, logits, candidate_logits, data)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        reported = []
        for aux in self.aux_losses.values():
            term = aux(inputs)
            loss = loss + aux.weight * term
            if aux.metric is not None:
                reported.append(term.detach())
        return loss, logits, reported

    def train_step(self, data: TrainingData, target_fraction: float) -> dict[str, float]:
        """Run one QT-Opt update (see the module doc); return this batch's metrics."""
        cfg = self.config
        self.seed_step()
        idx, from_target = self.sample_indices(
            data.n_base, data.n_target, target_fraction, cfg.batch_size
        )
        idx = self.with_grasps(idx, from_target, data)
        self.last_batch = (idx, from_target)
        idx = idx.to(self.device)
        nidx = data.next_index[idx]
        reward, done = data.reward[idx], data.done[idx]
        if bool(done.all()):  # no bootstrap needed: s' is never looked at
            images = next_images = data.augmented(idx, cfg, self._gen)
        else:  # s and s' in one batch: half the per-call cost
            both = data.augmented(torch.cat([idx, nidx]), cfg, self._gen)
            images, next_images = both[: len(idx)], both[len(idx) :]
        y = self.bellman_target(reward, done, next_images, data.state[nidx])
        if cfg.mc_lower_bound or cfg.mc_mix > 0:
            episode_return = data.mc_return(cfg.discount)[idx]
            if cfg.mc_lower_bound:
                y = torch.maximum(y, episode_return)
            if cfg.mc_mix > 0:
                y = torch.lerp(y, episode_return, cfg.mc_mix)
        loss, logits, reported = self._loss(data, idx, images, y)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"QT-Opt loss became non-finite at step {self.step_count + 1}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self.model.parameters() if p.grad is not None])
            )
        self.optimizer.step()
        self.step_count += 1
        self.update_targets()
        n_t = int(from_target.sum())
        self.samples_target += n_t
        self.samples_base += cfg.batch_size - n_t
        with torch.no_grad():
            q = torch.sigmoid(logits)
            td = (q - y).abs()
            stats = torch.stack(
                [
                    loss.detach(),
                    q.mean(),
                    q.std(unbiased=False),
                    q.min(),
                    q.max(),
                    y.mean(),
                    td.mean(),
                    td.max(),
                    grad_norm.detach().float(),
                    *reported,
                ]
            ).tolist()  # one device sync
        out = dict(zip(METRIC_KEYS[:9], stats[:9]))
        out["batch_target_fraction"] = n_t / cfg.batch_size
        metrics = [a.metric for a in self.aux_losses.values() if a.metric is not None]
        out.update(zip(metrics, stats[9:]))
        return out
