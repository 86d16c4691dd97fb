"""Rows and files: JSON Lines writing, an ANLI round-1 stand-in, rows with several teacher
samples each, questions the fake teacher answers, `sbs annotate` flags and runs."""

import argparse
import json

from sbs_jax.annotate import build
from sbs_jax.annotate import job as job_lib
from sbs_jax.commands import annotate as annotate_command


ANLI_ROWS = [
    {"uid": "a1", "premise": "The bridge opened in 1932.", "hypothesis": "It opened before "
     "1940.", "label": 0, "reason": "1932 < 1940"},
    {"uid": "a2", "premise": "Ann lives in Oslo.", "hypothesis": "Ann likes jazz.", "label": 1,
     "reason": ""},
    {"uid": "a3", "premise": "The shop is shut on Sundays.", "hypothesis": "It is open on "
     "Sundays.", "label": 2, "reason": "shut"},
]


# Custom rows with three replayed samples each (`--completion_key out`): 2+2 votes 4 (2 of
# 3), 3+3 ties 7 and 6 (7 came first), 5+5 votes 10 though sample 0 says 11, Sky? has no
# gold label, 1*1 never parses.
SAMPLED_ROWS = [
    {"input": "2+2?", "label": "4", "out": ["R00. So the answer is 4.",
                                            "R01. So the answer is 5.",
                                            "R02. So the answer is 4."]},
    {"input": "3+3?", "label": "6", "out": ["R10. So the answer is 7.", "no answer here",
                                            "R12. So the answer is 6."]},
    {"input": "5+5?", "label": "10", "out": ["R20. So the answer is 11.",
                                             "R21. So the answer is 10.",
                                             "R22. So the answer is 10."]},
    {"input": "Sky?", "out": ["R30. So the answer is blue.", "R31. So the answer is grey.",
                              "R32. So the answer is blue."]},
    {"input": "1*1?", "label": "1", "out": ["x", "y", "z"]},
]


def write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def make_anli(root, completions):
  write_jsonl(root / "anli1" / "anli1_test.json", ANLI_ROWS)
  (root / "anli1" / "llm").mkdir(parents=True, exist_ok=True)
  (root / "anli1" / "llm" / "test_CoT_0.json").write_text(json.dumps(completions[:2]))
  (root / "anli1" / "llm" / "test_CoT_1.json").write_text(json.dumps(completions[2:]))


def annotate_args(**kw) -> argparse.Namespace:
  parser = argparse.ArgumentParser()
  annotate_command.add_parser(parser.add_subparsers())
  argv = ["annotate", "--no_progress"]
  for k, v in kw.items():
    argv += [f"--{k}", str(v)]
  return parser.parse_args(argv)


def parse_annotate(argv) -> argparse.Namespace:
  """`sbs annotate`'s flags parsed from `argv` (plus --no_progress), as the command does."""
  parser = argparse.ArgumentParser()
  annotate_command.add_parser(parser.add_subparsers())
  return parser.parse_args(["annotate", "--no_progress", *map(str, argv)])


def run_annotate(*argv) -> job_lib.Result:
  """The `sbs annotate` job of these flags, run in this process."""
  return job_lib.run(build.build_job(parse_annotate(argv)))


def write_sums(tmp_path, n=12):
  """`sums.jsonl` of n questions 'Question number i: what is i plus i?', every other one
  labelled with what the fake OpenAI server answers it (the question's length); returns
  (path, rows)."""
  rows = [{"input": f"Question number {i}: what is {i} plus {i}?"} for i in range(n)]
  for r in rows[::2]:
    r["label"] = str(len(r["input"]))
  return write_jsonl(tmp_path / "sums.jsonl", rows), rows
