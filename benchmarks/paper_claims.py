"""The paper's own claims, measured on one model: mean JAS of the paths each method finds, the
probability deviation when path neurons are removed / enhanced, and intra-class consistency
(how often images of one class share their class's preferred neuron per layer) against a
shuffled-label control.

    python benchmarks/paper_claims.py --model ../shared/models/vit_tiny_cifar10 \
        --data ../shared/data/cifar10 --images-per-class 10 --out runs/paper_claims
    python benchmarks/paper_claims.py --quick   # embedded digits, seconds (the CI smoke test)

Each method's discovery is a `prune paths` output directory under --out, reused when present.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

METHODS = ("jas", "layer_ig", "influence_pattern", "activation", "random")


def consistency(neurons: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes and layers of the share of a class's images whose first path neuron is the
    class's most common one."""
    shares = []
    for c in labels.unique():
        first = neurons[labels == c][:, :, 0]  # [n_c, L]
        if len(first) < 2:
            continue
        for l in range(first.shape[1]):
            shares.append(first[:, l].bincount().max().item() / len(first))
    return sum(shares) / len(shares)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-vit")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--split", default="test")
    ap.add_argument("--images-per-class", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/paper_claims")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    from prune.paths import PathResult
    from prune.paths.discover import DiscoverySettings, discover

    if args.quick:
        args.images_per_class, args.steps = 2, 3
    out = Path(args.out)
    rows = {}
    for method in METHODS:
        d = out / method
        settings = DiscoverySettings(method=method, steps=args.steps, images_per_class=args.images_per_class,
                                     seed=args.seed)
        summary_file = d / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        if summary is None or summary["settings"]["steps"] != args.steps or \
                summary["settings"]["images_per_class"] != args.images_per_class:
            summary = discover(args.model, args.data, args.split, settings, d, progress=False)
        res = PathResult.load(d / "paths.safetensors")
        g = torch.Generator().manual_seed(args.seed)
        shuffled = res.labels[torch.randperm(len(res.labels), generator=g)]
        rows[method] = {
            "mean_jas": summary["mean_jas"], "images": summary["images"],
            "remove_ratio": summary["probability_deviation"]["remove"]["mean_ratio"],
            "enhance_ratio": summary["probability_deviation"]["enhance"]["mean_ratio"],
            "consistency": consistency(res.neurons, res.labels),
            "consistency_shuffled_labels": consistency(res.neurons, shuffled),
            "seconds": summary["seconds"],
        }
        r = rows[method]
        print(f"{method:18s} JAS {r['mean_jas']:.4f}  remove {r['remove_ratio']:.3f}  enhance {r['enhance_ratio']:.3f}  "
              f"consistency {r['consistency']:.3f} (shuffled {r['consistency_shuffled_labels']:.3f})  "
              f"{r['seconds']:.0f}s", flush=True)
    (out / "paper_claims.json").write_text(json.dumps({"args": vars(args), "methods": rows}, indent=2))
    print(f"wrote {out}/paper_claims.json")


if __name__ == "__main__":
    main()
