"""How much a model's NB decoder output depends on the cell: the spread of decoded gene proportions across cells
against the spread of the observed ones, on PBMC 68k reduced (ships with scanpy).

Usage: python benchmarks/decoder_spread.py [--model cellplm-small]

For each gene in the vocabulary: the coefficient of variation across cells of its share of the cell's decoded NB
means (eval mode, whole data set as one cell set), and of its share of the observed counts; printed as the mean over
genes, with their ratio, and the mean per-gene Pearson r between decoded and observed shares. A decoder that ignores
the cell gives a tiny spread and r near 0: its denoised or imputed values then follow each cell's library size only.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from opencellplm import CellPLM, datasets
from opencellplm.data import InputSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cellplm-small")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    model = CellPLM.from_pretrained(args.model)
    adata = datasets.pbmc68k_reduced()
    cell_set = next(iter(model.cell_sets(adata, InputSpec(max_cells=None))))
    module = model.module.eval()
    with torch.no_grad():
        mean = module(cell_set.batch, decode_genes=cell_set.batch.gene_index).nb.mean.double()
    decoded = (mean / mean.sum(1, keepdim=True)).numpy()
    counts = cell_set.batch.counts.to_dense().double().numpy()
    observed = counts / counts.sum(1, keepdims=True)

    def spread(shares: np.ndarray) -> float:
        return float(np.mean(shares.std(0) / shares.mean(0)))

    correlations = [np.corrcoef(decoded[:, j], observed[:, j])[0, 1] for j in range(decoded.shape[1])]
    print(f"{args.model} on pbmc68k_reduced ({decoded.shape[0]} cells x {decoded.shape[1]} genes)")
    print(f"coefficient of variation across cells, mean over genes: decoded {spread(decoded):.4f}, ", end="")
    print(f"observed {spread(observed):.4f} (ratio {spread(observed) / spread(decoded):.0f})")
    print(f"mean per-gene Pearson r of decoded vs observed shares: {np.nanmean(correlations):.3f}")


if __name__ == "__main__":
    main()
