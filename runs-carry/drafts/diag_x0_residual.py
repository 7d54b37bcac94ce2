"""How much of x_t's noise does an sr1024 U-Net remove at small t? x0-hat residual in flat regions."""
import sys, torch, torch.nn.functional as F
from minimagen.checkpoint import load_unet, export_run
from minimagen.cascade import SuperResolutionPairs, sr_inputs
from minimagen.schedules import schedule_from_spec
from minimagen.text import TextEncoder
from minimagen.diffusion import eps_from_v
torch.set_num_threads(1)
paths = sys.argv[1:]
pairs = SuperResolutionPairs(256, 1024, length=4, seed=12345)
items = [pairs[i] for i in range(2)]
real = torch.stack([it[0] for it in items]); low = torch.stack([it[1] for it in items]); caps = [it[2] for it in items]
# crop 256x256 windows to keep it cheap (fully convolutional)
real = real[:, :, 256:512, 256:512]; low = low[:, :, 64:128, 64:128]
enc = TextEncoder()
text, mask = enc.encode(caps) if hasattr(enc, "encode") else enc(caps)
lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
edge = F.conv2d(F.pad(real, (1, 1, 1, 1), mode="replicate"), lap, groups=3).abs().amax(1, keepdim=True)
flat = (F.max_pool2d(edge, 9, 1, 4) < 1e-4).expand_as(real)
print("flat fraction", flat.float().mean().item())
for path in paths:
    unet, header = load_unet(path)
    sched = schedule_from_spec(header["schedule"])
    g = torch.Generator().manual_seed(0)
    for t in (10, 25, 40, 80, 160, 320):
        tt = torch.full((2,), t)
        noise = torch.randn(real.shape, generator=g)
        x_t = sched.q_sample(real, tt, noise)
        extra = sr_inputs(low, 256, torch.full((2,), 50), sched, torch.randn(real.shape, generator=g))
        with torch.no_grad():
            out = unet(x_t, tt, text, mask, **extra)
        a = sched.sqrt_alphas_cumprod[t]; s = sched.sqrt_one_minus_alphas_cumprod[t]
        x0 = a * x_t - s * out if unet.config.prediction == "v" else (x_t - s * out) / a
        r = (x0 - real)[flat]
        print(f"{path.split('/')[-1]:28s} t={t:4d} sigma={s:.3f} noise-in-x_t={s.item():.4f} x0-resid-flat std={r.std():.4f} "
              f"mean={r.mean():+.4f} all-rmse={(x0-real).square().mean().sqrt():.4f}", flush=True)
