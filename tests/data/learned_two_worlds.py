"""The model file of the two-worlds case of ``kind: learned`` (``learned-two-worlds.npz``): a network
set by hand, not trained, so the case shows scaling both ways on a 1-s GPU utilization window.

Scores on x = GPU util / 100 for the actions (-1, 0, +1, +2): 25 - 100x, 0, 100x - 60, 200x - 140:
below 25 % it removes a replica, above 60 % it adds one, above 80 % two. Regenerate with
``.venv/bin/python tests/data/learned_two_worlds.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpuscale.policies.base import Aggregation, Metric, SignalSpec
from gpuscale.policies.learned import ActionSpec, Network, ObservationSpec

PATH = Path(__file__).with_name("learned-two-worlds.npz")


def network() -> Network:
    obs = ObservationSpec((SignalSpec(Metric.GPU_UTIL, 1, Aggregation.POD_MEAN),), (100.0,), 10.0, 1)
    w = np.zeros((4, 4))
    w[0] = [-100.0, 0.0, 100.0, 200.0]
    b = np.array([25.0, 0.0, -60.0, -140.0])
    trained = {"by": "hand", "source": "tests/data/learned_two_worlds.py"}
    return Network("ppo", obs, ActionSpec("delta", (-1, 0, 1, 2)), ((w, b),), "tanh", 5.0, trained)


if __name__ == "__main__":
    network().save(PATH)
