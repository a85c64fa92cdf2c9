"""ERSMCallback: insertion, training, regulariser exactness, errors, resume."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from energymask.ersm import EnergyMask2d, collect_regularizer
from energymask.lightning_modules import ersm_callback
from energymask.lightning_modules.ersm_callback import ERSMCallback, ersm_settings
from energymask.surgery import insert_after

from helpers import TinyNet, quiet_trainer, tiny_loader

torch.set_num_threads(1)


class Net(TinyNet, pl.LightningModule):
    """The tiny classifier (conv 4->8 at stride 2 last), ERSM's regulariser added by hand if
    ``manual_reg``."""

    def __init__(self, manual_reg: bool = False, example: bool = True) -> None:
        super().__init__(width=8, stride=2, example=example)
        self.manual_reg = manual_reg

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.manual_reg:
            loss = loss + collect_regularizer(self)
        return loss


class GradRecorder(pl.Callback):
    def __init__(self):
        self.grads = {}

    def setup(self, trainer, pl_module, stage):  # same ERSM weights in every mode
        for m in pl_module.modules():
            if isinstance(m, EnergyMask2d):
                m.weight.data = torch.linspace(-0.3, 0.3, m.weight.numel())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()
                      if ".layer." in n}


def test_inserts_and_trains_layer():
    pl.seed_everything(0)
    model = Net()
    cb = ERSMCallback(layers="features.2", lam=1.0, gamma=1.0, bias_init=0.0)
    quiet_trainer(max_epochs=2, callbacks=[cb]).fit(model, tiny_loader())
    layer = model.features[2].layer
    assert isinstance(layer, EnergyMask2d) and cb.layers["features.2"] is layer
    assert layer.bias.item() != 0.0  # trained
    assert "training_step" not in vars(model)  # wrapper removed at teardown


def test_automatic_layer_choice_and_logged_stats(tmp_path):
    pl.seed_everything(0)
    model = Net()
    cb = ERSMCallback(bias_init=0.0)
    t = quiet_trainer(callbacks=[cb], logger=pl.loggers.CSVLogger(tmp_path))
    t.fit(model, tiny_loader())
    assert list(cb.layers) == ["features.2"]  # last submodule with a 4D output
    logged = {k for k in t.logged_metrics if k.startswith("ersm/features.2/")}
    keys = ("keep_ratio", "hard_sparsity", "relative_sparsity", "keep_gini", "entropy",
            "undecided", "soft_undecided", "energy", "reg")
    assert logged == {f"ersm/features.2/{key}" for key in keys}
    assert 0 <= t.logged_metrics["ersm/features.2/keep_ratio"] <= 1


class MaskedNet(Net):
    """Batches (x, y, object_mask) as the project's data modules give; a validation step."""

    def validation_step(self, batch, batch_idx):
        self(batch[0])


def masked_loader(n=8, batch_size=4):
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 1, 8, 8)
    masks[:, :, 2:6, 2:6] = 1
    return DataLoader(TensorDataset(torch.randn(n, 1, 8, 8, generator=g),
                                    torch.randint(0, 3, (n,), generator=g), masks),
                      batch_size=batch_size)


def test_object_scores_logged_in_training_and_validation():
    pl.seed_everything(0)
    t = quiet_trainer(callbacks=[ERSMCallback("features.2", bias_init=0.0)], num_sanity_val_steps=0)
    t.fit(MaskedNet(), masked_loader(), masked_loader())
    scores = ("keep_ratio", "hard_sparsity", "relative_sparsity", "keep_gini", "entropy",
              "undecided", "soft_undecided", "iou", "pointing", "keep_contrast")
    for key in (*scores, "energy", "reg"):
        assert f"ersm/features.2/{key}" in t.logged_metrics
    val = {k for k in t.logged_metrics if k.startswith("val_ersm/")}
    assert val == {f"val_ersm/features.2/{key}" for key in scores}  # no energies in eval mode
    assert -1 <= t.logged_metrics["val_ersm/features.2/keep_contrast"] <= 1


def test_scores_every_log_every_n_steps(monkeypatch):
    calls = []

    def counting(layer, object_mask=None):
        calls.append(object_mask is not None)
        return {"keep_ratio": layer.last_keep.mean()}

    monkeypatch.setattr(ersm_callback, "ersm_stats", counting)
    t = quiet_trainer(callbacks=[ERSMCallback("features.2")], log_every_n_steps=3)
    t.fit(Net(), tiny_loader(n=28, batch_size=4))  # 7 batches: 0, 3 and 6 are scored
    assert calls == [False] * 3
    assert "ersm/features.2/keep_ratio" in t.logged_metrics


def _grads(mode: str, **trainer_kw) -> dict:
    pl.seed_everything(0)
    model = Net(manual_reg=mode == "by_hand")
    kwargs = dict(lam=1.0, gamma=1.0, bias_init=0.0)
    callbacks = [rec := GradRecorder()]
    if mode == "callback":
        callbacks.insert(0, ERSMCallback(layers="features.2", **kwargs))
    else:  # by hand, or the layer without its regulariser
        insert_after(model, ["features.2"], lambda _n, c: EnergyMask2d(c, **kwargs))
    quiet_trainer(limit_train_batches=2, max_steps=1, callbacks=callbacks, **trainer_kw).fit(
        model, tiny_loader())
    return rec.grads


@pytest.mark.parametrize("trainer_kw", [dict(accumulate_grad_batches=2),
                                        dict(accumulate_grad_batches=2, precision="bf16-mixed")])
def test_regularizer_gradient_equals_manual(trainer_kw):
    by_callback = _grads("callback", **trainer_kw)
    by_hand = _grads("by_hand", **trainer_kw)
    without = _grads("none", **trainer_kw)
    assert by_callback.keys() == by_hand.keys() and by_callback
    for name in by_hand:
        torch.testing.assert_close(by_callback[name], by_hand[name])
    assert any(not torch.allclose(without[n], by_hand[n]) for n in by_hand)


def test_resume_gives_identical_weights(tmp_path):
    def run(epochs, ckpt=None):
        pl.seed_everything(0)
        model = Net()
        t = quiet_trainer(max_epochs=epochs, deterministic=True, enable_checkpointing=True,
                    default_root_dir=tmp_path, callbacks=[ERSMCallback("features.2", lam=0.5)])
        t.fit(model, tiny_loader(), ckpt_path=ckpt)
        return model, t

    straight, _ = run(2)
    _, first = run(1)
    ckpt = first.checkpoint_callback.best_model_path
    resumed, _ = run(2, ckpt)
    assert straight.state_dict().keys() == resumed.state_dict().keys()
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(value, resumed.state_dict()[name], msg=name)

    for other in (ERSMCallback("features.2", lam=0.1), ERSMCallback("features.0", lam=0.5),
                  ERSMCallback("features.2", lam=0.5, eta=0.1),
                  ERSMCallback("features.2", lam=0.5, bias_init=0.0)):
        with pytest.raises(ValueError, match=r"checkpoint was made with ERSMCallback\(layers="
                                             r"\['features.2'\], \*\*\{'token_size': 1, "
                                             r"'lam': 0.5, 'gamma': 0.001"):
            quiet_trainer(max_epochs=2, callbacks=[other]).fit(Net(), tiny_loader(), ckpt_path=ckpt)
    same = ERSMCallback("features.2", lam=0.5, gamma=1e-3, bias_init=6.0)  # defaults spelt out
    quiet_trainer(max_epochs=2, callbacks=[same]).fit(Net(), tiny_loader(), ckpt_path=ckpt)

    plain = quiet_trainer(max_epochs=1, enable_checkpointing=True, default_root_dir=tmp_path / "p")
    plain.fit(Net(), tiny_loader())
    with pytest.raises(ValueError, match="checkpoint has no ERSMCallback state"):
        quiet_trainer(max_epochs=2, callbacks=[ERSMCallback("features.2")]).fit(
            Net(), tiny_loader(), ckpt_path=plain.checkpoint_callback.best_model_path)


def test_state_dict_is_plain_and_checked():
    cb = ERSMCallback("features.2", lam=0.5)
    quiet_trainer(max_steps=1, callbacks=[cb]).fit(Net(), tiny_loader())
    state = cb.state_dict()
    settings = dict(token_size=1, lam=0.5, gamma=1e-3, temperature=1.0, bias_init=6.0,
                    grid_size=None, eta=0.0, hard_inference=False, check_finite=True,
                    gate="soft", keep_target=None, gate_noise=0.0)
    assert state == {"kind": "ersm", "layers": ["features.2"], "settings": settings,
                     "channels": {"features.2": 8}}
    assert ersm_settings({"lam": 0.5}) == settings
    cb.load_state_dict(state)
    with pytest.raises(ValueError, match="checkpoint was made with ERSMCallback"):
        cb.load_state_dict({**state, "settings": {**settings, "lam": 0.1}})
    with pytest.raises(ValueError, match="checkpoint was made with ERSMCallback"):
        cb.load_state_dict({**state, "settings": {"lam": 0.5}})  # a setting missing


def test_bad_settings_fail_at_init():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ERSMCallback("features.2", temperature=0.0)
    with pytest.raises(ValueError, match=r"lam must be finite \(not NaN or Inf\), but got nan"):
        ERSMCallback("features.2", lam=float("nan"))
    with pytest.raises(TypeError, match="token_size must be a positive int, but got True"):
        ERSMCallback("features.2", token_size=True)
    with pytest.raises(TypeError, match="log_stats must be a bool, but got 'yes'"):
        ERSMCallback("features.2", log_stats="yes")
    with pytest.raises(TypeError, match=r"unknown ERSM setting\(s\) \['lamda'\]"):
        ERSMCallback("features.2", lamda=1.0)
    with pytest.raises(ValueError, match=r"gate must be one of \['soft', 'hard'\]"):
        ERSMCallback("features.2", gate="sharp")
    with pytest.raises(TypeError, match="layers must be None, a str or a list"):
        ERSMCallback(3)
    with pytest.raises(ValueError, match="layers must be distinct"):
        ERSMCallback(["a", "a"])


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match="unknown layer name 'nope'.*valid names are: features"):
        quiet_trainer(callbacks=[ERSMCallback("nope")]).fit(Net(), tiny_loader())


def test_layer_without_4d_output():
    with pytest.raises(ValueError, match="'head' does not output a 4D"):
        quiet_trainer(callbacks=[ERSMCallback("head")]).fit(Net(), tiny_loader())


def test_no_example_input_needs_names():
    with pytest.raises(ValueError, match="needs `pl_module.example_input_array`"):
        quiet_trainer(callbacks=[ERSMCallback()]).fit(Net(example=False), tiny_loader())


def test_attached_twice_to_same_layer():
    cbs = [ERSMCallback("features.2"), ERSMCallback(["features.2"], lam=0.1)]
    with pytest.raises(ValueError, match="already inserted after 'features.2'"):
        quiet_trainer(callbacks=cbs).fit(Net(), tiny_loader())


def test_no_loss_returned():
    class NoLoss(Net):
        def training_step(self, batch, batch_idx):
            self(batch[0])
            return "loss"

    model = NoLoss()
    with pytest.raises(ValueError, match=r"needs training_step to return the loss .* or None, "
                                         "but it returned str"):
        quiet_trainer(callbacks=[ERSMCallback("features.2")]).fit(model, tiny_loader())
    assert "training_step" not in vars(model)  # wrapper removed after the crash


def test_training_step_returning_none_skips_the_batch():
    class Skipping(Net):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return None if batch_idx == 0 else loss

    pl.seed_everything(0)
    model = Skipping()
    cb = ERSMCallback("features.2", bias_init=0.0)
    quiet_trainer(callbacks=[cb]).fit(model, tiny_loader())
    layer = cb.layers["features.2"]
    assert layer.regularizer is None  # taken, also from the skipped batch
    assert layer.bias.item() != 0.0  # the other batch trained


def test_manual_optimization_refused():
    class Manual(Net):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(ValueError, match="manual optimisation ignores"):
        quiet_trainer(callbacks=[ERSMCallback("features.2")]).fit(Manual(), tiny_loader())


def test_dict_loss_gets_regularizer():
    cb = ERSMCallback("features.2", log_stats=False)
    layer = EnergyMask2d(8, lam=1.0, gamma=1.0, bias_init=0.0)
    cb._layers = {"features.2": layer}
    layer(torch.randn(2, 8, 4, 4))
    reg = layer.regularizer.detach().clone()
    out = cb._add_regularizer(Net(), {"loss": torch.tensor(1.0), "extra": 3})
    torch.testing.assert_close(out["loss"], 1.0 + reg)
    assert out["extra"] == 3


class RankWeights(pl.Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        state = {n: p.detach().clone() for n, p in pl_module.named_parameters() if ".layer." in n}
        torch.save(state, f"{self.folder}/rank{trainer.global_rank}.pt")


def test_ddp_spawn_two_cpu_processes(tmp_path):
    pl.seed_everything(0)
    t = quiet_trainer(strategy="ddp_spawn", devices=2, max_epochs=1, limit_train_batches=2,
                callbacks=[ERSMCallback("features.2", lam=1.0, bias_init=0.0),
                           RankWeights(tmp_path)])
    model = Net()
    t.fit(model, tiny_loader(n=16))
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a.keys() == {"features.2.layer.weight", "features.2.layer.bias"}
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    assert a["features.2.layer.bias"].item() != 0.0  # trained


def test_insertion_is_logged_once_over_two_fits(caplog):
    model, cb = Net(), ERSMCallback("features.2")
    with caplog.at_level("INFO", logger="pytorch_lightning"):
        quiet_trainer(callbacks=[cb]).fit(model, tiny_loader())
        quiet_trainer(callbacks=[cb]).fit(model, tiny_loader())  # the layer is already there
    inserted = [r for r in caplog.records if "inserted" in r.getMessage()]
    assert [r.getMessage() for r in inserted] == [
        "ERSMCallback: inserted EnergyMask2d after features.2"]


def test_token_larger_than_the_feature_map_is_refused_before_building_the_layer():
    cb = ERSMCallback("features.2", token_size=100_000)  # no 1.6e11-weight probe layer either
    with pytest.raises(ValueError, match=r"token_size=100000 does not fit the 4x4 feature map "
                                         r"after 'features.2': .*\(at most 4\)"):
        quiet_trainer(callbacks=[cb]).fit(Net(), tiny_loader())
    with pytest.raises(ValueError, match=r"token_size=3 does not fit the 4x4 feature map"):
        cb = ERSMCallback("features.2", token_size=3)
        quiet_trainer(callbacks=[cb]).fit(Net(), tiny_loader())


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_hard_gate_trains_resumes_and_is_checked_under_both_packages(package, tmp_path):
    """Ours (gate="hard"): binary masks in training, an exact resume, and a resume with the
    authors' soft gate refused, under either Lightning package."""
    import importlib

    lightning = importlib.import_module(package)

    class UserNet(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Net()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return self.net.training_step(batch, batch_idx)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    seen = []

    class Spy(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(pl_module.net.features[2].layer.last_keep)

    def run(epochs, ckpt=None, gate="hard"):
        lightning.seed_everything(0)
        model = UserNet()
        t = lightning.Trainer(
            accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
            enable_model_summary=False, deterministic=True, default_root_dir=tmp_path,
            callbacks=[ERSMCallback("net.features.2", bias_init=0.0, gate=gate,
                                    keep_target=0.3), Spy()])
        t.fit(model, tiny_loader(), ckpt_path=ckpt)
        return model, t

    straight, _ = run(2)
    assert seen and all(((k == 0) | (k == 1)).all() for k in seen)
    _, first = run(1)
    resumed, _ = run(2, first.checkpoint_callback.best_model_path)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(value, resumed.state_dict()[name], msg=name)
    with pytest.raises(ValueError, match=r"checkpoint was made with ERSMCallback.*'gate': 'hard'"):
        run(2, first.checkpoint_callback.best_model_path, gate="soft")


def test_a_token_grid_below_4x4_is_warned_at_setup():
    # features.2 is 4x4; tokens of 2x2 leave a 2x2 grid, too few tokens to show a place
    with pytest.warns(UserWarning, match=r"ERSM layer after 'features.2': token grid 2x2 is "
                                         r"below 4x4"):
        cb = ERSMCallback("features.2", token_size=2)
        quiet_trainer(callbacks=[cb]).fit(Net(), tiny_loader())
