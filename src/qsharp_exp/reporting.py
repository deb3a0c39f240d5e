"""Human-readable summaries of a run."""

from __future__ import annotations


def print_summary(metrics: dict) -> None:
    rows = [
        ("task", metrics["task"]),
        ("algo", metrics["algo"]),
        ("eta", metrics["eta"]),
        ("accuracy", f"{metrics['accuracy']:.4f}"),
        ("kl_mean (nats)", f"{metrics['kl_mean']:.4f}"),
        ("problems x samples", f"{metrics['num_problems']} x {metrics['num_samples']}"),
        ("pi_ref accuracy (pretrain / test graphs)",
         f"{metrics['pi_ref_pretrain_accuracy']:.4f} / {metrics['pi_ref_test_accuracy']:.4f}"),
    ]
    rows += [(k[5:-2], f"{v:.1f} s") for k, v in metrics.items() if k.startswith("time_")]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))
