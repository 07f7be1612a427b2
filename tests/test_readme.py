"""The README's deployment snippets, run as written on a quickstart run's outputs."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from prune.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def section_blocks(title: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    sets = ["importance.calibration_images=64", "data.eval_images=60", "finetune.epochs=1", "finetune.train_images=128",
            "bench.enabled=false"]
    assert main(["--recipe", "quickstart.yaml", "--out", str(root / "runs/quickstart"), "--quiet",
                 *sum([["--set", s] for s in sets], [])]) == 0
    return root


def test_deploy_snippets_run_and_agree(quickstart, monkeypatch, capsys):
    from prune.digits import digits_dataset

    blocks = section_blocks("Deploy")
    assert len(blocks) == 3  # load_pruned, timm local-dir:, onnxruntime
    monkeypatch.chdir(quickstart)
    predictions = []
    for i in range(5):  # test images of several classes, saved as files the way a user would have them
        img = digits_dataset()["test"][i]["img"]
        img.save(quickstart / "digit.png")
        outs = []
        for code in blocks:
            exec(compile(code, "README.md", "exec"), {})
            outs.append(capsys.readouterr().out.strip())
        predictions.append(outs)
    # the load_pruned snippet prints a class index, the timm and onnxruntime ones its name: for digits, the same text
    assert all(len(set(p)) == 1 for p in predictions), predictions
    labels = [str(digits_dataset()["test"][i]["label"]) for i in range(5)]
    assert sum(p[0] == y for p, y in zip(predictions, labels)) >= 4  # and they are right
