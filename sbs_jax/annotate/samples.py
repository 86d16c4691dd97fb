"""Several samples of one example: the vote over their labels and which rationales are kept.

- The vote is the label most of the example's parsed samples give, labels compared by the
  benchmark's own comparison (SVAMP by value, so `3 + 4` and `7` are one vote). A tie goes
  to the label whose first occurrence comes first in sample order, so the vote of a
  single sample is its label. `share` is the winner's votes over all the example's
  samples, unparsable ones included (they agreed with nothing).
- `--keep` decides which rationales train the student: `all` (every parsed sample), `gold`
  (those whose label equals the gold label; an unlabeled example keeps none, since
  nothing can vouch for its rationales), or `vote` (those whose label equals the vote).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from sbs_jax.annotate.parsers import Parsed

KEEP = ("all", "gold", "vote")


@dataclasses.dataclass(frozen=True)
class Vote:
  label: str  # "" when no sample parsed
  share: float  # the winner's votes / the number of samples (0.0 when none parsed)


def vote(parsed: Sequence[Parsed], same_label: Callable[[str, str], bool]) -> Vote:
  """The majority label of the parsed samples (ties: the earliest first occurrence)."""
  groups: list[list] = []  # [first label of the group, votes], in order of appearance
  for p in parsed:
    if not p.ok:
      continue
    for group in groups:
      if same_label(p.label, group[0]):
        group[1] += 1
        break
    else:
      groups.append([p.label, 1])
  if not groups:
    return Vote("", 0.0)
  label, votes = max(groups, key=lambda g: g[1])  # max keeps the first of equal counts
  return Vote(label, votes / len(parsed))


def kept(keep: str, parsed: Parsed, gold: str | None, example_vote: Vote,
         same_label: Callable[[str, str], bool]) -> bool:
  """Whether this sample's rationale trains the student under `--keep keep`."""
  if not parsed.ok:
    return False
  if keep == "all":
    return True
  if keep == "gold":
    return gold is not None and same_label(parsed.label, gold)
  if keep == "vote":
    return same_label(parsed.label, example_vote.label)
  raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
