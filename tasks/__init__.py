"""The SeqIO registry of sbs_jax: importing this module registers every task and mixture.

T5X runs them with `MIXTURE_OR_TASK_MODULE = "tasks"`; our trainer imports it too. Records
are read from the annotation dir and the vocabulary from the SentencePiece model set in gin
(`sbs_jax.data.vocab.annotation_dir.path`, `sbs_jax.data.vocab.vocabulary_settings.path`) or
by $SBS_ANNOTATION_DIR / $SBS_VOCAB; both are read when data is first requested.

Registered: the four benchmarks, and every other dataset with records in the configured
annotation dir (`sbs annotate --dataset jsonl:my_data.jsonl` -> `sbs_my_data_*`).
`register_annotation_dir(path)` registers another dir's; `get_task_or_mixture(name)` looks
a name up with an error that lists what is registered.
"""

from sbs_jax.annotate.benchmarks import BENCHMARKS
from tasks.discovery import (VOCABULARY, get_task_or_mixture, register_annotation_dir,
                             registered_summary)
from tasks.registry import DEFAULT_FEATURE_LENGTHS, register_dataset, task_names

for _name in BENCHMARKS:
  register_dataset(_name, vocabulary=VOCABULARY)
register_annotation_dir()  # custom datasets of the configured dir (gin is parsed in T5X)

__all__ = ["DEFAULT_FEATURE_LENGTHS", "VOCABULARY", "get_task_or_mixture",
           "register_annotation_dir", "register_dataset", "registered_summary", "task_names"]
