"""Time of one training step (forward, backward, AdamW) of a ViT in float32 and under bf16 autocast, with
timm's fused attention (PyTorch's scaled_dot_product_attention) and its explicit form (q k^T, softmax, v).

Why: on 2 CPU cores the testbed's training step was dominated by the CPU flash-attention kernel under
bf16; `prune.finetune.train` switches to the explicit form for bf16 CPU runs on the strength of this.
Run on a quiet machine (pause any training first); the four settings alternate `--rounds` times, and
the ratios are to float32 fused within the same run.

    python benchmarks/train_step_speed.py --json benchmarks/results/train_step_speed_vit_d6.json
    python benchmarks/train_step_speed.py --quick     # a tiny model (the CI smoke test)

Model: the testbed's architecture (`train_cifar_vit.py --depth 6`: 32x32 images, 4x4 patches, width 192,
3 heads, 6 blocks), random weights (speed does not depend on them), batch `--batch-size` of random
images.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SETTINGS = [("fp32", True), ("fp32", False), ("bf16", True), ("bf16", False)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per setting and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.depth, args.width, args.batch_size, args.steps, args.rounds = 1, 48, 8, 1, 1

    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                              embed_dim=args.width, depth=args.depth, num_heads=3, mlp_ratio=4.0, num_classes=10,
                              drop_path_rate=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))

    def step(precision: str) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    times: dict[str, list[float]] = {f"{p} {'fused' if f else 'explicit'}": [] for p, f in SETTINGS}
    for _ in range(args.rounds):
        for precision, fused in SETTINGS:
            for b in model.blocks:
                b.attn.fused_attn = fused
            step(precision)  # warm-up of this setting
            t = time.perf_counter()
            for _ in range(args.steps):
                step(precision)
            times[f"{precision} {'fused' if fused else 'explicit'}"].append((time.perf_counter() - t) / args.steps)
    base = statistics.median(times["fp32 fused"])
    rows = [{"setting": k, "step_s": statistics.median(v), "speedup_vs_fp32_fused": base / statistics.median(v),
             "rounds": v} for k, v in times.items()]
    print(f"threads {torch.get_num_threads()}, batch {args.batch_size}, {args.depth} blocks x width {args.width}")
    for r in rows:
        print(f"{r['setting']:>14}: {r['step_s']:.3f} s a step (median of {args.rounds}), "
              f"{r['speedup_vs_fp32_fused']:.2f}x float32 fused")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "cpu_avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: None)(),
                       "cpu_amx": getattr(torch.cpu, "_is_amx_tile_supported", lambda: None)(), "batch_size": args.batch_size,
                       "depth": args.depth, "width": args.width, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
