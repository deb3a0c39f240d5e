"""`python -m qsharp_exp.report DIR [DIR ...]`: tables and plots from the metrics.json of runs and sweeps,
and the summaries a run prints and plots for itself.

Writes, into the first DIR (or `--out`): `report.md` and `report.csv` in the paper's layout (rows
pi_ref / REINFORCE / DPO / RPO / CD / Q# per model and task, and per eta where a sweep has several),
`reward_vs_kl.png` (the paper's Pareto picture: reward against KL across eta, one line per method),
`reward_vs_inverse_eta.png`, and for star-graph `accuracy_by_method.png` (the paper's Figure 2b:
accuracy per method per graph shape, with the 1/d level of the next-token shortcut).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

from qsharp_exp.guidance import RULES
from qsharp_exp.stages.inputs import non_semantic
from qsharp_exp.training.policy import TRAINERS


def algo_order(algo: str) -> int:
    """Rows in the paper's order: the baseline, the policy trainers, then the guidance rules."""
    names = ["pi_ref", *TRAINERS, *RULES]
    return names.index(algo) if algo in names else len(names)


def algo_label(algo: str) -> str:
    """How tables and plots name a method: the label it was registered with."""
    known = {**{n: t.label for n, t in TRAINERS.items()}, **{n: r.label for n, r in RULES.items()}}
    return known.get(algo, algo)

# Colour and marker of each guidance rule's line, by registry order (CD orange squares, Q# blue circles); the
# line style tells apart runs of one rule that differ in another setting.
COLORS, MARKERS = ("tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple"), "so^vD"
LINESTYLES = ("-", "--", ":", "-.")


def _style(rule: str) -> tuple[str, str]:
    index = list(RULES).index(rule)
    return COLORS[index % len(COLORS)], MARKERS[index % len(MARKERS)]


REQUIRED = ("task", "algo", "kl_mean", "num_samples")  # what every table row needs


def find_metrics(dirs: list[Path]) -> list[dict]:
    """Every run's metrics.json under `dirs`; runs that reused the same evaluation (the same stage
    directory, so the same numbers) count once. A file that cannot be read or lacks a field the tables
    need is skipped, and named on stderr."""
    runs: dict[str, dict] = {}
    for root in dirs:
        if not root.exists():
            raise SystemExit(f"report: {root} does not exist: give run or sweep directories (outputs/..., "
                             "multirun/...).")
        for path in sorted(root.rglob("metrics.json")):
            try:
                metrics = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                print(f"report: skipping {path}: not readable JSON ({err})", file=sys.stderr)
                continue
            if not isinstance(metrics, dict) or "algo" not in metrics or "task" not in metrics:
                continue  # not a run's metrics (e.g. a stage's own file)
            missing = [k for k in REQUIRED if k not in metrics]
            if missing or metrics.get(reward_name([metrics])) is None:
                print(f"report: skipping {path}: it lacks {', '.join(missing) or reward_name([metrics])}",
                      file=sys.stderr)
                continue
            key = metrics.get("dir_evaluation") or str(path)
            runs.setdefault(key, {**metrics, "_path": str(path.parent), "_config": _config(path.parent)})
    return list(runs.values())


def _config(run_dir: Path) -> dict | None:
    """The run's settings by dotted path (its config.json); None for a run written without one."""
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None


# Settings a table shows as its headings and columns (model, task, method, eta), and those that never change
# a result (where files go, progress bars, the tracker).
SHOWN = frozenset({"model.name", "task.name", "algo.name", "algo.eta"})


def differing(rows: list[dict]) -> list[str]:
    """The settings that differ between runs of one table, so that rows and curves are told apart by them:
    outside `algo` between any runs, inside it between runs of the same method (each method brings its own
    defaults, e.g. CD's guide_round)."""
    configs = [r["_config"] for r in rows if r.get("_config")]
    keys = []
    for key in sorted({k for c in configs for k in c}):
        if key in SHOWN or non_semantic(key):
            continue
        values = defaultdict(set)
        for c in configs:
            values[c.get("algo.name") if key.startswith("algo.") else None].add(json.dumps(c.get(key)))
        if any(len(v) > 1 for v in values.values()):
            keys.append(key)
    return keys


def _label_settings(rows: list[dict]) -> None:
    """Each run's `_setting`: its values of the settings that differ in its table ('' where none do)."""
    keys = differing(rows)
    for m in rows:
        config = m.get("_config")
        if not keys:
            m["_setting"] = ""
        elif config is None:
            m["_setting"] = "settings unknown (no config.json)"
        else:
            m["_setting"] = ", ".join(f"{k}={config.get(k)}" for k in keys)


def reward_name(rows: list[dict]) -> str:
    """The task's headline reward column (metrics.json's reward_metric): pass@1, or accuracy (star-graph)."""
    return rows[0].get("reward_metric", "pass@1")


def columns(rows: list[dict]) -> list[str]:
    """The paper's columns: pass@1 and maj1@k (the math tables) or accuracy (star-graph), then KL, then Q#
    as a reward model where it was measured."""
    names = [reward_name(rows)]
    if names[0] == "pass@1":
        names += sorted({k for r in rows for k in r if k.startswith("maj1@") and not k.endswith("_se")})
    names.append("kl_mean")
    # Q# as a reward model ranks several samples; with one sample per problem it would repeat the reward.
    names += sorted({k for r in rows for k in r if k.startswith(("rm_best_of_", "rm_maj1@"))
                     and not k.endswith("_se") and r.get("num_samples", 1) > 1})
    return names


def _sort_key(m: dict):
    return algo_order(m["algo"]), m["_setting"], m.get("eta") or 0.0


def groups(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Runs by (model, task), the task with its graph shape for star-graph (e.g. star_graph G(2,5)); each run
    labelled by the settings that differ within its group."""
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for m in runs:
        task = f"{m['task']} {m['graph']}" if m.get("graph") else m["task"]
        by[(m.get("model") or "?", task)].append(m)
    for rows in by.values():
        _label_settings(rows)
    return {k: sorted(v, key=_sort_key) for k, v in sorted(by.items())}


def series(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """One line (or bar) per method and setting: runs that differ in another setting are never joined."""
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for m in rows:
        by[(m["algo"], m["_setting"])].append(m)
    return dict(sorted(by.items(), key=lambda item: (algo_order(item[0][0]), item[0][1])))


def series_label(algo: str, setting: str) -> str:
    return f"{algo_label(algo)} ({setting})" if setting else algo_label(algo)


def _fmt(metrics: dict, name: str) -> str:
    """A table cell: rewards in %, KL in nats, each with ± its standard error where measured."""
    value, se = metrics.get(name), metrics.get(f"{name}_se")
    if value is None:
        return "-"
    scale, digits = (1, 3) if name == "kl_mean" else (100, 1)
    cell = f"{scale * value:.{digits}f}"
    return cell + (f" ± {scale * se:.{digits}f}" if se is not None else "")


def write_tables(runs: list[dict], out: Path) -> None:
    lines = ["# Results", "", "Rewards in %, KL in nats per response (mean over samples), each ± its standard "
             "error over problems. "
             "Source: the metrics.json files under the given directories.", ""]
    csv_rows = []
    for (model, task), rows in groups(runs).items():
        cols = columns(rows)
        labelled = any(m["_setting"] for m in rows)  # a column of the settings its runs differ in
        lines += [f"## {model} / {task}", "", "| method | " + ("settings | " if labelled else "") + "eta | "
                  + " | ".join(cols) + " |", "|---|---|" + ("---|" if labelled else "") + "---|" * len(cols)]
        for m in rows:
            eta = f"{m['eta']:g}" if m.get("eta") is not None else "-"
            lines.append(f"| {algo_label(m['algo'])} | " + (f"{m['_setting'] or '-'} | " if labelled else "")
                         + f"{eta} | " + " | ".join(_fmt(m, c) for c in cols) + " |")
            csv_rows.append({"model": model, "task": task, "method": algo_label(m["algo"]),
                             "settings": m["_setting"], "eta": m.get("eta") if m.get("eta") is not None else "",
                             **{c: m.get(c, "") for c in cols},
                             **{f"{c}_se": m[f"{c}_se"] for c in cols if m.get(f"{c}_se") is not None},
                             "run_dir": m["_path"]})
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    fields = ["model", "task", "method", "settings", "eta"]
    fields += sorted({k for r in csv_rows for k in r} - set(fields) - {"run_dir"}) + ["run_dir"]
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(csv_rows)


def write_plots(runs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_group = {k: v for k, v in groups(runs).items() if any(m["algo"] in RULES for m in v)}
    if not by_group:
        return written
    several = len(by_group) > 1
    for name, x_of, x_label, log_x in (
        ("reward_vs_kl.png", lambda m: m["kl_mean"], "KL(pi || pi_ref), nats per response", False),
        ("reward_vs_inverse_eta.png", lambda m: 1.0 / m["eta"], "1 / eta", True),
    ):
        fig, axes = plt.subplots(1, len(by_group), figsize=(5.5 * len(by_group), 4.2), squeeze=False)
        for ax, ((model, task), rows) in zip(axes[0], by_group.items(), strict=True):
            metric = reward_name(rows)
            settings = sorted({m["_setting"] for m in rows})
            for (algo, setting), points in series(rows).items():
                if algo not in RULES:
                    continue
                points = sorted(points, key=x_of)
                color, marker = _style(algo)
                xs, ys = [x_of(m) for m in points], [m[metric] for m in points]
                ax.plot(xs, ys, marker=marker, color=color, label=series_label(algo, setting),
                        linestyle=LINESTYLES[settings.index(setting) % len(LINESTYLES)])
                labels: dict[tuple[float, float], list[str]] = defaultdict(list)  # one label per drawn point
                for m, x, y in zip(points, xs, ys, strict=True):
                    labels[(x, y)].append(f"{m['eta']:g}")
                for (x, y), etas in labels.items():
                    ax.annotate("eta=" + ", ".join(etas), (x, y), textcoords="offset points", xytext=(4, 4),
                                fontsize=7, color=color)
            for (algo, setting), points in series(rows).items():
                if algo == "pi_ref":
                    ax.axhline(points[0][metric], color="gray", label=series_label(algo, setting),
                               linestyle=LINESTYLES[1 + settings.index(setting) % (len(LINESTYLES) - 1)])
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel(metric)
            ax.set_title(f"{model} / {task}" if several else f"{task}: {metric} against "
                         + ("KL" if not log_x else "1/eta"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)
    return written


def write_bar_chart(runs: list[dict], out: Path) -> Path | None:
    """Star-graph accuracy per method, grouped by graph shape, with the 1/d line of the shortcut."""
    star = [m for rows in groups(runs).values() for m in rows if m.get("graph") and m.get("degree")]
    if not star:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({m["graph"] for m in star})
    bars = series(star)  # one bar per method and setting in each shape
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 + 1.4 * len(shapes) * len(bars) / 3), 4.2))
    for j, ((algo, setting), points) in enumerate(bars.items()):
        values = []
        for shape in shapes:
            # eta 0.1 (the paper's) where a sweep has several
            at = [m for m in points if m["graph"] == shape]
            best = min(at, key=lambda m: abs((m.get("eta") or 0.1) - 0.1)) if at else None
            values.append(best["accuracy"] if best else float("nan"))
        xs = [i + (j - (len(bars) - 1) / 2) * width for i in range(len(shapes))]
        ax.bar(xs, values, width=width, label=series_label(algo, setting))
    for i, shape in enumerate(shapes):
        degree = next(m["degree"] for m in star if m["graph"] == shape)
        ax.hlines(1 / degree, i - 0.45, i + 0.45, colors="black", linestyles="--",
                  label="1/d (shortcut)" if i == 0 else None)
    ax.set_xticks(range(len(shapes)), shapes)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("Star-graph: policy-based post-training vs value guidance (eta 0.1)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "accuracy_by_method.png", dpi=120)
    plt.close(fig)
    return out / "accuracy_by_method.png"


def with_se(metrics: dict, key: str) -> str:
    """`0.6125 ± 0.0141`: the value with its standard error where metrics.json has one."""
    se = metrics.get(f"{key}_se")
    return f"{metrics[key]:.4f}" + (f" ± {se:.4f}" if se is not None else "")


def print_summary(metrics: dict) -> None:
    rows = [
        ("task", metrics["task"]),
        ("algo", metrics["algo"]),
        ("eta", metrics["eta"]),
        *((key, with_se(metrics, key)) for key in metrics
          if key.startswith(("pass@", "maj1@", "rm_")) and not key.endswith("_se")),
        ("kl_mean (nats)", with_se(metrics, "kl_mean")),
        ("problems x samples", f"{metrics['num_problems']} x {metrics['num_samples']}"),
    ]
    if "pi_ref_test_accuracy" in metrics:
        rows.append(("pi_ref accuracy (pretrain / test problems)",
                     f"{metrics['pi_ref_pretrain_accuracy']:.4f} / {metrics['pi_ref_test_accuracy']:.4f}"))
    rows += [(k[5:-2], f"{v:.1f} s") for k, v in metrics.items() if k.startswith("time_")]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def plot_guide_curve(curve: list[dict], path) -> None:
    """Validation accuracy of the return model by response position over training steps (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in curve if "val_acc_by_pos" in p]
    if not points:
        return
    steps = [p["step"] for p in points]
    positions = sorted({int(k) for p in points for k in p["val_acc_by_pos"]})[:12]
    fig, ax = plt.subplots(figsize=(7, 4))
    for pos in positions:
        ax.plot(steps, [p["val_acc_by_pos"].get(pos, p["val_acc_by_pos"].get(str(pos))) for p in points],
                label=f"position {pos}")
    ax.plot(steps, [p["val_acc"] for p in points], "k--", linewidth=2, label="all positions")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation accuracy (predicted success)")
    ax.set_title("Return model: accuracy by response position")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qsharp_exp.report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the first dir)")
    args = parser.parse_args(argv)
    runs = find_metrics(args.dirs)
    if not runs:
        print(f"report: no metrics.json of a run under {', '.join(map(str, args.dirs))}.", file=sys.stderr)
        return 1
    out = args.out or args.dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    write_tables(runs, out)
    plots = write_plots(runs, out)
    bars = write_bar_chart(runs, out)
    plots += [bars] if bars else []
    print((out / "report.md").read_text())
    print("wrote " + ", ".join(str(p) for p in [out / "report.md", out / "report.csv", *plots]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
