"""What one run shows of itself: the summary it prints when it ends (pipeline.py) and the return model's
learning curve by response position (stages/return_model_rounds.py)."""

from __future__ import annotations


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
        *([("objective (reward - eta * KL)", with_se(metrics, "objective"))]
          if metrics.get("objective") is not None else []),
        ("problems x samples", f"{metrics['num_problems']} x {metrics['num_samples']}"),
    ]
    if "pi_ref_test_accuracy" in metrics:
        rows.append(("pi_ref accuracy (pretrain / test problems)",
                     f"{metrics['pi_ref_pretrain_accuracy']:.4f} / {metrics['pi_ref_test_accuracy']:.4f}"))
    if "guide_stopped" in metrics:
        rows.append(("guide training", f"{metrics['guide_stopped']} after {metrics['guide_trained_steps']} of "
                                       f"{metrics['guide_budget_steps']} steps"))
    rows += [(k[5:-2], f"{v:.1f} s") for k, v in metrics.items() if k.startswith("time_")]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if metrics.get("guide_stopped") == "budget":
        print(f"\nWARNING: the guide (return model round {metrics['guide_round']}) was still improving when its "
              "budget ended; more epochs (guide_train.epochs, or warm_start_epochs when warm-started) may change "
              "these results.")


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
