"""`sbs import-hf` and `sbs export-hf`: Hugging Face T5 folders <-> our model dirs.

    sbs import-hf --hf_dir t5-v1_1-base/ --out ckpt/t5_1_1_base
    sbs train --gin_file=experiments/svamp_distill_llm.gin \
        --gin.INITIAL_CHECKPOINT="'ckpt/t5_1_1_base'" ...
    sbs export-hf --model_dir runs/svamp_distill_llm --out hf/svamp_student

An imported folder is a model dir (model.json, spm.model, params/0); exporting writes what
`transformers.T5ForConditionalGeneration` and `T5Tokenizer` load, plus `sbs_prefixes.json`
with the task prefixes the student expects (`predict: `, `explain: `).
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from sbs_jax.convert import hf, replace
from sbs_jax.errors import SbsError
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.model import student as student_lib

PREFIXES_FILE = "sbs_prefixes.json"


def _extra_ids(hf_dir: pathlib.Path) -> int:
  """The tokenizer's sentinel count (T5's own vocabulary has 100), 0 if none is declared."""
  path = hf_dir / "tokenizer_config.json"
  if path.exists():
    return int(json.loads(path.read_text()).get("extra_ids", 0) or 0)
  return 0


def import_hf(hf_dir, out: str, allow_pickle: bool = False, overwrite: bool = False) -> dict:
  """Writes an HF T5 checkpoint as a model dir; returns a summary. A non-empty `out` is
  refused unless `overwrite`, and then replaced whole (replace.write_whole_dir)."""
  if not overwrite:
    replace.refuse_nonempty(out)
  hf_dir = pathlib.Path(hf_dir)
  config, params, spiece = hf.read_hf_dir(hf_dir, allow_pickle=allow_pickle)
  if spiece is None:
    raise SbsError(f"{hf_dir} has no spiece.model: the student needs its vocabulary")
  hf.check_spiece(spiece, config)
  extra_ids = _extra_ids(hf_dir)

  def write(folder: str) -> None:
    ModelDir(folder).write_info(config, spiece, extra_ids)
    ModelDir(folder).save_params(0, params, {"step": 0, "source": str(hf_dir)})

  replace.write_whole_dir(out, write)
  return {"model_dir": out, "parameters": int(sum(np.size(x) for x in
                                                   jax.tree.leaves(params))),
          "extra_ids": extra_ids, "config": config.__dict__}


def export_hf(model_dir: str, out: str, overwrite: bool = False) -> pathlib.Path:
  """Writes a model dir's best parameters as an HF T5 folder with its tokenizer; a
  non-empty `out` is refused unless `overwrite`."""
  out_path = pathlib.Path(out)
  if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())) and not overwrite:
    raise SbsError(f"{out} exists and is not an empty dir: choose a new --out, or pass "
                   "--overwrite to replace the files of the same name in it")
  student, params, info = student_lib.load_student(model_dir)
  params = jax.tree.map(np.asarray, jax.device_get(params))
  path = hf.write_hf_dir(out, student.config, params, f"{model_dir}/{info['vocabulary']}")
  (path / PREFIXES_FILE).write_text(json.dumps(
      {"label_prefix": info["label_prefix"], "rationale_prefix": info["rationale_prefix"]},
      indent=2))
  return path
