"""The SeqIO registry of sbs_jax: importing this module registers every task and mixture.

T5X runs them with `MIXTURE_OR_TASK_MODULE = "tasks"`; our trainer imports it too. Records
are read from the annotation dir and the vocabulary from the SentencePiece model set in gin
(`sbs_jax.data.vocab.annotation_dir.path`, `sbs_jax.data.vocab.vocabulary_settings.path`) or
by $SBS_ANNOTATION_DIR / $SBS_VOCAB; both are read when data is first requested.
Custom datasets: `tasks.register_dataset("my_data", annotation_dir=..., vocabulary=...)`.
"""

from sbs_jax.data.readers import BENCHMARKS
from sbs_jax.data.vocab import ConfiguredVocabulary
from tasks.registry import DEFAULT_FEATURE_LENGTHS, register_dataset, task_names

VOCABULARY = ConfiguredVocabulary()  # shared by all benchmark tasks

for _name in BENCHMARKS:
  register_dataset(_name, vocabulary=VOCABULARY)

__all__ = ["DEFAULT_FEATURE_LENGTHS", "VOCABULARY", "register_dataset", "task_names"]
