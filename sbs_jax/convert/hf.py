"""Hugging Face `transformers` T5 checkpoints <-> the student's T5X-named parameters.

A Hugging Face folder holds `config.json`, `model.safetensors` (or shards listed in
`model.safetensors.index.json`) and, for the tokenizer, `spiece.model`. Every 2-D tensor but
`shared.weight` is transposed: torch `Linear` weights are [out, in], T5X kernels [in, out], and
HF's relative position tables are [buckets, heads], ours [heads, buckets]; HF stores that
table only in block 0 of each stack, as one table serves all layers. Names (S = encoder or
decoder; per-layer rows: E = encoder.block.{i}.layer / D = decoder.block.{i}.layer on the
left, under encoder/layers_{i} / decoder/layers_{i} on the right):

  shared.weight                           token_embedder/embedding
  lm_head.weight                          decoder/logits_dense/kernel   (untied models only)
  S.block.0.layer.0.SelfAttention.relative_attention_bias.weight
                                          S/relpos_bias/rel_embedding
  encoder.final_layer_norm.weight         encoder/encoder_norm/scale
  decoder.final_layer_norm.weight         decoder/decoder_norm/scale
  E.0.layer_norm.weight                   pre_attention_layer_norm/scale
  E.0.SelfAttention.{q,k,v,o}.weight      attention/{query,key,value,out}/kernel
  E.1.layer_norm.weight                   pre_mlp_layer_norm/scale
  E.1.DenseReluDense.{wi_0,wi_1,wo}.weight  mlp/{wi_0,wi_1,wo}/kernel
  D.0.layer_norm.weight                   pre_self_attention_layer_norm/scale
  D.0.SelfAttention.{q,k,v,o}.weight      self_attention/{query,key,value,out}/kernel
  D.1.layer_norm.weight                   pre_cross_attention_layer_norm/scale
  D.1.EncDecAttention.{q,k,v,o}.weight    encoder_decoder_attention/{query,key,value,out}/kernel
  D.2.layer_norm.weight                   pre_mlp_layer_norm/scale
  D.2.DenseReluDense.{wi_0,wi_1,wo}.weight  mlp/{wi_0,wi_1,wo}/kernel

`{encoder,decoder}.embed_tokens.weight` (tied copies of `shared.weight`) are accepted when
equal to it and never written; the unused `decoder.block.0.layer.1.EncDecAttention.
relative_attention_bias.weight` of old checkpoints is ignored, as transformers does; a missing
`lm_head.weight` of an untied model means tied to `shared.weight` (transformers >= 5 omits it
then). A plain (non-gated) MLP maps `DenseReluDense.wi` to `mlp/wi`.

Numerics: HF "gated-gelu" runs `gelu_new`, the tanh approximation, as does our ("gelu",
"linear") MLP (`flax.linen.gelu` = `jax.nn.gelu(approximate=True)`); HF's exact-erf plain
"gelu" is refused. A tied model (`tie_word_embeddings`, or transformers 5's
`scale_decoder_outputs`) scales the decoder output by d_model**-0.5 before the shared
embedding: our `logits_via_embedding=True`, which divides by sqrt(emb_dim).

Tokenizer caveat: transformers 5's `T5Tokenizer` has no byte fallback, so characters outside
a byte-fallback SentencePiece vocabulary become <unk> (2) where `sentencepiece` emits byte
pieces; text the vocabulary covers gets the same ids. torch, transformers and safetensors are
imported only inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Mapping

from flax.core import meta
import numpy as np

from sbs_jax.errors import SbsError
from sbs_jax.jobdir import files
from sbs_jax.model.config import T5Config


class ConversionError(SbsError):
  """A checkpoint or config that cannot be converted; the message names every problem."""


# HF activation (after transformers' "gated-gelu" -> "gelu_new" rename) -> ours.
_FROM_HF_ACT = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "silu": "silu",
                "swish": "silu", "relu": "relu"}
_TO_HF_ACT = {"gelu": "gelu_new", "silu": "silu", "relu": "relu"}
_EPSILON = 1e-6  # layers.RMSNorm's epsilon
_SHARED = "shared.weight"
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def _activations_from_hf(proj: str) -> tuple[str, ...]:
  parts = proj.split("-")
  gated = len(parts) == 2 and parts[0] == "gated"
  act = parts[-1]
  if gated and act == "gelu":
    act = "gelu_new"  # what transformers runs for "gated-gelu"
  ours = _FROM_HF_ACT.get(act)
  if ours is None or len(parts) > 2 or (len(parts) == 2 and not gated):
    raise ConversionError(
        f"feed_forward_proj {proj!r} is not supported: the student computes gated or plain "
        f"{sorted(_FROM_HF_ACT)} (\"gated-gelu\" = tanh-approximate GELU, as in T5 v1.1)")
  return (ours, "linear") if gated else (ours,)


def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> T5Config:
  """Our `T5Config` from an HF T5 / mT5 `config.json` dict; `overrides` set other fields."""
  problems = []
  model_type = hf_config.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    problems.append(f"model_type {model_type!r} (only t5 and mt5 share the T5 v1.1 layout)")
  if not hf_config.get("is_encoder_decoder", True):
    problems.append("is_encoder_decoder is false")
  epsilon = float(hf_config.get("layer_norm_epsilon", _EPSILON))
  if abs(epsilon - _EPSILON) > 1e-12:
    problems.append(f"layer_norm_epsilon {epsilon} (the student's RMSNorm uses {_EPSILON})")
  try:
    activations = _activations_from_hf(hf_config.get("feed_forward_proj", "relu"))
  except ConversionError as e:
    problems.append(str(e))
  missing = [k for k in ("d_model", "d_kv", "d_ff", "num_heads", "num_layers", "vocab_size")
             if k not in hf_config]
  if missing:
    problems.append(f"missing fields {missing}")
  if problems:
    raise ConversionError("cannot convert this HF T5 config: " + "; ".join(problems))
  # transformers 5 stores tie_word_embeddings=true always and scale_decoder_outputs apart;
  # older configs say tie_word_embeddings (default true), which also meant scaling.
  scaled = hf_config.get("scale_decoder_outputs")
  if scaled is None:
    scaled = hf_config.get("tie_word_embeddings", True) is not False
  num_layers = int(hf_config["num_layers"])
  fields = dict(
      vocab_size=int(hf_config["vocab_size"]), emb_dim=int(hf_config["d_model"]),
      num_heads=int(hf_config["num_heads"]), num_encoder_layers=num_layers,
      num_decoder_layers=int(hf_config.get("num_decoder_layers") or num_layers),
      head_dim=int(hf_config["d_kv"]), mlp_dim=int(hf_config["d_ff"]),
      mlp_activations=activations, dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
      logits_via_embedding=bool(scaled),
      relative_attention_num_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
      relative_attention_max_distance=int(
          hf_config.get("relative_attention_max_distance", 128)))
  fields.update(overrides)
  return T5Config(**fields)


def config_to_hf(config: T5Config) -> dict:
  """A `config.json` dict that transformers loads as `T5ForConditionalGeneration`."""
  acts = tuple(config.mlp_activations)
  if len(acts) == 2 and acts[1] == "linear" and acts[0] in _TO_HF_ACT:
    proj, act, gated = f"gated-{acts[0]}", _TO_HF_ACT[acts[0]], True
  elif len(acts) == 1 and acts[0] in _TO_HF_ACT:
    proj, act, gated = _TO_HF_ACT[acts[0]], _TO_HF_ACT[acts[0]], False
  else:
    raise ConversionError(f"mlp_activations {acts} have no transformers T5 equivalent "
                          "(supported: (ACT, 'linear') or (ACT,), ACT in gelu/silu/relu)")
  tied = bool(config.logits_via_embedding)
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": config.vocab_size, "d_model": config.emb_dim, "d_kv": config.head_dim,
      "d_ff": config.mlp_dim, "num_heads": config.num_heads,
      "num_layers": config.num_encoder_layers, "num_decoder_layers": config.num_decoder_layers,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate, "layer_norm_epsilon": _EPSILON,
      "initializer_factor": 1.0, "feed_forward_proj": proj, "dense_act_fn": act,
      "is_gated_act": gated, "tie_word_embeddings": tied, "scale_decoder_outputs": tied,
      "is_encoder_decoder": True, "use_cache": True, "decoder_start_token_id": 0,
      "pad_token_id": 0, "eos_token_id": 1, "dtype": "float32",
  }


def _name_map(config: T5Config) -> list[tuple[str, tuple[str, ...], tuple[int, ...], bool]]:
  """(HF name, our path, our shape, transposed) for every parameter of `config`'s network."""
  d, inner, m = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
  rows = [(_SHARED, ("token_embedder", "embedding"), (config.vocab_size, d), False)]

  def attention(hf, ours):
    for a, b in zip("qkv", ("query", "key", "value")):
      rows.append((f"{hf}.{a}.weight", ours + (b, "kernel"), (d, inner), True))
    rows.append((f"{hf}.o.weight", ours + ("out", "kernel"), (inner, d), True))

  def mlp(hf, ours):
    names = ["wi"] if len(config.mlp_activations) == 1 else [
        f"wi_{i}" for i in range(len(config.mlp_activations))]
    for name in names:
      rows.append((f"{hf}.{name}.weight", ours + ("mlp", name, "kernel"), (d, m), True))
    rows.append((f"{hf}.wo.weight", ours + ("mlp", "wo", "kernel"), (m, d), True))

  def norm(hf, ours):
    rows.append((f"{hf}.layer_norm.weight", ours + ("scale",), (d,), False))

  relpos = (config.num_heads, config.relative_attention_num_buckets)
  for stack, count in (("encoder", config.num_encoder_layers),
                       ("decoder", config.num_decoder_layers)):
    rows.append((f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 (stack, "relpos_bias", "rel_embedding"), relpos, True))
    for i in range(count):
      hf, ours = f"{stack}.block.{i}.layer", (stack, f"layers_{i}")
      if stack == "encoder":
        norm(f"{hf}.0", ours + ("pre_attention_layer_norm",))
        attention(f"{hf}.0.SelfAttention", ours + ("attention",))
        norm(f"{hf}.1", ours + ("pre_mlp_layer_norm",))
        mlp(f"{hf}.1.DenseReluDense", ours)
      else:
        norm(f"{hf}.0", ours + ("pre_self_attention_layer_norm",))
        attention(f"{hf}.0.SelfAttention", ours + ("self_attention",))
        norm(f"{hf}.1", ours + ("pre_cross_attention_layer_norm",))
        attention(f"{hf}.1.EncDecAttention", ours + ("encoder_decoder_attention",))
        norm(f"{hf}.2", ours + ("pre_mlp_layer_norm",))
        mlp(f"{hf}.2.DenseReluDense", ours)
    rows.append((f"{stack}.final_layer_norm.weight", (stack, f"{stack}_norm", "scale"), (d,),
                 False))
  if not config.logits_via_embedding:
    rows.append(("lm_head.weight", ("decoder", "logits_dense", "kernel"),
                 (d, config.vocab_size), True))
  return rows


def _numpy(value) -> np.ndarray:
  """A float32 numpy copy of a numpy, jax or torch array."""
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _raise_problems(what: str, missing, unexpected, wrong, other=()):
  lines = ([f"  missing: {n}" for n in missing] + [f"  unexpected: {n}" for n in unexpected]
           + [f"  wrong shape: {n}: got {g}, expected {e}" for n, g, e in wrong]
           + [f"  {o}" for o in other])
  if lines:
    raise ConversionError(f"{what} does not match the model config ({len(lines)} "
                          f"problem{'s' * (len(lines) > 1)}):\n" + "\n".join(lines))


def params_from_hf(state: Mapping[str, Any], config: T5Config) -> dict:
  """Our unboxed params tree (numpy float32) from an HF T5 state dict."""
  state = dict(state)
  rows = _name_map(config)
  expected = {hf for hf, _, _, _ in rows}
  other = []
  shared = state.get(_SHARED)
  for name in _TIED_COPIES + (() if "lm_head.weight" in expected else ("lm_head.weight",)):
    if name in state and shared is not None:
      if not np.array_equal(_numpy(state[name]), _numpy(shared)):
        other.append(f"{name} differs from {_SHARED}, but this model shares one embedding")
  if "lm_head.weight" in expected and "lm_head.weight" not in state and shared is not None:
    state["lm_head.weight"] = shared  # tied in memory, so transformers >= 5 did not save it
  optional = set(_TIED_COPIES) | set(_IGNORED) | {"lm_head.weight"}
  missing = [hf for hf, _, _, _ in rows if hf not in state]
  unexpected = sorted(n for n in state if n not in expected and n not in optional)
  wrong, params = [], {}
  for hf, path, shape, transposed in rows:
    if hf not in state:
      continue
    value = _numpy(state[hf])
    hf_shape = shape[::-1] if transposed else shape
    if value.shape != hf_shape:
      wrong.append((hf, value.shape, hf_shape))
      continue
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.ascontiguousarray(value.T) if transposed else value
  _raise_problems("the HF T5 state dict", missing, unexpected, wrong, other)
  return params


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple[str, ...], Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (str(key),)))
    else:
      flat[prefix + (str(key),)] = value
  return flat


def params_to_hf(params: Mapping, config: T5Config) -> dict[str, np.ndarray]:
  """The HF T5 state dict (numpy float32) of our params tree (boxed or not)."""
  params = meta.unbox(params)
  if set(params) == {"params"}:
    params = params["params"]
  flat = _flatten(params)
  rows = _name_map(config)
  known = {path for _, path, _, _ in rows}
  missing = ["/".join(p) for _, p, _, _ in rows if p not in flat]
  unexpected = sorted("/".join(p) for p in flat if p not in known)
  wrong, state = [], {}
  for hf, path, shape, transposed in rows:
    if path not in flat:
      continue
    value = _numpy(flat[path])
    if value.shape != shape:
      wrong.append(("/".join(path), value.shape, shape))
      continue
    state[hf] = np.ascontiguousarray(value.T if transposed else value)
  _raise_problems("the params tree", missing, unexpected, wrong)
  return state


def _load(file: pathlib.Path) -> dict[str, Any]:
  """The tensors of one weights file; a damaged file is one error naming it."""
  try:
    if file.suffix == ".safetensors":
      import ml_dtypes  # pylint: disable=import-outside-toplevel,unused-import  # numpy bfloat16
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
      return load_file(str(file))
    import torch  # pylint: disable=import-outside-toplevel
    return torch.load(str(file), map_location="cpu", weights_only=True)
  except (ImportError, MemoryError):
    raise
  except Exception as e:  # pylint: disable=broad-except  # SafetensorError, pickle errors
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    raise ConversionError(f"{file}: cannot read the weights ({type(e).__name__}: {first}); "
                          "the file is damaged or not in this format") from None


def _read_state(path: pathlib.Path, allow_pickle: bool) -> dict[str, Any]:
  for single in ("model.safetensors", "pytorch_model.bin"):
    index = path / f"{single}.index.json"
    if not (path / single).is_file() and not index.is_file():
      continue
    if single.endswith(".bin") and not allow_pickle:
      raise ConversionError(
          f"{path} has weights only in {single}, a Python pickle: unpickling a file can run "
          "arbitrary code. Convert it to model.safetensors, or pass --allow_pickle if you "
          "trust where it came from (it is then read with torch.load(weights_only=True))")
    if (path / single).is_file():
      return dict(_load(path / single))
    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    state = {}
    for shard in sorted(set(weight_map.values())):
      state.update(_load(path / shard))
    absent = sorted(set(weight_map) - set(state))
    if absent:
      raise ConversionError(f"{index} lists tensors its shards lack: {absent}")
    return state
  raise ConversionError(f"{path} has no model.safetensors, model.safetensors.index.json or "
                        "pytorch_model.bin")


def read_hf_dir(path, allow_pickle: bool = False) -> tuple[T5Config, dict, str | None]:
  """(config, params, spiece.model path or None) of a transformers T5 model folder."""
  path = pathlib.Path(path)
  config_file = path / "config.json"
  if not config_file.is_file():
    raise ConversionError(f"{path}: no config.json (not a transformers model folder)")
  config = config_from_hf(json.loads(config_file.read_text(encoding="utf-8")))
  params = params_from_hf(_read_state(path, allow_pickle), config)
  spiece = path / "spiece.model"
  return config, params, str(spiece) if spiece.is_file() else None


def _umask_mode(path: pathlib.Path) -> None:
  """Gives a file the mode a plain `open(path, "w")` would have (0666 less the umask)."""
  umask = os.umask(0)
  os.umask(umask)
  path.chmod(0o666 & ~umask)


def _write_json(path: pathlib.Path, obj) -> None:
  files.write_json_atomically(path, obj)


def check_spiece(spiece_model_path, config: T5Config) -> None:
  """Refuses a file that is not a SentencePiece model with T5's ids fitting `config`."""
  from sbs_jax.data.vocab import sentencepiece_processor  # pylint: disable=import-outside-toplevel
  sp = sentencepiece_processor(spiece_model_path)
  ids = (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id())
  if ids != (0, 1, 2, -1) or sp.get_piece_size() > config.vocab_size:
    raise ConversionError(
        f"{spiece_model_path}: a T5 vocabulary needs pad 0, eos 1, unk 2, no bos and at most "
        f"{config.vocab_size} pieces; it has pad/eos/unk/bos {ids} and "
        f"{sp.get_piece_size()} pieces")


def write_hf_dir(out_dir, config: T5Config, params: Mapping,
                 spiece_model_path=None) -> pathlib.Path:
  """Writes a folder that `T5ForConditionalGeneration.from_pretrained` (and, given a
  SentencePiece model, `T5Tokenizer.from_pretrained`) loads; returns its path."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  out = pathlib.Path(out_dir)
  hf_config = config_to_hf(config)
  state = params_to_hf(params, config)
  if spiece_model_path is not None:
    check_spiece(spiece_model_path, config)
  out.mkdir(parents=True, exist_ok=True)
  save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
  _umask_mode(out / "model.safetensors")  # safetensors creates it 0600
  _write_json(out / "config.json", hf_config)
  _write_json(out / "generation_config.json",
              {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0})
  if spiece_model_path is not None:
    shutil.copyfile(spiece_model_path, out / "spiece.model")
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    _write_json(out / "special_tokens_map.json", special)
    _write_json(out / "tokenizer_config.json", dict(
        special, tokenizer_class="T5Tokenizer", extra_ids=0, additional_special_tokens=[],
        legacy=False))
  return out
