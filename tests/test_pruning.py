import timm
import torch
import pytest
from safetensors.torch import load_file

from conftest import tiny_vit, trained_tiny_vit
from prune.errors import ConfigError
from prune.recipe import PruneCfg
from prune.criteria import CRITERIA, ImportanceContext, PathFrequency, PathTaylor, get_criterion
from prune.gates import activation_stats
from prune.models import ModelSpec
from prune.paths import PathStats, locate_paths
from prune.checkpoint import load_pruned, save_pruned
from prune.budget import count_params_macs
from prune.pruning import prune_ffn
from prune.units import FFN

X = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(5))
Y = torch.tensor([0, 1, 2, 3, 4, 0])
KW = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0, num_classes=5)


def ctx_for(model):
    res = locate_paths(model, X, Y, steps=2, top_k=3, progress=False)
    stats = PathStats.empty(5, 4, 64, res.settings).update(res)
    batches = lambda: [(X[:3], Y[:3]), (X[3:], Y[3:])]  # noqa: E731
    return ImportanceContext(model, stats, batches, {"ffn": activation_stats(model, FFN, batches())}, X[:1], path_images=batches,
                             steps=2)


@pytest.mark.parametrize("kind", sorted(CRITERIA))
def test_every_criterion_scores_every_neuron_and_prunes(kind):
    model = trained_tiny_vit()
    ctx = ctx_for(model)
    table = get_criterion(kind).scores(ctx, FFN)
    assert table.shape == (4, 64) and torch.isfinite(table).all()
    kept = prune_ffn(model, table, PruneCfg(ratio=0.5, scope="uniform"), X[:1])
    for l, k in enumerate(kept):
        assert len(k) == 32
        # the kept neurons are exactly the 32 best of the table
        assert set(k) == set(table[l].topk(32).indices.tolist())
    assert [b.mlp.fc1.out_features for b in model.blocks] == [32] * 4
    assert model(X).shape == (6, 5)


def test_only_ffn_is_touched():
    model = tiny_vit()
    before = {k: v.shape for k, v in model.state_dict().items()}
    prune_ffn(model, torch.rand(4, 64, dtype=torch.float64), PruneCfg(ratio=0.25, round_to=8, scope="uniform"), X[:1])
    after = {k: v.shape for k, v in model.state_dict().items()}
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {f"blocks.{i}.mlp.{n}" for i in range(4) for n in ("fc1.weight", "fc1.bias", "fc2.weight")}
    assert all(model.blocks[i].mlp.fc1.out_features == 48 for i in range(4))


def test_global_pruning_follows_one_ranking_with_cap():
    model = tiny_vit()
    table = torch.zeros(4, 64, dtype=torch.float64)
    table[0] = 10 + torch.arange(64)  # block 0 is most important, block 3 least
    table[1] = 5 + torch.arange(64) / 64
    table[2] = 2 + torch.arange(64) / 64
    table[3] = torch.arange(64) / 64
    kept = prune_ffn(model, table, PruneCfg(ratio=0.5, scope="global", max_layer_ratio=0.75), X[:1])
    widths = [len(k) for k in kept]
    assert sum(widths) == 128 and widths[0] == 64 and widths[3] == 16  # block 3 hits the 75% cap


def test_mean_compensation_is_exact_for_constant_neurons():
    model = trained_tiny_vit().double()
    x = X.double()
    dead = torch.arange(0, 64, 2)  # make half the neurons constant: zero input weights, a bias only
    with torch.no_grad():
        for b in model.blocks:
            b.mlp.fc1.weight[dead] = 0
            b.mlp.fc1.bias[dead] = torch.linspace(-1, 1, len(dead), dtype=torch.float64)
        ref = model(x)
    stats = activation_stats(model, FFN, [(x, Y)])
    table = torch.ones(4, 64, dtype=torch.float64)
    table[:, dead] = 0
    prune_ffn(model, table, PruneCfg(ratio=0.5, scope="uniform"), x[:1], act_mean=stats["mean"], compensate="mean")
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-10, atol=1e-10)
    # and without compensation the same pruning changes the outputs
    model2 = trained_tiny_vit().double()
    with torch.no_grad():
        for b in model2.blocks:
            b.mlp.fc1.weight[dead] = 0
            b.mlp.fc1.bias[dead] = torch.linspace(-1, 1, len(dead), dtype=torch.float64)
    prune_ffn(model2, table, PruneCfg(ratio=0.5, scope="uniform"), x[:1])
    with torch.no_grad():
        assert (model2(x) - ref).abs().max() > 1e-3


def test_save_load_round_trip_and_plain_timm(tmp_path):
    model = trained_tiny_vit()
    spec = ModelSpec("vit_tiny_patch16_224", KW)
    kept = prune_ffn(model, torch.rand(4, 64, dtype=torch.float64), PruneCfg(ratio=0.5, scope="uniform"), X[:1])
    save_pruned(model, tmp_path, spec, {"ffn": kept}, {"ffn": [64] * 4})
    back, structure = load_pruned(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(back(X), model(X))
    assert structure["units"]["ffn"]["widths"] == [32] * 4 and structure["timm_mlp_ratio"] == 1.0
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**KW, "mlp_ratio": structure["timm_mlp_ratio"]})
    plain.load_state_dict(load_file(tmp_path / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(X), model(X))


def test_params_and_macs_shrink():
    model = tiny_vit()
    p0, m0 = count_params_macs(model, X[:1])
    prune_ffn(model, torch.rand(4, 64, dtype=torch.float64), PruneCfg(ratio=0.5, scope="uniform"), X[:1])
    p1, m1 = count_params_macs(model, X[:1])
    ffn_params = 4 * (32 * 32 + 32 + 32 * 32)  # removed: half of fc1 (weight+bias) and half of fc2 weight
    assert p0 - p1 == ffn_params and m1 < m0


def test_bad_settings():
    with pytest.raises(ConfigError, match="ratio must be in"):
        prune_ffn(tiny_vit(), torch.rand(4, 64), PruneCfg.model_construct(ratio=1.0, scope="uniform"), X[:1])
    with pytest.raises(ConfigError, match="unknown importance kind"):
        get_criterion("vibes")


def test_path_frequency_ties_are_broken_by_path_jas_exactly():
    st = PathStats.empty(2, 1, 4, {"top_k": 1})
    st.counts[:] = torch.tensor([10, 10])
    # class-averaged frequencies 0.1+0.2 (neuron 0) and 0.3+0.0 (neuron 1) are equal; float sums are not
    st.freq[0, 0] = torch.tensor([1, 3, 0, 6], dtype=torch.int32)
    st.freq[1, 0] = torch.tensor([2, 0, 5, 3], dtype=torch.int32)
    st.score_norm_sum[:, 0] = torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # neuron 1 wins the tie
    ranks = PathFrequency().scores(ImportanceContext(None, st), FFN)
    assert ranks[0].argsort().tolist() == [0, 1, 2, 3]  # freq: 0.3, 0.3, 0.5, 0.9 ; tie 0 < 1 by path_jas


class Fixed:
    """A stand-in criterion that returns a given table."""

    def __init__(self, table):
        self.table = table

    def scores(self, ctx, unit):
        return self.table


def test_path_taylor_is_a_borda_count_of_taylor_and_path_frequency():
    taylor = torch.tensor([[0.4, 0.1, 0.3, 0.2], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    freq = torch.tensor([[0.0, 3.0, 1.0, 2.0], [3.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    crit = PathTaylor(taylor=Fixed(taylor), paths=Fixed(freq))
    order = crit.scores(None, FFN).argsort(dim=1).tolist()  # least important first
    # block 0: taylor ranks [3,0,2,1] + freq ranks [0,3,1,2] = [3,3,3,3]: all tied, taylor decides
    # block 1: taylor ranks [0,1,2,3] + freq ranks [3,2,1,0] = [3,3,3,3]: tied again, taylor decides
    assert order == [[1, 3, 2, 0], [0, 1, 2, 3]]
    freq[0] = torch.tensor([3.0, 2.0, 1.0, 0.0])  # freq ranks [3,2,1,0] -> sums [6,2,3,1]
    assert crit.scores(None, FFN).argsort(dim=1)[0].tolist() == [3, 1, 2, 0]


def test_the_registered_path_taylor_fuses_the_registered_taylor_and_path_frequency():
    crit = CRITERIA["path_taylor"]
    assert crit.taylor is CRITERIA["taylor"] and crit.paths is CRITERIA["path_frequency"]
