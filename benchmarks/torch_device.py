"""The PyTorch reference on any torch device (a CUDA GPU above all), with GPT-2 small added.

../shared/bench/torch_ref.py is the peer minift is measured against on the CPU. It builds its tensors without naming
a device and knows only tiny, demo and small; the issue asks for demo, small and gpt2 against torch on the same GPU.
This script loads torch_ref's own model classes (GPT, Block, LoRALinear: unchanged, so the model is the same), builds
them under `torch.set_default_device(--device)` so that every tensor they make lands there, and times the same step
(zero_grad, forward, backward, AdamW lr 1e-3, weight decay 0) with a device synchronisation around each timed step:
a CUDA call only queues work, and without the sync the timer would measure the queueing.

The sizes come from minift's presets (config.PRESETS, config.BENCH_BATCH), and are checked against torch_ref's table
for the presets it has, so the two programs cannot drift apart. Prints one JSON line, torch_ref's keys plus
`device` and `device_name`:

    python benchmarks/torch_device.py --config gpt2 --mode lora --device cuda [--ref ../shared/bench/torch_ref.py]

Matmuls run in strict float32 on both sides: torch leaves TF32 off for float32 matmuls by default
(torch.backends.cuda.matmul.allow_tf32), and CuPy uses TF32 only when CUPY_TF32=1 is set.
"""
import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minift.config import BENCH_BATCH, PRESETS  # noqa: E402

DEFAULT_REF = ROOT.parent / "shared" / "bench" / "torch_ref.py"


def load_ref(path):
    """torch_ref.py as a module (it is a script in another folder, not a package)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"torch_device.py: --ref {str(path)!r} is not a file (the path to torch_ref.py)")
    spec = importlib.util.spec_from_file_location("torch_ref", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config(name, ref):
    """torch_ref's config dict for a minift preset; equal to torch_ref's own entry where it has one."""
    if name not in PRESETS:
        raise SystemExit(f"torch_device.py: --config {name!r} is not one of {sorted(PRESETS)}")
    p = PRESETS[name]
    c = dict(vocab=p["vocab_size"], d=p["n_embd"], layers=p["n_layer"], heads=p["n_head"], T=p["n_ctx"],
             B=BENCH_BATCH[name])
    if name in ref.CONFIGS and ref.CONFIGS[name] != c:
        raise SystemExit(f"torch_device.py: minift's {name} {c} differs from torch_ref's {ref.CONFIGS[name]}")
    return c


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", default=str(DEFAULT_REF), help="path to torch_ref.py")
    p.add_argument("--config", default="demo")
    p.add_argument("--mode", default="full", choices=["full", "lora"])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--targets", default="c_attn,c_proj,c_fc,mlp_proj")
    p.add_argument("--no-sdpa", action="store_true")
    p.add_argument("--device", default="cuda", help="a torch device: cuda, cuda:1, cpu")
    a = p.parse_args()
    ref = load_ref(a.ref)
    torch = ref.torch
    c = config(a.config, ref)
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    torch.set_default_device(device)          # torch_ref's forward makes torch.arange / torch.ones without a device
    m = ref.GPT(c["vocab"], c["d"], c["layers"], c["heads"], c["T"], not a.no_sdpa)
    if a.mode == "lora":                      # as torch_ref.main: freeze all, then wrap the targets (alpha = 2r)
        for w in m.parameters():
            w.requires_grad_(False)
        for b in m.blocks:
            for name in a.targets.split(","):
                setattr(b, name, ref.LoRALinear(getattr(b, name), a.rank, 2 * a.rank))
    params = [w for w in m.parameters() if w.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    g = torch.Generator(device="cpu").manual_seed(0)
    idx = torch.randint(0, c["vocab"], (c["B"], c["T"]), generator=g, device="cpu").to(device)
    tgt = torch.randint(0, c["vocab"], (c["B"], c["T"]), generator=g, device="cpu").to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = m(idx, tgt)
        loss.backward()
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps(dict(impl="torch", torch=torch.__version__, threads=torch.get_num_threads(), config=a.config,
                          mode=a.mode, rank=a.rank, device=str(device), device_name=name,
                          sdpa=not a.no_sdpa, ms_per_step=round(med * 1e3, 2),
                          tokens_per_s=round(c["B"] * c["T"] / med), loss=round(loss.detach().item(), 4),
                          trainable=sum(w.numel() for w in params), total=sum(w.numel() for w in m.parameters()))))


if __name__ == "__main__":
    main()
