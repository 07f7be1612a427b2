"""The path engine against a deliberately simple reference: one image, one step, one hook per layer.

The reference follows the method page literally (model(x) with forward hooks that overwrite the
CLS row of `blocks[l].mlp.act`), sharing no code with `prune.paths`. Models run in float64 so
argmax ties cannot flip between the two implementations.
"""

import pytest
import timm
import torch

from conftest import tiny_vit, trained_tiny_vit
from prune.errors import ConfigError, UnsupportedModelError
from prune.paths import edit_paths, locate_paths, path_score


# ---------------------------------------------------------------------------------- reference
def ref_clean_acts(model, img):
    acts = {}
    hooks = [b.mlp.act.register_forward_hook(lambda m, i, o, l=l: acts.__setitem__(l, o[0, 0].detach().clone()))
             for l, b in enumerate(model.blocks)]
    with torch.no_grad():
        model(img[None])
    for h in hooks:
        h.remove()
    return [acts[l] for l in range(len(model.blocks))]


def ref_prob_and_grads(model, img, label, cls_values):
    """Probability of `label` with CLS neurons of layer l overwritten by cls_values[l]; grads wrt them."""
    leaves = {l: v.clone().requires_grad_() for l, v in cls_values.items()}
    hooks = [model.blocks[l].mlp.act.register_forward_hook(
        lambda m, i, o, l=l: torch.cat([leaves[l].expand(o.shape[0], 1, -1), o[:, 1:]], 1)) for l in leaves]
    prob = model(img[None]).softmax(-1)[0, label]
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(prob, list(leaves.values()))
    return prob, dict(zip(leaves, grads))


def interp(a, idx, alpha):
    v = a.clone()
    v[idx] = alpha * a[idx]
    return v


def ref_jas(model, img, label, path, steps):
    """JAS of a path (list of index tensors per layer), one step at a time."""
    acts = ref_clean_acts(model, img)
    g_total = 0.0
    for k in range(steps):
        alpha = k / steps
        _, grads = ref_prob_and_grads(model, img, label, {l: interp(acts[l], p, alpha) for l, p in enumerate(path)})
        g_total += sum(grads[l][p].sum() for l, p in enumerate(path))
    a_total = sum(acts[l][p].sum() for l, p in enumerate(path))
    return (a_total / steps * g_total).item()


def ref_locate(model, img, label, steps, top_k, joint=True):
    """Algorithm 1 (joint) or per-layer IG (not joint), one image and one step at a time."""
    acts = ref_clean_acts(model, img)
    chosen = []
    for t in range(len(model.blocks)):
        g_t, g_prev = torch.zeros_like(acts[t]), 0.0
        for k in range(steps):
            alpha = k / steps
            values = {l: interp(acts[l], chosen[l], alpha) for l in range(t)} if joint else {}
            values[t] = alpha * acts[t]
            _, grads = ref_prob_and_grads(model, img, label, values)
            g_t += grads[t]
            if joint:
                g_prev += sum(grads[l][chosen[l]].sum() for l in range(t))
        a_prev = sum(acts[l][chosen[l]].sum() for l in range(t)) if joint else 0.0
        ja = (acts[t] + a_prev) / steps * (g_t + g_prev)
        chosen.append(ja.topk(top_k).indices)
    return torch.stack(chosen), ref_jas(model, img, label, chosen, steps)


def ref_influence(model, img, label, steps):
    grads_sum = None
    for k in range(steps):
        hs = {}
        hooks = [b.mlp.act.register_forward_hook(lambda m, i, o, l=l: hs.__setitem__(l, o))
                 for l, b in enumerate(model.blocks)]
        x = (k / steps * img[None]).requires_grad_()
        prob = model(x).softmax(-1)[0, label]
        for h in hooks:
            h.remove()
        g = torch.autograd.grad(prob, [hs[l] for l in range(len(hs))])
        g = torch.stack([gl[0, 0] for gl in g])
        grads_sum = g if grads_sum is None else grads_sum + g
    return grads_sum / steps


# ---------------------------------------------------------------------------------- tests
@pytest.fixture(params=["random", "trained"])
def model64(request):
    model = tiny_vit() if request.param == "random" else trained_tiny_vit()
    return model.double()


@pytest.mark.parametrize("top_k", [1, 3])
def test_jas_matches_reference(model64, images, labels, top_k):
    steps = 4
    res = locate_paths(model64, images, labels, method="jas", steps=steps, top_k=top_k, progress=False)
    for i in range(len(images)):
        path, score = ref_locate(model64, images[i], labels[i], steps, top_k)
        assert torch.equal(res.neurons[i], path), f"image {i}"
        assert res.scores[i].item() == pytest.approx(score, rel=1e-9, abs=1e-12)


def test_layer_ig_and_activation_match_reference(model64, images, labels):
    steps = 3
    ig = locate_paths(model64, images, labels, method="layer_ig", steps=steps, top_k=2, progress=False)
    act = locate_paths(model64, images, labels, method="activation", steps=steps, top_k=2, progress=False)
    for i in range(len(images)):
        path, score = ref_locate(model64, images[i], labels[i], steps, 2, joint=False)
        assert torch.equal(ig.neurons[i], path)
        assert ig.scores[i].item() == pytest.approx(score, rel=1e-9, abs=1e-12)
        acts = torch.stack(ref_clean_acts(model64, images[i]))
        assert torch.equal(act.neurons[i], acts.topk(2, -1).indices)


def test_influence_pattern_matches_reference(model64, images, labels):
    res = locate_paths(model64, images, labels, method="influence_pattern", steps=3, progress=False)
    for i in range(len(images)):
        ref = ref_influence(model64, images[i], labels[i], 3)
        torch.testing.assert_close(res.candidate_scores[i], ref, rtol=1e-9, atol=1e-12)
        assert torch.equal(res.neurons[i, :, 0], ref.argmax(-1))


def test_path_score_matches_reference(model64, images, labels):
    g = torch.Generator().manual_seed(3)
    neurons = torch.randint(0, 64, (len(images), 4, 2), generator=g)
    got = path_score(model64, images, labels, neurons, steps=3)
    for i in range(len(images)):
        assert got[i].item() == pytest.approx(ref_jas(model64, images[i], labels[i], list(neurons[i]), 3), rel=1e-9)


def test_batching_does_not_change_results(images, labels):
    model = trained_tiny_vit().double()
    steps = 3
    runs = [locate_paths(model, images, labels, steps=steps, top_k=2, batch_size=b * steps, progress=False)
            for b in (1, 3, len(images))]
    for r in runs[1:]:
        assert torch.equal(r.neurons, runs[0].neurons)
        torch.testing.assert_close(r.scores, runs[0].scores, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(r.candidate_scores, runs[0].candidate_scores, rtol=1e-10, atol=1e-14)


def test_jas_paths_score_at_least_baselines(images, labels):
    """On each image the JAS path is chosen greedily to maximise JAS; a random path must score lower on average."""
    model = trained_tiny_vit().double()
    jas = locate_paths(model, images, labels, method="jas", steps=4, progress=False)
    rnd = locate_paths(model, images, labels, method="random", steps=4, progress=False)
    assert jas.scores.mean() > rnd.scores.mean()


def test_float32_agrees_with_float64(images, labels):
    model = trained_tiny_vit()
    r32 = locate_paths(model, images.float(), labels, steps=4, progress=False)
    r64 = locate_paths(model.double(), images, labels, steps=4, progress=False)
    torch.testing.assert_close(r32.scores.double(), r64.scores, rtol=1e-4, atol=1e-6)


def test_tokens_scope_sums_per_token_scores(images, labels):
    """With one token the 'tokens' formula is the CLS formula: check the per-token sum on a 1-token model."""
    model = tiny_vit(img=4, patch=4, class_token=False, global_pool="avg").double()  # one patch, no CLS
    x = images[:, :, :4, :4]
    res = locate_paths(model, x, labels, steps=3, scope="tokens", progress=False)
    for i in range(len(x)):
        path, score = ref_locate(model, x[i], labels[i], 3, 1)
        assert torch.equal(res.neurons[i], path)
        assert res.scores[i].item() == pytest.approx(score, rel=1e-9)


def test_edit_paths_matches_hooked_forward(images, labels):
    model = trained_tiny_vit().double()
    neurons = torch.randint(0, 64, (len(images), 4, 2), generator=torch.Generator().manual_seed(0))
    for op, factor in (("remove", 0.0), ("enhance", 2.0)):
        got = edit_paths(model, images, neurons, op)
        for i in range(len(images)):
            def hook(m, inp, out, l):
                out = out.clone()
                out[:, 0, neurons[i, l]] *= factor
                return out
            hs = [b.mlp.act.register_forward_hook(lambda m, a, o, l=l: hook(m, a, o, l))
                  for l, b in enumerate(model.blocks)]
            with torch.no_grad():
                ref = model(images[i:i + 1])[0]
            for h in hs:
                h.remove()
            torch.testing.assert_close(got[i], ref)


def test_pred_target_uses_clean_prediction(images):
    model = trained_tiny_vit().double()
    res = locate_paths(model, images, None, target="pred", steps=2, progress=False)
    with torch.no_grad():
        assert torch.equal(res.targets, model(images).argmax(-1))


@pytest.mark.parametrize("name,kwargs,scope", [
    ("vit_base_patch16_224", {}, "cls"),
    ("vit_base_patch32_224", {}, "cls"),
    ("vit_large_patch32_224", {}, "cls"),
    ("vit_base_patch16_224", {"global_pool": "avg", "fc_norm": True}, "tokens"),  # MAE-style read-out
    ("deit_tiny_patch16_224", {}, "cls"),
])
def test_paper_architectures_run(name, kwargs, scope):
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    depth, width = len(model.blocks), model.blocks[0].mlp.fc1.out_features
    x = torch.randn(1, 3, 224, 224)
    res = locate_paths(model, x, torch.tensor([3]), steps=2, scope=scope, progress=False)
    assert res.neurons.shape == (1, depth, 1)
    assert res.candidate_scores.shape == (1, depth, width)
    assert torch.isfinite(res.scores).all()


def test_unsupported_models_and_settings_fail_clearly(images, labels):
    with pytest.raises(UnsupportedModelError, match="not a timm VisionTransformer"):
        locate_paths(torch.nn.Linear(3, 3), images, labels)
    avg = tiny_vit(global_pool="avg")
    with pytest.raises(ConfigError, match="scope='tokens'"):
        locate_paths(avg, images.float(), labels, scope="cls")
    model = tiny_vit()
    with pytest.raises(ConfigError, match="unknown path method"):
        locate_paths(model, images.float(), labels, method="magic")
    with pytest.raises(ConfigError, match="top_k"):
        locate_paths(model, images.float(), labels, top_k=0)
    with pytest.raises(ConfigError, match="needs labels"):
        locate_paths(model, images.float(), None)


def test_forward_mode_equals_backpropagated_prefix(images, labels):
    """The forward-mode gradient sum of earlier path neurons is the backward formulation's, exactly."""
    from prune.models import ViTAdapter
    from prune.paths import attribution as A

    model = trained_tiny_vit().double()
    vit = ViTAdapter(model)
    _, acts = A.clean_pass(vit, images, "cls")
    with A.frozen(model):
        fwd = A.forward_mode_search(vit, images, labels, acts, steps=3, top_k=2)
        bwd = A.progressive_search(vit, images, labels, acts, steps=3, top_k=2, scope="cls", joint=True)
    assert torch.equal(fwd[0], bwd[0])
    torch.testing.assert_close(fwd[1], bwd[1], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(fwd[2], bwd[2], rtol=1e-10, atol=1e-14)


def test_prefix_reuse_equals_recomputation(images, labels):
    """Reusing the interpolated prefix across stages is an exact saving, not an approximation."""
    from prune.models import ViTAdapter
    from prune.paths import attribution as A

    model = trained_tiny_vit().double()
    vit = ViTAdapter(model)
    _, acts = A.clean_pass(vit, images, "cls")
    with A.frozen(model):
        fast = A.progressive_search(vit, images, labels, acts, steps=3, top_k=2, scope="cls", joint=True)
        slow = A.progressive_search(vit, images, labels, acts, steps=3, top_k=2, scope="cls", joint=True,
                                    reuse_prefix=False)
    assert torch.equal(fast[0], slow[0])
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(fast[2], slow[2], rtol=1e-10, atol=1e-14)
