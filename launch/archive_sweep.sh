#!/usr/bin/env bash
# Copies what `sbs report` reads of a sweep (no checkpoints, params or vocabulary) into
# DEST, e.g. docs/results/<name>: sweep.json, cells/*.json and *.log, and each cell's
# results.json, metrics.jsonl, run.json, model.json and config.gin, plus the teacher's
# test.stats.json. `sbs report DEST/sweep` then redraws the table and figures anywhere;
# copied back to the sweep dir's own path, it lets a later `sbs sweep` skip the done cells.
#
#   bash launch/archive_sweep.sh runs/controlled/marked_sum_last_digit-exact docs/results/x
set -euo pipefail
SRC=${1:?usage: archive_sweep.sh PREPARED_DIR DEST}
DEST=${2:?usage: archive_sweep.sh PREPARED_DIR DEST}
[ -f "$SRC/sweep/sweep.json" ] || { echo "archive_sweep.sh: $SRC/sweep/sweep.json not found: give the dir that holds sweep/" >&2; exit 2; }
mkdir -p "$DEST/sweep/cells"
cp "$SRC/sweep/sweep.json" "$DEST/sweep/"
cp "$SRC"/sweep/cells/*.json "$SRC"/sweep/cells/*.log "$DEST/sweep/cells/" 2>/dev/null || true
for cell in "$SRC"/sweep/*/; do
  name=$(basename "$cell")
  [ "$name" = cells ] || [ "$name" = figures ] && continue
  mkdir -p "$DEST/sweep/$name"
  for f in results.json metrics.jsonl run.json model.json config.gin; do
    [ -f "$cell/$f" ] && cp "$cell/$f" "$DEST/sweep/$name/"
  done
done
for stats in "$SRC"/annotations/*/*.stats.json; do
  [ -f "$stats" ] || continue
  rel=${stats#"$SRC"/}
  mkdir -p "$DEST/$(dirname "$rel")"
  cp "$stats" "$DEST/$rel"
done
echo "archived $SRC -> $DEST ($(du -sh "$DEST" | cut -f1))"
