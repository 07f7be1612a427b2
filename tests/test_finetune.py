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
