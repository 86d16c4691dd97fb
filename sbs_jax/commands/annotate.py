"""`sbs annotate`: the teacher-annotation job from the command line (the job:
`sbs_jax/annotate/build.py` and `job.py`)."""

from __future__ import annotations

import json
import logging

from sbs_jax.annotate import answer_formats, batch, benchmarks, build, parsers, samples
from sbs_jax.annotate import job as job_lib
from sbs_jax.data import readers

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "annotate", help="ask a teacher LLM for rationales and labels; write TFRecords",
      description="Annotates a dataset split with a teacher's chain-of-thought rationales "
      "and labels. Rerun the same command to resume an interrupted run.")
  p.add_argument("--dataset", required=True,
                 help=f"one of {', '.join(benchmarks.BENCHMARKS)}, or jsonl:PATH")
  p.add_argument("--split")
  p.add_argument("--teacher", choices=("replay", "openai", "batch"), required=True,
                 help="replay: completions already written; openai: an OpenAI-compatible "
                 "server (or a pool of replicas); batch: a requests file for the OpenAI Batch "
                 "API or vLLM's run_batch, then its results")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--data_dir", help=f"benchmarks' dir (default ${readers.DATA_DIR_ENV}, "
                 "else ../shared/datasets)")
  p.add_argument("--num_shards", type=int)
  p.add_argument("--shard_index", type=int)
  p.add_argument("--restart", action="store_true",
                 help="discard a partial run of this shard instead of resuming it")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  g = p.add_argument_group("custom data (--dataset jsonl:PATH)")
  g.add_argument("--input_key")
  g.add_argument("--label_key",
                 help="gold label field; rows without it are unlabeled")
  g.add_argument("--id_key", help="id field (default: <split>-<row index>)")
  g.add_argument("--completion_key", help="field with a completion, for --teacher replay")
  g.add_argument("--prompt_file", help="own few-shot template with one {input}")
  g.add_argument("--answer_format", choices=answer_formats.FORMATS,
                 help="how answers and gold labels are read: choice (marker, letter or text "
                 "of a choice listed in the input), number, nli (entailment / neutral / "
                 "contradiction), text (as written); auto: text (default: %(default)s)")
  g.add_argument("--answer_regex",
                 help="the label is the rest of the line after its last match (default: "
                 f"{parsers.DEFAULT_ANSWER_REGEX!r} for text, 'answer is' or 'Answer:' in "
                 "any case for the other formats)")
  g.add_argument("--stop_regex",
                 help="where a completion runs on into the next exemplar")
  g = p.add_argument_group("--teacher openai (and batch: the request settings)")
  g.add_argument("--base_url", action="append",
                 help="e.g. http://127.0.0.1:8000/v1; give it several times for replicas of "
                 "one model: each request goes to the replica with the most free slots, and "
                 "one that fails rests while the others take its work")
  g.add_argument("--model")
  g.add_argument("--api_key_env",
                 help="the environment variable holding this endpoint's API key (default: "
                 "$OPENAI_API_KEY for https://api.openai.com only; other endpoints get no "
                 "key without this flag)")
  g.add_argument("--allow_http_key", action="store_true",
                 help="send the key over plain http to a host other than this machine")
  g.add_argument("--endpoint", choices=("completions", "chat"))
  g.add_argument("--concurrency", type=int, help="requests in flight per replica")
  g.add_argument("--timeout", type=float, help="seconds per request")
  g.add_argument("--max_retries", type=int,
                 help="further tries of a request on each replica before the job stops")
  g.add_argument("--retry_base_delay", type=float)
  g.add_argument("--retry_max_delay", type=float)
  g.add_argument("--max_tokens", type=int)
  g.add_argument("--temperature", type=float)
  g = p.add_argument_group("--teacher batch")
  g.add_argument("--batch_dir",
                 help="the folder of the batch's files (one per shard): the first run writes "
                 "requests.jsonl there and exits; put the batch's output there as "
                 "results.jsonl and rerun the same command to write the records")
  g = p.add_argument_group("several samples, vote, filter, cost")
  g.add_argument("--num_samples", type=int,
                 help="samples per example (default 1; use with --temperature; sent as the "
                 "API's n where the server takes it); replay: a list of completions per row "
                 "gives them, this flag may be left out")
  g.add_argument("--keep", choices=samples.KEEP,
                 help="which rationales train the student: all parsed ones, those whose "
                 "label equals gold, or those equal to the example's majority vote "
                 "(default: %(default)s)")
  g.add_argument("--price_in", type=float,
                 help="dollars per million prompt tokens, for cost_usd and the progress line")
  g.add_argument("--price_out", type=float, help="dollars per million completion tokens")
  g.add_argument("--max_cost", type=float,
                 help="dollars: no request starts once this shard's answers cost this much "
                 "(the journal's included); rerun with a higher value to resume")
  p.set_defaults(**build.defaults())
  p.set_defaults(func=main, local_only=("out_dir", "data_dir", "prompt_file"))


# The exit code of a run that waits for a batch (sysexits' EX_TEMPFAIL: retry later), so
# that `sbs annotate ... && sbs train ...` does not go on without records.
WAITING_EXIT_CODE = 75

# The summary line's fields (the last line on stdout).
SUMMARY = ("dataset", "split", "answer_format", "examples", "parsed", "unparsable",
           "teacher_accuracy", "usage", "num_samples", "keep", "vote_accuracy",
           "kept_accuracy", "examples_without_kept", "cost_usd")


def main(args) -> int:
  job = build.build_job(build.options_of(args))
  result = job_lib.run(job)
  if result.waiting is not None:
    _print_batch_steps(job, result.waiting)
    return WAITING_EXIT_CODE
  stats = result.split_stats or result.stats
  shown = {k: stats.get(k) for k in SUMMARY}
  print(json.dumps(shown, sort_keys=True))
  what = "samples" if job.num_samples > 1 else "examples"
  log.info("records: %s (asked the teacher for %d %s in this run%s)", result.records_path,
           result.asked, what, "; rewritten for --keep" if result.rewritten else "")
  if result.split_stats is None:
    log.info("split stats are written when all %d shards are done", job.num_shards)
  return 0


def _print_batch_steps(job: job_lib.Job, waiting) -> None:
  """What to run next for a shard that waits for a batch, then a JSON summary line."""
  teacher = job.teacher
  (log.warning if waiting.retry else log.info)("%s", waiting.report)
  model = teacher.settings["model"]
  print(f"{waiting.requests} requests ({waiting.samples} samples) wait for a batch:")
  for path in waiting.requests_files:
    out = path.with_name(batch.results_name(path.name))
    print(f"  {path} -> {out}")
  first, out = waiting.requests_files[0], waiting.requests_files[0].with_name(
      batch.results_name(waiting.requests_files[0].name))
  if teacher.settings["endpoint"] == "chat":
    print("vLLM, on a machine with the model (docs/annotate.md, 'Batch APIs'):")
    print(f"  python -m vllm.entrypoints.openai.run_batch -i {first} -o {out} --model {model}")
  else:
    print("vLLM's run_batch takes chat requests only: for vLLM, write them with --endpoint "
          "chat (docs/annotate.md, 'Batch APIs')")
  print(f"OpenAI Batch API: upload {first.name} (purpose batch), create a batch with endpoint "
        f"{teacher.url_path} and completion_window 24h, download its output file as {out}")
  print("then rerun this same command.")
  print(json.dumps({"dataset": job.dataset, "split": job.split, "waiting_for_batch": True,
                    "requests": waiting.requests, "samples_waiting": waiting.samples,
                    "requests_files": [str(p) for p in waiting.requests_files],
                    "retry": waiting.retry}, sort_keys=True))
