"""The statistics of an annotation run: counts, unparsable reasons, teacher accuracy (of one
sample, of the vote, of the kept rationales), usage and cost.

Every accuracy is a percentage (0-100, two decimals), the unit of every accuracy the
project prints, and None without labeled examples:
- `teacher_accuracy`: the first sample (sample 0) of each labeled example against gold,
  the teacher as one request would have it (with one sample: the teacher's accuracy);
- `vote_accuracy`: the example's vote (samples.py) against gold;
- `kept_accuracy`: the kept rationales of labeled examples whose label equals gold.
Counts: `examples`; `records` (examples x num_samples), of which `parsed + unparsable`;
`kept` records and `examples_without_kept` (examples left with no kept rationale).
`unparsable_reasons` counts unparsable completions by a short reason category;
`unparsable_examples` shows, per category, the first few in full (`<id>: <why>`, with
`#<sample>` after the id where there are several samples). `usage` sums the tokens of the
answers in the records (as journalled: a response's usage split over its choices);
`cost_usd` prices them with this run's prices (None without).
"""

from __future__ import annotations

import collections
from typing import Callable, Iterable, Sequence

from sbs_jax.annotate.cost import Prices
from sbs_jax.annotate.parsers import Parsed

EXAMPLES_PER_REASON = 3
# Counts summed over shards; the accuracies are recomputed from them.
_SUMMED = ("examples", "records", "parsed", "unparsable", "labeled", "correct",
           "vote_correct", "kept", "kept_labeled", "kept_correct", "examples_without_kept")
_ACCURACIES = {"teacher_accuracy": ("correct", "labeled"),
               "vote_accuracy": ("vote_correct", "labeled"),
               "kept_accuracy": ("kept_correct", "kept_labeled")}


def accuracy_percent(correct: int | None, labeled: int | None) -> float | None:
  """100 * correct / labeled, two decimals; None without labeled examples."""
  return round(100.0 * correct / labeled, 2) if labeled and correct is not None else None


def shard_stats(header: dict, rows: Sequence[tuple[dict, Parsed]], entries: Iterable[dict],
                labels_match: Callable[[str, str], bool],
                prices: Prices | None = None) -> dict:
  """Stats of one shard from its (record, parsed) rows, in (index, sample) order, and the
  journal entries they were made from."""
  several = any(r["num_samples"] > 1 for r, _ in rows)
  reasons = collections.Counter()
  shown = collections.defaultdict(list)
  for record, parsed in rows:
    if not parsed.ok:
      reason = parsed.reason or parsed.error
      reasons[reason] += 1
      if len(shown[reason]) < EXAMPLES_PER_REASON:
        where = f"{record['id']}#{record['sample']}" if several else record["id"]
        shown[reason].append(f"{where}: {parsed.error}")
  firsts = [(r, p) for r, p in rows if r["sample"] == 0]
  labeled = [(r, p) for r, p in firsts if r["has_label"]]
  kept = [r for r, _ in rows if r["kept"]]
  kept_labeled = [r for r in kept if r["has_label"]]
  entries = list(entries)
  prompt_tokens = sum(int(e.get("pt", 0)) for e in entries)
  completion_tokens = sum(int(e.get("ct", 0)) for e in entries)
  stats = {
      **header,
      "examples": len(firsts), "records": len(rows),
      "parsed": sum(1 for _, p in rows if p.ok), "unparsable": sum(reasons.values()),
      "unparsable_reasons": dict(reasons.most_common()),
      "unparsable_examples": {k: shown[k] for k, _ in reasons.most_common()},
      "labeled": len(labeled),
      "correct": sum(1 for r, p in labeled if p.ok and labels_match(p.label, r["label"])),
      "vote_correct": sum(1 for r, _ in labeled
                          if r["vote_label"] and labels_match(r["vote_label"], r["label"])),
      "kept": len(kept), "kept_labeled": len(kept_labeled),
      "kept_correct": sum(1 for r in kept_labeled if labels_match(r["llm_label"], r["label"])),
      "examples_without_kept": len({r["index"] for r, _ in firsts} - {r["index"] for r in kept}),
      "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens},
  }
  _add_accuracies(stats)
  stats["cost_usd"] = _cost(prices, stats["usage"])
  stats["prices_per_million"] = (None if prices is None else
                                 {"prompt": prices.prompt, "completion": prices.completion})
  return stats


def _cost(prices: Prices | None, usage: dict) -> float | None:
  if prices is None:
    return None
  return round(prices.cost(usage["prompt_tokens"], usage["completion_tokens"]), 6)


def _add_accuracies(stats: dict) -> None:
  for name, (correct, labeled) in _ACCURACIES.items():
    stats[name] = accuracy_percent(stats.get(correct), stats.get(labeled))


def merge_stats(parts: Sequence[dict]) -> dict:
  """Stats of a whole split from the stats of its shards. A count that a shard made by an
  earlier sbs lacks makes the merged count (and its accuracy) None; so does one shard
  without a cost."""
  merged = dict(parts[0])
  for key in _SUMMED:
    values = [p.get(key, p["examples"] if key == "records" else None) for p in parts]
    merged[key] = None if None in values else sum(values)
  reasons, usage = collections.Counter(), collections.Counter()
  shown = collections.defaultdict(list)
  for p in parts:
    reasons.update(p["unparsable_reasons"])
    usage.update(p["usage"])
    for k, cases in p.get("unparsable_examples", {}).items():
      shown[k].extend(cases[:EXAMPLES_PER_REASON - len(shown[k])])
  merged["unparsable_reasons"] = dict(reasons.most_common())
  merged["unparsable_examples"] = {k: shown[k] for k, _ in reasons.most_common()}
  merged["usage"] = dict(usage)
  _add_accuracies(merged)
  costs = [p.get("cost_usd") for p in parts]
  merged["cost_usd"] = None if None in costs else round(sum(costs), 6)
  merged.pop("client_this_run", None)
  merged.pop("batch_this_run", None)
  return merged
