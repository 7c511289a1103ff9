"""Make the ROS-free libraries importable without installing them, and run torch on one thread:
the test models are tiny, and on a 2-core machine shared with other jobs (simulator processes,
parallel test runs) multi-threaded kernels slow down many-fold from contention.
"""

import os
import sys

_SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
for _pkg in ("nsl_policy", "nsl_trainer", "nsl_collector"):
    _p = os.path.join(_SRC, _pkg)
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

torch.set_num_threads(1)
