"""Building a run's config from gin files and bindings as `sbs train` does."""

import gin

from sbs_jax.errors import SbsError
from sbs_jax.train import config, gin_check, gin_setup


def configure(files, bindings) -> str | None:
  """Parses `files` and `bindings` and builds the TrainConfig; the SbsError's text if that
  is refused, else None. Gin is left cleared either way."""
  gin.clear_config()
  try:
    gin_setup.parse_gin(files, bindings)
    gin_check.configured(config.TrainConfig)
  except SbsError as e:
    return str(e)
  finally:
    gin.clear_config()
  return None
