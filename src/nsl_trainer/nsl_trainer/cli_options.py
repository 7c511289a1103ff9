"""Command-line options that several ``nsl train`` commands share."""

from __future__ import annotations

import argparse


def add_compute_and_network_options(group: argparse._ActionsContainer, fresh_network: str) -> None:
    """Add ``--device``, ``--threads``, ``--image-size`` and ``--width`` to ``group``.

    ``fresh_network`` ends the size options' help, naming the network they shape (e.g. "for a
    random init"): they matter only when a command starts from no checkpoint.
    """
    group.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N"
    )
    group.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    group.add_argument(
        "--image-size",
        type=int,
        default=64,
        help=f"network input size {fresh_network} (default 64)",
    )
    group.add_argument(
        "--width", type=int, default=32, help=f"network width {fresh_network} (default 32)"
    )
