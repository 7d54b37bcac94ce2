"""Does the grain of sr1024 samples come from the sampler (step spacing, bf16) or the model? 256 px windows."""
import sys, torch, torch.nn.functional as F
import minimagen.samplers as samplers
from minimagen.cascade import Stage, SuperResolutionPairs
from minimagen.checkpoint import load_unet
from minimagen.metrics import sharpness
from minimagen.text import TextEncoder
torch.set_num_threads(1)
path = sys.argv[1]
pairs = SuperResolutionPairs(256, 1024, crop=256, length=8, seed=12345)
items = [pairs[i] for i in range(4)]
real = torch.stack([it[0] for it in items]); low = torch.stack([it[1] for it in items]); caps = [it[2] for it in items]
enc = TextEncoder(); text, mask = enc.encode(caps)
unet, header = load_unet(path)
stage = Stage("sr1024", unet, header["schedule"], 256)
lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
edge = F.conv2d(F.pad(real, (1, 1, 1, 1), mode="replicate"), lap, groups=3).abs().amax(1, keepdim=True)
flat = (F.max_pool2d(edge, 9, 1, 4) < 1e-4).expand_as(real)
linear = samplers.ddim_timesteps
def quadratic(T, steps):
    return sorted({round((i / (steps - 1)) ** 2 * (T - 1)) for i in range(steps)}, reverse=True)
print(f"real: sharpness {sharpness(real).mean():.4f}; flat fraction {flat.float().mean():.2f}")
for spacing, precision, steps, aug, eta in [("linear", "fp32", 25, 50, 0.0), ("linear", "fp32", 25, 50, 1.0), ("linear", "fp32", 15, 50, 1.0)]:
    samplers.ddim_timesteps = linear if spacing == "linear" else quadratic
    import minimagen.cascade as cascade
    out = stage.sample(text, mask, lowres=low, steps=steps, generator=torch.Generator().manual_seed(0), precision=precision,
                       progress=False, threshold="static", aug_level=aug, eta=eta).clamp(-1, 1)
    r = out - real
    high = r - F.avg_pool2d(F.pad(r, (2, 2, 2, 2), mode="replicate"), 5, 1)
    resid, hp = r[flat], high[flat]
    print(f"eta {eta} aug {aug:3d} high-pass flat std {hp.std():.4f} | {spacing:9s} {precision} {steps:3d} steps: sharpness {sharpness(out).mean():.4f}  flat std {resid.std():.4f}  "
          f"rmse {(out - real).square().mean().sqrt():.4f}", flush=True)
