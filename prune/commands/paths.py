"""`prune paths`: discover neuron paths over a dataset on their own."""

from __future__ import annotations

import json

from .options import check_options


def run(args) -> int:
    from ..data import check_source
    from ..paths.discover import DiscoverySettings, discover

    args.writes = args.out
    check_options(args, "paths", "images_per_class", "steps", "top_k", "batch_size", "seed")
    check_source(args.data)
    settings = DiscoverySettings(method=args.method, steps=args.steps, top_k=args.top_k, scope=args.scope,
                                 target=args.target, images_per_class=args.images_per_class,
                                 batch_size=args.batch_size, seed=args.seed, keep_candidates=args.keep_candidates)
    summary = discover(args.model, args.data, args.split, settings, args.out, pretrained=args.pretrained,
                       image_column=args.image_column, label_column=args.label_column, progress=not args.quiet)
    short = {k: summary[k] for k in ("images", "mean_jas", "mean_target_prob", "probability_deviation",
                                     "seconds", "images_per_second")}
    print(json.dumps(short, indent=2))
    print(f"wrote {args.out}/paths.safetensors, stats.safetensors, summary.json")
    return 0
