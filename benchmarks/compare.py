"""The side-by-side comparison behind benchmarks/RESULTS.md: ``fastnn bench`` three times.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/compare.py \\
        [--rounds 5] [--yardstick ../shared/bench/mlp_numpy.py] [--under-load] [--out DIR]

1. Training: one epoch at batch 32 and 128 and one full-batch step, fastnn vs the NumPy
   implementation vs PyTorch (and the NumPy yardstick script when given), each in its own
   process, alternating; the kernel rows; a bar chart.
2. Agreement: the first 50 losses and the test accuracy after one epoch.
3. With ``--under-load``: each implementation with its default threads and with one thread
   while one ``python -c "while True: pass"`` competes for a core.

Writes RESULTS.md, training.png and results.json into --out (default: benchmarks/).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

from fastnn import bench
from fastnn._files import atomic_write_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--yardstick", metavar="PY", help="shared/bench/mlp_numpy.py")
    parser.add_argument("--under-load", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent), metavar="DIR")
    args = parser.parse_args()
    out = Path(args.out)
    common = ["--rounds", str(args.rounds)]
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        parts = [
            (
                "Training time",
                ["--plot", str(out / "training.png"), "--json", str(out / "results.json")]
                + (["--yardstick", args.yardstick] if args.yardstick else []),
            ),
            ("Agreement", ["--check"]),
        ]
        if args.under_load:
            parts.append(("Under a competing load", ["--under-load", "--batch", "128"]))
        for title, extra in parts:
            md = Path(tmp) / "part.md"
            print(f"== {title}", flush=True)
            status = bench.main([*common, *extra, "--markdown", str(md)])
            if status != 0:
                return status
            sections.append(f"## {title}\n\n{md.read_text()}")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        "# fastnn against NumPy and PyTorch\n\n"
        f"Produced by `python benchmarks/compare.py {' '.join(sys.argv[1:])}` on {stamp}. "
        "Times are medians over all timed epochs (or full-batch steps) of "
        f"{args.rounds} alternating rounds of one process per implementation; a ratio is the "
        "reference's time over fastnn's (above 1: fastnn is faster).\n\n" + "\n".join(sections)
    )
    atomic_write_bytes(out / "RESULTS.md", text.encode())
    print(f"wrote {out / 'RESULTS.md'}, {out / 'training.png'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
