"""Run torch on one thread in these tests.

The test models are tiny, and on a 2-core machine shared with other jobs (simulator processes,
parallel test runs) multi-threaded kernels slow down many-fold from contention.
"""

import torch

torch.set_num_threads(1)
