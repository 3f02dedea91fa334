# repro: explain.attribute switches the caller's module to eval mode and leaves it there
import numpy as np, torch, explain, trainers
from torch import nn
net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).train()
x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
explain.attribute(net, x, method="saliency")
print("training after attribute:", net.training, "(was True)")
