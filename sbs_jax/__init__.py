"""sbs_jax: Distilling Step-by-Step in JAX (teacher annotation, SeqIO tasks, T5 students)."""

__version__ = "0.1.0"
