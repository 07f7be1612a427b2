"""How close is `locate_paths` to the compute it cannot avoid, and how much faster than the released code?

Prints, measured in one run on the same model, images and batch size:
  locate      `locate_paths(method="jas")` on N images
  bare        N*L*m forward + input-gradient backward passes of the model (the issue's floor)
  backprop    the search with the earlier path neurons' gradients backpropagated through the kept
              prefix graph (locate_paths uses forward mode for them instead)
  no-reuse    the backprop search recomputing the interpolated prefix at every stage
  released    a re-implementation of the released code's structure: one image at a time, a full
              forward per stage with hooks, one `autograd.grad` per layer tensor (L(L+1)/2 per image)
and the ratios locate/bare (target <= 1.25) and released/locate (target >= 10), plus whether the
released-style paths are identical to ours.

    python benchmarks/path_speed.py --model ../shared/models/vit_tiny_cifar10 --images 8
    python benchmarks/path_speed.py --model vit_base_patch16_224 --no-pretrained --images 2 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch


def bare_compute(model, images, steps, images_per_chunk):
    """N*L*m forward + input-gradient backward passes at the same batch size (rows) as the search."""
    L = len(model.blocks)
    for s in range(0, len(images), images_per_chunk):
        rows = images[s:s + images_per_chunk].repeat_interleave(steps, 0)
        for _ in range(L):
            x = rows.clone().requires_grad_()
            prob = model(x).softmax(-1)[:, 0].sum()
            torch.autograd.grad(prob, x)


def search_backprop(model, images, labels, steps, images_per_chunk, reuse_prefix=True):
    """The backward formulation: earlier path neurons' gradients by backpropagating through the prefix."""
    from prune.models import ViTAdapter
    from prune.paths import attribution as A

    vit, out = ViTAdapter(model), []
    for s in range(0, len(images), images_per_chunk):
        x, y = images[s:s + images_per_chunk], labels[s:s + images_per_chunk]
        _, acts = A.clean_pass(vit, x, "cls")
        out.append(A.progressive_search(vit, x, y, acts, steps=steps, top_k=1, scope="cls", joint=True,
                                        reuse_prefix=reuse_prefix)[0])
    return torch.cat(out)


def released_style(model, image, label, steps):
    """Algorithm 1 as the released code structures it (per image; m steps batched; hooks; per-layer grads)."""
    blocks = model.blocks
    L = len(blocks)
    acts = {}
    hooks = [b.mlp.act.register_forward_hook(lambda m, i, o, l=l: acts.__setitem__(l, o[0, 0].detach()))
             for l, b in enumerate(blocks)]
    with torch.no_grad():
        model(image[None])
    for h in hooks:
        h.remove()
    alpha = (torch.arange(steps, dtype=image.dtype) / steps)[:, None]
    batch = image[None].expand(steps, *image.shape)
    path = []

    def run(values):
        leaves = {l: v.clone().requires_grad_() for l, v in values.items()}
        hs = [blocks[l].mlp.act.register_forward_hook(
            lambda m, i, o, l=l: torch.cat([leaves[l][:, None], o[:, 1:]], 1)) for l in leaves]
        prob = model(batch).softmax(-1)[:, label].sum()
        for h in hs:
            h.remove()
        return [torch.autograd.grad(prob, leaves[l], retain_graph=True)[0] for l in sorted(leaves)]

    def interp(l):
        v = acts[l].expand(steps, -1).clone()
        v[:, path[l]] = alpha[:, 0] * acts[l][path[l]]
        return v

    for t in range(L):
        values = {l: interp(l) for l in range(t)}
        values[t] = alpha * acts[t]
        grads = run(values)
        prev_a = sum(acts[l][path[l]] for l in range(t)) if t else 0.0
        prev_g = sum(grads[l][:, path[l]].sum() for l in range(t)) if t else 0.0
        ja = (acts[t] + prev_a) / steps * (grads[t].sum(0) + prev_g)
        path.append(int(ja.argmax()))
    grads = run({l: interp(l) for l in range(L)})
    jas = sum(acts[l][path[l]] for l in range(L)) / steps * sum(grads[l][:, path[l]].sum() for l in range(L))
    return torch.tensor(path), float(jas)


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="timm name or model directory")
    ap.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--images-per-chunk", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--released-images", type=int, default=None,
                    help="images for the released-style timing (default: all; it is slow)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="locate, bare and no-reuse run this many times, alternating; the fastest of each counts")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", default=None, help="also write the measurements here")
    args = ap.parse_args()

    from prune.models import load_model
    from prune.paths import attribution as A
    from prune.paths import locate_paths

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, data_cfg, _ = load_model(args.model, pretrained=args.pretrained)
    images = torch.randn(args.images, *data_cfg.input_size)
    with torch.no_grad():
        labels = model(images).argmax(-1)
    L, m, B = len(model.blocks), args.steps, args.images_per_chunk
    rows = B * m
    with A.frozen(model):
        bare_compute(model, images[:1], 1, 1)  # warm-up
        t_locate = t_bare = t_noreuse = t_backprop = float("inf")
        for _ in range(args.rounds):  # alternate, keep the fastest: machine noise hits all three alike
            t, res = timed(locate_paths, model, images, labels, steps=m, batch_size=rows, progress=False)
            t_locate = min(t_locate, t)
            t_bare = min(t_bare, timed(bare_compute, model, images, m, B)[0])
            t, p_noreuse = timed(search_backprop, model, images, labels, m, B, False)
            t_noreuse = min(t_noreuse, t)
            t, p_backprop = timed(search_backprop, model, images, labels, m, B, True)
            t_backprop = min(t_backprop, t)
        nr = args.released_images or args.images
        t_rel, rel = timed(lambda: [released_style(model, images[i], labels[i], m) for i in range(nr)])
    same = all(torch.equal(res.neurons[i, :, 0], rel[i][0]) for i in range(nr))
    out = {
        "model": args.model, "layers": L, "width": model.blocks[0].mlp.fc1.out_features,
        "tokens": int(model.patch_embed.num_patches + model.num_prefix_tokens),
        "images": args.images, "steps": m, "rows_per_batch": rows, "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "locate_s": t_locate, "bare_s": t_bare, "backprop_prefix_s": t_backprop, "no_reuse_s": t_noreuse,
        "released_s_per_image": t_rel / nr, "locate_s_per_image": t_locate / args.images,
        "ratio_locate_over_bare": t_locate / t_bare,
        "ratio_backprop_prefix_over_bare": t_backprop / t_bare,
        "ratio_no_reuse_over_bare": t_noreuse / t_bare,
        "speedup_vs_released": (t_rel / nr) / (t_locate / args.images),
        "released_paths_identical": same, "no_reuse_paths_identical": bool(torch.equal(p_noreuse, res.neurons)),
        "backprop_paths_identical": bool(torch.equal(p_backprop, res.neurons)),
    }
    for k, v in out.items():
        print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
