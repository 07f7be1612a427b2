import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("PRUNE_CACHE_DIR", tempfile.mkdtemp(prefix="prune-test-cache-"))  # latency tables

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_vit(depth=4, dim=32, heads=2, mlp_ratio=2.0, num_classes=5, img=16, patch=4, seed=0, **kw):
    """A small random timm ViT (pretrained=False) with a CLS token, like the paper's models."""
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img, patch_size=patch,
                             embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                             num_classes=num_classes, **kw).eval()


def trained_tiny_vit(steps=30, **kw):
    """`tiny_vit` after a few Adam steps on a fixed random task, so its neurons are not symmetric noise."""
    model = tiny_vit(**kw).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 16, 16, generator=g)
    y = torch.randint(0, model.num_classes, (64,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(steps):
        idx = torch.arange(i * 16, i * 16 + 16) % 64
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(7)
    return torch.randn(5, 3, 16, 16, generator=g, dtype=torch.float64)


@pytest.fixture
def labels():
    return torch.tensor([0, 3, 1, 3, 4])
