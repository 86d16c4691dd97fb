"""`python -m t5x.train`, several runs in one process (tests/test_t5x_workflow.py): the
process's start (TensorFlow, JAX, T5X and our tasks imported) is paid once, not per run.

    python tests/t5x_train_runs.py RUNS_JSON GIN_SEARCH_PATHS

RUNS_JSON is a list of {"name", "gin_files", "bindings"}; GIN_SEARCH_PATHS is a comma-
separated list. Each run clears gin, parses its files and bindings as t5x.train parses its
flags (gin_utils.parse_gin_flags, after the same search paths), and calls T5X's own `train`
made gin-configurable as t5x.train's main makes it. On stderr each run's log follows a line
`=== t5x.train run NAME ===`; T5X's absl log lines are written there at INFO, as under
t5x.train. The first run that fails ends the process with its traceback.
"""

import json
import sys

from absl import logging
import gin
import jax
from t5x import gin_utils
from t5x import train as t5x_train

MARK = "=== t5x.train run "
# T5X's run gins bind `train_script.train` after `import __main__ as train_script`: the
# gin-configurable `train` must be an attribute of the main module, as under t5x.train.
train = gin.configurable(t5x_train.train)


def main(runs_json: str, search_paths: str) -> None:
  logging.set_verbosity(logging.INFO)
  for run in json.loads(runs_json):
    gin.clear_config()
    print(f"{MARK}{run['name']} ===", file=sys.stderr, flush=True)
    gin_utils.parse_gin_flags(
        search_paths.split(",") + t5x_train._DEFAULT_GIN_SEARCH_PATHS,  # pylint: disable=protected-access
        run["gin_files"], run["bindings"])
    train()  # pylint: disable=no-value-for-parameter
    jax.effects_barrier()
    sys.stderr.flush()


if __name__ == "__main__":
  main(*sys.argv[1:])
