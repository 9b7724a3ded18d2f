"""Input that cannot be used is refused with a message naming it and saying what to do: files that are not
h5ad, objects that are not AnnData, counts too large to be counts; float16 counts are read as float32."""

from __future__ import annotations

import logging
import re
import warnings

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from opencellplm import CellPLM, CellPLMModule
from opencellplm.cli import main
from opencellplm.data import open_h5ad, validate

from .conftest import vocabulary


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return CellPLM(CellPLMModule(tiny_config), vocabulary(tiny_config.n_genes))


# ------------------------------------------------------------------------------ not an h5ad
def _not_h5ad(kind: str, folder, tiny_adata):
    """A file named .h5ad that anndata did not write whole, and the words its error must contain."""
    path = folder / f"{kind}.h5ad"
    if kind == "text":
        path.write_text("cell,gene,count\nc1,CD3E,4\n")
    elif kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    elif kind == "truncated":
        tiny_adata.write_h5ad(folder / "whole.h5ad")
        whole = (folder / "whole.h5ad").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    else:  # HDF5, but no obs or var
        with h5py.File(path, "w") as f:
            f["X"] = np.asarray(tiny_adata.X)
        return path, r"is an HDF5 file but not an AnnData h5ad: it has no obs or var \(top-level entries: \['X'\]\)"
    return path, r"is not a readable h5ad file \(.*\): it is another format named .h5ad, or was cut short"


@pytest.mark.parametrize("kind", ["text", "png", "truncated", "no obs"])
def test_open_h5ad_refuses_files_that_are_not_h5ad(tmp_path, tiny_adata, kind):
    path, message = _not_h5ad(kind, tmp_path, tiny_adata)
    with pytest.raises(ValueError, match=message) as err, open_h5ad(path):
        pass
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", ["text", "truncated", "no obs"])
def test_cli_exits_2_on_files_that_are_not_h5ad(tmp_path, tiny_adata, model, caplog, kind):
    path, message = _not_h5ad(kind, tmp_path, tiny_adata)
    model.save(tmp_path / "ckpt")
    tiny_adata.write_h5ad(tmp_path / "good.h5ad")
    model_args = ["--checkpoint", str(tmp_path / "ckpt")]
    commands = {
        "embed": ["embed", str(path), *model_args, "--out", str(tmp_path / "out.h5ad")],
        "prepare-corpus": ["prepare-corpus", str(path), "--out", str(tmp_path / "corpus")],
        "annotate fit": ["annotate", "fit", str(path), "--labels-key", "t", *model_args, "--out", str(tmp_path / "A")],
        "perturb fit": ["perturb", "fit", str(path), *model_args, "--out", str(tmp_path / "P")],
        "impute": [
            "impute",
            str(path),
            "--reference",
            str(tmp_path / "good.h5ad"),
            *model_args,
            "--out",
            str(tmp_path / "i.h5ad"),
        ],
    }
    for name, argv in commands.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main(argv) == 2, name
        assert caplog.records[-1].levelno == logging.ERROR
        assert str(path) in caplog.text and re.search(message, caplog.text), name
    assert not (tmp_path / "out.h5ad").exists() and not (tmp_path / "corpus").exists()
    assert not any((tmp_path / name).exists() for name in ("A", "P", "i.h5ad"))


@pytest.mark.parametrize("kind", ["text", "truncated", "no obs", "missing", "folder"])
def test_validate_exits_1_on_files_it_cannot_use(tmp_path, tiny_adata, capsys, kind):
    """The README's promise: `validate` exits 1 when the file cannot be used, with the reason in its report."""
    if kind == "missing":
        path, message = tmp_path / "absent.h5ad", "input file not found: "
    elif kind == "folder":
        path, message = tmp_path / "folder.h5ad", "is not a file"
        path.mkdir()
    else:
        path, message = _not_h5ad(kind, tmp_path, tiny_adata)
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}\nerror: ") and out.endswith("usable: no\n")
    assert re.search(message, out) and str(path) in out.splitlines()[1]


# ------------------------------------------------------------------------------ not an AnnData
ARRAY_FIX = r"wrap the raw counts \(cells x genes\) with their gene ids as var_names: anndata.AnnData\(X=counts, var="
PATH_FIX = r"read it first with anndata.read_h5ad\(path\) .*or embed the file with CellPLM.embed_file"


def test_validate_needs_an_anndata(tiny_adata, tmp_path):
    with pytest.raises(TypeError, match=rf"expected an AnnData, got a ndarray of shape \(40, 30\); {ARRAY_FIX}"):
        validate(np.asarray(tiny_adata.X))
    with pytest.raises(TypeError, match=rf"expected an AnnData, got a csr_matrix of shape \(40, 30\); {ARRAY_FIX}"):
        validate(sp.csr_matrix(tiny_adata.X))
    with pytest.raises(TypeError, match=rf"expected an AnnData, got the path 'x.h5ad'; {PATH_FIX}"):
        validate("x.h5ad")
    with pytest.raises(TypeError, match="expected an AnnData of raw counts, got list"):
        validate([[1, 2]])


def test_model_methods_need_an_anndata(model, tiny_adata, tmp_path):
    tiny_adata.write_h5ad(tmp_path / "x.h5ad")
    counts = np.asarray(tiny_adata.X)
    with pytest.raises(TypeError, match=rf"got a ndarray of shape \(40, 30\); {ARRAY_FIX}"):
        model.get_latent_representation(counts)
    with pytest.raises(TypeError, match=rf"got a csr_matrix of shape \(40, 30\); {ARRAY_FIX}"):
        model.embed(sp.csr_matrix(counts))
    for path in (str(tmp_path / "x.h5ad"), tmp_path / "x.h5ad"):
        with pytest.raises(TypeError, match=rf"got the path '.*x.h5ad'; {PATH_FIX}"):
            model.embed(path)
    with pytest.raises(TypeError, match=rf"got a DataFrame of shape \(40, 30\); {ARRAY_FIX}"):
        model.validate(tiny_adata.to_df())


# ---------------------------------------------------------------------------------- float16
def _as_float16(x: np.ndarray, layout: str):
    if layout == "dense":
        return x.astype(np.float16)
    csr = sp.csr_matrix(x)  # scipy cannot convert to float16, but holds float16 data given to it
    return sp.csr_matrix((csr.data.astype(np.float16), csr.indices, csr.indptr), shape=csr.shape)


@pytest.mark.parametrize("where", ["memory", "open_h5ad", "backed"])
@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_float16_counts_are_read_as_float32(model, tiny_adata, tmp_path, monkeypatch, layout, where):

    tiny_adata.obs["sample"] = np.random.default_rng(0).choice(["a", "b", "c"], 40)  # interleaved rows
    monkeypatch.setattr("opencellplm.data.sets.READ_BLOCK_CELLS", 13)  # several sets per read, and reads of one set
    expected = model.get_latent_representation(tiny_adata, sample_key="sample", max_cells=6)
    expected_totals = validate(tiny_adata, vocabulary=model.genes).cell_totals
    half = tiny_adata.copy()
    half.X = _as_float16(tiny_adata.X, layout)
    assert half.X.dtype == np.float16

    def check(adata):
        report = validate(adata, vocabulary=model.genes)
        assert report.ok and not report.warnings
        np.testing.assert_array_equal(report.cell_totals, expected_totals)
        got = model.get_latent_representation(adata, sample_key="sample", max_cells=6)
        np.testing.assert_allclose(got, expected, atol=1e-6)

    if where == "memory":
        check(half)
        return
    half.write_h5ad(tmp_path / "half.h5ad")
    if where == "open_h5ad":
        with open_h5ad(tmp_path / "half.h5ad") as on_disk:
            assert on_disk.X.dtype == np.float16
            check(on_disk)
    else:
        backed = ad.read_h5ad(tmp_path / "half.h5ad", backed="r")
        check(backed)
        backed.file.close()


# ------------------------------------------------------------------------------- huge values
@pytest.mark.parametrize("where", ["dense", "csr", "open_h5ad"])
def test_values_too_large_to_be_counts_are_refused_without_overflow(model, tiny_adata, tmp_path, where):
    tiny_adata.X[5, :] = 3e38  # near the float32 maximum: its sum overflows float32
    tiny_adata.X[9, 2] = 2e9
    tiny_adata.X[12, 0] = 1e9  # the largest accepted
    if where != "dense":
        tiny_adata.X = sp.csr_matrix(tiny_adata.X)
    message = (
        r"X has 31 entries above 1e\+09 \(the largest 3e\+38\), first in cells \['cell5', 'cell9'\]; "
        r"no real count is this large .*: CellPLM needs raw counts"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning escapes
        if where == "open_h5ad":
            tiny_adata.write_h5ad(tmp_path / "x.h5ad")
            with open_h5ad(tmp_path / "x.h5ad") as on_disk:
                report = validate(on_disk)
        else:
            report = validate(tiny_adata)
            with pytest.raises(ValueError, match=message):
                model.get_latent_representation(tiny_adata)
    assert report.n_too_large == 31 and len(report.errors) == 1
    assert re.search(message, report.errors[0])


def test_large_invalid_and_accepted_values_together(tiny_adata):
    tiny_adata.X[3, 1] = 5e9
    tiny_adata.X[4, 1] = np.nan
    report = validate(tiny_adata)
    assert (report.n_invalid_entries, report.n_too_large) == (1, 1)
    assert "X has 1 NaN, infinite or negative entries, first in cells ['cell4']" in report.errors[0]
    assert "X has 1 entries above 1e+09 (the largest 5e+09), first in cells ['cell3']" in report.errors[1]
    tiny_adata.X[3, 1] = tiny_adata.X[4, 1] = 1e9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = validate(tiny_adata)
    assert report.ok and report.cell_totals.dtype == np.float64 and report.cell_totals[3] >= 1e9


# ------------------------------------------------------------------------ gene ids with whitespace
def _padded(tiny_adata):
    """tiny_adata with 3 of its 25 vocabulary ids padded (as a hand-made table leaves them) and 1 unknown id too."""
    adata = tiny_adata.copy()
    names = list(adata.var_names)
    for j, pad in ((0, "{} "), (1, "{}\n"), (2, " {}"), (29, "{}\t")):
        names[j] = pad.format(names[j])
    adata.var_names = names
    return adata


def test_gene_ids_with_whitespace_are_reported_with_the_fix(tiny_adata, model):
    """They stay unmatched (the checkpoint's gene id rule is followed), but the input is told, with the cost."""
    adata = _padded(tiny_adata)
    clean = validate(tiny_adata, vocabulary=model.genes)
    report = validate(adata, vocabulary=model.genes)
    assert report.ok and report.alignment.n_matched == clean.alignment.n_matched - 3
    expected = (
        "4 gene id(s) in var_names have leading or trailing whitespace, e.g. ['ENSG00000000024 ', "
        "'ENSG00000000023\\n', ' ENSG00000000022', 'NOTAGENE4\\t']; no vocabulary id has any, so they are not matched "
        "(3 would be once stripped). Strip them first: adata.var_names = adata.var_names.str.strip()"
    )
    assert report.warnings == [expected]
    without_vocabulary = validate(adata).warnings
    assert without_vocabulary == [
        expected.replace("; no vocabulary id has any, so they are not matched (3 would be once stripped)", "")
    ]
    with pytest.warns(UserWarning, match=re.escape(expected)):
        model.get_latent_representation(adata)


def test_gene_key_with_whitespace_names_its_column(tiny_adata, model):
    adata = tiny_adata.copy()
    adata.var["ids"] = [f"{g} " for g in adata.var_names]
    adata.var_names = [f"g{j}" for j in range(adata.n_vars)]
    with pytest.raises(ValueError, match=re.escape("(25 would be once stripped). Strip them first: adata.var['ids']")):
        model.get_latent_representation(adata, gene_key="ids")


def test_cli_validate_prints_the_whitespace_warning(tmp_path, tiny_adata, model, capsys):
    _padded(tiny_adata).write_h5ad(tmp_path / "padded.h5ad")
    model.save(tmp_path / "ckpt")
    assert main(["validate", str(tmp_path / "padded.h5ad"), "--checkpoint", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "warning: 4 gene id(s) in var_names have leading or trailing whitespace" in out
    assert "(3 would be once stripped). Strip them first: adata.var_names = adata.var_names.str.strip()" in out
