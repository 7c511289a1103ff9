"""Action selection for the grasping policy: CEM over the Q-network, optional exploration."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .action_space import ACTION_DIM, BINARY_DIMS, STATE_DIM, policy_actions
from .cem import CEMConfig, cem_maximize
from .image import to_tensor
from .model import QNetwork

#: Action components a random exploration step draws (the motion, not the on/off switches).
MOTION_DIMS = [d for d in range(ACTION_DIM) if d not in BINARY_DIMS]


@dataclass(frozen=True)
class ExplorationConfig:
    """Exploration on top of the greedy CEM action (used while collecting data)."""

    epsilon: float = 0.0
    """Probability of a random motion instead of the CEM action (0..1): translation and
    rotation uniform in the action box; close/terminate stay the CEM action's."""
    noise_std: float = 0.0
    """Std of Gaussian noise added to the CEM action before clipping to [-1, 1] (>= 0)."""

    def __post_init__(self) -> None:
        if not (
            isinstance(self.epsilon, (int, float))
            and math.isfinite(self.epsilon)
            and 0.0 <= self.epsilon <= 1.0
        ):
            raise ValueError(f"ExplorationConfig.epsilon must be in [0, 1], got {self.epsilon!r}")
        if not (
            isinstance(self.noise_std, (int, float))
            and math.isfinite(self.noise_std)
            and self.noise_std >= 0.0
        ):
            raise ValueError(
                f"ExplorationConfig.noise_std must be a finite number >= 0, got {self.noise_std!r}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class ActionChoice:
    vector: np.ndarray
    """(6,) float32 normalised action in [-1, 1]."""
    q_value: float
    """Predicted success probability of the CEM action (before noise); NaN for a random action."""
    exploratory: bool
    """True when the action is random or noise was added."""


class GraspPolicy:
    """QT-Opt policy: argmax_a Q(s, a) by CEM, with epsilon-random and Gaussian exploration.

    ``swap_model`` may be called from another thread; a call to ``select_action`` uses one model
    from start to end.
    """

    def __init__(
        self,
        model: QNetwork,
        cem_config: CEMConfig | None = None,
        exploration: ExplorationConfig | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        self.cem_config = cem_config or CEMConfig()
        self.exploration = exploration or ExplorationConfig()
        self.device = torch.device(device) if device is not None else model.device
        self._lock = threading.Lock()
        self._model = self._prepare(model)
        self._rng = np.random.default_rng(seed)
        self._generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def _prepare(self, model: QNetwork) -> QNetwork:
        model = model.to(device=self.device, memory_format=torch.channels_last)
        model.eval()
        return model

    @property
    def model(self) -> QNetwork:
        return self._model

    def swap_model(self, model: QNetwork) -> None:
        """Use ``model`` from the next ``select_action`` on; its config must match the current."""
        if model.config != self._model.config:
            raise ValueError(
                "model config differs from the running one: "
                f"{model.config.differences(self._model.config)}"
            )
        model = self._prepare(model)
        with self._lock:
            self._model = model

    @torch.no_grad()
    def q_values(self, image: np.ndarray, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Success probabilities (N,) of N actions (N, 6) at one observation."""
        model = self._model
        img, st = self._inputs(model, image, state)
        a = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device).reshape(
            1, -1, ACTION_DIM
        )
        return torch.sigmoid(model.score(model.encode(img), st, a))[0].cpu().numpy()

    def _inputs(
        self, model: QNetwork, image: np.ndarray, state: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = model.config.image_size
        image = np.asarray(image)
        if image.shape != (s, s, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"image must be uint8 ({s}, {s}, 3) (network size), "
                f"got {image.dtype} {image.shape}"
            )
        st = np.asarray(state, dtype=np.float32).reshape(-1)
        if st.shape != (STATE_DIM,) or not np.all(np.isfinite(st)):
            raise ValueError(f"state must be {STATE_DIM} finite numbers, got {st.tolist()}")
        return to_tensor(image, self.device), torch.as_tensor(st, device=self.device).reshape(
            1, STATE_DIM
        )

    @torch.no_grad()
    def select_action(self, image: np.ndarray, state: np.ndarray) -> ActionChoice:
        """Choose the action for one observation.

        Raises RuntimeError if the network yields no finite value.
        """
        with self._lock:
            model = self._model
        img, st = self._inputs(model, image, state)
        features = model.encode(img)
        action, value = cem_maximize(
            lambda a: model.score(features, st, a),
            1,
            ACTION_DIM,
            self.cem_config,
            generator=self._generator,
            device=self.device,
            project=policy_actions,
        )
        vec = action[0].cpu().numpy().astype(np.float32)
        raw = float(value[0])
        q = float(torch.sigmoid(value[0]))
        if not (np.all(np.isfinite(vec)) and math.isfinite(raw) and math.isfinite(q)):
            raise RuntimeError(
                "Q-network produced no finite value for this observation "
                "(non-finite weights or input?)"
            )
        if self.exploration.epsilon > 0 and self._rng.random() < self.exploration.epsilon:
            # Random motion; close/terminate stay the policy's choice. A uniform draw there would
            # end half of all random steps' episodes early (and close the gripper on nothing).
            vec[MOTION_DIMS] = self._rng.uniform(-1.0, 1.0, len(MOTION_DIMS)).astype(np.float32)
            return ActionChoice(vector=vec, q_value=float("nan"), exploratory=True)
        exploratory = False
        if self.exploration.noise_std > 0:
            vec = np.clip(
                vec + self._rng.normal(0.0, self.exploration.noise_std, ACTION_DIM), -1.0, 1.0
            ).astype(np.float32)
            exploratory = True
        return ActionChoice(vector=vec, q_value=q, exploratory=exploratory)
