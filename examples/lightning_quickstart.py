import lightning.pytorch as L  # or: import pytorch_lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from energymask.lightning_modules import ERSMCallback, TensorDataModule, load_for_inference


class MyNet(L.LightningModule):  # your own module: nothing ERSM-specific in it
    def __init__(self, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.head = nn.Linear(32, 10)
        self.example_input_array = torch.zeros(1, 1, 32, 32)  # lets the callback probe shapes

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)  # ERSMCallback adds the energy regulariser

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


L.seed_everything(0)
x, y = torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,))
data = TensorDataModule(train=(x, y), batch_size=16)
ersm = ERSMCallback(layers="features.6", lam=1e-2, gamma=1e-2, bias_init=0.0)
trainer = L.Trainer(max_epochs=2, accelerator="cpu", callbacks=[ersm],
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(MyNet(), datamodule=data)
print(trainer.logged_metrics)  # ersm/features.6/{keep_ratio,hard_sparsity,...}

# Later, for inference: the ERSM layer is re-inserted from the checkpoint.
model = load_for_inference(trainer.checkpoint_callback.best_model_path, MyNet)
keep = model.features[6].layer  # the EnergyMask2d after features.6
with torch.no_grad():
    model(x[:4])
print(keep.last_keep.shape)  # (4, 16, 16) keep probabilities
