"""The model card (`README.md`) of a pruned-model directory, rendered from data only: the directory's
`structure.json` and `config.json`, the model's counted parameters and MACs, and what the caller knows
(`ModelCard`: the base model as the recipe names it, the recipe, accuracies measured so far). Hub metadata
sits in YAML front matter (`base_model`, `library_name: timm`, `license`, `tags`). It measures nothing:
the counts come from `checkpoint.save_pruned`, the accuracies from the stages that measured them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

TAGS = ["image-classification", "timm", "pruned", "prune"]
# accuracy rows in the order a run measures them; other names follow in the caller's order
ACCURACY_ROWS = {"dense": "dense (base model)", "pruned": "pruned, one-shot", "refitted": "pruned, re-fitted",
                 "finetuned": "pruned, fine-tuned"}
HOW = {"prune": "the one-shot cut (no recovery)", "reconstruct": "the cut, then least-squares re-fit of each "
       "branch's output layer", "finetune": "the cut, then recovery training (fine-tune)"}


@dataclass
class ModelCard:
    """What the caller of `save_pruned` knows beyond the model itself (every field optional)."""

    base_model: str | None = None  # as the recipe names it: a timm name, a model directory, 'digits-vit'
    stage: str | None = None  # the run stage that wrote the directory: prune, reconstruct, finetune
    recipe: dict | None = None  # the run's recipe, as saved in its recipe.yaml
    accuracy: dict[str, dict] = field(default_factory=dict)  # name -> {top1, top5, images}, measured so far
    eval_split: str | None = None
    not_measured: str | None = None  # why accuracy is missing, when it is

    def with_accuracy(self, **acc: dict) -> "ModelCard":
        return ModelCard(self.base_model, self.stage, self.recipe, {**self.accuracy, **acc}, self.eval_split, None)


def _front_matter(card: ModelCard, hub: str | None, license: str | None, arch: str) -> str:
    meta = {"base_model": hub or card.base_model or arch, "library_name": "timm", "pipeline_tag": "image-classification",
            "tags": TAGS}
    if license:
        meta["license"] = license
    meta = {k: v for k, v in meta.items() if v is not None}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def render(structure: dict, config: dict, params: int, macs: int, card: ModelCard | None = None,
           facts: tuple[str | None, str | None] = (None, None)) -> str:
    """The card's Markdown; `facts`: the base model's `(hub id, license)` (`checkpoint.base_model_facts`)."""
    card = card or ModelCard()
    hub, license = facts
    license = license or config.get("pretrained_cfg", {}).get("license")
    units = structure["units"]
    arch = structure["architecture"]
    base = card.base_model or arch
    pcfg = config.get("pretrained_cfg", {})
    depth = len(next(iter(units.values()))["widths"]) if units else 0
    lines = [_front_matter(card, hub, license, arch), f"# {arch}, pruned by prune" + (f" ({card.stage})" if card.stage else ""), ""]
    kept = [f"{sum(u['widths']):,} of {sum(u['dense_widths']):,} {_kind(k)}" for k, u in units.items()]
    lines += [f"A Vision Transformer pruned from `{base}`" + (f" (timm architecture `{arch}`)" if base != arch else "")
              + f" by `prune`: {', '.join(kept)} kept; {params:,} parameters, "
              f"{macs:,} multiply-accumulates per image of {tuple(pcfg.get('input_size', ()))}."
              + (f" This directory holds {HOW[card.stage]}." if card.stage in HOW else ""), ""]
    lines += ["## Use", "", "```python", "import prune, timm  # importing prune registers its architecture, prune_vit",
              "", 'model = timm.create_model("local-dir:path/to/this/directory", pretrained=True).eval()',
              "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
              "```", "",
              f"`config.json` (timm's `local-dir:` format, architecture `{config.get('architecture')}`) records the "
              "base architecture and the kept width of every block; `structure.json` (prune's own description, "
              "read by `prune.checkpoint.load_pruned`) also the kept unit indices. Weights: `model.safetensors`.", "",
              f"Preprocessing: input {tuple(pcfg.get('input_size', ()))}, mean {tuple(pcfg.get('mean', ()))}, "
              f"std {tuple(pcfg.get('std', ()))}, {pcfg.get('interpolation')} interpolation, crop_pct "
              f"{pcfg.get('crop_pct')}.", ""]
    names = pcfg.get("label_names")
    classes = structure.get("classes")
    if classes is not None:
        lines += [f"Specialised to {len(classes)} classes: output i is original class {classes}[i]"
                  + (f" ({', '.join(map(str, names))})." if names else "."), ""]
    elif names:
        shown = ", ".join(map(str, names[:20])) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        lines += [f"Classes: {shown}.", ""]
    lines += ["## Structure", "", "Kept units per block (kept / dense; 0: the branch is its bias).", "",
              "| block | " + " | ".join(_kind(k) for k in units) + " |", "|---|" + "---|" * len(units)]
    for l in range(depth):
        lines.append(f"| {l} | " + " | ".join(f"{u['widths'][l]} / {u['dense_widths'][l]}" for u in units.values()) + " |")
    lines.append("| all | " + " | ".join(f"{sum(u['widths'])} / {sum(u['dense_widths'])}" for u in units.values()) + " |")
    lines += ["", "## Accuracy", ""]
    if card.accuracy:
        split = f" on the `{card.eval_split}` split" if card.eval_split else ""
        lines += [f"Measured by the run that wrote this directory{split}.", "",
                  "| model | top-1 (%) | top-5 (%) | images |", "|---|---|---|---|"]
        for name in [n for n in ACCURACY_ROWS if n in card.accuracy] + [n for n in card.accuracy if n not in ACCURACY_ROWS]:
            a = card.accuracy[name]
            lines.append(f"| {ACCURACY_ROWS.get(name, name)} | {_pct(a.get('top1'))} | {_pct(a.get('top5'))} | "
                         f"{a.get('images', '')} |")
    else:
        lines.append(card.not_measured or "Not measured by the code that wrote this directory.")
    lines.append("")
    if card.recipe is not None:
        lines += ["## Recipe", "", "```yaml", yaml.safe_dump(card.recipe, sort_keys=False).rstrip(), "```", ""]
    lines += ["## Not in this card", "",
              "- Latency: a run measures it in its bench stage (`bench/bench.json`) and reports it in "
              "`report/report.md`; it depends on the machine and runtime, so it is not stated here.",
              "- ONNX and int8 files: a run's export stage writes them (`export/`), with their own accuracy checks."]
    if card.recipe is None:
        lines.append("- The recipe: the code that wrote this directory did not pass one.")
    return "\n".join(lines) + "\n"


def _kind(kind: str) -> str:
    return {"heads": "attention heads", "ffn": "FFN neurons"}.get(kind, kind)


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def write(path: str | Path, structure: dict, config: dict, params: int, macs: int, card: ModelCard | None = None,
          facts: tuple[str | None, str | None] = (None, None)) -> None:
    from .io import atomic_path

    with atomic_path(Path(path) / "README.md") as tmp:
        tmp.write_text(render(structure, config, params, macs, card, facts))
