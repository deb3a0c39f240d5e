"""Tables and plots from the metrics.json of runs and sweeps (the report command, cli/report.py).

Written into a directory: `report.md` and `report.csv` in the paper's layout (rows
pi_ref / REINFORCE / DPO / RPO / CD / Q# per model and task, and per eta where a sweep has several),
`reward_vs_kl.png` (the paper's Pareto picture: reward against KL across eta, one line per method),
`reward_vs_inverse_eta.png`, and for star-graph `accuracy_by_method.png` (the paper's Figure 2b:
accuracy per method per graph shape, with the 1/d level of the next-token shortcut).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from qsharp_exp.algos import REFERENCE
from qsharp_exp.config_view import non_semantic
from qsharp_exp.files import read_jsonl
from qsharp_exp.guidance import RULES
from qsharp_exp.metrics import mean_and_se, objective_per_problem, paired_difference, per_problem_means
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
            if key in runs:
                continue
            broken = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
            if broken:
                print(f"report: warning: {path.parent} holds non-finite metrics ({', '.join(broken)}): its rows show "
                      "them, and the plots leave the run out", file=sys.stderr)
            runs[key] = {**metrics, "_path": str(path.parent), "_config": _config(path.parent), "_finite": not broken}
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
# Runs that differ only in these are repeats of one experiment: one row, their mean over seeds (seed_study).
SEEDS = ("seed", "task.seed")


def differing(rows: list[dict]) -> list[str]:
    """The settings that differ between runs of one table, so that rows and curves are told apart by them:
    outside `algo` between any runs, inside it between runs of the same method (each method brings its own
    defaults, e.g. CD's guide_round)."""
    configs = [r["_config"] for r in rows if r.get("_config")]
    keys = []
    for key in sorted({k for c in configs for k in c}):
        if key in SHOWN or key in SEEDS or non_semantic(key):
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
    if any(r.get("objective") is not None for r in rows):
        names.append("objective")
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
    lines = ["# Results", "", "Rewards in %, KL in nats per response (mean over samples), objective = reward - eta "
             "* KL in %, each ± its standard error over problems; a row of several seeds shows their mean ± the "
             "standard error across seeds. Source: the metrics.json files under the given directories.", ""]
    csv_rows = []
    for (model, task), rows in groups(runs).items():
        cols = columns(rows)
        studies = seed_study(rows)
        seeded = any(len(study.runs) > 1 for study in studies)
        labelled = any(m["_setting"] for m in rows)  # a column of the settings its runs differ in
        lines += [f"## {model} / {task}", "", "| method | " + ("settings | " if labelled else "") + "eta | "
                  + ("seeds | " if seeded else "") + " | ".join(cols) + " |",
                  "|---|---|" + ("---|" if labelled else "") + ("---|" if seeded else "") + "---|" * len(cols)]
        for study in studies:
            for m, seed in study.rows():
                eta = f"{m['eta']:g}" if m.get("eta") is not None else "-"
                name = algo_label(m["algo"]) if seed == "mean" or len(study.runs) == 1 else f"  seed {seed}"
                lines.append(f"| {name} | " + (f"{m['_setting'] or '-'} | " if labelled else "") + f"{eta} | "
                             + (f"{len(study.runs) if seed == 'mean' else seed} | " if seeded else "")
                             + " | ".join(_fmt(m, c) for c in cols) + " |")
                csv_rows.append({"model": model, "task": task, "method": algo_label(m["algo"]),
                                 "settings": m["_setting"], "eta": m.get("eta") if m.get("eta") is not None else "",
                                 "seed": seed, **{c: m.get(c, "") for c in cols},
                                 **{f"{c}_se": m[f"{c}_se"] for c in cols if m.get(f"{c}_se") is not None},
                                 "run_dir": m.get("_path", "")})
        lines += ["", *paired_table(studies), ""]
    (out / "report.md").write_text("\n".join(lines))
    fields = ["model", "task", "method", "settings", "eta", "seed"]
    fields += sorted({k for r in csv_rows for k in r} - set(fields) - {"run_dir"}) + ["run_dir"]
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(csv_rows)


# -- seeds: repeats of one experiment, and paired comparisons on the same test problems ---------------------


def _seed_of(m: dict) -> tuple:
    config = m.get("_config") or {}
    return tuple(config.get(k) for k in SEEDS) if config else (m["_path"],)


def _seed_label(m: dict) -> str:
    config = m.get("_config") or {}
    if not config:
        return "?"
    seed, task_seed = (config.get(k) for k in SEEDS)
    return str(seed) if task_seed in (None, 0) else f"{seed} (task {task_seed})"


@dataclass
class SeedStudy:
    """The runs of one method, setting and eta that differ only in their seeds, and their mean."""

    runs: list[dict]
    mean: dict

    def rows(self) -> list[tuple[dict, str]]:
        """(metrics, seed label) of the table's rows: the mean of several seeds ("mean") and each seed under
        it; a single seed's run alone."""
        each = [(r, _seed_label(r)) for r in self.runs]
        return [(self.mean, "mean"), *each] if len(self.runs) > 1 else each


def seed_study(rows: list[dict]) -> list[SeedStudy]:
    """Rows (sorted) grouped by method, setting and eta: each group's runs by seed, and a row of their means with
    the standard error across seeds (`<metric>_se`; none for one seed) and `seeds`, their number."""
    by: dict[tuple, list[dict]] = defaultdict(list)
    for m in rows:
        by[(m["algo"], m["_setting"], m.get("eta"))].append(m)
    studies = []
    for runs in by.values():
        runs = sorted(runs, key=lambda m: [str(v) for v in _seed_of(m)])
        shared = ("task", "algo", "eta", "_setting", "num_samples", "reward_metric", "model")  # the same in each
        mean = {k: runs[0][k] for k in shared if k in runs[0]}
        mean["seeds"] = len(runs)
        for key in {k for m in runs for k, v in m.items() if _numeric(v) and not k.endswith("_se")} - set(shared):
            values = [m[key] for m in runs if _numeric(m.get(key))]
            if len(values) < len(runs):
                continue
            mean[key], spread = mean_and_se(values)
            mean[f"{key}_se"] = spread if len(runs) > 1 else runs[0].get(f"{key}_se")
        studies.append(SeedStudy(runs, mean))
    return studies


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _per_problem(m: dict) -> tuple[dict[str, float], dict[str, float]] | None:
    """(reward, objective) per test problem of a run, from its samples.jsonl; None where it has none."""
    if "_per_problem" not in m:
        path = Path(m["_path"]) / "samples.jsonl"
        m["_per_problem"] = None
        if path.exists():
            samples = read_jsonl(path)
            m["_per_problem"] = (per_problem_means(samples, "correct"),
                                 objective_per_problem(samples, m.get("eta") or 0.0))
    return m["_per_problem"]


def comparisons(studies: list[SeedStudy]) -> list[tuple[SeedStudy, SeedStudy]]:
    """(method, baseline) pairs: every method against pi_ref, and each guidance rule against the one listed
    before it at the same eta and setting (Q# - CD)."""
    base = [s for s in studies if s.mean["algo"] == REFERENCE]
    pairs = [(s, base[0]) for s in studies if s.mean["algo"] != REFERENCE and len(base) == 1]
    rules = [s for s in studies if s.mean["algo"] in RULES]
    for s in rules:
        pairs += [(s, o) for o in rules if algo_order(o.mean["algo"]) < algo_order(s.mean["algo"])
                  and (o.mean.get("eta"), o.mean["_setting"]) == (s.mean.get("eta"), s.mean["_setting"])]
    return pairs


def paired_table(studies: list[SeedStudy]) -> list[str]:
    """Differences between methods on the same test problems: per seed with the paired standard error over
    problems, and their mean over seeds ± the standard error across seeds."""
    lines = []
    for study, baseline in comparisons(studies):
        theirs = {_seed_of(m): m for m in baseline.runs}
        label = f"{algo_label(study.mean['algo'])} - {algo_label(baseline.mean['algo'])}"
        eta = f"{study.mean['eta']:g}" if study.mean.get("eta") is not None else None
        per_seed = []
        for m in study.runs:
            other = theirs.get(_seed_of(m))
            ours, them = _per_problem(m), _per_problem(other) if other else None
            if ours is None or them is None or not ours[0].keys() & them[0].keys():
                continue
            reward, objective = (paired_difference(ours[i], them[i]) for i in (0, 1))
            per_seed.append((reward[0], objective[0]))
            lines.append(f"| {label} | {eta if eta is not None else '-'} | {_seed_label(m)} | "
                         f"{_signed(reward[0], reward[1])} | {_signed(objective[0], objective[1])} | {reward[2]} |")
        if len(per_seed) > 1:
            (r, r_se), (o, o_se) = (mean_and_se([d[i] for d in per_seed]) for i in (0, 1))
            lines.append(f"| **{label}** | {eta if eta is not None else '-'} | mean of {len(per_seed)} | "
                         f"**{_signed(r, r_se)}** | **{_signed(o, o_se)}** | across seeds |")
    if not lines:
        return []
    return ["Paired differences on the same test problems (reward and objective in %; ± the paired standard error "
            "over problems, or across seeds for a mean):", "",
            "| comparison | eta | seed | reward | objective | problems |", "|---|---|---|---|---|---|", *lines]


def _signed(value: float, se: float | None) -> str:
    return f"{100 * value:+.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def write_plots(runs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # One point per method, setting and eta: the mean over seeds where a point was run with several.
    by_group = {k: [study.mean for study in seed_study(v)] for k, v in groups(runs).items()
                if any(m["algo"] in RULES for m in v)}
    if not by_group:
        return written
    several = len(by_group) > 1
    for name, x_of, x_label, log_x, y_key in (
        ("reward_vs_kl.png", lambda m: m["kl_mean"], "KL(pi || pi_ref), nats per response", False, None),
        ("reward_vs_inverse_eta.png", lambda m: 1.0 / m["eta"], "1 / eta", True, None),
        # J_eta, what Q# maximises: each eta is its own objective, so a method is judged at its own eta.
        ("objective_vs_inverse_eta.png", lambda m: 1.0 / m["eta"], "1 / eta", True, "objective"),
    ):
        fig, axes = plt.subplots(1, len(by_group), figsize=(5.5 * len(by_group), 4.2), squeeze=False)
        for ax, ((model, task), rows) in zip(axes[0], by_group.items(), strict=True):
            metric = y_key or reward_name(rows)
            settings = sorted({m["_setting"] for m in rows})
            for (algo, setting), points in series(rows).items():
                if algo not in RULES:
                    continue
                points = sorted((m for m in points if _numeric(m.get(metric))), key=x_of)
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
                if algo == REFERENCE and _numeric(points[0].get(metric)):
                    ax.axhline(points[0][metric], color="gray", label=series_label(algo, setting),
                               linestyle=LINESTYLES[1 + settings.index(setting) % (len(LINESTYLES) - 1)])
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel(f"{reward_name(rows)} - eta * KL" if y_key else metric)
            ax.set_title(f"{model} / {task}" if several else f"{task}: {y_key or metric} against "
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
