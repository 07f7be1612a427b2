import pytest
import torch

from conftest import tiny_vit
from prune.finetune import TrainConfig, distillation_loss, train


class Toy(torch.utils.data.Dataset):
    def __init__(self, n=48):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 16, 16, generator=g)
        self.y = (self.x[:, 0].mean((1, 2)) > 0).long()  # a learnable rule

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), i


CFG = TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup_epochs=0.5)


def test_training_learns_and_reports_history():
    model = tiny_vit(num_classes=2)
    cfg = TrainConfig(epochs=8, batch_size=16, lr=3e-3, warmup_epochs=1)
    hist = train(model, Toy(128), Toy(128), cfg, progress=False)
    assert [h["epoch"] for h in hist] == list(range(1, 9))
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["eval_top1"] > 0.8 and hist[-1]["eval_top1"] >= hist[0]["eval_top1"]


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    straight = tiny_vit(num_classes=2, drop_path_rate=0.1)
    train(straight, Toy(), None, CFG, progress=False)

    def stop(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    resumed = tiny_vit(num_classes=2, drop_path_rate=0.1)
    with pytest.raises(KeyboardInterrupt):
        train(resumed, Toy(), None, CFG, checkpoint_dir=tmp_path, progress=False, on_epoch_end=stop)
    assert (tmp_path / "last" / "state.json").is_file()
    fresh = tiny_vit(num_classes=2, drop_path_rate=0.1, seed=123)  # different init: everything comes from the checkpoint
    hist = train(fresh, Toy(), None, CFG, checkpoint_dir=tmp_path, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for (k, a), b in zip(straight.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pkl"))  # nothing pickled


def test_distillation_pulls_student_to_teacher():
    teacher = tiny_vit(num_classes=2, seed=5)
    student = tiny_vit(num_classes=2, seed=6)
    x = Toy().x
    with torch.no_grad():
        before = distillation_loss(student(x), teacher(x), 2.0).item()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup_epochs=0, distill_alpha=1.0)
    train(student, Toy(), None, cfg, teacher=teacher, progress=False)
    with torch.no_grad():
        after = distillation_loss(student.eval()(x), teacher(x), 2.0).item()
    assert after < 0.5 * before
    assert distillation_loss(teacher(x), teacher(x), 2.0).abs().item() < 1e-6


def test_feature_distillation_pulls_every_block_towards_the_teacher():
    from prune.finetune import BlockOutputs, feature_loss

    teacher = tiny_vit(num_classes=2, seed=5)
    x = Toy().x

    def gap(model):
        s, t = BlockOutputs(model), BlockOutputs(teacher)
        with torch.no_grad():
            model(x), teacher(x)
        out = feature_loss(s.take(), t.take()).item()
        s.close(), t.close()
        return out

    plain, features = tiny_vit(num_classes=2, seed=6), tiny_vit(num_classes=2, seed=6)
    cfg = TrainConfig(epochs=6, batch_size=16, lr=3e-3, warmup_epochs=0, distill_alpha=0.5)
    train(plain, Toy(), None, cfg, teacher=teacher, progress=False)
    train(features, Toy(), None, TrainConfig(**{**cfg.__dict__, "distill_features": 5.0}), teacher=teacher,
          progress=False)
    assert gap(features) < 0.5 * gap(plain)
    assert all(not b._forward_hooks for b in features.blocks)  # the hooks are removed after training


def test_explicit_attention_computes_the_same_and_restores_the_fused_form():
    from prune.finetune import explicit_attention

    model = tiny_vit(num_classes=2).eval()
    x = torch.randn(3, 3, 16, 16)
    fused = model(x)
    with pytest.raises(RuntimeError):
        with explicit_attention(model):
            assert not any(b.attn.fused_attn for b in model.blocks)
            torch.testing.assert_close(model(x), fused, rtol=1e-5, atol=1e-5)
            raise RuntimeError("restored even when training fails")
    assert all(b.attn.fused_attn for b in model.blocks)
    with explicit_attention(model, None, when=False):
        assert all(b.attn.fused_attn for b in model.blocks)


def test_one_model_and_teacher_train_in_float32_bf16_float32_each_as_asked(monkeypatch):
    """accelerate keeps one precision per process and leaves its autocast wrapper on a prepared module; every
    training here runs in the precision it asks for, bf16 on the CPU uses explicit attention (student and
    teacher), and after training the modules are plain float32 modules on the fused kernel again."""
    if torch.cuda.is_available():
        pytest.skip("the explicit form is for CPU runs")
    model, teacher = tiny_vit(num_classes=2), tiny_vit(num_classes=2)
    dtypes = {"model": [], "teacher": []}
    for name, m in (("model", model), ("teacher", teacher)):
        m.blocks[0].mlp.fc1.register_forward_hook(lambda mod, i, o, name=name: dtypes[name].append(o.dtype))
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    for precision, expected, fused_calls in (("no", torch.float32, True), ("bf16", torch.bfloat16, False),
                                             ("no", torch.float32, True)):
        dtypes["model"].clear(), dtypes["teacher"].clear(), calls.clear()
        hist = train(model, Toy(32), None, TrainConfig(epochs=1, batch_size=16, mixed_precision=precision,
                                                       distill_alpha=0.5), teacher=teacher, progress=False)
        assert set(dtypes["model"]) == {expected} and set(dtypes["teacher"]) == {expected}, precision
        assert bool(calls) == fused_calls, precision
        assert hist[-1]["precision"] == {"no": "fp32"}.get(precision, precision)
        assert all(b.attn.fused_attn for m in (model, teacher) for b in m.blocks)
        dtypes["model"].clear(), calls.clear()
        model(torch.randn(2, 3, 16, 16))  # after training: float32, fused kernel
        assert set(dtypes["model"]) == {torch.float32} and calls


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from prune.finetune import resolve_precision

    assert resolve_precision("no") == "no" and resolve_precision("bf16") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for avx512_bf16, amx, expected in [(True, False, "bf16"), (False, True, "bf16"), (False, False, "no")]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_precision("auto") == expected


def test_recipe_mixed_precision_reads_a_bare_yaml_no_and_auto():
    from prune.errors import ConfigError
    from prune.recipe import load_recipe

    assert load_recipe("quickstart.yaml", ["finetune.mixed_precision=no"]).finetune.mixed_precision == "no"
    assert load_recipe("quickstart.yaml", ["finetune.mixed_precision=auto"]).finetune.mixed_precision == "auto"
    assert load_recipe("cifar10_vit_tiny_50pct.yaml").finetune.mixed_precision == "auto"
    with pytest.raises(ConfigError, match="finetune.mixed_precision"):
        load_recipe("quickstart.yaml", ["finetune.mixed_precision=yes"])  # YAML true: not a precision
