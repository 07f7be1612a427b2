"""Does forward mode (a JVP) pay off for the path search's earlier-layer gradient sum?

The sum of the earlier path neurons' gradients is one directional derivative, so a JVP could give
it without backpropagating through the prefix. This times, on the same rows, a forward, an
input-gradient backward, and `torch.func.jvp` (primal + tangent) through all blocks. PyTorch's CPU
fused attention has no forward-mode rule, so the JVP needs timm's unfused attention; both the fused
and the unfused forward are timed.

    python benchmarks/jvp_probe.py --model ../shared/models/vit_tiny_cifar10 --rows 80
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    ap.add_argument("--rows", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    from prune.models import ViTAdapter, load_model
    from prune.paths import attribution as A

    torch.set_num_threads(args.threads)
    model, data_cfg, _ = load_model(args.model, pretrained=args.pretrained)
    vit = ViTAdapter(model)
    x0 = vit.embed(torch.randn(args.rows, *data_cfg.input_size)).detach()

    def f(z):
        for i in range(vit.depth):
            z = vit.post(i, *vit.pre(i, z))
        return vit.head(z).softmax(-1)[:, 0].sum()

    def best(fn):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    def fwd_bwd():
        z = x0.clone().requires_grad_()
        out = f(z)
        t = time.perf_counter()
        torch.autograd.grad(out, z)
        return time.perf_counter() - t

    out = {}
    with A.frozen(model):
        with torch.no_grad():
            out["forward_fused_s"] = best(lambda: f(x0))
        out["backward_fused_s"] = min(fwd_bwd() for _ in range(args.repeats))
        for b in model.blocks:
            b.attn.fused_attn = False
        with torch.no_grad():
            out["forward_unfused_s"] = best(lambda: f(x0))
        out["jvp_unfused_s"] = best(lambda: torch.func.jvp(f, (x0,), (torch.randn_like(x0),)))
    out["jvp_tangent_over_backward"] = (out["jvp_unfused_s"] - out["forward_unfused_s"]) / out["backward_fused_s"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
