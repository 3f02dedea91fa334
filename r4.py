# repro: frozen TorchScript module and tuple-returning module: raw exceptions
import numpy as np, torch, trainers, explain
from torch import nn
rng = np.random.default_rng(0); x = rng.normal(size=(200, 8)).astype(np.float32); y = rng.integers(0, 3, 200)
data = trainers.DataBundle.from_arrays(x, y)
net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
frozen = torch.jit.freeze(torch.jit.script(net))
class Tup(nn.Module):
    def __init__(self): super().__init__(); self.l = nn.Linear(8, 3)
    def forward(self, x): return self.l(x), x
for label, f in [("as_model(frozen)", lambda: trainers.as_model(frozen, data)),
                 ("predict(frozen)", lambda: trainers.predict(frozen, x[:4])),
                 ("attribute(frozen)", lambda: explain.attribute(frozen, x[:4], method="integrated_gradients")),
                 ("predict(tuple-returning)", lambda: trainers.predict(Tup(), x[:4]))]:
    try: f(); print(label, "ok")
    except Exception as e: print(label, "->", type(e).__module__, type(e).__name__, repr(str(e)[:80]))
