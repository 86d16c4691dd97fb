"""T5X glue: the paper's loss inside `python -m t5x.train` (importable only with T5X installed).

`DistillModel` is T5X's `EncoderDecoderModel` (T5X's own T5 v1.1 network, decoding,
checkpoints) with our feature converter (`sbs_jax.data.features.DistillFeatureConverter`,
which keeps `decoder_task_ids` through packing) and our loss (`sbs_jax.train.loss`):

    L = alpha * CE_label + (1 - alpha) * CE_rationale

each CE the mean over that task's target tokens in the batch: the loss `sbs train`
optimises, not T5X's token-weighted sum over both tasks (no z-loss, no label smoothing).
`gin_configs/t5x/*.gin` select it (alpha 0.5 for distillation, 1.0 for the standard
families). With T5X's `Trainer.num_microbatches` each micro-batch would be normalised by
its own token counts; leave it unset (None) for the exact loss.

Our trainer never imports this module; T5X's gin files do, through those gin files.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from typing import Mapping, Optional

from absl import logging
from clu import metrics as clu_metrics
import gin
import jax
import jax.numpy as jnp
from t5x import models

from sbs_jax.data import lengths as lengths_lib
from sbs_jax.data.features import DistillFeatureConverter
from sbs_jax.errors import SbsError
from sbs_jax.train import loss as loss_lib


def check_alpha(alpha) -> None:
  """Refuses an alpha outside [0, 1] (or NaN, or not a number): the loss would then
  maximise one task's cross-entropy (alpha 50 drives it to about -766)."""
  ok = (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
        and math.isfinite(alpha) and 0.0 <= alpha <= 1.0)
  if not ok:
    raise ValueError(f"DistillModel alpha = {alpha!r} is out of range: it must be a number "
                     "between 0 and 1 (the label loss's weight; 1 - alpha weighs the "
                     "rationale loss); fix the binding of DistillModel.alpha in the gin file")


T5X_FLAGS = {"lengths": "TASK_FEATURE_LENGTHS",
             "share": "t5x_model.DistillModel.max_truncated_share"}


def _query(name: str, default=None):
  try:
    return gin.query_parameter(name)
  except (ValueError, KeyError):
    return default


def under_t5x_train() -> bool:
  """True in `python -m t5x.train` (its module is __main__), where training data is read."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  return getattr(spec, "name", None) == "t5x.train"


def check_training_lengths(max_truncated_share: float, length_check_examples: int) -> dict:
  """`sbs train`'s length check on T5X's training data, from the gin config T5X parsed.

  SeqIO trims every feature to TASK_FEATURE_LENGTHS before the converter sees it, so a
  cut row loses its end (a paired row its explain part's EOS) without a word. This counts
  the cut rows of %MIXTURE_OR_TASK_NAME's training split, logs the count and refuses over
  `max_truncated_share`, naming the lengths that fit; {} where the config names no
  mixture or lengths.
  """
  name = _query("%MIXTURE_OR_TASK_NAME")
  lengths = _query("%TASK_FEATURE_LENGTHS")
  if not isinstance(name, str) or not isinstance(lengths, Mapping):
    return {}
  module = _query("%MIXTURE_OR_TASK_MODULE")
  if isinstance(module, str) and module:
    importlib.import_module(module)
  split = _query("train/utils.DatasetConfig.split") or "train"
  cfg = types.SimpleNamespace(
      mixture_or_task=name, train_split=split,
      task_feature_lengths={k: int(v) for k, v in lengths.items()},
      max_truncated_share=max_truncated_share, length_check_examples=length_check_examples)
  report = lengths_lib.check_lengths(cfg, T5X_FLAGS)
  note = lengths_lib.length_note(report, T5X_FLAGS) or (
      f"length check: TASK_FEATURE_LENGTHS = {dict(cfg.task_feature_lengths)} cut none of "
      f"{sum(r['checked'] for r in report.values()):,} checked training examples of {name}")
  logging.info("sbs %s", note)
  print(f"sbs {note}", file=sys.stderr, flush=True)
  return report


class FeatureConverter(DistillFeatureConverter):
  """Our converter, also given the lengths of every output feature.

  seqio's Evaluator (T5X's inference evaluation, `t5x.eval`) measures each output feature
  of the tasks and passes all their lengths, our one-id `task` feature's included; the
  converter reads `task` from the examples and takes no length for it.
  """

  def __call__(self, ds, task_feature_lengths):
    lengths = {k: v for k, v in task_feature_lengths.items() if k != "task"}
    return super().__call__(ds, lengths)


class DistillModel(models.EncoderDecoderModel):
  """T5X's encoder-decoder model trained with the paper's per-task loss."""

  FEATURE_CONVERTER_CLS = FeatureConverter

  def __init__(self, module, input_vocabulary, output_vocabulary, optimizer_def,
               alpha: float = 0.5, max_truncated_share: float = 0.5,
               length_check_examples: int = 5000, **kwargs):
    """`max_truncated_share`, `length_check_examples`: `sbs train`'s length check
    (DataConfig's fields of those names), run in `python -m t5x.train` only."""
    check_alpha(alpha)
    if not (0.0 <= max_truncated_share <= 1.0 and length_check_examples >= 1):
      raise ValueError(f"DistillModel max_truncated_share = {max_truncated_share} (a share "
                       f"in [0, 1]) or length_check_examples = {length_check_examples} (1 "
                       "or more) is out of range: fix its binding in the gin file")
    if under_t5x_train():
      try:
        check_training_lengths(max_truncated_share, length_check_examples)
      except SbsError as e:  # one line, not a traceback through gin and absl
        print(f"sbs: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    network_vocab = getattr(getattr(module, "config", None), "vocab_size", None)
    for name, vocabulary in (("input", input_vocabulary), ("output", output_vocabulary)):
      if network_vocab is not None and vocabulary.vocab_size > network_vocab:
        raise SbsError(
            f"the {name} vocabulary ({vocabulary}) has {vocabulary.vocab_size} ids, more "
            f"than the network's vocab_size {network_vocab}: bind "
            "sbs_jax.data.vocab.vocabulary_settings.path (and extra_ids) to the student's "
            "vocabulary, e.g. the spm.model beside an exported model.gin")
    self.alpha = alpha
    super().__init__(module, input_vocabulary, output_vocabulary, optimizer_def,
                     **kwargs)

  def loss_fn(self, params, batch: Mapping[str, jnp.ndarray],
              dropout_rng: Optional[jax.Array]):
    """The paper's loss of a packed batch and T5X's metrics, plus each task's mean CE."""
    logits = self._compute_logits(params, batch, dropout_rng)
    targets, task_ids = batch["decoder_target_tokens"], batch["decoder_task_ids"]
    label_sum, rationale_sum = loss_lib.task_sums(logits, targets, task_ids)
    label_count, rationale_count = loss_lib.task_token_counts(task_ids)
    loss = loss_lib.distill_loss(label_sum, rationale_sum, label_count, rationale_count,
                                 self.alpha)
    segment_ids = {k[:-len("_segment_ids")]: v for k, v in batch.items()
                   if k.endswith("_segment_ids")}
    metrics = self._compute_metrics(
        logits=logits, targets=targets, mask=batch["decoder_loss_weights"], loss=loss,
        segment_ids=segment_ids or None)
    metrics["label_loss"] = clu_metrics.Average(total=label_sum, count=label_count)
    if self.alpha < 1.0:  # the standard families have no rationale task (count 0: nan)
      metrics["rationale_loss"] = clu_metrics.Average(total=rationale_sum,
                                                      count=rationale_count)
    return loss, metrics
