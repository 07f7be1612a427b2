"""prune: neuron-path discovery and path-driven structural pruning for Vision Transformers."""

import sys

__version__ = "0.1.0"


class _RegisterAfterTimm:
    """Registers prune's timm architecture (`prune_vit`, prune/timm_model.py) the moment timm finishes
    importing, so `import prune, timm; timm.create_model("local-dir:DIR", pretrained=True)` builds a
    pruned-model directory. timm takes seconds to import, and much of prune (`prune --help`, its
    one-line errors) never needs it, so `import prune` does not import it: this finder answers for
    `timm` once, with timm's own spec whose loader imports prune.timm_model after timm's module ran,
    and leaves `sys.meta_path`."""

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        import importlib.util

        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Then(spec.loader)
        return spec


class _Then:
    """timm's loader, then `prune.timm_model`; the module keeps timm's own loader."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _register()


def _register() -> None:
    try:
        from . import timm_model  # noqa: F401  (registering is importing it)
    except Exception as e:  # noqa: BLE001 - a timm prune cannot extend must still import
        import warnings

        warnings.warn(f"prune could not register its timm architecture prune_vit ({type(e).__name__}: {e}); "
                      "pruned-model directories will not load with timm.create_model('local-dir:...')")


if "timm" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterAfterTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimm())
