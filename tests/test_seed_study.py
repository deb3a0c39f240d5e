"""The report across seeds: runs that differ only in their seed are one row (mean ± standard error across
seeds, per-seed rows below), and methods are compared on the same test problems with a paired standard error.
Synthetic runs, checked against hand computations."""

import csv
import json
import math

import pytest

from qsharp_exp.cli import report

# per seed, per method: each problem's (correct of 2 samples, kl of each sample)
RUNS = {
    0: {"pi_ref": {"p0": ([1, 0], [0, 0]), "p1": ([0, 0], [0, 0]), "p2": ([1, 1], [0, 0])},
        "cd": {"p0": ([1, 1], [0.5, 0.3]), "p1": ([1, 0], [0.9, 0.1]), "p2": ([1, 1], [0.2, 0.2])},
        "qsharp": {"p0": ([1, 1], [0.1, 0.1]), "p1": ([0, 1], [0.2, 0.2]), "p2": ([1, 1], [0.0, 0.0])}},
    1: {"pi_ref": {"p0": ([0, 0], [0, 0]), "p1": ([1, 0], [0, 0]), "p2": ([1, 0], [0, 0])},
        "cd": {"p0": ([1, 0], [0.4, 0.4]), "p1": ([1, 1], [0.6, 0.2]), "p2": ([1, 0], [0.3, 0.1])},
        "qsharp": {"p0": ([1, 0], [0.1, 0.1]), "p1": ([1, 1], [0.1, 0.1]), "p2": ([1, 1], [0.1, 0.3])}},
}
ETA = 0.1


def _write_run(root, seed, algo, problems):
    run = root / f"seed{seed}_{algo}"
    run.mkdir(parents=True)
    samples = [{"problem_id": pid, "sample": i, "correct": float(c), "kl": kl}
               for pid, (correct, kls) in problems.items() for i, (c, kl) in enumerate(zip(correct, kls, strict=True))]
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    reward = {pid: sum(c) / 2 for pid, (c, _) in problems.items()}
    kl = {pid: sum(k) / 2 for pid, (_, k) in problems.items()}
    eta = ETA if algo != "pi_ref" else None
    metrics = {"task": "arithmetic", "model": "tiny", "algo": algo, "eta": eta, "num_samples": 2,
               "reward_metric": "pass@1", "pass@1": sum(reward.values()) / 3, "kl_mean": sum(kl.values()) / 3,
               "objective": sum(reward[p] - (eta or 0) * kl[p] for p in reward) / 3,
               "dir_evaluation": str(run)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    config = {"seed": seed, "task.seed": 0, "algo.name": algo, "task.name": "arithmetic", "model.name": "tiny",
              **({"algo.eta": ETA} if eta else {})}
    (run / "config.json").write_text(json.dumps(config))
    return metrics


def _se(values):
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def test_runs_of_several_seeds_make_one_row_with_their_mean_and_paired_differences(tmp_path):
    written = {(seed, algo): _write_run(tmp_path, seed, algo, problems)
               for seed, methods in RUNS.items() for algo, problems in methods.items()}
    assert report.main([str(tmp_path)]) == 0
    table = (tmp_path / "report.md").read_text()

    # One row per method with the mean over the two seeds ± the standard error across them, seeds below.
    q_mean, q_se = _se([written[(s, "qsharp")]["pass@1"] for s in (0, 1)])
    q_row = next(line for line in table.splitlines() if line.startswith("| Q# |"))
    assert f"| 0.1 | 2 | {100 * q_mean:.1f} ± {100 * q_se:.1f} |" in q_row
    assert sum(line.startswith("|   seed ") for line in table.splitlines()) == 6
    assert "0.10000" not in table  # eta is the runs' own, not a mean of floats

    # Paired: Q# - pi_ref on seed 0, per problem (reward): p0 1 - 0.5, p1 0.5 - 0, p2 1 - 1.
    mean, se = _se([0.5, 0.5, 0.0])
    assert f"| Q# - pi_ref | 0.1 | 0 | {100 * mean:+.1f} ± {100 * se:.1f} |" in table
    # Q# - CD objective on seed 1: per problem (reward - 0.1 KL) of Q# minus that of CD.
    q = [0.5 - 0.01, 1.0 - 0.01, 1.0 - 0.02]
    cd = [0.5 - 0.04, 1.0 - 0.04, 0.5 - 0.02]
    mean, se = _se([a - b for a, b in zip(q, cd, strict=True)])
    line = next(x for x in table.splitlines() if x.startswith("| Q# - CD | 0.1 | 1 |"))
    assert line.split("|")[5].strip() == f"{100 * mean:+.1f} ± {100 * se:.1f}"
    # The mean over seeds of the paired differences, ± the standard error across seeds.
    per_seed = []
    for s in (0, 1):
        ours, theirs = RUNS[s]["qsharp"], RUNS[s]["pi_ref"]
        per_seed.append(sum(sum(ours[p][0]) / 2 - sum(theirs[p][0]) / 2 for p in ours) / 3)
    mean, se = _se(per_seed)
    assert f"| **Q# - pi_ref** | 0.1 | mean of 2 | **{100 * mean:+.1f} ± {100 * se:.1f}** |" in table

    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("pi_ref", "CD", "Q#")
                                                         for s in ("mean", "0", "1")}
    mean_row = next(r for r in rows if r["method"] == "Q#" and r["seed"] == "mean")
    assert float(mean_row["pass@1"]) == pytest.approx(q_mean) and float(mean_row["pass@1_se"]) == pytest.approx(q_se)
    assert (tmp_path / "objective_vs_inverse_eta.png").read_bytes()[:4] == b"\x89PNG"


def test_a_single_seed_keeps_its_rows_and_the_standard_errors_over_problems(tmp_path):
    for algo, problems in RUNS[0].items():
        _write_run(tmp_path, 0, algo, problems)
    assert report.main([str(tmp_path)]) == 0
    table = (tmp_path / "report.md").read_text()
    assert "| method | eta | pass@1 | kl_mean | objective |" in table  # no column of seeds
    assert "|   seed" not in table and "| Q# - pi_ref | 0.1 | 0 |" in table
