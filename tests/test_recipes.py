"""Every recipe on docs/integrations.md runs as the page shows it (the page includes the files)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RECIPES = sorted((ROOT / "docs" / "recipes").glob("*.py"))
NEEDS = {"lightning_frobsam.py": "lightning.pytorch", "hf_trainer_frobsam.py": "transformers"}


def test_the_integrations_page_includes_every_recipe():
    page = (ROOT / "docs" / "integrations.md").read_text()
    assert RECIPES and all(f'--8<-- "docs/recipes/{recipe.name}"' in page for recipe in RECIPES)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_a_recipe_runs(recipe, monkeypatch, tmp_path, capfd):
    if recipe.name in NEEDS:
        pytest.importorskip(NEEDS[recipe.name])
    monkeypatch.chdir(tmp_path)  # recipes write under out/
    runpy.run_path(str(recipe), run_name="__main__")
    assert capfd.readouterr().out.strip()  # each recipe prints what it measured (fd-level: FSDP2's ranks too)
