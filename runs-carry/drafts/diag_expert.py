"""Whole-image sr1024 sharpness on held-out scenes: baseline vs quadratic spacing vs a low-t expert."""
import sys, json, torch
import minimagen.samplers as samplers
from minimagen.cascade import Imagen
from minimagen.checkpoint import load_unet
from minimagen.evaluate import sr_quality
torch.set_num_threads(1)
n = int(sys.argv[1]); configs = sys.argv[2:]
imagen = Imagen.from_pretrained("data/checkpoints")
stage = imagen.stage("sr1024")
shipped = stage.unet
low_unet, _ = load_unet("runs-carry/drafts/sr1024ft.safetensors")

class Expert(torch.nn.Module):
    def __init__(self, high, low, switch):
        super().__init__(); self.high, self.low, self.switch = high, low, switch; self.config = high.config
    def forward(self, x_t, t, *a, **k):
        return (self.low if int(t.max()) < self.switch else self.high)(x_t, t, *a, **k)

linear = samplers.ddim_timesteps
def quadratic(T, steps):
    return sorted({round((i / (steps - 1)) ** 2 * (T - 1)) for i in range(steps)}, reverse=True)
for cfg in configs:
    spacing, model, steps = cfg.split(":"); steps = int(steps)
    samplers.ddim_timesteps = linear if spacing == "linear" else quadratic
    stage.unet = shipped if model == "shipped" else Expert(shipped, low_unet, 250)
    r = sr_quality(imagen, "sr1024", n=n, steps=steps, eta=1.0, progress=False, batch_size=4)
    print(cfg, json.dumps({k: round(v, 5) for k, v in r.items()}), flush=True)
