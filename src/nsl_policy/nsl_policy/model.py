"""The QT-Opt grasping Q-network (after tensor2robot's qtopt grasping model, scaled down).

Q(image, gripper state, action) -> logit; ``sigmoid(logit)`` is the predicted probability that
the grasp succeeds.

Layout (``c`` = ``QNetworkConfig.width``)::

    image (B,3,S,S) in [0,1]
      -> conv 5x5 stride 2, c                                       (trunk, "encode")
      -> [maxpool 2 -> conv 3x3, c] until the map is <= feature_size
      -> trunk_depth x conv 3x3, c

    head "conv" (the default; every checkpoint made before the "keypoints" head existed):
    [action (6) ++ gripper state (3)] -> MLP -> c-vector
    trunk features + action embedding (broadcast over the map)      ("score")
      -> head_depth x conv 3x3, c -> adaptive max pool 2x2 -> FC fc_width x2 -> 1 logit

    head "keypoints" (spatial softmax, Levine et al. 2016):
    trunk features -> conv 1x1, c -> softmax over each channel's map
      -> expected (x, y) of each channel: 2c numbers                 ("encode")
    [keypoints ++ action (6) ++ gripper state (3)] -> FC fc_width x2 -> 1 logit   ("score")

The trunk only depends on the image, so ``encode`` runs once per observation and ``score``
re-uses its output for all N action samples of CEM (the features are broadcast, not
recomputed). Convolutions run in ``torch.channels_last`` memory format: on CPUs this is several
times faster than NCHW for this network.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from .action_space import ACTION_DIM, HEIGHT_INDEX, STATE_DIM
from .model_recipe import KEYPOINTS_RECIPE  # noqa: F401  (re-exported: the measured recipe)

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 472
HEADS = ("conv", "keypoints")
NORMS = ("none", "group")


@dataclass(frozen=True)
class QNetworkConfig:
    """Architecture of a ``QNetwork``.

    Checkpoints store it; a checkpoint only loads into a network with the same config.
    """

    image_size: int = 64
    """Side of the square RGB input image, pixels (32..472)."""
    width: int = 32
    """Channels of every convolution and of the action embedding (4..256)."""
    trunk_depth: int = 2
    """3x3 convolutions on the image features before the action is merged in (0..8)."""
    head_depth: int = 2
    """3x3 convolutions after the action is merged in (1..8)."""
    feature_size: int = 4
    """The trunk max-pools until its feature map is at most this many cells wide (2..64). The
    head runs once per (observation, CEM sample), so its cost grows with feature_size^2: 4 keeps
    a batch-64 QT-Opt step with a CEM Bellman target fast on a CPU."""
    embed_width: int = 64
    """Hidden units of the action/state embedding MLP (4..1024)."""
    fc_width: int = 64
    """Units of each of the two fully connected layers before the output (4..1024)."""
    coord_channels: bool = False
    """Append two constant channels holding each pixel's x and y in [-1, 1] to the image
    ("CoordConv", Liu et al. 2018): convolutions are translation-invariant and max-pooling drops
    where a feature was, but grasping needs where things are relative to the fixed camera."""
    head: str = "conv"
    """How the action meets the image. "conv": the action embedding is added to every cell of
    the trunk's feature map and convolutions + max-pooling score it (translation-invariant:
    "where" survives only through the map's coarse cells). "keypoints": a spatial softmax turns
    each trunk channel into the expected (x, y) of its activation, and an MLP scores those
    ``width`` image points together with the action; the head then costs almost nothing per CEM
    sample, so ``feature_size`` can be large (16 keeps 4-pixel cells at 64x64). ``head_depth``
    and ``embed_width`` only apply to "conv"."""
    norm: str = "none"
    """Normalisation after every convolution, before its ReLU: "none" (every checkpoint made
    before this field existed) or "group" (GroupNorm, 8 groups; per-sample, so CEM's batches
    and single observations are scored alike). QT-Opt's network normalises its convolutions
    (batch norm)."""
    height_scale: float = 1.0
    """The gripper height (m) is multiplied by this before the embedding (its range is only
    ~0-0.3 m against the actions' [-1, 1]). 1.0, the raw height, is what every shipped checkpoint
    was trained with; whether a larger value learns faster is not measured yet."""

    def __post_init__(self) -> None:
        def check_int(name: str, lo: int, hi: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"QNetworkConfig.{name} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"QNetworkConfig.{name} must be in [{lo}, {hi}], got {value}")

        check_int("image_size", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        check_int("width", 4, 256)
        check_int("trunk_depth", 0, 8)
        check_int("head_depth", 1, 8)
        check_int("feature_size", 2, 64)
        check_int("embed_width", 4, 1024)
        check_int("fc_width", 4, 1024)
        if (
            isinstance(self.height_scale, bool)
            or not isinstance(self.height_scale, (int, float))
            or not (math.isfinite(self.height_scale) and 0 < self.height_scale <= 1000)
        ):
            raise ValueError(
                "QNetworkConfig.height_scale must be a number in (0, 1000], "
                f"got {self.height_scale!r}"
            )
        object.__setattr__(self, "height_scale", float(self.height_scale))
        if self.norm not in NORMS:
            raise ValueError(f"QNetworkConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.norm == "group" and self.width % 8:
            raise ValueError(
                f"QNetworkConfig.norm 'group' needs a width divisible by 8, got {self.width}"
            )
        if self.head not in HEADS:
            raise ValueError(f"QNetworkConfig.head must be one of {HEADS}, got {self.head!r}")
        if not isinstance(self.coord_channels, bool):
            raise ValueError(
                f"QNetworkConfig.coord_channels must be true or false, got {self.coord_channels!r}"
            )

    @property
    def trunk_stages(self) -> int:
        """Number of max-pool stages after the stride-2 stem convolution."""
        return max(0, math.ceil(math.log2((self.image_size / 2) / self.feature_size)))

    @property
    def feature_map_size(self) -> int:
        """Side of the trunk's output feature map."""
        size = (self.image_size + 2 * 2 - 5) // 2 + 1  # stem conv 5x5 stride 2 pad 2
        for _ in range(self.trunk_stages):
            size = (size + 1) // 2  # maxpool 2, ceil_mode
        return size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QNetworkConfig":
        """Config from a dict; unknown keys are an error (a newer format, or a typo)."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown QNetworkConfig fields: {unknown}")
        return cls(**data)

    def differences(self, other: "QNetworkConfig") -> dict[str, tuple[Any, Any]]:
        """``{field: (self value, other value)}`` for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def _conv_relu(cin: int, cout: int, k: int, norm: str, stride: int = 1) -> list[nn.Module]:
    """Conv [-> GroupNorm] -> ReLU."""
    layers: list[nn.Module] = [_conv(cin, cout, k, stride)]
    if norm == "group":
        layers.append(nn.GroupNorm(8, cout))
    return layers + [nn.ReLU(inplace=True)]


class QNetwork(nn.Module):
    """QT-Opt Q-function. See the module docstring for the layout."""

    def __init__(self, config: QNetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or QNetworkConfig()
        c = self.config
        trunk: list[nn.Module] = _conv_relu(
            5 if c.coord_channels else 3, c.width, 5, c.norm, stride=2
        )
        for _ in range(c.trunk_stages):
            trunk += [nn.MaxPool2d(2, ceil_mode=True), *_conv_relu(c.width, c.width, 3, c.norm)]
        for _ in range(c.trunk_depth):
            trunk += _conv_relu(c.width, c.width, 3, c.norm)
        if c.head == "keypoints":
            trunk.append(
                nn.Conv2d(c.width, c.width, 1)
            )  # keypoint logits: no ReLU before the softmax
        self.trunk = nn.Sequential(*trunk)
        if c.head == "keypoints":
            self.keypoints = SpatialSoftmax(c.feature_map_size)
            fc_in = 2 * c.width + ACTION_DIM + STATE_DIM
        else:
            self.embed = nn.Sequential(
                nn.Linear(ACTION_DIM + STATE_DIM, c.embed_width),
                nn.ReLU(inplace=True),
                nn.Linear(c.embed_width, c.width),
            )
            head: list[nn.Module] = []
            for _ in range(c.head_depth):
                head += _conv_relu(c.width, c.width, 3, c.norm)
            head += [nn.AdaptiveMaxPool2d(2), nn.Flatten()]
            self.head = nn.Sequential(*head)
            fc_in = c.width * 4
        self.fc = nn.Sequential(
            nn.Linear(fc_in, c.fc_width),
            nn.ReLU(inplace=True),
            nn.Linear(c.fc_width, c.fc_width),
            nn.ReLU(inplace=True),
            nn.Linear(c.fc_width, 1),
        )
        self._init_weights()
        self.to(memory_format=torch.channels_last)

    def _init_weights(self) -> None:
        """Initialise Kaiming-normal weights (ReLU gain) and zero biases.

        With PyTorch's default init the image signal fades through the unnormalised conv stack
        (feature spread across images ~1e-4 at 64x64), so the Q-function learned to ignore the
        image; see docs/results/decisions.md. The output layer keeps a small init (Q starts near
        0.5).
        """
        layers = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for m in layers[:-1]:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        nn.init.normal_(layers[-1].weight, std=0.01)
        nn.init.zeros_(layers[-1].bias)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Return the image features of float images (B, 3, S, S) in [0, 1].

        They are the trunk's map (B, C, h, w), channels_last, for the "conv" head; keypoints
        (B, 2C) for the "keypoints" head.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        s = self.config.image_size
        if images.shape[2] != s or images.shape[3] != s:
            raise ValueError(
                f"images must be {s}x{s} (the network's image_size), "
                f"got {images.shape[2]}x{images.shape[3]}"
            )
        if self.config.coord_channels:
            ramp = torch.linspace(-1.0, 1.0, s, dtype=images.dtype, device=images.device)
            coords = torch.stack(torch.meshgrid(ramp, ramp, indexing="xy")).expand(
                images.shape[0], 2, s, s
            )
            images = torch.cat([images, coords], dim=1)
        features = self.trunk(images.contiguous(memory_format=torch.channels_last))
        return self.keypoints(features) if self.config.head == "keypoints" else features

    def score(
        self, features: torch.Tensor, state: torch.Tensor, actions: torch.Tensor
    ) -> torch.Tensor:
        """Return the logits (B, N) of N actions (B, N, 6) per observation.

        They are computed from ``encode``'s features and the gripper state (B, 3); the features
        are broadcast over N.
        """
        if actions.dim() != 3 or actions.shape[2] != ACTION_DIM:
            raise ValueError(f"actions must be (B, N, {ACTION_DIM}), got {tuple(actions.shape)}")
        b, n, _ = actions.shape
        if features.shape[0] != b or state.shape != (b, STATE_DIM):
            raise ValueError(
                f"batch mismatch: features {tuple(features.shape)}, "
                f"state {tuple(state.shape)}, actions {tuple(actions.shape)}"
            )
        state = state.to(actions.dtype)
        if self.config.height_scale != 1.0:  # the default skips this on CEM's hot path
            state = state.clone()
            state[:, HEIGHT_INDEX] *= self.config.height_scale
        x = torch.cat([actions, state.unsqueeze(1).expand(b, n, STATE_DIM)], dim=2)
        if self.config.head == "keypoints":
            x = torch.cat([features.unsqueeze(1).expand(b, n, features.shape[1]), x], dim=2)
            return self.fc(x).reshape(b, n)
        emb = self.embed(x)  # (B, N, C)
        # NHWC view of the (channels_last) features; broadcast-add the embedding over the map.
        f = features.permute(0, 2, 3, 1)  # (B, h, w, C)
        merged = f.unsqueeze(1) + emb[:, :, None, None, :]  # (B, N, h, w, C), one allocation
        h, w, c = f.shape[1:]
        merged = merged.reshape(b * n, h, w, c).permute(
            0, 3, 1, 2
        )  # NCHW view, channels_last memory
        out = self.fc(self.head(merged))
        return out.reshape(b, n)

    def forward(
        self, images: torch.Tensor, state: torch.Tensor, actions: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B,) of one action (B, 6) per image (B, 3, S, S) and gripper state (B, 3)."""
        if actions.dim() != 2:
            raise ValueError(f"actions must be (B, {ACTION_DIM}), got {tuple(actions.shape)}")
        return self.score(self.encode(images), state, actions.unsqueeze(1)).squeeze(1)


class SpatialSoftmax(nn.Module):
    """Spatial soft-argmax: (B, C, h, w) maps -> (B, 2C) keypoints.

    Each channel gives the expected (x, y) in [-1, 1] of its softmax over its h x w cells, with
    one learned temperature (Levine et al. 2016, "End-to-end training of deep visuomotor
    policies").
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        ramp = torch.linspace(-1.0, 1.0, size)
        ys, xs = torch.meshgrid(ramp, ramp, indexing="ij")
        self.register_buffer(
            "grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False
        )
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        if h * w != self.grid.shape[0]:
            raise ValueError(
                f"feature map {h}x{w} does not match the keypoint grid "
                f"({self.grid.shape[0]} cells)"
            )
        logits = features.reshape(b, c, h * w) / self.log_temperature.exp()
        points = torch.softmax(logits, dim=2) @ self.grid.to(features.dtype)  # (B, C, 2)
        return points.reshape(b, 2 * c)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
