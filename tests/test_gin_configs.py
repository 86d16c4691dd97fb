"""Every gin file of ours parses; every experiment builds its model and data under the
tiny overlay."""

import pathlib

import gin
import jax
import pytest

from sbs_jax.model.config import SIZES
from sbs_jax.train import config, gin_setup
from sbs_jax.train.data import train_batches
from sbs_jax.train.optim import make_optimizer
from sbs_jax.train.state import build_student, make_mesh

GIN = pathlib.Path(__file__).parents[1] / "gin_configs"
EXPERIMENTS = sorted((GIN / "experiments").glob("*.gin"))
DATASETS = ("cqa", "svamp", "esnli", "anli1")
SETTINGS = ("standard_finetuning", "standard_distillation", "distill_gt", "distill_llm")


def parse(files, bindings=()):
  gin.clear_config()
  gin_setup.parse_gin([str(f) for f in files], list(bindings))


def test_one_experiment_per_paper_setting():
  assert {p.stem for p in EXPERIMENTS} == {f"{d}_{s}" for d in DATASETS for s in SETTINGS}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_model_files_give_the_published_sizes(size):
  parse([GIN / "models" / f"{size}.gin"])
  try:
    assert config.student_config() == SIZES[size]
  finally:
    gin.clear_config()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_builds_under_the_tiny_overlay(annotated, path):
  dataset, setting = path.stem.split("_", 1)
  # The released data here has no e-SNLI train split; its experiments read validation.
  extra = ["DataConfig.train_split = 'validation'"] if dataset == "esnli" else []
  parse([path, GIN / "overlays" / "tiny_cpu.gin"], extra + ["BATCH_SIZE = 2"])
  try:
    cfg, model_config = config.TrainConfig(), config.student_config()
    # The experiment's own choices survive the overlay; the network shrinks.
    assert cfg.data.mixture_or_task.startswith(f"sbs_{dataset}_")
    assert cfg.alpha == (0.5 if setting.startswith("distill") else 1.0)
    assert model_config.emb_dim == 64 and model_config.vocab_size == 8000
    assert cfg.eval.selection_metric == ("equation_accuracy" if dataset == "svamp"
                                         else "accuracy")
    student = build_student(model_config, make_optimizer(cfg.optimizer, cfg.train_steps),
                            make_mesh((1, 1)))
    n_params = sum(x.size for x in jax.tree.leaves(student.abstract_state["params"]))
    assert 500_000 < n_params < 2_000_000
    batch = next(train_batches(cfg.data))
    assert batch["encoder_input_tokens"].shape == (2, 512)
    assert batch["decoder_task_ids"].max() == (
        2 if setting.startswith("distill") else 1)
  finally:
    gin.clear_config()
