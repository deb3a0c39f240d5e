"""`qsharp-export-guide RUN_DIR --out DIR [--push-to-hub REPO_ID]`: a run's guide as a standard model folder to
share or upload: the return model (config.json with its model_type, safetensors weights), pi_ref's tokenizer
beside it, and a model card (README.md) saying what pi_ref, task and rounds made it, for which rule, its
validation metrics, the eta and result of the run's evaluation, and the command that made it. With
`--push-to-hub`, the folder is uploaded to that hub repository (created if needed; a token from
`huggingface-cli login` or HF_TOKEN).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

from qsharp_exp.config import UserError
from qsharp_exp.reporting.records import guide_folder


def model_card(run_dir: Path, metrics: dict, settings: dict, stage: Path, license_: str = "other") -> str:
    """The folder's README.md: hub metadata (library, licence, the trunk it was fine-tuned from), then what made
    it and how it did."""
    curve = [json.loads(line) for line in (stage / "curve.jsonl").read_text().splitlines() if line]
    validated = [p for p in curve if "val_acc" in p]
    last = validated[-1] if validated else {}
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else None
    command = "python -m qsharp_exp " + " ".join(overrides) if overrides is not None else "(not recorded)"
    pi_ref = settings.get("model.pi_ref.pretrained") or f"pretrained by qsharp_exp ({metrics.get('dir_pi_ref')})"
    guide = {k[len("model.guide."):]: v for k, v in settings.items() if k.startswith("model.guide.")}
    init = settings.get("model.guide.init")
    trunk = {"pi_ref": settings.get("model.pi_ref.pretrained"), "base": settings.get("model.base.pretrained")}.get(
        init, settings.get("model.guide.arch.pretrained"))
    return "\n".join([
        "---", "library_name: transformers", f"license: {license_}", *([f"base_model: {trunk}"] if trunk else []),
        "tags: [qsharp_exp, value-guided-decoding, return-model]", "---", "",
        f"# Return model (guide) for {metrics['task']}", "",
        "A value model of pi_ref's returns, trained by qsharp_exp; it guides pi_ref's sampling (Q#, CD) through",
        "`qsharp_exp.GuidanceLogitsProcessor` or ranks finished responses.", "",
        f"- pi_ref: {pi_ref}",
        f"- task: {metrics['task']} {metrics.get('graph') or ''}".rstrip(),
        f"- round: {stage.parent.name.removeprefix('return_model_round')} of {settings.get('collect.rounds')}"
        f" (collection: {settings.get('collect.mode')}, {settings.get('collect.samples_per_problem')} samples per "
        "problem)",
        f"- head and return distribution: {guide.get('head')}, {guide.get('distribution')}",
        f"- used with: {metrics['algo']} at eta={metrics.get('eta')}, top_k={metrics.get('top_k')}: test "
        f"{metrics.get('reward_metric', 'accuracy')} {metrics.get(metrics.get('reward_metric', 'accuracy'))}, "
        f"KL {metrics.get('kl_mean')} nats",
        f"- validation at step {last.get('step')}: accuracy {last.get('val_acc')}, loss {last.get('val_loss')}",
        f"- made by: `{command}`", "",
        "```python", "import transformers, qsharp_exp  # importing qsharp_exp registers the model type",
        "guide = transformers.AutoModel.from_pretrained(folder)  # or qsharp_exp.load_guide(folder)", "```", ""])


def export(run_dir: Path, out: Path, license_: str = "other") -> Path:
    metrics_file, settings_file = run_dir / "metrics.json", run_dir / "config.json"
    if not (metrics_file.exists() and settings_file.exists()):
        raise UserError(f"{run_dir} is not a finished run's directory (no metrics.json and config.json)")
    metrics, settings = json.loads(metrics_file.read_text()), json.loads(settings_file.read_text())
    stage = guide_folder(metrics)
    if out.exists():
        raise UserError(f"--out {out} exists: choose a new folder")
    shutil.copytree(stage / "model", out)
    (out / "README.md").write_text(model_card(run_dir, metrics, settings, stage, license_))
    return out


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload an exported guide folder to the hub repository `repo_id`; returns the repository's address."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload a qsharp_exp guide")
    except Exception as err:  # the hub's own errors: no token, no network, no access to the namespace
        raise UserError(f"--push-to-hub {repo_id}: the upload failed ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); the folder {folder} is "
                        "written: log in (huggingface-cli login or HF_TOKEN) and push it again.") from None
    return str(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsharp-export-guide", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run's directory (outputs/... or one job of multirun/...)")
    parser.add_argument("--out", type=Path, required=True, help="the new model folder")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this hub repository")
    parser.add_argument("--private", action="store_true", help="create the hub repository private")
    parser.add_argument("--license", default="other", help="the model card's licence (default: other; pi_ref's "
                                                           "licence usually binds a guide trained on its samples)")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {export(args.run_dir, args.out, args.license)}")
        if args.push_to_hub:
            print(f"pushed to {push(args.out, args.push_to_hub, args.private)}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
