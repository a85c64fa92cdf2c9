"""Cost of exact-resume augmentation: loading an item under generators seeded by
(seed, epoch, index) (``energymask.data.resumable.seeded_generators``), per item.

Side by side in one run, interleaved: a bare item fetch (``dataset[i]`` of a
3x64x64 tensor with a random flip and noise), the same under
``seeded_generators`` in the main process (seed, then restore the three global
generators) and as in a DataLoader worker (seed only). Medians in microseconds.

    python benchmarks/bench_item_seeding.py [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.utils.data._utils.worker as worker
from _timing import interleaved_medians, machine, write_json

from energymask.data.resumable import item_seed, seeded_generators

ITEMS = 200  # per timed call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    image = torch.rand(3, 64, 64)

    def item() -> torch.Tensor:
        x = image.flip(-1) if random.random() < 0.5 else image
        return x + 0.1 * torch.randn_like(x)

    def bare() -> None:
        for _ in range(ITEMS):
            item()

    def seeded(in_worker: bool) -> None:
        saved = worker._worker_info
        if in_worker:  # what get_worker_info() sees inside a DataLoader worker
            worker._worker_info = worker.WorkerInfo(id=0, num_workers=1, seed=0, dataset=None)
        try:
            for i in range(ITEMS):
                with seeded_generators(item_seed(0, 1, i)):
                    item()
        finally:
            worker._worker_info = saved

    medians = interleaved_medians({"bare": bare, "main_process": lambda: seeded(False),
                                   "worker": lambda: seeded(True)}, args.repeats)
    per_item = {k: v / ITEMS * 1e6 for k, v in medians.items()}
    for name, us in per_item.items():
        print(f"{name:>13}: {us:7.1f} us per item ({us / per_item['bare']:.2f}x bare)")
    print(f"seeding overhead: {per_item['main_process'] - per_item['bare']:.0f} us per item in "
          f"the main process, {per_item['worker'] - per_item['bare']:.0f} us in a worker")
    write_json(args.json, {"us_per_item": per_item, "machine": machine()})


if __name__ == "__main__":
    main()
