"""Benchmark: rows/s of `sbs predict --input_file` against HF transformers' `generate` on the
same student (its `sbs export-hf` folder), the same inputs, batch size and label length.

    python benchmarks/predict_rows.py --size small --rows 2000 --batch_size 32 --rounds 2

The student is random-init (no trained weights here): a T5 v1.1 config of `--size` in
float32, with a SentencePiece vocabulary trained on CQA train inputs (8k pieces, as
`sbs vocab` makes). Inputs: the first `--rows` CQA train questions with their choices (the
paper's student input), `predict: ` prefixed, at most 512 tokens.

Ours: the whole file job (read, tokenize, length-sorted buckets, greedy decode, write) in
this process; the first round includes XLA compilation, so each round is reported.
HF (on the GPU when torch sees one): `T5ForConditionalGeneration.generate(do_sample=False,
num_beams=1, max_new_tokens=--label_len)` on batches in file order padded to their longest
row (the same token ids ours decodes), torch with all cores and subnormals flushed as XLA
does.
Greedy decoding stops a batch when every row has emitted EOS on both sides (random
weights rarely emit it, so both usually decode all --label_len tokens). The sides run
alternately, round by round; one JSON line per measurement, then a summary line with the
labels' agreement (the same model should give the same greedy labels).
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

from sbs_jax.perf.bench_reference import torch_modules  # pylint: disable=wrong-import-position
from sbs_jax.convert.hf_dirs import export_hf  # pylint: disable=wrong-import-position
from sbs_jax.data import readers, vocab  # pylint: disable=wrong-import-position
from sbs_jax.model.config import config_for  # pylint: disable=wrong-import-position
from sbs_jax.serve import job as job_lib  # pylint: disable=wrong-import-position
from sbs_jax.serve.predictor import (DecodeSettings,  # pylint: disable=wrong-import-position
                                     Predictor)
from sbs_jax.model.model_dir import ModelDir  # pylint: disable=wrong-import-position


def make_student(root: pathlib.Path, size: str, data_dir: pathlib.Path, seed: int):
  """A random-init model dir of `size` with a CQA vocabulary; returns (model dir, rows)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from sbs_jax.model.network import Transformer  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.state import init_params  # pylint: disable=import-outside-toplevel
  split = readers.load_benchmark("cqa", "train", data_dir, with_completions=False)
  spm = vocab.train_vocabulary((ex.input for ex in split.examples), root / "spm.model", 8000)
  config = config_for(size, dtype="float32")
  model_dir = root / f"{size}_student"
  ModelDir(str(model_dir)).write_info(config, str(spm), max_input_length=512)
  params = jax.jit(lambda k: nn.unbox(init_params(Transformer(config), k)))(
      jax.random.key(seed))
  ModelDir(str(model_dir)).save_params(0, params, {"step": 0, "source": "random init"})
  return model_dir, split.examples


def run_ours(predictor: Predictor, model_dir, source: pathlib.Path, out: pathlib.Path,
             window: int) -> float:
  """Wall and CPU seconds of the whole `sbs predict --input_file` job, from scratch."""
  start, cpu = time.perf_counter(), time.process_time()
  job_lib.run(job_lib.FileJob(source, out, str(model_dir), window=window, restart=True,
                              progress=False), predictor)
  return time.perf_counter() - start, time.process_time() - cpu


def run_hf(torch, model, rows: list[tuple[int, ...]], batch_size: int, label_len: int
           ) -> tuple[float, float, list[list[int]]]:
  """Wall and CPU seconds of greedy `generate` over all rows in file order, and the ids."""
  outputs = []
  start, cpu = time.perf_counter(), time.process_time()
  with torch.inference_mode():
    for i in range(0, len(rows), batch_size):
      chunk = rows[i:i + batch_size]
      width = max(len(r) for r in chunk)
      ids = np.zeros((len(chunk), width), np.int64)
      for j, r in enumerate(chunk):
        ids[j, :len(r)] = r
      x = torch.from_numpy(ids).to(model.device)
      generated = model.generate(input_ids=x, attention_mask=(x > 0).long(),
                                 max_new_tokens=label_len, do_sample=False, num_beams=1)
      outputs += generated[:, 1:].tolist()  # drop the decoder start token (.tolist() syncs)
  return time.perf_counter() - start, time.process_time() - cpu, outputs


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="small")
  parser.add_argument("--rows", type=int, default=2000)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--label_len", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per side")
  parser.add_argument("--hf_rounds", type=int, default=None,
                      help="HF's rounds (default --rounds): HF compiles nothing, so one "
                      "round is its steady state; ours' round 0 includes XLA's compilation")
  parser.add_argument("--window", type=int, default=1024)
  parser.add_argument("--data_dir")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.hf_rounds is not None and not 1 <= args.hf_rounds <= args.rounds:
    parser.error("--hf_rounds must be between 1 and --rounds")
  torch, transformers = torch_modules()
  torch.set_flush_denormal(True)
  data_dir = readers.resolve_data_dir(args.data_dir)
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    model_dir, examples = make_student(root, args.size, data_dir, args.seed)
    examples = examples[:args.rows]
    source = root / "rows.jsonl"
    source.write_text("".join(json.dumps({"input": ex.input}) + "\n" for ex in examples))
    settings = DecodeSettings(args.batch_size, None, args.label_len)
    predictor = Predictor.load(str(model_dir), settings)
    hf_dir = export_hf(str(model_dir), str(root / "hf"))
    model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).float().eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    rows = [e.ids for e in predictor.encode([ex.input for ex in examples],
                                            predictor.label_prefix)]
    common = {"size": args.size, "dtype": "float32", "rows": len(rows),
              "batch_size": predictor.batch_size, "label_len": args.label_len,
              "input_tokens_mean": round(float(np.mean([len(r) for r in rows])), 1),
              "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(),
              "machine": platform.machine(), "jax": jax.__version__,
              "torch": torch.__version__, "transformers": transformers.__version__}
    ours_rates, hf_rates, hf_ids = [], [], None
    for round_ in range(args.rounds):
      seconds, cpu = run_ours(predictor, model_dir, source, root / "out.jsonl", args.window)
      ours_rates.append(len(rows) / seconds)
      print(json.dumps({**common, "side": "ours", "round": round_, "seconds": round(seconds, 2),
                        "cpu_seconds": round(cpu, 2), "rows_per_s": round(ours_rates[-1], 2),
                        "rows_per_cpu_s": round(len(rows) / cpu, 2),
                        "loadavg_1m": os.getloadavg()[0]}), flush=True)
      if round_ >= (args.rounds if args.hf_rounds is None else args.hf_rounds):
        continue
      seconds, cpu, hf_ids = run_hf(torch, model, rows, predictor.batch_size, args.label_len)
      hf_rates.append(len(rows) / seconds)
      print(json.dumps({**common, "side": "hf_generate", "round": round_,
                        "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                        "rows_per_s": round(hf_rates[-1], 2),
                        "rows_per_cpu_s": round(len(rows) / cpu, 2),
                        "loadavg_1m": os.getloadavg()[0]}), flush=True)
    ours_labels = [json.loads(line)["label"] for line in
                   (root / "out.jsonl").read_text().splitlines()]
    from sbs_jax.model.student import detokenize  # pylint: disable=import-outside-toplevel
    hf_labels = [detokenize(predictor.vocabulary, ids) for ids in hf_ids]
    agree = sum(a == b for a, b in zip(ours_labels, hf_labels)) / len(rows)
    print(json.dumps({**common, "side": "summary", "ours_best_rows_per_s": round(
        max(ours_rates), 2), "hf_best_rows_per_s": round(max(hf_rates), 2),
                      "speedup_best": round(max(ours_rates) / max(hf_rates), 2),
                      "labels_agree": round(agree, 4)}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
