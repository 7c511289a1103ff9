import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parents[2]
for _p in (_SRC / "nsl_collector", _SRC / "nsl_policy"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
