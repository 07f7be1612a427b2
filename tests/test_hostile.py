"""Hostile and broken inputs: one `prune: error:` line, exit 2, no traceback, bounded memory, nothing
half-written, nothing read or executed outside what the user named; a full disk and Ctrl-C/SIGTERM leave a
run that a rerun finishes exactly as an uninterrupted one would."""

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prune.cli import main
from prune.errors import ConfigError
from prune.models import ASSETS

DIGITS = ASSETS / "digits_vit"
SMALL = ["importance.calibration_images=32", "data.eval_images=40", "finetune.epochs=0", "export.enabled=false",
         "bench.enabled=false"]


def recipe_args(out, *extra):
    return ["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in SMALL], []),
            *extra]


def one_error_line(capsys, rc, *needles, code=2):
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prune: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ recipes and --set
@pytest.mark.parametrize("where", ["file", "set"])
def test_yaml_tags_that_build_objects_are_refused_and_never_run(tmp_path, capsys, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    payload = '!!python/object/apply:os.system ["touch PWNED"]'
    if where == "file":
        (tmp_path / "r.yaml").write_text(f"name: x\nmodel: {payload}\n")
        argv = ["--recipe", "r.yaml", "--out", "run"]
    else:
        argv = ["--recipe", "quickstart.yaml", "--out", "run", "--set", f"name={payload}"]
    one_error_line(capsys, main(argv), "YAML tag !!python/object/apply:os.system is refused")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, needle", [
    ("name: x\ndescription: ${oc.env:HOME}\n", "call no OmegaConf resolvers"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n", "expands to more than 10,000"),
    ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_recipes_that_read_the_environment_or_explode_are_refused(tmp_path, capsys, text, needle):
    (tmp_path / "r.yaml").write_text(text)
    one_error_line(capsys, main(["--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]), needle)
    one_error_line(capsys, main(["--recipe", "quickstart.yaml", "--out", str(tmp_path / "run"), "--set",
                                 "description=${oc.env:HOME}"]), "call no OmegaConf resolvers")
    assert not (tmp_path / "run").exists()


def test_a_recipe_that_is_a_pipe_or_a_device_is_refused_without_reading_it(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.yaml")  # opening it to read would block forever
    one_error_line(capsys, main(["--recipe", str(tmp_path / "fifo.yaml"), "--out", str(tmp_path / "run")]),
                   "is a named pipe, not a regular file")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")  # reading it would never end
    one_error_line(capsys, main(["--recipe", str(tmp_path / "zero.yaml"), "--out", str(tmp_path / "run")]),
                   "a link to /dev/zero", "is a device")


# ---------------------------------------------------------------------------------------------- ONNX
def tiny_onnx(folder: Path, location: str | None = None, name: str = "m.onnx") -> Path:
    """y = x + w with w (4 floats) inline, or in the external file `location` (written when it is a plain
    name inside `folder`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    if location is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for k, v in {"location": location, "offset": "0", "length": "16"}.items():
            e = w.external_data.add()
            e.key, e.value = k, v
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / name))
    return folder / name


BENCH = ["--repeats", "1", "--warmup", "0", "--batch-sizes", "1"]


def test_onnx_with_external_data_inside_its_folder_is_benchmarked(tmp_path, capsys):
    model = tiny_onnx(tmp_path / "ok", "w.bin")
    (tmp_path / "ok" / "w.bin").write_bytes(np.full(4, 2, np.float32).tobytes())
    assert main(["bench", str(model), *BENCH]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("location, needle", [
    ("../../etc/passwd", "a path that leaves the model's folder"),
    ("/etc/passwd", "an absolute path"),
    ("link.bin", "outside the model's folder"),  # a symlink inside the folder that points out of it
    ("dev.bin", "outside the model's folder"),  # ... at a device
    ("missing.bin", "which does not exist"),
    ("short.bin", "bytes 0+16 of a 4-byte file"),
])
def test_onnx_external_data_outside_its_folder_is_refused_before_onnxruntime(tmp_path, capsys, monkeypatch,
                                                                             location, needle):
    import onnxruntime

    folder = tmp_path / "m"
    model = tiny_onnx(folder, location)
    (folder / "link.bin").symlink_to("/etc/passwd")
    (folder / "dev.bin").symlink_to("/dev/zero")
    (folder / "short.bin").write_bytes(b"1234")
    opened = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: opened.append(a) or 1 / 0)
    one_error_line(capsys, main(["bench", str(model), *BENCH]), str(model), needle)
    from prune.quantize import quantize_onnx  # what `prune export --quantize` runs on its fp32 file

    with pytest.raises(ConfigError, match="inside the model's folder"):
        quantize_onnx(model, tmp_path / "q.onnx", "dynamic")
    assert not opened and not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("kind, needle", [
    ("random", "not a valid ONNX model"), ("empty", "is an empty file"), ("text", "not a valid ONNX model"),
    ("zero", "is a device, not a regular file"), ("fifo", "is a named pipe"), ("no_graph", "no graph"),
])
def test_onnx_files_that_are_not_models_are_one_line(tmp_path, capsys, kind, needle):
    f = tmp_path / "x.onnx"
    if kind == "random":
        f.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "text":
        f.write_text("this is not a model\n" * 20)
    elif kind == "zero":
        f.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(f)
    else:
        import onnx

        onnx.save(onnx.ModelProto(ir_version=9), str(f))
    one_error_line(capsys, main(["bench", str(f), *BENCH]), needle)


# ------------------------------------------------------------------------------------------- safetensors
def hostile_safetensors(path: Path, kind: str) -> None:
    if kind == "huge_header":  # an 8-byte length claiming 10 TB
        path.write_bytes(struct.pack("<Q", 10 ** 13) + b"{}")
    elif kind == "offsets":  # a tensor whose data lies beyond the end of the file
        header = json.dumps({"w": {"dtype": "F32", "shape": [10 ** 9], "data_offsets": [0, 4 * 10 ** 9]}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    elif kind in ("zero", "urandom"):
        path.symlink_to(f"/dev/{kind}")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()


SAFETENSORS_CASES = [("huge_header", "its header claims 10,000,000,000,000 bytes"),
                     ("offsets", "outside its 16 data bytes"), ("zero", "a link to /dev/zero) is a device"),
                     ("urandom", "a link to /dev/urandom) is a device"), ("fifo", "is a named pipe"),
                     ("directory", "is a directory")]


@pytest.mark.parametrize("kind, needle", SAFETENSORS_CASES)
def test_hostile_weights_in_a_model_directory_are_refused_before_safetensors(tmp_path, capsys, kind, needle):
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(DIGITS / "config.json", d)
    hostile_safetensors(d / "model.safetensors", kind)
    one_error_line(capsys, main(recipe_args(tmp_path / "run", "--set", f"model.name={d}")),
                   "recipe key model.name", "model.safetensors", needle)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="model.safetensors"):  # random weights are not a silent fallback
        from prune.models import load_model

        load_model(str(d), pretrained=False)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    """A pruned-model directory (structure.json + model.safetensors) of a tiny random ViT."""
    from prune.models import ModelSpec
    from prune.checkpoint import save_pruned

    from conftest import tiny_vit

    model = tiny_vit(depth=2)
    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=5)
    d = tmp_path_factory.mktemp("pruned") / "model"
    save_pruned(model, d, ModelSpec("vit_tiny_patch16_224", kwargs), {"ffn": [list(range(64))] * 2},
                {"ffn": [64] * 2}, {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3,
                                    "interpolation": "bicubic", "crop_pct": 1.0})
    return d


@pytest.mark.parametrize("kind, needle", SAFETENSORS_CASES)
def test_hostile_weights_in_a_pruned_model_directory_are_refused(pruned_dir, tmp_path, capsys, kind, needle):
    d = tmp_path / "pruned"
    shutil.copytree(pruned_dir, d)
    (d / "model.safetensors").unlink()
    hostile_safetensors(d / "model.safetensors", kind)
    one_error_line(capsys, main(["bench", str(d), *BENCH]), needle)
    one_error_line(capsys, main(["export", str(d), "--out", str(tmp_path / "m.onnx")]), needle)
    assert not (tmp_path / "m.onnx").exists()
    one_error_line(capsys, main(["convert", "vit_tiny_patch16_224", "--out", str(tmp_path / "conv"),
                                 "--checkpoint", str(d / "model.safetensors")]), needle)
    assert not (tmp_path / "conv").exists()


def test_the_pruned_model_directory_itself_still_loads(pruned_dir, capsys):
    assert main(["bench", str(pruned_dir), *BENCH]) == 0, capsys.readouterr().err


# ------------------------------------------------------------------------------------- images in a dataset
def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A real PNG of `width` x `height` black 1-bit pixels: about 200 KB that decode to 1.6 G pixels."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(comp.compress(row * 1000) for _ in range(height // 1000)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def image_dataset(root: Path, bad: dict[int, bytes] | None = None, n_test: int = 10) -> Path:
    """Local parquet shards (train: 3 of each digit class, test: `n_test`) of small PNGs; rows of `bad` in
    the test split hold those bytes instead."""
    import io

    import datasets
    from PIL import Image

    g = np.random.default_rng(0)

    def png():
        buf = io.BytesIO()
        Image.fromarray(g.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    root.mkdir(parents=True, exist_ok=True)
    for split, labels in (("train", list(range(10)) * 3), ("test", [i % 10 for i in range(n_test)])):
        imgs = [{"bytes": (bad or {}).get(i) if split == "test" and i in (bad or {}) else png(), "path": None}
                for i in range(len(labels))]
        datasets.Dataset.from_dict({"img": imgs, "label": labels}, features=feats).to_parquet(
            str(root / f"{split}-00000-of-00001.parquet"))
    return root


def test_a_decompression_bomb_in_the_data_stops_the_run_naming_its_row_in_bounded_memory(tmp_path, capsys):
    import resource

    data = image_dataset(tmp_path / "data", {3: bomb_png()})
    capsys.readouterr()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rc = main(recipe_args(tmp_path / "run", "--set", f"data.source={data}", "--set", "data.eval_images=null"))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    one_error_line(capsys, rc, "split 'test' row 3: image has 1,600,000,000 pixels, more than prune decodes",
                   "data.skip_bad")
    assert grown_mb < 500, grown_mb  # decoding it would take 1.6 GB
    root = tmp_path / "run"
    assert (root / "prune/stage.json").is_file() and not (root / "baseline").exists()  # completed stages kept
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [".lock"]  # no temporary dirs left


# -------------------------------------------------------------------------------------------- full disk
def _fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    st = os.statvfs(disk)
    with open(filler, "wb") as f:
        left = st.f_bavail * st.f_frsize - leave
        while left > 0:
            n = min(left, 1 << 20)
            f.write(b"\0" * n)
            left -= n
    return filler


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run of `recipe_args`, to compare resumed runs with."""
    root = tmp_path_factory.mktemp("reference") / "run"
    assert main(recipe_args(root)) == 0
    return root


COMPARED = ["importance/importance.safetensors", "prune/model.safetensors", "prune/structure.json",
            "baseline/metrics.json", "evaluate/metrics.json"]


def same_as_reference(run: Path, reference: Path) -> None:
    for f in COMPARED:
        assert digest(run / f) == digest(reference / f), f
    a, b = (json.loads((r / "summary.json").read_text()) for r in (run, reference))
    for key in ("accuracy", "params", "macs", "ffn_widths"):
        assert a[key] == b[key], key


def test_a_full_disk_is_one_line_keeps_completed_stages_and_a_rerun_finishes_identically(tmp_path, capsys,
                                                                                        reference_run):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs is not permitted here")
    try:
        filler = _fill(disk, 400_000)  # room for the importance stage (60 KB), not for the pruned model (800 KB)
        run = disk / "run"
        capsys.readouterr()
        line = one_error_line(capsys, main(recipe_args(run)), f"no space left on device writing to {run}",
                              "free space", "rerun the same command")
        assert (run / "importance/stage.json").is_file() and not (run / "prune").exists()
        assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"], line
        filler.unlink()
        assert main(recipe_args(run)) == 0
        assert "[importance] unchanged" in capsys.readouterr().out
        same_as_reference(run, reference_run)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_enospc_anywhere_is_one_line_naming_the_run_directory(tmp_path, capsys, monkeypatch):
    import errno

    import prune.stages.prune as prune_stage

    def full(*a, **k):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:  # wrapped, as torch and safetensors do
            raise RuntimeError("serialisation failed") from e

    monkeypatch.setattr(prune_stage, "prune_units", full)
    one_error_line(capsys, main(recipe_args(tmp_path / "run")), f"writing to {tmp_path / 'run'}", "free space")
    assert not (tmp_path / "run/prune").exists()


# ------------------------------------------------------------------------------------------ Ctrl-C, SIGTERM
@pytest.mark.parametrize("sig, after, pause", [(signal.SIGINT, "[importance] running", 0.2),
                                               (signal.SIGTERM, "[importance] done", 0.0),
                                               (signal.SIGTERM, "[prune] running", 0.0)])
def test_ctrl_c_and_sigterm_are_one_line_release_the_lock_and_a_rerun_finishes_identically(
        tmp_path, capsys, reference_run, sig, after, pause):
    import torch

    run = tmp_path / "run"
    # the same threads as this process (the reference run), so float sums agree to the bit
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "prune.cli", *recipe_args(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(after):
                time.sleep(pause)
                proc.send_signal(sig)
                break
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, (lines, err)
    assert "Traceback" not in err and err.strip().splitlines() == [
        f"prune: interrupted ({signal.Signals(sig).name}); completed stages are kept and nothing partial was "
        "written: rerun the same command to resume"], err
    assert not (run / ".lock.holder").exists()  # the lock was released by the run itself
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"]  # no half-built stage
    capsys.readouterr()
    assert main(recipe_args(run)) == 0
    same_as_reference(run, reference_run)
