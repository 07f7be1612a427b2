"""`prune recipes`: the recipes shipped with the package."""

from __future__ import annotations


def run(args) -> int:
    from ..recipe import PACKAGED, packaged_recipes

    for name in packaged_recipes():
        import yaml

        desc = (yaml.safe_load((PACKAGED / name).read_text()) or {}).get("description", "")
        print(f"{name:28s} {desc}")
    return 0
