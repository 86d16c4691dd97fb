"""The statistics of an annotation run: counts, unparsable reasons, teacher accuracy, usage.

`teacher_accuracy` is a percentage (0-100, two decimals), the unit of every accuracy the
project prints. `unparsable_reasons` counts unparsable completions by a short reason
category; `unparsable_examples` shows, per category, the first few in full (`<id>: <why>`).
"""

from __future__ import annotations

import collections
from typing import Callable, Sequence

from sbs_jax.annotate.parsers import Parsed

EXAMPLES_PER_REASON = 3
_SUMMED = ("examples", "parsed", "unparsable", "labeled", "correct")


def accuracy_percent(correct: int, labeled: int) -> float | None:
  """100 * correct / labeled, two decimals; None without labeled examples."""
  return round(100.0 * correct / labeled, 2) if labeled else None


def shard_stats(header: dict, rows: Sequence[tuple[dict, Parsed]], entries: dict,
                labels_match: Callable[[str, str], bool]) -> dict:
  """Stats of one shard from its (record, parsed) rows and journal entries."""
  reasons = collections.Counter()
  examples = collections.defaultdict(list)
  for record, parsed in rows:
    if not parsed.ok:
      reason = parsed.reason or parsed.error
      reasons[reason] += 1
      if len(examples[reason]) < EXAMPLES_PER_REASON:
        examples[reason].append(f"{record['id']}: {parsed.error}")
  labeled = [(r, p) for r, p in rows if r["has_label"]]
  correct = sum(1 for r, p in labeled if p.ok and labels_match(p.label, r["label"]))
  prompt_tokens = sum(int(e.get("pt", 0)) for e in entries.values())
  completion_tokens = sum(int(e.get("ct", 0)) for e in entries.values())
  return {
      **header,
      "examples": len(rows), "parsed": sum(1 for _, p in rows if p.ok),
      "unparsable": sum(reasons.values()),
      "unparsable_reasons": dict(reasons.most_common()),
      "unparsable_examples": {k: examples[k] for k, _ in reasons.most_common()},
      "labeled": len(labeled), "correct": correct,
      "teacher_accuracy": accuracy_percent(correct, len(labeled)),
      "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens},
  }


def merge_stats(parts: Sequence[dict]) -> dict:
  """Stats of a whole split from the stats of its shards."""
  merged = dict(parts[0])
  for key in _SUMMED:
    merged[key] = sum(p[key] for p in parts)
  reasons, usage = collections.Counter(), collections.Counter()
  examples = collections.defaultdict(list)
  for p in parts:
    reasons.update(p["unparsable_reasons"])
    usage.update(p["usage"])
    for k, shown in p.get("unparsable_examples", {}).items():
      examples[k].extend(shown[:EXAMPLES_PER_REASON - len(examples[k])])
  merged["unparsable_reasons"] = dict(reasons.most_common())
  merged["unparsable_examples"] = {k: examples[k] for k, _ in reasons.most_common()}
  merged["usage"] = dict(usage)
  merged["teacher_accuracy"] = accuracy_percent(merged["correct"], merged["labeled"])
  merged.pop("client_this_run", None)
  return merged
