"""Benchmark: label accuracy and rows/s of greedy decoding against rank classification, ours
(`sbs_jax.serve.Predictor`, what `sbs predict --label_mode greedy|rank` runs) and on the same
student exported with `sbs export-hf`, in HF transformers (torch), side by side in one run.

    python benchmarks/rank_vs_greedy.py --model_dir runs/cqa_tiny --dataset cqa \
        --rows 1221 --batch_size 32 --rounds 3 --torch_threads 1
    python benchmarks/rank_vs_greedy.py --random_init small --rows 256 --rounds 2

`--model_dir`: a trained student (docs/serving.md, "Rank classification", says how the one
measured there was trained); or `--random_init SIZE`, a random-init student with a CQA
vocabulary (benchmarks/predict_rows.py's), whose greedy decoding runs all `--label_len`
steps. Inputs: the first `--rows` of the benchmark's test file (the
paper's student input, `predict: ` prefixed, cut to the model's input length) with their
gold labels; candidates: the benchmark's label set (CQA: the five choices each input
lists; e-SNLI, ANLI: the three NLI words).

- ours greedy / ours rank: `Predictor.predict` on all rows (length-sorted buckets of
  `--batch_size`); round 0 includes XLA's compilation, so every round is reported.
- HF greedy: `generate(do_sample=False, num_beams=1, max_new_tokens=--label_len)` on batches
  in file order, padded to their longest row (the token ids ours reads).
- HF rank: the same scoring written in torch, here and not in the product: each batch is
  encoded once, its encoder states repeated for every candidate, and the decoder run
  teacher-forced on rows of input x candidate; a candidate's score is the sum of its
  tokens' log-probabilities, EOS included; the argmax answers (ties: the first).
Accuracy is exact match after whitespace normalisation against gold (as `sbs eval`); the
summary line also gives the best rows/s (wall) and rows per CPU second of each side over
the rounds, how often a label is one of the input's candidates, and how often ours and HF
give the same label, per mode. The sides run alternately, round by round; one JSON line
per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from sbs_jax.annotate.benchmarks import BENCHMARKS
from sbs_jax.convert.hf_dirs import export_hf
from sbs_jax.data import readers
from sbs_jax.metrics import normalize
from sbs_jax.model.decoding import EOS_ID
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.model.student import detokenize
from sbs_jax.perf.bench_reference import torch_modules
from sbs_jax.serve.predictor import DecodeSettings, Predictor


def hf_batches(rows: list[tuple[int, ...]], batch_size: int):
  """(start, int64 ids [n, longest]) in file order."""
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    ids = np.zeros((len(chunk), max(len(r) for r in chunk)), np.int64)
    for i, r in enumerate(chunk):
      ids[i, :len(r)] = r
    yield start, ids


def hf_greedy(torch, model, vocabulary, rows, batch_size: int, label_len: int) -> list[str]:
  labels = []
  with torch.inference_mode():
    for _, ids in hf_batches(rows, batch_size):
      x = torch.from_numpy(ids)
      out = model.generate(input_ids=x, attention_mask=(x > 0).long(), do_sample=False,
                           num_beams=1, max_new_tokens=label_len)
      labels += [detokenize(vocabulary, row) for row in out[:, 1:].tolist()]
  return labels


def hf_rank(torch, model, vocabulary, rows, candidates: list[tuple[str, ...]],
            batch_size: int) -> list[str]:
  """Rank classification in transformers: the most likely candidate of each row."""
  ids_of = {c: list(vocabulary.encode(c)) + [EOS_ID] for row in candidates for c in row}
  labels = []
  with torch.inference_mode():
    for start, ids in hf_batches(rows, batch_size):
      chunk = candidates[start:start + len(ids)]
      slots = max(len(c) for c in chunk)
      length = max(len(ids_of[c]) for row in chunk for c in row)
      targets = np.zeros((len(ids), slots, length), np.int64)
      for i, row in enumerate(chunk):
        for j, c in enumerate(row):
          targets[i, j, :len(ids_of[c])] = ids_of[c]
      x = torch.from_numpy(ids)
      mask = (x > 0).long()
      encoded = model.encoder(input_ids=x, attention_mask=mask).last_hidden_state
      y = torch.from_numpy(targets.reshape(len(ids) * slots, length))
      previous = torch.nn.functional.pad(y[:, :-1], (1, 0))  # decoder start id 0
      logits = model(encoder_outputs=(encoded.repeat_interleave(slots, dim=0),),
                     attention_mask=mask.repeat_interleave(slots, dim=0),
                     decoder_input_ids=previous).logits
      logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, y[..., None])[..., 0]
      scores = (logp * (y > 0)).sum(-1).reshape(len(ids), slots)
      scores = torch.where(torch.from_numpy(targets[:, :, 0] > 0), scores, -torch.inf)
      labels += [row[int(k)] for row, k in zip(chunk, scores.argmax(-1).tolist())]
  return labels


def accuracy(labels: list[str], gold: list[str]) -> float:
  return round(100.0 * sum(normalize(a) == normalize(b) for a, b in zip(labels, gold))
               / len(gold), 2)


def agreement(a: list[str], b: list[str]) -> float:
  return round(sum(normalize(x) == normalize(y) for x, y in zip(a, b)) / len(a), 4)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--model_dir", help="a trained student")
  source.add_argument("--random_init", metavar="SIZE",
                      help="a random-init student of this size (small, base, ...) with a CQA "
                      "vocabulary, as benchmarks/predict_rows.py makes: greedy then decodes "
                      "all --label_len tokens (it never emits EOS), rank what it always does")
  parser.add_argument("--dataset", default="cqa", choices=("cqa", "esnli", "anli1"))
  parser.add_argument("--rows", type=int, default=1221)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--label_len", type=int, default=16, help="greedy's label tokens")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--data_dir")
  parser.add_argument("--torch_threads", type=int,
                      help="torch's threads (default: one per core); on cores that other "
                      "jobs share, 1 spares HF's threads from waiting on each other")
  args = parser.parse_args()
  torch, transformers = torch_modules()
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  torch.set_flush_denormal(True)
  bench = BENCHMARKS[args.dataset]
  data_dir = readers.resolve_data_dir(args.data_dir)
  split = readers.load_benchmark(args.dataset, "test", data_dir, with_completions=False)
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = args.model_dir or random_student(pathlib.Path(tmp), args.random_init,
                                                 data_dir, bench)
    return measure(args, torch, transformers, bench, split, model_dir, tmp)


def random_student(root: pathlib.Path, size: str, data_dir, bench) -> str:
  """predict_rows.make_student's model dir, with the benchmark's label set in model.json."""
  from benchmarks.predict_rows import make_student  # pylint: disable=import-outside-toplevel
  model_dir, _ = make_student(root, size, data_dir, seed=0)
  config, info = ModelDir(str(model_dir)).read_info()
  ModelDir(str(model_dir)).write_info(config, "", max_input_length=info["max_input_length"],
                                      label_set=bench.label_set.to_json())
  return str(model_dir)


def measure(args, torch, transformers, bench, split, model_dir: str, tmp: str) -> int:
  """Both sides, both modes, round by round; prints the JSON lines."""
  examples = split.examples[:args.rows]
  texts, gold = [ex.input for ex in examples], [ex.label for ex in examples]
  candidates = [bench.label_set.candidates(t) for t in texts]
  predictors = {mode: Predictor.load(model_dir, DecodeSettings(
      args.batch_size, None, args.label_len, label_mode=mode)) for mode in ("greedy", "rank")}
  ours = predictors["greedy"]
  rows = [e.ids for e in ours.encode(texts, ours.label_prefix)]
  hf_dir = export_hf(model_dir, str(pathlib.Path(tmp) / "hf"))
  model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).float().eval()
  common = {"model": args.model_dir or f"random init {args.random_init}",
            "dataset": args.dataset, "torch_threads": torch.get_num_threads(),
            "rows": len(rows), "batch_size": ours.batch_size,
            "label_len": args.label_len, "candidates_mean": round(float(np.mean(
                [len(c) for c in candidates])), 2),
            "input_tokens_mean": round(float(np.mean([len(r) for r in rows])), 1),
            "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(),
            "machine": platform.machine(), "jax": jax.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}
  sides = {
      "ours_greedy": lambda: [o["label"] for o in predictors["greedy"].predict(texts)],
      "ours_rank": lambda: [o["label"] for o in predictors["rank"].predict(texts)],
      "hf_greedy": lambda: hf_greedy(torch, model, ours.vocabulary, rows, ours.batch_size,
                                     args.label_len),
      "hf_rank": lambda: hf_rank(torch, model, ours.vocabulary, rows, candidates,
                                 ours.batch_size)}
  best, best_cpu, labels = {}, {}, {}
  for round_ in range(args.rounds):
    for side, run in sides.items():
      start, cpu = time.perf_counter(), time.process_time()
      labels[side] = run()
      seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
      best[side] = max(best.get(side, 0.0), len(rows) / seconds)
      best_cpu[side] = max(best_cpu.get(side, 0.0), len(rows) / cpu)
      print(json.dumps({**common, "side": side, "round": round_, "seconds": round(seconds, 2),
                        "cpu_seconds": round(cpu, 2),
                        "rows_per_s": round(len(rows) / seconds, 2),
                        "rows_per_cpu_s": round(len(rows) / cpu, 2),
                        "accuracy": accuracy(labels[side], gold),
                        "loadavg_1m": os.getloadavg()[0]}), flush=True)
  in_set = {side: round(sum(normalize(l) in {normalize(c) for c in cands}
                            for l, cands in zip(labels[side], candidates)) / len(rows), 4)
            for side in sides}
  print(json.dumps({**common, "side": "summary",
                    "accuracy": {side: accuracy(labels[side], gold) for side in sides},
                    "best_rows_per_s": {side: round(v, 2) for side, v in best.items()},
                    "best_rows_per_cpu_s": {side: round(v, 2) for side, v in best_cpu.items()},
                    "label_in_candidates": in_set,
                    "ours_vs_hf_agree": {
                        "greedy": agreement(labels["ours_greedy"], labels["hf_greedy"]),
                        "rank": agreement(labels["ours_rank"], labels["hf_rank"])}}),
        flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
