"""`qsharp-report DIR [DIR ...]` (or `python -m qsharp_exp.cli.report`): tables and plots from the metrics.json
of runs and sweeps.

Writes, into the first DIR (or `--out`): `report.md` and `report.csv` in the paper's layout (rows
pi_ref / REINFORCE / DPO / RPO / CD / Q# per model and task, and per eta where a sweep has several),
`reward_vs_kl.png` (the paper's Pareto picture: reward against KL across eta, one line per method),
`reward_vs_inverse_eta.png`, and for star-graph `accuracy_by_method.png` (the paper's Figure 2b:
accuracy per method per graph shape, with the 1/d level of the next-token shortcut).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qsharp_exp.reporting.tables import find_metrics, write_bar_chart, write_plots, write_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsharp-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the first dir)")
    args = parser.parse_args(argv)
    runs = find_metrics(args.dirs)
    if not runs:
        print(f"report: no metrics.json of a run under {', '.join(map(str, args.dirs))}.", file=sys.stderr)
        return 1
    out = args.out or args.dirs[0]
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file: give a directory for the report (--out DIR)", file=sys.stderr)
        return 1
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_tables(runs, out)
        plotted = [r for r in runs if r["_finite"]]
        plots = write_plots(plotted, out) if plotted else []
        bars = write_bar_chart(plotted, out) if plotted else None
    except OSError as err:
        where = "" if err.filename in (None, str(out)) else f" ({err.filename})"
        print(f"error: --out {out} cannot be written{where}: {err.strerror or err}: choose a directory you can "
              "write (--out DIR)", file=sys.stderr)
        return 1
    plots += [bars] if bars else []
    print((out / "report.md").read_text())
    print("wrote " + ", ".join(str(p) for p in [out / "report.md", out / "report.csv", *plots]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
