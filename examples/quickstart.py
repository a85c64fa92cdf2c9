"""ERSM in plain PyTorch: insert an Energy-Mask layer into a small CNN and train a few steps."""

import torch
import torch.nn.functional as F

from energymask import Classifier, EnergyMask2d, collect_regularizer, insert_after, small_cnn

torch.manual_seed(0)
model = Classifier(small_cnn(1, (16, 32, 64)), 64, 10)
insert_after(model, "backbone.layer3", lambda name, c: EnergyMask2d(c, bias_init=0.0))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.randn(32, 1, 64, 64), torch.randint(0, 10, (32,))
for step in range(5):
    loss = F.cross_entropy(model(x), y) + collect_regularizer(model)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    keep = model.backbone.layer3.layer.last_keep
    print(f"step {step}: loss {loss.item():.3f}, keep ratio {keep.mean().item():.3f}")
