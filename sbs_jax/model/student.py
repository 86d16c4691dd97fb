"""The student as it is served and trained: the network, where its parameters live on a
('data', 'model') mesh (T5X's logical axis rules), built from shapes alone; loading a model
dir's best params onto it; and batched decoding and rank classification (scoring given
candidate labels), split over the mesh's data axis.

Everything that reads a trained model (the trainer's evaluation, `sbs predict`, the
converters) uses this module, so none of them imports the trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sbs_jax.model import decoding, partitioning
from sbs_jax.model.config import T5Config
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.model.network import Transformer

EOS_ID = 1

BATCH_KEYS = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
              "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
              "decoder_positions", "decoder_task_ids")


def make_mesh(shape: tuple[int, int]) -> Mesh:
  """A (data, model) mesh over all devices of all hosts; -1 takes what is left."""
  n = jax.device_count()
  data, model = shape
  if data == -1:
    data = n // model
  if model == -1:
    model = n // data
  return partitioning.make_mesh(data, model)


def _fit(sharding: NamedSharding, shape) -> NamedSharding:
  """The sharding, or replication where it does not fit the array (e.g. factored stats)."""
  spec = tuple(sharding.spec)
  if len(spec) > len(shape):
    return NamedSharding(sharding.mesh, P())
  for dim, axes in zip(shape, spec):
    if axes is None:
      continue
    size = np.prod([sharding.mesh.shape[a] for a in (axes if isinstance(axes, tuple)
                                                      else (axes,))])
    if dim % size:
      return NamedSharding(sharding.mesh, P())
  return sharding


@dataclasses.dataclass
class Student:
  """The network, its optimizer and where everything lives."""
  config: T5Config
  model: Transformer
  tx: optax.GradientTransformation
  mesh: Mesh
  rules: tuple
  param_shardings: Any  # unboxed params structure -> NamedSharding
  state_shardings: Any
  abstract_state: Any

  @contextlib.contextmanager
  def sharding_context(self):
    """The mesh and the logical axis rules, for tracing the network's constraints."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data", None))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())


def _dummy_batch(batch: int = 1, length: int = 8) -> dict:
  return {k: jnp.ones((batch, length), jnp.int32) for k in BATCH_KEYS}


def init_params(model: Transformer, rng) -> Any:
  b = _dummy_batch()
  return model.init(rng, b["encoder_input_tokens"], b["decoder_input_tokens"],
                    b["decoder_target_tokens"])["params"]


def build_student(config: T5Config, tx: optax.GradientTransformation, mesh: Mesh,
                  partitioning_dims: tuple[int, int] = (1, 1)) -> Student:
  """Computes every shape and sharding of the train state without allocating it."""
  model = Transformer(config)
  rules = partitioning.standard_logical_axis_rules(*partitioning_dims)
  boxed = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  param_shardings = partitioning.param_shardings(boxed, mesh, rules)
  abstract_params = nn.unbox(boxed)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = NamedSharding(mesh, P())
  opt_shardings = optax.tree_map_params(
      tx, lambda p, s: _fit(s, p.shape), abstract_opt, param_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
  opt_shardings = jax.tree.map(lambda s, a: _fit(s, a.shape), opt_shardings, abstract_opt)
  state_shardings = {"params": param_shardings, "opt_state": opt_shardings,
                     "step": replicated}
  abstract_state = {"params": abstract_params, "opt_state": abstract_opt,
                    "step": jax.ShapeDtypeStruct((), jnp.int32)}
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
      state_shardings)
  return Student(config, model, tx, mesh, rules, param_shardings, state_shardings,
                 abstract_state)


def load_student(model_dir: str, mesh: tuple[int, int] = (1, 1)):
  """A model dir's network (no optimizer) on a (data, model) `mesh` of devices (one by
  default), its best params and model.json."""
  config, info = ModelDir(model_dir).read_info()
  student = build_student(config, optax.identity(), make_mesh(mesh))
  params, _ = ModelDir(model_dir).load_params(student.abstract_state["params"])
  return student, params, info


def pad_rows(rows, length_multiple: int = 64) -> np.ndarray:
  """Token id rows -> one int32 array, zero-padded to a multiple of `length_multiple`
  (few distinct shapes, so few compilations)."""
  length = -(-max(len(r) for r in rows) // length_multiple) * length_multiple
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def decode_batch_size(student: Student, batch_size: int) -> int:
  """`batch_size` rounded up to a multiple of the mesh's data axis."""
  shards = student.mesh.shape["data"]
  return -(-batch_size // shards) * shards


def sharded_rows(student: Student, rows: np.ndarray) -> jax.Array:
  """One decoding batch (the same rows on every host) as a global array split over the
  mesh's data axis: each data shard decodes its own rows, none decodes all of them."""
  hosts, host = jax.process_count(), jax.process_index()
  per_host = len(rows) // hosts  # the data axis is a multiple of the hosts (make_mesh)
  return jax.make_array_from_process_local_data(
      student.batch_sharding, rows[host * per_host:(host + 1) * per_host], rows.shape)


def _in_batches(student: Student, arrays: tuple[np.ndarray, ...], batch_size: int,
                fn) -> np.ndarray:
  """fn(*batch) over fixed-shape batches of the rows of `arrays` (zero rows pad the last),
  each split over the data axis; every host holds all rows and gets all outputs back."""
  n = len(arrays[0])
  batch_size = decode_batch_size(student, batch_size)
  padded = -(-n // batch_size) * batch_size
  arrays = tuple(np.concatenate([a, np.zeros((padded - n,) + a.shape[1:], a.dtype)])
                 for a in arrays)
  outputs = []
  with student.sharding_context():
    for start in range(0, padded, batch_size):
      out = fn(*(sharded_rows(student, a[start:start + batch_size]) for a in arrays))
      # All hosts' shards of the output, on every host (device_get fails across hosts).
      outputs.append(np.asarray(multihost_utils.process_allgather(out, tiled=True)))
  return np.concatenate(outputs)[:n]


def decode(student: Student, params, inputs: np.ndarray, batch_size: int,
           max_decode_length: int, beam_size: int = 1) -> np.ndarray:
  """Token ids [n, max_decode_length] for input ids [n, length], in fixed-shape batches
  split over the data axis (every host holds all `inputs` and gets all the ids back)."""
  def decode_chunk(chunk):
    if beam_size > 1:
      return decoding.beam_search(student.model, params, chunk, max_decode_length,
                                  beam_size=beam_size)
    return decoding.greedy_decode(student.model, params, chunk, max_decode_length)
  return _in_batches(student, (inputs,), batch_size, decode_chunk)


# A row's candidates are packed into one decoder row, padded to a power of two of at least
# 8 tokens; their number is padded to one of these slot counts: few shapes, so few
# compilations (NLI: 3 slots, CQA: 5).
CANDIDATE_SLOTS = (2, 3, 5, 10)


def pack_candidates(rows: Sequence[Sequence[Sequence[int]]]
                    ) -> tuple[np.ndarray, np.ndarray, int]:
  """Each row's candidates' token ids, one after another -> (int32 ids [rows, length],
  int32 segments [rows, length]: j + 1 on candidate j, 0 on padding; slots)."""
  most = max(len(row) for row in rows)
  slots = next((n for n in CANDIDATE_SLOTS if most <= n), -(-most // 10) * 10)
  longest = max(sum(len(ids) for ids in row) for row in rows) or 1
  length = max(8, 1 << (longest - 1).bit_length())
  tokens, segments = np.zeros((2, len(rows), length), np.int32)
  for i, row in enumerate(rows):
    at = 0
    for j, ids in enumerate(row):
      tokens[i, at:at + len(ids)], segments[i, at:at + len(ids)] = ids, j + 1
      at += len(ids)
  return tokens, segments, slots


def score(student: Student, params, inputs: np.ndarray, candidates: np.ndarray,
          segments: np.ndarray, slots: int, batch_size: int) -> np.ndarray:
  """Log-likelihoods [n, slots] of packed candidates (pack_candidates) given input ids
  [n, length], in fixed-shape batches split over the data axis (every host holds all rows
  and gets all scores back); empty slots score -inf."""
  return _in_batches(student, (inputs, candidates, segments), batch_size,
                     lambda x, c, s: decoding.score_candidates(student.model, params, x, c,
                                                               s, slots))


def rank(student: Student, params, vocabulary, inputs: np.ndarray,
         candidates: Sequence[Sequence[str]], batch_size: int) -> list[str]:
  """Rank classification: for each row of input ids [n, length], the candidate text
  (a label as the label task's targets are written) whose ids, then EOS, are most likely;
  ties go to the first candidate listed. Every row needs at least one candidate."""
  ids: dict[str, tuple[int, ...]] = {}
  for text in {c for row in candidates for c in row}:
    ids[text] = tuple(int(i) for i in vocabulary.encode(text)) + (EOS_ID,)
  packed = pack_candidates([[ids[c] for c in row] for row in candidates])
  scores = score(student, params, inputs, *packed, batch_size)
  return [row[int(i)] for row, i in zip(candidates, np.argmax(scores, axis=1))]  # first max


def detokenize(vocabulary: seqio.Vocabulary, ids) -> str:
  """Text of one decoded row: up to EOS, padding dropped."""
  ids = [int(i) for i in ids]
  if EOS_ID in ids:
    ids = ids[:ids.index(EOS_ID)]
  return vocabulary.decode([i for i in ids if i > 0])
