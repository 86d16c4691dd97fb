"""What the teacher's answers cost: token counts priced in dollars, and the budget
(`sbs annotate --price_in/--price_out/--max_cost`).

Prices are dollars per million tokens, prompt and completion apart, as hosted APIs list
them. The spend is always computed from token totals (the journal's answers plus this
run's), so a resumed run counts what earlier runs spent. Prices change no record: they are
not pinned in the shard's manifest, and a rerun may give other ones.
"""

from __future__ import annotations

import dataclasses

# A spend this close below the budget counts as reaching it (float sums of prices).
_EPSILON = 1e-9


@dataclasses.dataclass(frozen=True)
class Prices:
  """Dollars per million prompt (input) and completion (output) tokens."""
  prompt: float
  completion: float

  def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


class Ledger:
  """The tokens (and, with prices, dollars) spent on one shard: what the journal held at the
  start plus what this run received; `reached()` once a budget is spent."""

  def __init__(self, prices: Prices | None, budget: float | None = None,
               prompt_tokens: int = 0, completion_tokens: int = 0):
    if budget is not None and prices is None:
      raise ValueError("a budget needs prices")
    self.prices, self.budget = prices, budget
    self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
    self._start = (prompt_tokens, completion_tokens)

  def add(self, prompt_tokens: int, completion_tokens: int) -> None:
    self.prompt_tokens += prompt_tokens
    self.completion_tokens += completion_tokens

  @property
  def spent(self) -> float | None:
    """Dollars spent in all, None without prices."""
    if self.prices is None:
      return None
    return self.prices.cost(self.prompt_tokens, self.completion_tokens)

  @property
  def spent_this_run(self) -> float | None:
    if self.prices is None:
      return None
    return self.prices.cost(self.prompt_tokens - self._start[0],
                            self.completion_tokens - self._start[1])

  def reached(self) -> bool:
    return self.budget is not None and self.spent >= self.budget - _EPSILON

  def shown(self) -> str:
    """`$1.2345` for the progress line; empty without prices."""
    return "" if self.prices is None else f"${self.spent:.4f}"
