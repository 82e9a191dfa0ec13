"""The planner's bar (issue: an SLO-aware planning policy) from a compare's output, printed.

    .venv/bin/python scripts/bench_planner.py [OUT]

Reads ``OUT/summary.json`` (default ``out/compare``, what ``gpuscale compare`` writes); run the
default compare first. Prints, per scenario where static-peak meets the SLO target, whether the
planner meets it, its GPU-hours over the oracle's, and the upstream presets cheaper than it that
also meet it; then the verdict. Printed, never asserted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gpuscale.experiments.planner_bar import planner_bar, render


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/compare")
    doc = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    print(render(planner_bar(doc)))


if __name__ == "__main__":
    main()
