"""FLOPs of a training step: counted by hand (matmuls only) and as XLA's compiler reports
them (with the bytes it accesses). Used by `sbs bench` (MFU) and by the TPU compile check
(`sbs plan --topology`)."""

from __future__ import annotations


def analytic_flops(c, rows: int, enc_len: int, dec_len: int) -> float:
  """Matmul FLOPs of one training step over rows of the given lengths (3x the forward)."""
  inner, d = c.num_heads * c.head_dim, c.emb_dim
  mlp = (len(c.mlp_activations) + 1) * d * c.mlp_dim
  enc = c.num_encoder_layers * (2 * enc_len * (4 * d * inner + mlp) + 4 * enc_len ** 2 * inner)
  dec = c.num_decoder_layers * (2 * dec_len * (6 * d * inner + mlp) + 4 * enc_len * d * inner
                                + 4 * dec_len * (dec_len + enc_len) * inner)
  return 3.0 * rows * (enc + dec + 2 * dec_len * d * c.vocab_size)


def _cost(compiled, key: str) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  value = (cost or {}).get(key)
  return float(value) if value and value > 0 else None


def xla_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled executable (None where the backend gives none)."""
  return _cost(compiled, "flops")


def xla_bytes_accessed(compiled) -> float | None:
  """XLA's count of the bytes a compiled executable reads and writes in memory (its cost
  model's "bytes accessed"; None where the backend gives none)."""
  return _cost(compiled, "bytes accessed")
