"""Masked-residual semantics: masked positions pass, the model trains, resumes and reloads."""

import io

import pytest
import torch
import torchvision
from torch import nn

from energymask.ersm import EnergyMask2d, forcing
from energymask.masked_residual import (
    MaskedBlock,
    MaskPoint,
    masked_residual,
    masking,
    pool_mask,
)
from energymask.sparse_masks import blob_mask
from energymask.surgery import insert_after


def _resnet18(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=5)


def test_masked_positions_keep_their_values_and_all_ones_is_the_plain_model():
    model = _resnet18().eval()
    plain = _resnet18().eval()
    masked_residual(model, "layer2")
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    model.layer3[1].register_forward_hook(lambda m, i, o: seen.update(x=i[0], out=o))
    mask = blob_mask(2, (8, 8), 0.4, seed=1)
    with torch.no_grad(), masking(model, mask):
        model(x)
    m4 = pool_mask(mask.bool(), 2, (4, 4))
    off = ~m4[:, None].expand_as(seen["x"])
    assert torch.equal(seen["out"][off], seen["x"][off])  # exactly what they were
    assert not torch.equal(seen["out"][~off], seen["x"][~off])
    with torch.no_grad(), masking(model, torch.ones(2, 8, 8)):
        assert torch.equal(model(x), plain(x))


def test_striding_block_gives_the_shortcut_at_masked_positions():
    model = _resnet18().eval()
    masked_residual(model, "layer2", until="layer3")
    block = model.layer3[0].block
    x = torch.randn(1, 3, 64, 64)
    seen = {}
    model.layer3[0].register_forward_hook(lambda m, i, o: seen.update(x=i[0], out=o))
    mask = torch.zeros(1, 8, 8)
    mask[0, :3, :3] = 1  # pooled by 2 (ceil): rows and columns 0..1 kept at 4x4
    with torch.no_grad(), masking(model, mask):
        model(x)
        shortcut = block.downsample(seen["x"])
        dense = block(seen["x"])
    assert torch.equal(seen["out"][..., 2:, :], shortcut[..., 2:, :])
    assert torch.equal(seen["out"][..., :2, :2], dense[..., :2, :2])
    assert isinstance(model.layer4[0], nn.Module) and not isinstance(model.layer4[0], MaskedBlock)


def test_gradients_match_the_dense_masked_computation():
    model = _resnet18().train()
    ref = _resnet18().train()
    masked_residual(model, "layer3")
    x = torch.randn(2, 3, 32, 32)
    mask = blob_mask(2, (2, 2), 0.5, seed=2)
    with masking(model, mask):
        model(x).square().sum().backward()
    # by hand: x ⊙ M after layer3, then where(M_b, block(x), shortcut(x)) for layer4's blocks
    h = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
    h = ref.layer3(ref.layer2(ref.layer1(h))) * mask[:, None]
    m1 = mask.bool()[:, None, ::2, ::2] | mask.bool()[:, None, 1::2, ::2]
    m1 = m1 | mask.bool()[:, None, ::2, 1::2] | mask.bool()[:, None, 1::2, 1::2]
    h = torch.where(m1, ref.layer4[0](h), ref.layer4[0].downsample(h))
    h = torch.where(m1, ref.layer4[1](h), h)
    ref.fc(torch.flatten(ref.avgpool(h), 1)).square().sum().backward()
    assert torch.allclose(model.conv1.weight.grad, ref.conv1.weight.grad, atol=1e-5, rtol=1e-4)
    assert torch.allclose(
        model.layer4[0].block.conv2.weight.grad,
        ref.layer4[0].conv2.weight.grad,
        atol=1e-5,
        rtol=1e-4,
    )


def _train(model, steps, opt, mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=g)
        y = torch.randint(0, 5, (4,), generator=g)
        with masking(model, mask):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_trains_resumes_and_reloads():
    mask = blob_mask(4, (4, 4), 0.5, seed=3)
    fitted = masked_residual(_resnet18(), "layer2").train()
    opt = torch.optim.SGD(fitted.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    losses = []
    for _ in range(5):  # one batch, learned
        with masking(fitted, mask):
            loss = nn.functional.cross_entropy(fitted(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

    straight = masked_residual(_resnet18(), "layer2").train()
    opt = torch.optim.SGD(straight.parameters(), lr=0.05, momentum=0.9)
    _train(straight, 6, opt, mask)

    first = masked_residual(_resnet18(), "layer2").train()
    opt1 = torch.optim.SGD(first.parameters(), lr=0.05, momentum=0.9)
    _train(first, 3, opt1, mask)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = masked_residual(_resnet18(seed=9), "layer2").train()
    resumed.load_state_dict(saved["model"])
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
    opt2.load_state_dict(saved["opt"])
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # the batches the first run already used
        torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)
    for _ in range(3):
        x = torch.randn(4, 3, 32, 32, generator=g)
        y = torch.randint(0, 5, (4,), generator=g)
        with masking(resumed, mask):
            loss = nn.functional.cross_entropy(resumed(x), y)
        opt2.zero_grad()
        loss.backward()
        opt2.step()
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert (
        "layer3.0.block.conv1.weight" in saved["model"]
        and "layer2.module.0.conv1.weight" in saved["model"]
    )


def test_mask_from_a_forced_or_hard_ersm_layer():
    model = _resnet18().eval()
    insert_after(model, ["layer2"], lambda name, channels: EnergyMask2d(channels, token_size=2))
    masked_residual(model, "layer2").eval()
    layer = model.layer2.module.layer
    x = torch.randn(2, 3, 64, 64)
    tokens = blob_mask(2, (4, 4), 0.5, seed=5)
    with torch.no_grad(), forcing(layer, tokens):
        from_layer = model(x)
    cells = tokens.repeat_interleave(2, 1).repeat_interleave(2, 2)
    with torch.no_grad(), forcing(layer, tokens), masking(model, cells):
        given = model(x)
    assert torch.equal(from_layer, given)
    with pytest.raises(ValueError, match="keep map is not binary"), torch.no_grad():
        model(x)
    model.layer2.module.layer = EnergyMask2d(layer.channels, layer.settings, hard_inference=True)
    with torch.no_grad():
        model.eval()(x)  # 1[keep >= 0.5]: binary


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="after must name a submodule"):
        masked_residual(_resnet18(), "layer9")
    with pytest.raises(ValueError, match="until must name a submodule"):
        masked_residual(_resnet18(), "layer2", until="nope")
    with pytest.raises(ValueError, match="no residual block"):
        masked_residual(_resnet18(), "layer4")
    with pytest.raises(ValueError, match="modules with parameters outside residual blocks"):
        masked_residual(_resnet18(), "conv1")
    model = masked_residual(_resnet18(), "layer2")
    with pytest.raises(ValueError, match="already a masked-residual model"):
        masked_residual(model, "layer3")
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="needs a mask"):
        model(x)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, H, W\) = \(1, 8, 8\)"):
        with masking(model, torch.ones(1, 4, 4)):
            model(x)
    with pytest.raises(ValueError, match="mask values must be in"):
        with masking(model, torch.full((1, 8, 8), 0.5)):
            pass
    with pytest.raises(TypeError, match="mask must be a tensor"):
        with masking(model, [[1]]):
            pass
    with pytest.raises(ValueError, match="exactly one MaskPoint"):
        with masking(_resnet18(), torch.ones(1, 8, 8)):
            pass
    with pytest.raises(ValueError, match="pooled by stride 2 has grid"):
        pool_mask(torch.ones(1, 5, 5, dtype=torch.bool), 2, (2, 2))
    assert isinstance(model.layer2, MaskPoint)


def test_a_learned_hard_gate_masks_the_blocks_and_trains():
    # gate="hard" (ours, docs/design.md §3): the layer's binary mask, in training too
    model = _resnet18().train()
    insert_after(model, ["layer2"], lambda name, c: EnergyMask2d(c, gate="hard", bias_init=0.0))
    masked_residual(model, "layer2")
    model(torch.randn(2, 3, 64, 64)).square().sum().backward()
    layer = model.layer2.module.layer
    assert set(layer.last_keep.unique().tolist()) <= {0.0, 1.0}
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_nearest_pool_takes_the_cell_the_downsample_reads():
    # ours, pool="nearest": M_b = M[::s, ::s]; masked outputs of a striding block read only
    # masked cells, so every masked position holds one vector (docs/design.md §11)
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 0, 1] = mask[0, 2, 2] = mask[0, 4, 4] = True  # ceil grid 5 -> 3
    want = torch.zeros(1, 3, 3, dtype=torch.bool)
    want[0, 1, 1] = want[0, 2, 2] = True
    assert torch.equal(pool_mask(mask, 2, (3, 3), "nearest"), want)
    assert pool_mask(mask, 2, (3, 3), "max")[0, 0, 0]  # max: the window of (0, 1) counts
    model = masked_residual(_resnet18(), "layer2", pool="nearest").eval()
    seen = {}
    for name in ("layer3.0", "layer4.0"):
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: seen.update({name: (i[0], o)})
        )
    given = blob_mask(2, (8, 8), 0.4, seed=4)
    with torch.no_grad(), masking(model, given):
        model(torch.randn(2, 3, 64, 64))
    m4 = given.bool()[:, ::2, ::2]
    m2 = m4[:, ::2, ::2]
    block = model.layer3[0].block
    inp, out = seen["layer3.0"]
    with torch.no_grad():
        shortcut, dense = block.downsample(inp), block(inp)
    off = ~m4[:, None].expand_as(out)
    assert torch.equal(out[off], shortcut[off]) and torch.equal(out[~off], dense[~off])
    for name, m in (("layer3.0", m4), ("layer4.0", m2)):
        out = seen[name][1].permute(0, 2, 3, 1)[~m]  # (masked positions, C)
        assert len(out) and torch.equal(out, out[:1].expand_as(out))  # one vector


def test_nearest_pool_is_refused_where_the_downsample_reads_the_window():
    import timm

    model = timm.create_model("resnet18d", num_classes=3)  # avg-pool + 1x1 downsample
    with pytest.raises(ValueError, match="pool='nearest' is not exact for these blocks.*AvgPool"):
        masked_residual(model, "layer2", pool="nearest")
    model = _resnet18()
    model.layer3[0].downsample[0].padding = (1, 1)
    with pytest.raises(ValueError, match=r"padding \(1, 1\).*needs 1x1, 0, 1"):
        masked_residual(model, "layer2", pool="nearest")
    model = _resnet18()
    model.layer3[0].downsample.append(nn.ReLU())
    with pytest.raises(ValueError, match=r"\['ReLU'\] after its convolution"):
        masked_residual(model, "layer2", pool="nearest")
    masked_residual(model, "layer2", pool="max")  # max pooling needs nothing of it
    with pytest.raises(ValueError, match="pool must be one of"):
        masked_residual(_resnet18(), "layer2", pool="mean")
    with pytest.raises(ValueError, match="pool must be one of"):
        pool_mask(torch.ones(1, 4, 4, dtype=torch.bool), 2, (2, 2), "mean")


def test_the_downsample_runs_once_per_forward():
    model = masked_residual(_resnet18(), "layer2").train()
    with masking(model, blob_mask(2, (8, 8), 0.5)):
        model(torch.randn(2, 3, 64, 64))
    assert model.layer3[0].block.downsample[1].num_batches_tracked.item() == 1


def _hard_gate_resnet(block_gradient: bool, pool: str = "max") -> nn.Module:
    model = _resnet18().train()
    torch.manual_seed(1)
    insert_after(model, ["layer3"], lambda name, c: EnergyMask2d(c, gate="hard", bias_init=0.0))
    return masked_residual(model, "layer3", pool=pool, block_gradient=block_gradient)


def _by_hand(x, pool, block_gradient):
    """Loss of the masked-residual model written out: x ⊙ M_st, then s + M_b·(block − s)."""
    ref = _hard_gate_resnet(False)
    inserted = ref.layer3.module
    h = inserted.block(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
    h = inserted.layer(h)  # x ⊙ M_st, M_st the straight-through binary mask
    m = inserted.layer.executed_keep
    m = m if block_gradient else m.detach()
    m = nn.functional.max_pool2d(m[:, None], 2, 2, ceil_mode=True) if pool == "max" \
        else m[:, None, ::2, ::2]
    first, second = ref.layer4[0].block, ref.layer4[1].block
    short = first.downsample(h)
    h = short + m * (first(h) - short)
    h = h + m * (second(h) - h)
    ref.fc(torch.flatten(ref.avgpool(h), 1)).square().sum().backward()
    return ref


@pytest.mark.parametrize("pool", ["max", "nearest"])
def test_the_hard_gate_gets_the_gradient_of_what_is_executed(pool):
    # closed tokens keep the straight-through gradient of x ⊙ M (the mask point does not
    # multiply the ERSM layer's output again); ours, block_gradient=True: the forward is
    # unchanged and the layer also gets each block's choice, the gradient of the
    # multiplicative form s(x) + M_b·(block(x) − s(x)) with M_b the straight-through mask
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    plain, model = _hard_gate_resnet(False, pool), _hard_gate_resnet(True, pool)
    out = model(x)
    assert torch.equal(out, plain(x))
    keep = model.layer3.module.layer.last_keep
    assert 0 < keep.sum() < keep.numel()  # some tokens kept, some not: the gradient matters
    out.square().sum().backward()
    plain(x).square().sum().backward()
    for got, block_gradient in ((plain, False), (model, True)):
        want = _by_hand(x, pool, block_gradient)
        for name in ("weight", "bias"):
            g = getattr(got.layer3.module.layer, name).grad
            w = getattr(want.layer3.module.layer, name).grad
            assert torch.allclose(g, w, atol=1e-5, rtol=1e-3), (name, block_gradient)
        assert torch.allclose(got.conv1.weight.grad, want.conv1.weight.grad, atol=1e-5, rtol=1e-3)
    with_blocks = model.layer3.module.layer.weight.grad
    assert not torch.allclose(with_blocks, plain.layer3.module.layer.weight.grad, atol=1e-4)


def test_block_gradient_changes_nothing_in_eval_or_with_given_masks():
    x = torch.randn(2, 3, 64, 64)
    model = _hard_gate_resnet(True)
    with masking(model, blob_mask(2, (4, 4), 0.5, seed=1)):
        model(x)
    assert model.layer3.state.graph_mask is None  # a given mask has no graph
    model.eval()
    with torch.no_grad():
        model(x)
    assert model.layer3.state.graph_mask is None and model.layer3.module.layer.executed_keep is None
    with pytest.raises(TypeError, match="block_gradient must be True or False, but got 'yes'"):
        masked_residual(_resnet18(), "layer2", block_gradient="yes")


def test_a_model_after_a_training_step_copies_and_pickles():
    # the graph-holding tensors of the last training forward (the ERSM layer's regulariser
    # and executed keep, the blocks' graph mask) are not state: copies start without them
    import copy

    model = _hard_gate_resnet(True)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    layer = model.layer3.module.layer
    assert layer.executed_keep.requires_grad and model.layer3.state.graph_mask is not None
    twin = copy.deepcopy(model)
    assert twin.layer3.module.layer.executed_keep is None
    assert twin.layer3.module.layer.regularizer is None
    assert twin.layer3.state.graph_mask is None and twin.layer3.state.block_gradient
    torch.save(model, io.BytesIO())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), model.eval()(x))
