"""torch's CPU threads on this machine, and the command line's start-up (README, "Threads").

- a training step (forward, backward, AdamW step) of the demo's ``small_cnn``
  classifier, batch 64 of 1x64x64 images, with 1, 2 and every CPU's torch
  threads, interleaved in one run; and the application's default
  (``options.default_threads()``: half the CPUs this process may use, 1 to 8).
- ``energymask --help``: seconds to parse and answer, in a fresh interpreter.

On a small or shared machine threads wait on each other: the figures depend on
the load, which the output records (``os.getloadavg``).

    python benchmarks/bench_threads.py [--quick] [--json benchmarks/results/threads.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from _timing import interleaved_medians, machine, write_json

from energymask import Classifier, small_cnn
from energymask.lightning_modules.app.options import default_threads


def step_with(threads: int):
    torch.manual_seed(0)
    model = Classifier(small_cnn(1), 64, 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 1, 64, 64), torch.randint(0, 10, (64,))

    def step():
        torch.set_num_threads(threads)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def help_seconds(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "energymask", "--help"], check=True,
                       capture_output=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    counts = sorted({1, 2, cpus, default_threads()})
    load_before = os.getloadavg()[0]
    medians = interleaved_medians({f"{n} threads": step_with(n) for n in counts},
                                  repeats=3 if args.quick else 10, warmup=1)
    help_s = help_seconds(3 if args.quick else 5)
    load_after = os.getloadavg()[0]
    one = medians["1 threads"]
    print(f"{cpus} CPUs, default {default_threads()} threads, load {load_before:.1f} -> "
          f"{load_after:.1f}")
    for name, seconds in medians.items():
        print(f"small_cnn training step, batch 64, {name:>11}: {seconds:.3f} s "
              f"({seconds / one:.2f}x of 1 thread)")
    print(f"energymask --help: {help_s:.2f} s")
    write_json(args.json, {"cpus": cpus, "default_threads": default_threads(),
                           "load_1min": [load_before, load_after],
                           "step_seconds": medians, "help_seconds": help_s,
                           "machine": machine()})


if __name__ == "__main__":
    main()
