"""Datasets made ready for `sbs sweep`: annotated by a teacher and with a vocabulary.

`annotate(argv)` runs the `sbs annotate` job from its own command-line arguments (one
parser, so the demo and the controlled experiment cannot drift from the CLI);
`prepare_synthetic` runs the controlled task's whole preparation: generate the problems,
serve the programmatic teacher over the OpenAI API on 127.0.0.1, annotate train and test
through `sbs annotate --teacher openai` (the live path), train the vocabulary.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from sbs_jax.annotate import command as annotate_command
from sbs_jax.annotate import job as job_lib
from sbs_jax.data import vocab as vocab_lib
from sbs_jax.data import vocab_command
from sbs_jax.experiments import synthetic

# The controlled task's vocabulary: byte-pair pieces. SentencePiece's unigram model (the
# `sbs vocab` default) stops at ~340 mostly one-letter pieces on this small,
# repetitive corpus; BPE gives one piece per word (a 36-token problem instead of 80).
SYNTHETIC_VOCAB_SIZE = 600


def annotate(argv: list[str]) -> job_lib.Result:
  """Runs `sbs annotate ARGV` (without the leading `annotate`) in this process."""
  parser = argparse.ArgumentParser(prog="sbs")
  annotate_command.add_parser(parser.add_subparsers())
  args = parser.parse_args(["annotate", *argv])
  return job_lib.run(annotate_command.build_job(args))


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
                      seed: int = 0, people: int = 4, error_rate: float = 0.0) -> Prepared:
  """Generates, annotates (live teacher) and builds the vocabulary; reruns reuse the work."""
  out = pathlib.Path(out_dir).resolve()
  paths = synthetic.generate(out / "data", name, train=train, test=test, seed=seed,
                             people=people)
  annotation_dir = out / "annotations"
  stats = {}
  with synthetic.teacher_server(error_rate) as server:
    for split, path in paths.items():
      result = annotate([
          "--dataset", f"jsonl:{path}", "--split", split, "--teacher", "openai",
          "--base_url", server.url, "--model", synthetic.TEACHER_MODEL,
          "--answer_format", "number", "--out_dir", str(annotation_dir), "--no_progress",
          "--concurrency", "32"])
      stats[split] = result.split_stats
  vocab = out / "vocab" / "spm.model"
  if not vocab.exists():
    vocab_lib.train_vocabulary(vocab_command.train_texts(str(annotation_dir), [name]), vocab,
                               vocab_size=SYNTHETIC_VOCAB_SIZE, model_type="bpe")
  return Prepared(name, str(annotation_dir), str(vocab), stats["train"]["examples"],
                  stats["test"]["examples"], stats["test"]["teacher_accuracy"])
