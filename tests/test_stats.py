import pytest
import torch

from conftest import trained_tiny_vit
from prune.errors import ConfigError
from prune.paths import PathResult, PathStats, locate_paths


@pytest.fixture(scope="module")
def result():
    model = trained_tiny_vit()
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 1, 2, 2, 2, 4, 0])
    return locate_paths(model, x, y, steps=3, top_k=2, progress=False)


def stats_of(res, settings=None):
    return PathStats.empty(5, 4, 64, settings or res.settings).update(res)


def test_counts_and_frequencies_are_per_class(result):
    st = stats_of(result)
    assert st.counts.tolist() == [2, 2, 3, 0, 1]
    # brute force: for each class, count images whose path contains (l, d)
    for c in range(5):
        ref = torch.zeros(4, 64, dtype=torch.int32)
        for i in (result.labels == c).nonzero()[:, 0]:
            for l in range(4):
                for d in result.neurons[i, l]:
                    ref[l, d] += 1
        assert torch.equal(st.freq[c], ref)
        assert st.freq[c].sum() == st.counts[c] * 4 * 2
    assert torch.allclose(st.score_sum.double().sum(0), result.candidate_scores.double().sum(0), rtol=1e-5, atol=1e-7)
    norm = st.score_norm_sum.abs().sum((1, 2))
    assert norm[4].item() == pytest.approx(1.0)  # one image: L1 mass exactly 1
    assert (norm <= st.counts.double() + 1e-9).all()


def test_merge_of_shards_equals_whole(result):
    whole = stats_of(result)
    a = stats_of(PathResult.concat([_slice(result, 0, 3)]))
    b = stats_of(PathResult.concat([_slice(result, 3, 8)]))
    merged = a.merge(b)
    for k in ("counts", "freq", "score_sum", "jas_sum"):
        assert torch.allclose(getattr(merged, k).double(), getattr(whole, k).double())
    with pytest.raises(ConfigError, match="different settings"):
        a.merge(stats_of(result, {**result.settings, "steps": 99}))


def test_save_load_round_trip(tmp_path, result):
    st = stats_of(result)
    st.save(tmp_path / "stats.safetensors")
    back = PathStats.load(tmp_path / "stats.safetensors")
    assert back.settings == st.settings
    for k in ("counts", "freq", "score_sum", "score_norm_sum", "jas_sum"):
        assert torch.equal(getattr(back, k), getattr(st, k))
    result.save(tmp_path / "paths.safetensors")
    r2 = PathResult.load(tmp_path / "paths.safetensors")
    assert torch.equal(r2.neurons, result.neurons) and r2.settings == result.settings
    assert list(tmp_path.iterdir()) and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_preferred_path_is_modal_with_score_tiebreak():
    st = PathStats.empty(1, 2, 4, {"top_k": 1})
    st.freq[0] = torch.tensor([[0, 3, 3, 1], [5, 0, 0, 0]])
    st.score_sum[0] = torch.tensor([[9.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert st.preferred_path(0).tolist() == [[2], [0]]
    assert st.preferred_path(0, 2).tolist() == [[2, 1], [0, 1]]


def _slice(r, a, b):
    return PathResult(r.neurons[a:b], r.scores[a:b], r.candidate_scores[a:b], r.labels[a:b], r.targets[a:b],
                      r.target_prob[a:b], r.settings)
