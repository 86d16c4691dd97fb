#!/usr/bin/env bash
# Installs T5X, airio and jestimator (at pinned commits) into the project's venv, with what
# they import from the package index.
#
#   bash launch/install_t5x.sh [SOURCE_DIR]
#
# SOURCE_DIR holds the archives t5x-cc342d4.tar.gz, airio-69897df.tar.gz and
# jestimator-326824a.tar.gz (CI and the tests: ../shared/vendor); without it the same
# commits are cloned from GitHub. The sources are kept in $VENV/src/{t5x,airio,jestimator}
# and installed editable, so T5X's gin files are at $VENV/src/t5x/t5x/...: pass
# --gin_search_paths=$VENV/src/t5x to `python -m t5x.train`. VENV is this checkout's .venv
# unless set (relative to the current directory; the TPU launcher sets the workers' venv).
# Idempotent: sources already at the pinned commit are kept.
#
# T5X's setup.py names its dependencies as git URLs, so the three are installed with
# --no-deps and the rest is named here. jestimator 0.3.3 from the package index imports
# PartitionSpec from jax.experimental.pjit, which jax 0.10 lacks: the commit below does not.
set -euo pipefail
SOURCE_DIR=${1:+$(cd "$1" && pwd)}  # absolute, as VENV: both relative to where it was called
VENV=${VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
cd "$(dirname "$0")/.."
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  echo "install_t5x.sh: no $PY: run launch/setup_env.sh first" >&2
  exit 2
fi
SRC="$VENV/src"
mkdir -p "$SRC"
# What the three import beyond this project's own stack (versions measured with jax 0.10.2;
# airio asks for grain 0.2.12 and tfds-nightly, grain 0.2.18 and tensorflow-datasets work).
"$PY" -m pip install --quiet fiddle==0.3.1 jaxtyping==0.3.11 chex==0.1.92 \
  cached-property==2.0.1 grain==0.2.18 tensorstore
# name, GitHub repository, commit, archive
PACKAGES=(
  "jestimator google-research/jestimator 326824a477feef6d92e6f44175000907a72899ca jestimator-326824a.tar.gz"
  "airio google/airio 69897df7d9a427b947a9f7bb4164c7782b43e601 airio-69897df.tar.gz"
  "t5x google-research/t5x cc342d419ec3e3e9c4bf1df33c82330cafdc1e16 t5x-cc342d4.tar.gz"
)
for row in "${PACKAGES[@]}"; do
  read -r name repo commit archive <<< "$row"
  stamp="$SRC/$name/.sbs_commit"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$commit" ]; then
    rm -rf "$SRC/$name"
    if [ -n "$SOURCE_DIR" ]; then
      if [ ! -f "$SOURCE_DIR/$archive" ]; then
        echo "install_t5x.sh: $SOURCE_DIR/$archive not found" >&2
        exit 2
      fi
      tar -xzf "$SOURCE_DIR/$archive" -C "$SRC"  # each archive holds one folder named $name
    else
      git clone --quiet "https://github.com/$repo" "$SRC/$name"
      git -C "$SRC/$name" checkout --quiet --detach "$commit"
    fi
    echo "$commit" > "$stamp"
  elif "$PY" -m pip show --quiet "$name" > /dev/null 2>&1; then
    continue  # this commit, already installed
  fi
  "$PY" -m pip install --quiet --no-deps -e "$SRC/$name"
done
"$PY" -c "import t5x.train, t5x.eval, t5x.infer, t5x.checkpoints" 
echo "install_t5x.sh: T5X installed in $VENV; gin search path: $SRC/t5x"
