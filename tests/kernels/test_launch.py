"""Recording the launches of the Triton wrappers (energymask.kernels.launch)."""

import pytest
import torch

from energymask.kernels import launch as launching


def test_recording_collects_launches_and_runs_nothing():
    calls = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kw: calls.append((grid, args, kw))

    kernel = Kernel()
    with launching.recording() as launches:
        launching.launch(kernel, (2, 3), (1, 2.0), num_warps=8, BLOCK=16)
    assert calls == []
    assert launches == [launching.Launch(kernel, (2, 3), (1, 2.0), {"BLOCK": 16}, 8)]
    launching.launch(kernel, (1,), (5,), BLOCK=4)  # outside: launched
    assert calls == [((1,), (5,), {"num_warps": 4, "maxnreg": 255, "BLOCK": 4})]


def test_wrappers_record_on_meta_tensors():
    pytest.importorskip("triton")
    potts = pytest.importorskip("energymask.kernels.potts_triton")
    masks = torch.empty(4, 2, 3, 8, 8, dtype=torch.uint8, device="meta")
    unary = torch.empty(2, 3, 8, 8, device="meta")
    with launching.recording() as launches:
        out = potts.sweep_launch(masks, unary, 0.5, 1.0, 1, 7)
    assert out.device.type == "meta" and out.dtype == torch.uint8
    (item,) = launches
    assert item.kernel is potts._gibbs_sweep and item.args[:1] == (masks,)
