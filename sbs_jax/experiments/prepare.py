"""Datasets made ready for `sbs sweep`: annotated by a teacher and with a vocabulary.

`annotate(**options)` runs the `sbs annotate` job of the same options as its flags
(`annotate/build.py`, where the command's defaults also come from);
`prepare_synthetic` runs the controlled task's whole preparation: generate the problems,
serve the programmatic teacher over the OpenAI API on 127.0.0.1, annotate train and test
through `sbs annotate --teacher openai` (the live path), train the vocabulary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

from sbs_jax.annotate import build
from sbs_jax.annotate import job as job_lib
from sbs_jax.data import vocab as vocab_lib
from sbs_jax.errors import SbsError
from sbs_jax.jobdir import files
from sbs_jax.experiments import synthetic

# The controlled task's vocabulary: byte-pair pieces. SentencePiece's unigram model (the
# `sbs vocab` default) stops at ~340 mostly one-letter pieces on this small,
# repetitive corpus; BPE gives one piece per word (a 36-token problem instead of 80).
SYNTHETIC_VOCAB_SIZE = 600


def annotate(**options) -> job_lib.Result:
  """Runs the `sbs annotate` job of these options (`build.Options`' fields) in this
  process."""
  return job_lib.run(build.build_job(build.Options(**options)))


def _loads(path: pathlib.Path) -> bool:
  """Whether SentencePiece reads the model file (a truncated or foreign file does not)."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  try:
    spm.SentencePieceProcessor(model_proto=path.read_bytes())
    return True
  except (RuntimeError, OSError, TypeError):
    return False


def ensure_vocabulary(annotation_dir, datasets: list[str], path, **train_kwargs) -> bool:
  """Trains the vocabulary of `datasets`' train records at `path`, unless the file there
  was trained from the same texts with the same settings and loads.

  What it was trained from is pinned beside it, `<path>.source.json` (sha256 of the
  texts and the settings): a vocabulary of another run or dataset, one without that
  record, or a damaged file is trained again. Returns whether it trained.
  """
  path = pathlib.Path(path)
  digest = hashlib.sha256(json.dumps(train_kwargs, sort_keys=True).encode())
  texts = []
  for text in vocab_lib.train_texts(str(annotation_dir), list(datasets)):
    texts.append(text)
    digest.update(text.encode("utf-8") + b"\0")
  source = {"datasets": list(datasets), "sha256": digest.hexdigest(), **train_kwargs}
  pin = path.with_name(path.name + ".source.json")
  try:
    pinned = json.loads(pin.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    pinned = None
  if path.exists() and pinned == source and _loads(path):
    return False
  if path.exists():
    print(f"note: {path} was not trained from these annotations (or is damaged): training "
          "it again", flush=True)
  vocab_lib.train_vocabulary(texts, path, **train_kwargs)
  files.write_json_atomically(pin, source, sort_keys=False)
  return True


def check_writable(out_dir, flag: str = "--out_dir") -> pathlib.Path:
  """`out_dir`, made and checked writable: one line now instead of a failure later."""
  out = pathlib.Path(out_dir)
  try:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".write-check-{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise SbsError(f"{flag} {out_dir}: cannot write there ({e.strerror}); choose a writable "
                   "directory") from None
  return out


@dataclasses.dataclass
class Prepared:
  """Where a prepared dataset lives, its size, and its teacher's test accuracy (percent)."""
  dataset: str
  annotation_dir: str
  vocab: str
  train_examples: int
  test_examples: int
  teacher_test_accuracy: float


def prepare_synthetic(out_dir, name: str = "marbles", train: int = 2000, test: int = 500,
                      seed: int = 0, people: int = 4, error_rate: float = 0.0,
                      form: synthetic.Form | None = None, num_samples: int = 1,
                      keep: str = "all", sampled: bool | None = None) -> Prepared:
  """Generates, annotates (live teacher) and builds the vocabulary; reruns reuse the work.

  `form` (default: the lookup form with `people`) picks the task of the family. A
  `sampled` teacher (by default: with `num_samples` above 1) draws each answer's
  misreading on its own (`synthetic.teacher_server(sampled=True)`) and is asked at
  temperature 0.7, so its sample 0 is the same answer whatever `num_samples`; `keep`
  filters the rationales (`sbs annotate --keep`).
  """
  out = pathlib.Path(out_dir).resolve()
  paths = synthetic.generate(out / "data", name, train=train, test=test, seed=seed,
                             form=form or synthetic.Form(people=people))
  annotation_dir = out / "annotations"
  stats = {}
  if sampled is None:
    sampled = num_samples > 1
  sampling = {"num_samples": num_samples, "temperature": 0.7} if sampled else {}
  with synthetic.teacher_server(error_rate, sampled=sampled) as server:
    for split, path in paths.items():
      result = annotate(
          dataset=f"jsonl:{path}", split=split, teacher="openai", base_url=server.url,
          model=synthetic.TEACHER_MODEL, answer_format="number", out_dir=str(annotation_dir),
          no_progress=True, concurrency=32, keep=keep, **sampling)
      stats[split] = result.split_stats
  vocab = out / "vocab" / "spm.model"
  ensure_vocabulary(annotation_dir, [name], vocab, vocab_size=SYNTHETIC_VOCAB_SIZE,
                    model_type="bpe")
  return Prepared(name, str(annotation_dir), str(vocab), stats["train"]["examples"],
                  stats["test"]["examples"], stats["test"]["teacher_accuracy"])
