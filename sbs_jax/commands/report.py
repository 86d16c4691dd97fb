"""`sbs report SWEEP_DIR`: the sweep's results table and figures
(`sbs_jax/experiments/report.py`)."""

from __future__ import annotations

import pathlib

from sbs_jax.experiments import report as report_lib


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "report", help="a sweep's results table (csv, markdown) and figures",
      description="Collects every cell's results.json of an `sbs sweep` dir into "
      "results.csv and results.md and draws figures/*.png and *.svg.")
  p.add_argument("sweep_dir")
  p.add_argument("--metric", default="accuracy",
                 help="the label metric to tabulate and plot, a percent: "
                 f"{', '.join(report_lib.KNOWN_METRICS)} (or another *accuracy the cells' "
                 "results hold)")
  p.set_defaults(func=main, local_only=("sweep_dir",))


def main(args) -> int:
  sweep_dir = pathlib.Path(args.sweep_dir)
  cells, drawn = report_lib.write_report(sweep_dir, args.metric)
  done = sum(c.status == "done" for c in cells)
  print((sweep_dir / "results.md").read_text(), end="")
  print(f"\n{done}/{len(cells)} cells done; wrote {sweep_dir / 'results.csv'}, "
        f"{sweep_dir / 'results.md'} and {len(drawn)} figures in {sweep_dir / 'figures'}")
  return 0
