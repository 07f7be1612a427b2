"""Path discovery over a dataset: sample images per class, locate their paths, aggregate per class,
test the paths by editing them, and write everything to a directory."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import Split, collate, load_images, open_split, sample_per_class
from ..io import write_json
from ..memory import peak_memory
from ..models import ViTAdapter, load_model
from .attribution import target_prob
from .locate import PathResult, edit_paths, images_per_chunk, locate_paths
from .stats import PathStats


@dataclass
class DiscoverySettings:
    method: str = "jas"
    steps: int = 20
    top_k: int = 1
    scope: str = "auto"
    target: str = "label"
    images_per_class: int = 10
    batch_size: int | None = None
    seed: int = 0
    keep_candidates: bool = True


def discover(model_spec: str, data_source: str, split: str, settings: DiscoverySettings, out_dir: str | Path, *,
             pretrained: bool = True, model_kwargs: dict | None = None, image_column: str | None = None,
             label_column: str | None = None, skip_bad: bool = False, progress: bool = True,
             loaded: tuple | None = None, data: Split | None = None) -> dict:
    """Run discovery and write `paths.safetensors`, `stats.safetensors`, `summary.json` to `out_dir`.

    loaded: `(model, data config, spec)` as `load_model` returns them, and data: the split, where the caller
    holds them already (the paths stage passes its run's); else both are loaded from `model_spec` and
    `data_source`.

    Under `accelerate launch` each process takes a share of the images; the per-class stats are
    summed across processes and the main process writes the files.
    """
    from .. import dist

    state = dist.state()
    model, data_cfg, spec = loaded if loaded is not None else load_model(model_spec, pretrained=pretrained,
                                                                          **(model_kwargs or {}))
    vit = ViTAdapter(model)
    scope = vit.check_scope(settings.scope)
    data = data if data is not None else open_split(data_source, split, image_column, label_column)
    num_classes = model.num_classes
    labels = data.labels()
    rows = sample_per_class(labels, settings.images_per_class, num_classes, settings.seed, split=split,
                            allow_empty=skip_bad)
    empty_classes = sorted(set(range(num_classes)) - set(labels))
    dataset = load_images(data, data_cfg, rows, num_classes=num_classes, skip_bad=skip_bad)
    vit.verify(torch.randn(1, *data_cfg.input_size))
    model.to(state.device)

    with state.split_between_processes(list(range(len(dataset)))) as mine, peak_memory(state.device) as memory:
        subset = torch.utils.data.Subset(dataset, mine)
        chunk = images_per_chunk(settings.batch_size, settings.steps, settings.method)
        loader = torch.utils.data.DataLoader(subset, batch_size=chunk, collate_fn=collate)
        parts, ratios, skipped = [], {"remove": [], "enhance": []}, []
        bar = tqdm(total=len(subset), desc=f"paths[{settings.method}]", unit="img",
                   disable=not (progress and state.is_local_main_process))
        start = time.perf_counter()
        for i, (x, y, r, bad) in enumerate(loader):
            skipped += [b.row for b in bad]
            if len(y) == 0:
                continue
            res = locate_paths(model, x, y, method=settings.method, steps=settings.steps, top_k=settings.top_k,
                               scope=scope, target=settings.target, batch_size=settings.batch_size,
                               progress=False, keep_candidates=settings.keep_candidates,
                               seed=settings.seed + 1000 * state.process_index + i)
            res.rows = r
            parts.append(res)
            for op, ratio in edit_ratios(model, x.to(state.device), res, scope).items():
                ratios[op].append(ratio)
            bar.update(len(x))
        bar.close()
        seconds = time.perf_counter() - start

    result = PathResult.concat(parts) if parts else None
    stats = PathStats.empty(num_classes, vit.depth, vit.widths()[0],
                            {**asdict(settings), "scope": scope, "model": model_spec})
    if result is not None:
        stats.update(result)
    ratios = {op: torch.cat(r) if r else torch.zeros(0) for op, r in ratios.items()}
    if state.num_processes > 1:
        stats = stats.reduce()
        result = PathResult.concat([p for p in dist.gather_lists([result]) if p is not None])
        ratios = {op: torch.cat(dist.gather_lists([r])) for op, r in ratios.items()}
        skipped = dist.gather_lists(skipped)
    deviation = {op: {"mean_ratio": float(r.mean()), "median_ratio": float(r.median())} for op, r in ratios.items() if len(r)}
    summary = {
        "model": model_spec, "architecture": spec.architecture, "data": data_source, "split": split,
        "settings": stats.settings, "images": int(stats.counts.sum()), "images_per_class": stats.counts.tolist(),
        "mean_jas": float(stats.jas_sum.sum() / stats.counts.sum().clamp_min(1)),
        "mean_target_prob": float(result.target_prob.mean()) if result is not None else None,
        "probability_deviation": deviation, "skipped_rows": sorted(skipped),
        "empty_classes": empty_classes, "seconds": seconds,
        "images_per_second": len(subset) / seconds if seconds > 0 else None,
        "device": str(state.device), "processes": state.num_processes,
        "peak_memory": memory,  # of the main process while it located its share
    }
    if state.is_main_process:
        out = Path(out_dir)
        result.save(out / "paths.safetensors")
        stats.save(out / "stats.safetensors")
        write_json(out / "summary.json", summary)
    return summary


def edit_ratios(model, x: torch.Tensor, result: PathResult, scope: str) -> dict[str, torch.Tensor]:
    """p_edit / p_orig of the target class when each image's path neurons are removed or enhanced."""
    return {op: target_prob(edit_paths(model, x, result.neurons, op, scope=scope), result.targets)
            / result.target_prob.clamp_min(1e-12) for op in ("remove", "enhance")}
