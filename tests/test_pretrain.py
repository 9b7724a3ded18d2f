"""Pretraining: schedules, the data plan, a run, resume after SIGKILL, and 2-process DDP on the CPU."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from opencellplm import CellPLM, ConfigError, TrainConfig, configs
from opencellplm.data.corpus import prepare_corpus
from opencellplm.train import pretrain
from opencellplm.train.plan import DataPlan
from opencellplm.train.schedule import lr_factor, set_seed

TINY = {
    "hidden_dim": 16,
    "positional_encoding": "sinusoidal",
    "encoder": {"n_layers": 1, "n_heads": 4},
    "latent": {"dim": 8, "n_clusters": 4, "hidden_dim": 16},
    "decoder": {"hidden_dim": 16, "bottleneck_dim": 16},
    "masking": {"beta": True},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two data sets with different genes, one spatial, cut into 24 sets over 4 shards."""
    root = tmp_path_factory.mktemp("pretrain")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        adata = ad.AnnData(
            rng.negative_binomial(2, 0.5, size=(120, 30)).astype(np.float32),
            obs=pd.DataFrame({"s": rng.choice(["a", "b"], 120)}, index=[f"c{i}_{j}" for j in range(120)]),
            var=pd.DataFrame(index=[f"G{j}" for j in range(10 * i, 10 * i + 30)]),
        )
        if i:
            adata.obsm["spatial"] = rng.random((120, 2)) * 100
        adata.write_h5ad(root / f"{i}.h5ad")
        paths.append(root / f"{i}.h5ad")
    prepare_corpus(paths, root / "corpus", sample_key="s", max_cells=10, shard_cells=60)
    return root / "corpus"


def _config_file(path, **train):
    settings = {"steps": 6, "sets_per_step": 4, "lr": 0.003, "warmup_steps": 2, "eval_every": 3}
    settings |= {"checkpoint_every": 3, "log_every": 1, "precision": "fp32"} | train
    path.write_text(json.dumps({"model": TINY, "train": settings}))
    return path


def _final_weights(run):
    return torch.load(run / "state.pt", weights_only=True)["model"]


def test_lr_schedule_is_a_pure_function_of_the_step():
    config = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, config) == pytest.approx(0.1) and lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(10, config) == pytest.approx(1.0) and lr_factor(100, config) == pytest.approx(0.1)
    assert lr_factor(55, config) == pytest.approx(0.55)
    assert set_seed(0, 3, 1) == set_seed(0, 3, 1) != set_seed(0, 3, 2)


def test_data_plan_holds_out_validation_and_splits_batches_between_ranks():
    plan = DataPlan((5, 7, 6), sets_per_step=4, val_fraction=0.1, window=2, seed=0)
    val = set(plan.validation)
    assert len(val) == 2
    order = plan.epoch_order(0)
    assert len(order) == 16 and not val & set(order) and len(set(order)) == 16
    assert plan.epoch_order(1) != order
    batch = plan.global_batch(1)
    assert batch == order[4:8]
    assert plan.local_positions(0, 2) == [0, 2] and plan.local_positions(1, 2) == [1, 3]
    with pytest.raises(ValueError, match="not a multiple of the world size 3"):
        plan.local_positions(0, 3)


def test_a_run_writes_logs_summary_and_a_loadable_model(corpus, tmp_path):
    model, train = configs.load(_config_file(tmp_path / "cfg.json"))
    summary = pretrain(corpus, tmp_path / "run", model=model, train=train)
    assert summary["steps"] == 6 and len(summary["val_history"]) == 2
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(line["loss"]) for line in lines) and "val_loss" in lines[2]
    trained = CellPLM.from_pretrained(tmp_path / "run" / "model")
    assert trained.meta["val_loss"] == summary["best_val_loss"]
    assert trained.config.decoder.n_batches == 4 and trained.config.decoder.n_datasets == 2
    assert "masking" not in json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert trained.meta["masking"]["beta"] is True  # the pretraining objective's masking, recorded
    with pytest.raises(FileExistsError, match="holds an earlier run"):
        pretrain(corpus, tmp_path / "run", model=model, train=train)


def test_training_lowers_the_validation_loss(corpus, tmp_path):
    model, train = configs.load(_config_file(tmp_path / "cfg.json", steps=40, eval_every=20, sets_per_step=2))
    summary = pretrain(corpus, tmp_path / "run", model=model, train=train)
    first, last = summary["val_history"][0]["val_loss"], summary["val_history"][-1]["val_loss"]
    assert last < first


def test_resume_refuses_changed_settings(corpus, tmp_path):
    model, train = configs.load(_config_file(tmp_path / "cfg.json"))
    pretrain(corpus, tmp_path / "run", model=model, train=train)
    with pytest.raises(ConfigError, match=r"settings differ .* \['train.lr'\]"):
        pretrain(corpus, tmp_path / "run", model=model, train=replace(train, lr=0.1), resume=True)


def _cli(*args):
    return [sys.executable, "-m", "opencellplm", "-q", "pretrain", *map(str, args)]


def test_resume_after_sigkill_matches_an_uninterrupted_run(corpus, tmp_path):
    config = _config_file(tmp_path / "cfg.json", steps=60, checkpoint_every=5, eval_every=10, patience=100)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(_cli("--corpus", corpus, "--config", config, "--out", tmp_path / "whole"), check=True, env=env)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_cli("--corpus", corpus, "--config", config, "--out", killed), env=env)
    log = killed / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 12:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    state = torch.load(killed / "state.pt", weights_only=True)
    assert 10 <= state["step"] < 60
    subprocess.run(_cli("--corpus", corpus, "--config", config, "--out", killed, "--resume"), check=True, env=env)

    whole, resumed = _final_weights(tmp_path / "whole"), _final_weights(killed)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    best_whole = CellPLM.from_pretrained(tmp_path / "whole" / "model").module.state_dict()
    best_resumed = CellPLM.from_pretrained(killed / "model").module.state_dict()
    assert all(torch.equal(best_whole[k], best_resumed[k]) for k in best_whole)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (tmp_path / "whole", killed)]
    assert summaries[0]["val_history"] == summaries[1]["val_history"] and len(summaries[0]["val_history"]) == 6
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 61))  # the log has each step once
    reference = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [line["loss"] for line in lines] == [line["loss"] for line in reference]


def test_two_processes_match_one(corpus, tmp_path):
    """DDP over 2 CPU processes (gloo) equals one process over the same global batches.

    Each set's random draws are seeded by its position in the global batch, so both runs compute the
    same per-set gradients; only the order of the floating-point sums differs (gloo's all-reduce adds
    the two halves). That changes gradients at the level of float32 rounding (~1e-7 relative), which
    a few Adam steps at lr 3e-3 carry into the weights as differences far below 1e-5.
    """
    config = _config_file(tmp_path / "cfg.json", steps=4, eval_every=2, checkpoint_every=2)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(_cli("--corpus", corpus, "--config", config, "--out", tmp_path / "one"), check=True, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = torchrun + _cli("--corpus", corpus, "--config", config, "--out", tmp_path / "two")[1:]
    subprocess.run(command, check=True, env=env)
    one, two = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    # Loss and the gradient norm before clipping, step by step: a wrong gradient scale under DDP shows
    # here even though Adam's updates are insensitive to it.
    logs = [
        [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("one", "two")
    ]
    for a, b in zip(*logs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["cells"] == b["cells"]
    initial = _initial_weights(corpus)  # the runs did move the weights: the comparison is not vacuous
    assert max((one[k] - initial[k]).abs().max().item() for k in one) > 1e-3


def _initial_weights(corpus):
    from opencellplm.data.corpus import Corpus
    from opencellplm.module import CellPLMModule
    from opencellplm.train.pretrain import model_config_for

    torch.manual_seed(0)  # what pretrain does before building the model
    return CellPLMModule(model_config_for(Corpus(corpus), TINY)).state_dict()


def test_named_and_file_configurations(tmp_path):
    assert configs.available() == ["cellplm-85m", "small", "tiny"]
    model, train = configs.load("cellplm-85m")
    assert model["hidden_dim"] == 1024 and train.lr == 2e-4
    with pytest.raises(ConfigError, match=r"unknown configuration 'huge'; choose one of \['cellplm-85m'"):
        configs.load("huge")
    (tmp_path / "bad.json").write_text(json.dumps({"model": {}, "optimizer": {}}))
    with pytest.raises(ConfigError, match="expected keys 'model' and 'train'"):
        configs.load(tmp_path / "bad.json")
    (tmp_path / "typo.json").write_text(json.dumps({"model": {}, "train": {"step": 3}}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in 'train': \['step'\]"):
        configs.load(tmp_path / "typo.json")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        configs.load(tmp_path / "absent.json")


def test_the_85m_configuration_builds_on_a_corpus(corpus):
    from opencellplm.data.corpus import Corpus
    from opencellplm.module import CellPLMModule
    from opencellplm.train.pretrain import model_config_for

    model, _ = configs.load("cellplm-85m")
    config = model_config_for(Corpus(corpus), model)
    assert config.hidden_dim == 1024 and config.decoder.n_batches == 4 and config.n_genes == 40
    assert CellPLMModule(config).n_parameters() > 10_000_000


def test_early_stop_holds_across_resume_and_a_refused_resume_changes_nothing(corpus, tmp_path):
    model, train = configs.load(_config_file(tmp_path / "cfg.json", steps=30, eval_every=1, patience=1, lr=0.05))
    first = pretrain(corpus, tmp_path / "run", model=model, train=train)
    assert first["stopped_early"] and first["steps"] < 30
    again = pretrain(corpus, tmp_path / "run", model=model, train=train, resume=True)
    assert again == first  # nothing more is trained
    before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(ConfigError, match="settings differ"):
        pretrain(corpus, tmp_path / "run", model=model, train=replace(train, lr=0.1), resume=True)
    assert json.loads(before)["model"]["masking"]["beta"] is True  # the run records the objective's masking
    other = model | {"masking": model["masking"] | {"gene_rate": 0.5}}
    with pytest.raises(ConfigError, match=r"settings differ from the saved run's in \['model.masking'\]"):
        pretrain(corpus, tmp_path / "run", model=other, train=train, resume=True)
    assert (tmp_path / "run" / "config.json").read_text() == before


def test_resume_before_the_first_checkpoint_and_after_a_cut_log_line(corpus, tmp_path, monkeypatch):
    from opencellplm.train.trainer import Trainer

    model, train = configs.load(_config_file(tmp_path / "cfg.json", checkpoint_every=100))
    pretrain(corpus, tmp_path / "whole", model=model, train=train)

    run = tmp_path / "run"
    real_step = Trainer._train_step

    def crash_at_step_3(self):
        if self.step == 2:
            raise RuntimeError("simulated crash")
        return real_step(self)

    monkeypatch.setattr(Trainer, "_train_step", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(corpus, run, model=model, train=train)
    monkeypatch.undo()
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 0  # the checkpoint written at the start
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"step": 3, "lo')  # a cut line
    pretrain(corpus, run, model=model, train=train, resume=True)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    whole, resumed = _final_weights(tmp_path / "whole"), _final_weights(run)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_resume_without_a_saved_run(corpus, tmp_path):
    model, train = configs.load(_config_file(tmp_path / "cfg.json"))
    with pytest.raises(FileNotFoundError, match="no training state to resume from"):
        pretrain(corpus, tmp_path / "empty", model=model, train=train, resume=True)


def _files(folder):
    """Every path under ``folder`` with its bytes, inode and modification time (None for directories)."""
    return {
        path.relative_to(folder): (path.read_bytes(), path.stat().st_ino, path.stat().st_mtime_ns)
        if path.is_file()
        else None
        for path in folder.rglob("*")
    }


def test_a_run_into_a_folder_in_use_fails_at_once_and_changes_nothing(corpus, tmp_path):
    """In one process and under torchrun (where rank 1 must not wait for rank 0 at a barrier)."""
    import fcntl

    config = _config_file(tmp_path / "cfg.json")
    model, train = configs.load(config)
    run = tmp_path / "run"
    run.mkdir()
    holder = open(run / ".lock", "a")  # its own open file description: its lock conflicts with the run's
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    before = _files(run)
    in_use = f"{run} is in use by another run"
    with pytest.raises(FileExistsError, match=re.escape(in_use)):
        pretrain(corpus, run, model=model, train=train)
    assert _files(run) == before

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = torchrun + _cli("--corpus", corpus, "--config", config, "--out", run)[1:]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stderr.count(f"ERROR: {in_use}") == 2, done.stderr  # both ranks
    assert _files(run) == before

    holder.close()  # releases the lock; the lock file left behind is no earlier run
    assert pretrain(corpus, run, model=model, train=train)["steps"] == 6


def test_resume_into_a_folder_in_use_fails_at_once_and_proceeds_once_the_holder_is_killed(
    corpus, tmp_path, monkeypatch
):
    from opencellplm.train.trainer import Trainer

    config = _config_file(tmp_path / "cfg.json")
    model, train = configs.load(config)
    run = tmp_path / "run"
    real_step = Trainer._train_step

    def crash_at_step_5(self):
        if self.step == 4:
            raise RuntimeError("simulated crash")
        return real_step(self)

    monkeypatch.setattr(Trainer, "_train_step", crash_at_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(corpus, run, model=model, train=train)
    monkeypatch.undo()  # a run to resume: its state at step 3, its log to step 4

    code = "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True)"
    holder = subprocess.Popen([sys.executable, "-c", code + "; time.sleep(600)", run / ".lock"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"1\n"  # it holds the lock
        before = _files(run)
        in_use = f"{run} is in use by another run"
        with pytest.raises(FileExistsError, match=re.escape(in_use)):
            pretrain(corpus, run, model=model, train=train, resume=True)
        assert _files(run) == before
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        command = _cli("--corpus", corpus, "--config", config, "--out", run, "--resume")
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and f"ERROR: {in_use}" in done.stderr, done.stderr
        assert _files(run) == before
    finally:
        holder.kill()  # the kernel releases a dead process's lock
        holder.wait()
    assert pretrain(corpus, run, model=model, train=train, resume=True)["steps"] == 6
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_without_fcntl_the_folder_is_not_locked(tmp_path, monkeypatch, caplog):
    from opencellplm.train.state import lock_run_dir

    monkeypatch.setitem(sys.modules, "fcntl", None)  # as on Windows: ``import fcntl`` raises ImportError
    assert lock_run_dir(tmp_path / "run") is None
    assert "no file locks on this platform" in caplog.text and not (tmp_path / "run").exists()


def test_a_probe_selects_the_state_whose_embedding_keeps_pca_neighbourhoods_best(corpus, tmp_path):
    from opencellplm.train import NeighbourhoodProbe

    rng = np.random.default_rng(1)
    cells = ad.AnnData(
        rng.negative_binomial(2, 0.5, size=(60, 30)).astype(np.float32),
        var=pd.DataFrame(index=[f"G{j}" for j in range(30)]),
    )
    probe = NeighbourhoodProbe.from_adatas({"held": cells}, k=5)
    model, train = configs.load(_config_file(tmp_path / "cfg.json", steps=9))
    summary = pretrain(corpus, tmp_path / "run", model=model, train=train, probe=probe)
    history = summary["val_history"]
    assert len(history) == 3 and all(0 <= h["val_agreement"] <= 1 and "val_loss" in h for h in history)
    assert all(h["val_agreement_held"] == h["val_agreement"] for h in history)
    best = max(history, key=lambda h: h["val_agreement"])
    trained = CellPLM.from_pretrained(tmp_path / "run" / "model")
    assert trained.meta["selected_by"] == "val_agreement" and trained.meta["step"] == best["step"]
    assert summary["best_val_agreement"] == best["val_agreement"]
    with pytest.raises(ConfigError, match="settings differ"):  # a resume with another probe is refused
        other = NeighbourhoodProbe.from_adatas({"held": cells[:40].copy()}, k=5)
        pretrain(corpus, tmp_path / "run", model=model, train=train, probe=other, resume=True)


def test_a_probe_with_labels_can_select_by_knn_label_agreement(corpus, tmp_path):
    from opencellplm.train import NeighbourhoodProbe

    rng = np.random.default_rng(1)
    cells = ad.AnnData(
        rng.negative_binomial(2, 0.5, size=(60, 30)).astype(np.float32),
        obs=pd.DataFrame({"cell_type": rng.choice(["a", "b", "c"], 60)}, index=[f"c{i}" for i in range(60)]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(30)]),
    )
    unlabelled = ad.AnnData(cells.X.copy(), var=cells.var.copy())
    data = {"labelled": cells, "unlabelled": unlabelled}
    probe = NeighbourhoodProbe.from_adatas(data, k=5, labels_key="cell_type", select="val_label_agreement")
    assert set(probe.labels) == {"labelled"}
    model, train = configs.load(_config_file(tmp_path / "cfg.json", steps=6))
    summary = pretrain(corpus, tmp_path / "run", model=model, train=train, probe=probe)
    history = summary["val_history"]
    assert all(h["val_label_agreement"] == h["val_label_agreement_labelled"] for h in history)
    assert all(h["val_agreement"] == h["val_agreement_unlabelled"] for h in history)  # each set scored one way
    assert all("val_label_agreement_unlabelled" not in h and "val_agreement_labelled" not in h for h in history)
    best = max(history, key=lambda h: h["val_label_agreement"])
    trained = CellPLM.from_pretrained(tmp_path / "run" / "model")
    assert trained.meta["selected_by"] == "val_label_agreement" and trained.meta["step"] == best["step"]
    with pytest.raises(ValueError, match="select='val_label_agreement' needs labels for at least one data set"):
        NeighbourhoodProbe.from_adatas({"unlabelled": unlabelled}, k=5, select="val_label_agreement")
    with pytest.raises(ValueError, match="select='val_agreement' needs at least one data set without labels"):
        NeighbourhoodProbe.from_adatas({"labelled": cells}, k=5, labels_key="cell_type")
    with pytest.raises(ValueError, match=r"neither labels nor a reference PCA: \['unlabelled'\]"):
        NeighbourhoodProbe({"unlabelled": (unlabelled, None)})
    with pytest.raises(ValueError, match="select must be 'val_agreement' or 'val_label_agreement', got 'ari'"):
        NeighbourhoodProbe.from_adatas(data, k=5, select="ari")
    with pytest.raises(ValueError, match=r"labels given for data sets the probe does not have: \['other'\]"):
        NeighbourhoodProbe(probe.data, labels={"other": np.zeros(3)})
    with pytest.raises(ValueError, match="2 labels for the 60 cells of 'labelled'"):
        NeighbourhoodProbe(probe.data, labels={"labelled": np.zeros(2)})


def test_a_gene_embedding_table_from_the_corpus_pca_starts_the_run_and_is_part_of_its_settings(corpus, tmp_path):
    from opencellplm.train.pretrain import gene_embedding_from_pca

    model, train = configs.load(_config_file(tmp_path / "cfg.json", steps=3))
    model = model | {"input_scaling": "log1p_cp10k"}
    table = gene_embedding_from_pca(corpus, TINY["hidden_dim"])
    assert table.shape == (40, 16) and np.isclose(table.std(), 0.005)
    still = replace(train, steps=1, lr=1e-12, warmup_steps=1, eval_every=1, checkpoint_every=1)  # (almost) no update
    pretrain(corpus, tmp_path / "run", model=model, train=still, gene_embedding=table)
    initial = torch.load(tmp_path / "run" / "state.pt", weights_only=True)["model"]["embedder.gene_embedding"]
    np.testing.assert_allclose(initial.numpy(), table, atol=1e-9)
    with pytest.raises(ConfigError, match=r"init.gene_embedding_sha256"):  # a resume from another table is refused
        pretrain(corpus, tmp_path / "run", model=model, train=still, gene_embedding=table * 2, resume=True)
    with pytest.raises(ValueError, match=r"gene_embedding has shape \(40, 8\), the model needs \(40, 16\)"):
        pretrain(corpus, tmp_path / "run2", model=model, train=train, gene_embedding=table[:, :8])


def test_balanced_pca_start_gives_a_small_data_sets_cell_types_an_axis_that_the_pooled_one_spends_elsewhere(tmp_path):
    from opencellplm.train.pretrain import gene_embedding_from_pca

    # A large data set whose two cell types differ in genes G0-G4, and a small one (20 cells, another depth)
    # whose two types differ in genes G5-G9: the pooled, uncentred axes go to the mean, to the depth gap between
    # the data sets and to the large set's types; the balanced axes (within data sets, equal weight) keep both.
    rng = np.random.default_rng(0)
    paths = []
    for i, (n_cells, markers, depth) in enumerate([(400, range(0, 5), 20), (20, range(5, 10), 200)]):
        mean = np.full((n_cells, 20), float(depth))
        mean[: n_cells // 2, list(markers)] *= 8
        counts = rng.poisson(mean).astype(np.float32)
        logs = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
        axis = logs[: n_cells // 2].mean(0) - logs[n_cells // 2 :].mean(0)  # the types' difference, as PCA sees it
        adata = ad.AnnData(counts)
        adata.var_names = [f"G{j}" for j in range(20)]
        adata.obs_names = [f"d{i}_{j}" for j in range(n_cells)]
        adata.write_h5ad(tmp_path / f"{i}.h5ad")
        paths.append(tmp_path / f"{i}.h5ad")
    prepare_corpus(paths, tmp_path / "corpus", max_cells=50, shard_cells=100)

    def share_of_small_sets_axis(table):  # how much of the small set's type difference the table's columns span
        basis, _ = np.linalg.qr(table.astype(np.float64))
        return float(np.linalg.norm(basis.T @ axis) / np.linalg.norm(axis))

    pooled = gene_embedding_from_pca(tmp_path / "corpus", 2)
    balanced = gene_embedding_from_pca(tmp_path / "corpus", 2, balance_datasets=True)
    assert balanced.shape == (20, 2) and np.isclose(balanced.std(), 0.005)
    assert share_of_small_sets_axis(balanced) > 0.99 and share_of_small_sets_axis(pooled) < 0.7  # 1.00 and 0.58
    again = gene_embedding_from_pca(tmp_path / "corpus", 2, balance_datasets=True)
    np.testing.assert_array_equal(again, balanced)  # seeded: the same table, signs included


def test_encoder_lr_ratio_trains_all_but_the_decoder_at_that_share_of_the_rate(corpus, tmp_path):
    model, train = configs.load(_config_file(tmp_path / "cfg.json", steps=2))
    pretrain(corpus, tmp_path / "run", model=model, train=replace(train, encoder_lr_ratio=0.25))
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert set(groups) == {"decoder", "decoder (no decay)", "encoder", "encoder (no decay)"}
    assert groups["encoder"]["lr"] == pytest.approx(0.25 * groups["decoder"]["lr"]) and groups["decoder"]["lr"] > 0
    names = [name for name, _ in CellPLM.from_pretrained(tmp_path / "run" / "model").module.named_parameters()]
    n_decoder = sum(name.startswith("decoder.") for name in names)
    assert len(groups["decoder"]["params"]) + len(groups["decoder (no decay)"]["params"]) == n_decoder
    with pytest.raises(ConfigError, match=r"train.encoder_lr_ratio must be in \[0, 1\], got 2"):
        TrainConfig(encoder_lr_ratio=2)


def test_a_run_saved_before_a_training_setting_existed_resumes_with_that_settings_default(corpus, tmp_path):
    model, train = configs.load(_config_file(tmp_path / "cfg.json", steps=2))
    run = tmp_path / "run"
    pretrain(corpus, run, model=model, train=train)
    state = torch.load(run / "state.pt", weights_only=False)
    del state["config"]["train"]["encoder_lr_ratio"]  # as written before the setting was added
    torch.save(state, run / "state.pt")
    saved = json.loads((run / "config.json").read_text())
    del saved["train"]["encoder_lr_ratio"]
    (run / "config.json").write_text(json.dumps(saved))
    assert pretrain(corpus, run, model=model, train=train, resume=True)["steps"] == 2
    with pytest.raises(ConfigError, match=r"settings differ from the saved run's in \['train.encoder_lr_ratio'\]"):
        pretrain(corpus, run, model=model, train=replace(train, encoder_lr_ratio=0.5), resume=True)


def test_a_run_saved_with_the_unfused_optimizer_resumes_fused(corpus, tmp_path, monkeypatch):
    from opencellplm.train import trainer as trainer_module

    model, train = configs.load(_config_file(tmp_path / "cfg.json", steps=2))
    run = tmp_path / "run"
    pretrain(corpus, run, model=model, train=train)
    state = torch.load(run / "state.pt", weights_only=False)
    assert all(group["fused"] for group in state["optimizer"]["param_groups"])
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = None  # as an earlier version saved it; loading it would bring that choice back
    torch.save(state, run / "state.pt")
    seen = []
    use_fused = trainer_module._use_fused

    def spy(optimizer, fused):
        use_fused(optimizer, fused)
        seen.extend((group["fused"], group["foreach"]) for group in optimizer.param_groups)
        seen.extend(str(s["step"].dtype) for s in optimizer.state.values())

    monkeypatch.setattr(trainer_module, "_use_fused", spy)
    assert pretrain(corpus, run, model=model, train=train, resume=True)["steps"] == 2
    assert seen and set(seen) == {(True, None), "torch.float32"}


def test_resume_takes_the_recorded_settings_and_refuses_a_different_one(corpus, tmp_path, caplog):
    from opencellplm.cli import main

    config, run = _config_file(tmp_path / "cfg.json", steps=6), tmp_path / "run"
    command = ["-q", "pretrain", "--corpus", str(corpus), "--out", str(run)]
    assert main([*command, "--config", str(config), "--steps", "3"]) == 0
    # as the README writes it: the run's --steps 3 is not repeated (it used to be refused: 6 != 3)
    assert main([*command, "--config", str(config), "--resume"]) == 0
    assert main([*command, "--resume"]) == 0  # the configuration is recorded too
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    caplog.clear()
    assert main([*command, "--config", str(config)]) == 2  # in the command line's words, not resume=True
    assert f"{run} holds an earlier run; pass --resume or another --out" in caplog.text
    assert main([*command, "--resume", "--steps", "5", "--seed", "0"]) == 2  # seed 0 is the run's: not listed
    assert f"cannot resume {run} with --steps 5 (the run's: 3): a resumed run keeps the settings" in caplog.text
    assert main([*command, "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "holds no run to resume: config.json not found" in caplog.text and not (tmp_path / "new").exists()
    assert main(command[:-2] + ["--out", str(tmp_path / "new")]) == 2
    assert "pretrain needs --config (a named configuration or a JSON file), or --resume" in caplog.text


def test_the_cli_starts_the_decoder_bias_at_the_corpus_mean_shares_and_a_resume_keeps_its_start(
    corpus, tmp_path, caplog
):
    from opencellplm.cli import main
    from opencellplm.train.pretrain import decoder_bias_from_corpus

    config = _config_file(tmp_path / "cfg.json", steps=1, lr=1e-9, warmup_steps=1, eval_every=1, checkpoint_every=1)
    expected = decoder_bias_from_corpus(corpus)
    starts = {}
    for choice in ("corpus", "random"):
        run = tmp_path / choice
        flags = [] if choice == "corpus" else ["--init-decoder-bias", "random"]  # corpus is the default
        assert main(["pretrain", "--corpus", str(corpus), "--config", str(config), "--out", str(run), *flags]) == 0
        starts[choice] = _final_weights(run)["decoder.mean.bias"].numpy()
    np.testing.assert_allclose(starts["corpus"], expected, atol=1e-5)
    assert np.abs(starts["random"] - expected).max() > 1.0
    # a resume keeps the run's start, and refuses another
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "corpus"), "--resume"]) == 0
    resume = ["pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "random"), "--resume"]
    assert main([*resume, "--init-decoder-bias", "corpus"]) != 0
    assert "with --init-decoder-bias corpus: the run started with random; drop the option" in caplog.text


def test_a_pca_start_wider_than_the_corpus_is_refused_with_its_sizes(corpus):
    from opencellplm.train.pretrain import gene_embedding_from_pca

    with pytest.raises(ValueError, match=r"the corpus gives \d+ cells over 40 genes: too few for 64 principal axes"):
        gene_embedding_from_pca(corpus, 64, balance_datasets=True)
