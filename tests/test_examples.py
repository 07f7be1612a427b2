"""Every command example in the README and in `--help` runs (scaled down where it would be slow or need the
network), so they cannot rot. A new example fails `test_every_example_is_registered` until it is added here."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from prune.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["importance.calibration_images=32", "data.eval_images=60", "finetune.epochs=1", "finetune.train_images=96",
         "bench.repeats=2", "bench.batch_sizes=[1]", "paths.images_per_class=2", "paths.steps=2"]
CIFAR_KW = {"img_size": 32, "patch_size": 4, "num_classes": 10}

# example (as written, comments and line continuations removed) -> how the test runs it:
#   "run": the same command, after the substitutions below and with SMALL settings for recipe runs
#   "run: ARGS": a scaled-down form (the reason beside it)
#   "covered: TEST": run by another test
EXAMPLES = {
    "prune --recipe recipes/quickstart.yaml [--set prune.macs_ratio=0.5 --set importance.kind=taylor] [--out DIR]":
        "run: --recipe recipes/quickstart.yaml --set prune.macs_ratio=0.5 --set importance.kind=taylor --out {tmp}/a",
    "prune recipes": "run",
    "prune --recipe vit_b16_50pct.yaml": "covered: test_pipeline.py::test_vit_b16_recipe_mechanics_at_full_size",
    "prune export runs/quickstart --out quickstart.onnx": "run",
    "prune export runs/quickstart/prune --opset 18": "run",
    "prune export runs/quickstart --out q.onnx --quantize dynamic,static": "run",
    "prune export runs/quickstart/prune --out q.onnx --quantize static --data digits": "run",
    "prune export runs/quickstart --out quickstart.onnx --quantize dynamic,static": "run",
    "prune bench runs/quickstart --onnx": "run",
    "prune bench runs/quickstart/prune": "run",
    "prune bench runs/quickstart/export/pruned.onnx": "run",
    "prune bench runs/quickstart --onnx --csv bench.csv": "run",
    # ViT-B/16 at 224 px on 2 cores: one timed run at batch 1 instead of 20 at batch 1 and 8
    "prune bench vit_base_patch16_224 --batch-sizes 1,8": "run: bench vit_base_patch16_224 --batch-sizes 1 --repeats 1 --warmup 0",
    "accelerate launch --multi_gpu --num_processes 8 -m prune.cli --recipe vit_b16_50pct.yaml":
        "covered: test_multiprocess.py (the same entry point with 2 processes on the digits recipe)",
    # hub weights need the network: the same command with random weights
    "prune convert vit_small_patch16_224.augreg_in21k_ft_in1k --pretrained --out models/vit_s16":
        "run: convert vit_small_patch16_224.augreg_in21k_ft_in1k --out {tmp}/models/vit_s16",
    "prune convert vit_tiny_patch16_224 --kwargs '{\"img_size\": 32, \"patch_size\": 4, \"num_classes\": 10}' "
    "--checkpoint weights.safetensors --mean 0.4914,0.4822,0.4465 --std 0.247,0.2435,0.2616 --out models/mine": "run",
    "prune convert vit_tiny_patch16_224 --kwargs '{\"img_size\": 32, \"patch_size\": 4, \"num_classes\": 10}' "
    "--checkpoint weights.safetensors --out models/mine":  # the README's twin wrote models/mine already
        "run: convert vit_tiny_patch16_224 --kwargs {} --checkpoint weights.safetensors --out {tmp}/models/mine2",
    "prune --recipe cifar10_vit_tiny_50pct.yaml --set model.name=models/mine --set data.source=path/to/parquet_dir "
    "--out runs/mine": "run",
    # CIFAR-10 by name needs the hub: the local CIFAR-shaped parquet shards instead
    "prune --recipe recipes/cifar10_vit_tiny_50pct.yaml --set 'prune.classes=[cat,dog]' --set prune.macs_ratio=0.6 "
    "--set importance.kind=path_attribution ...":
        "run: --recipe recipes/cifar10_vit_tiny_50pct.yaml --set prune.classes=[3,5] --set prune.macs_ratio=0.6 "
        "--set importance.kind=path_attribution --set model.name=models/mine --set data.source={data} --out {tmp}/c",
    "prune specialize runs/cifar10_vit_tiny_50pct --classes cat,dog --set prune.macs_ratio=0.6": "run",
    "prune specialize runs/cifar10 --classes cat,dog --set prune.macs_ratio=0.6":
        "run: specialize runs/cifar10_vit_tiny_50pct --classes 3,5 --set prune.macs_ratio=0.6 --out {tmp}/s2",
    "prune specialize RUN --classes cat,dog": "covered: the specialize examples above",
    "prune --recipe quickstart.yaml [--set prune.macs_ratio=0.5 ...] [--out DIR]": "covered: the first README example",
    "prune convert MODEL --out DIR": "covered: the convert examples above",
    "prune paths ...": "covered: the paths examples below",
    "prune export TARGET": "covered: the export examples above",
    "prune bench TARGET": "covered: the bench examples above",
    "prune paths --out runs/digits_paths": "run: paths --out {tmp}/runs/digits_paths --images-per-class 2 --steps 2",
    # the shared CIFAR model and data live outside the repository: a CIFAR-shaped model and local shards
    "prune paths --model ../shared/models/vit_tiny_cifar10 --data ../shared/data/cifar10 --split test "
    "--images-per-class 10 --out runs/cifar_paths":
        "run: paths --model models/mine --data {data} --split test --images-per-class 1 --steps 2 --out {tmp}/p2",
    "prune paths --model ../shared/models/vit_tiny_cifar10 --data ../shared/data/cifar10 --split test "
    "--images-per-class 10 --top-k 5 --out runs/cifar_paths":
        "run: paths --model models/mine --data {data} --split test --images-per-class 1 --steps 2 --top-k 5 --out {tmp}/p3",
    "prune recipes && prune --recipe quickstart.yaml": "covered: the README's prune recipes and first examples",
    "prune plan --recipe R": "covered: the plan example below",
    # two of the four targets keep it short; test_sweep.py covers a sweep, its front and a target added later
    "prune --recipe recipes/quickstart.yaml --set \"prune.macs_ratio=[0.3,0.5,0.6,0.7]\" --out runs/sweep":
        "run: --recipe recipes/quickstart.yaml --set prune.macs_ratio=[0.3,0.6] --out {tmp}/sweep",
    "prune plan --recipe recipes/quickstart.yaml --set \"prune.macs_ratio=[0.5,0.7]\" --out runs/sweep": "run",
    # a measured table's reachability depends on how busy the machine is: that test uses a table from MACs
    "prune plan --recipe quickstart.yaml --set 'prune.units=[ffn,heads]' --set prune.latency_ratio=0.4 "
    "--set prune.max_layer_ratio=1.0":
        "covered: test_latency.py::test_prune_plan_prints_the_cut_before_surgery_and_its_macs_are_the_cut_model_s",
}


def _join(lines):
    out, cur = [], ""
    for line in lines:
        line = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        cur = f"{cur} {line.strip()}".strip() if cur else line.strip()
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        if cur:
            out.append(re.sub(r"\s+", " ", cur))
        cur = ""
    return out


def _commands(raw: list[str], shown: list[str], start: str) -> list[str]:
    """The commands whose first line in `raw` matches `start`, with their continuation lines, from `shown`
    (the same lines, cleaned), joined."""
    found, i = [], 0
    while i < len(raw):
        if re.match(start, raw[i]):
            block = [shown[i]]
            while block[-1].rstrip().endswith("\\") and i + 1 < len(raw):
                i += 1
                block.append(shown[i])
            found += _join(block)
        i += 1
    return found


def readme_examples():
    lines = (ROOT / "README.md").read_text().splitlines()
    return _commands(lines, lines, r"^    (prune|accelerate) ")


def help_examples():
    parser = build_parser()
    texts = [parser.format_help()]
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    texts += [p.format_help() for p in sub.choices.values()]
    found = []
    for text in texts:
        raw = text.splitlines()
        shown = [re.split(r"\s{3,}", l.strip())[0] for l in raw]  # drop descriptions beside synopses
        found += _commands(raw, shown, r"^\s+(prune|accelerate) ")
    return found


def test_every_example_is_registered():
    found = set(readme_examples()) | set(help_examples())
    missing = sorted(found - set(EXAMPLES))
    assert not missing, f"examples without a test here: {missing}"
    stale = sorted(set(EXAMPLES) - found)
    assert not stale, f"registered examples no longer in the README or --help: {stale}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A fresh directory as a user would have after the quickstart: runs/quickstart, a checkpoint, local shards."""
    from test_pipeline import _local_dataset

    d = tmp_path_factory.mktemp("examples")
    sets = sum([["--set", s] for s in SMALL], [])
    assert main(["--recipe", "quickstart.yaml", "--out", str(d / "runs/quickstart"), "--quiet", *sets]) == 0
    torch.manual_seed(0)
    small = dict(CIFAR_KW, embed_dim=48, depth=2, num_heads=3)
    save_file(timm.create_model("vit_tiny_patch16_224", pretrained=False, **small).state_dict(), str(d / "weights.safetensors"))
    (d / "path/to").mkdir(parents=True)
    _local_dataset(d / "path/to/parquet_dir", {"train": list(range(10)) * 2, "test": list(range(10))}, 32)
    return d


def _argv(example: str, how: str, d: Path) -> list[str]:
    cmd = example if how == "run" else "prune " + how.split(": ", 1)[1]
    cmd = cmd.replace("{tmp}", str(d)).replace("{data}", str(d / "path/to/parquet_dir"))
    argv = shlex.split(cmd)[1:]
    if "--kwargs" in argv and argv[argv.index("--kwargs") + 1] != "{}" or "{}" in argv:  # the README's CIFAR ViT-Tiny, kept small (2 blocks, width 32) for the test
        argv[argv.index("--kwargs") + 1] = json.dumps(dict(CIFAR_KW, embed_dim=48, depth=2, num_heads=3))
    if "--recipe" in argv:
        argv += sum([["--set", s] for s in SMALL + ["data.batch_size=16", "finetune.batch_size=16"]], []) + ["--quiet"]
    if argv[0] == "specialize":
        argv += ["--set", "finetune.epochs=0", "--quiet"]
    return argv


def test_every_runnable_example_runs(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    # the CIFAR run the specialize examples start from, made by the README's own CIFAR command
    order = sorted(EXAMPLES, key=lambda e: ("convert" not in e, "data.source=path/to" not in e, "specialize" in e))
    for example in order:
        how = EXAMPLES[example]
        if how.startswith("covered"):
            continue
        argv = _argv(example, how, workdir)
        if example.startswith("prune specialize runs/cifar10"):
            if not (workdir / "runs/cifar10_vit_tiny_50pct").exists():
                assert main(["--recipe", "recipes/cifar10_vit_tiny_50pct.yaml", "--set", "model.name=models/mine",
                             "--set", f"data.source={workdir / 'path/to/parquet_dir'}", "--set", "prune.scope=global",
                             "--out", "runs/cifar10_vit_tiny_50pct",
                             *sum([["--set", s] for s in SMALL + ["data.batch_size=16", "finetune.epochs=0",
                                                                   "bench.enabled=false"]], []), "--quiet"]) == 0
            argv = [a.replace("cat,dog", "3,5") for a in argv]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, (example, argv, err)
