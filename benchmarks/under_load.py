"""fastnn's training epoch with and without a competing busy process, default threads vs 1.

    python benchmarks/under_load.py [--epochs 3] [--batch 128]

Each configuration runs in its own process (a fresh thread pool and straggler guard) on the
real Fashion-MNIST; a competing load is one `python -c "while True: pass"` for the whole run.
Prints the median epoch time of each and, under load, the ratio default / 1 thread (the
target: at most 1.5). Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, sys, numpy as np, fastnn as fnn
from fastnn import _cpu
threads, epochs, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if threads:
    fnn.set_num_threads(threads)
train, _ = fnn.data.fashion_mnist()
rng = np.random.default_rng(0)
model = fnn.Sequential(fnn.Dense(784, 32, fnn.relu, rng=rng), fnn.Dense(32, 10, rng=rng))
opt = fnn.optim.SGD(model.parameters(), lr=0.1)
h = fnn.fit(model, train, optimizer=opt, epochs=epochs, batch_size=batch, verbose=0, rng=rng)
print(json.dumps({"seconds": h["seconds"], "threads": fnn.get_num_threads(),
                  "trips": _cpu.config()["straggler_trips"]}))
"""


def run(threads: int, epochs: int, batch: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads), str(epochs), str(batch)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    results = {}
    for loaded in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
        try:
            for threads in (0, 1):  # 0: the default thread count
                r = run(threads, args.epochs, args.batch)
                key = f"{'load' if loaded else 'quiet'}/{'default' if threads == 0 else 1}"
                results[key] = {"median_s": statistics.median(r["seconds"]), **r}
                print(
                    f"{key:14s} {results[key]['median_s']:.3f} s per epoch "
                    f"(threads {r['threads']}, guard trips {r['trips']})",
                    flush=True,
                )
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    ratio = results["load/default"]["median_s"] / results["load/1"]["median_s"]
    print(f"under load: default threads / 1 thread = {ratio:.2f} (target <= 1.5)")
    print("RESULT " + json.dumps({"ratio_under_load": ratio, **results}))


if __name__ == "__main__":
    main()
