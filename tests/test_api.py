"""The Python API in a fresh interpreter, and a run's guide as a standard model folder: exported with its tokenizer
and a model card, loaded through transformers' AutoModel with the scores the framework computes."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from qsharp_exp import compose_config
from qsharp_exp.cli.export_guide import main as export_main
from qsharp_exp.models.return_model import ReturnModel
from qsharp_exp.tasks import build_task
from test_cli import cli

FRESH = """
import json, sys, torch, transformers, qsharp_exp
guide = transformers.AutoModel.from_pretrained(sys.argv[1])
tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
lm = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[3])  # pi_ref, a GPT-2 with a conv stem
print(lm.config.model_type)
scores = []
with torch.no_grad():
    for prefix in json.loads(sys.argv[2]):
        ids = torch.tensor([tokenizer(prefix, add_special_tokens=False)["input_ids"]])
        scores.append(guide.distribution.mean(guide(ids, torch.ones_like(ids)))[0, -1].tolist())
print(json.dumps(scores))
"""


def test_an_exported_guide_loads_in_a_fresh_interpreter_with_the_frameworks_scores(tmp_path):
    cli("+experiment=smoke", "progress=false", "eval.num_samples=2", f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert export_main([str(tmp_path / "run"), "--out", str(tmp_path / "guide")]) == 0
    folder = tmp_path / "guide"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qsharp_return_model"
    card = (folder / "README.md").read_text()
    assert "- made by: `python -m qsharp_exp +experiment=smoke" in card and "used with: qsharp at eta=0.1" in card
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()][:5]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    prompts = {p.id: p.prompt for p in build_task(compose_config("+experiment=smoke").task).problems("test")}
    prefixes = [prompts[s["problem_id"]] + s["response"][: len(s["response"]) // 2] for s in samples]
    fresh = subprocess.run([sys.executable, "-c", FRESH, str(folder), json.dumps(prefixes),
                            f"{metrics['dir_pi_ref']}/model"], capture_output=True, text=True, cwd=tmp_path,
                           timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    ours = ReturnModel.from_pretrained(f"{metrics['dir_return_model_round2']}/model")
    tokenizer = AutoTokenizer.from_pretrained(f"{metrics['dir_pi_ref']}/model")
    with torch.no_grad():
        expected = [ours.distribution.mean(ours(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)))[0, -1]
                    for ids in (tokenizer(p, add_special_tokens=False)["input_ids"] for p in prefixes)]
    *_, model_type, scores = fresh.stdout.strip().splitlines()
    assert model_type == "qsharp_conv_gpt2"
    got = json.loads(scores)
    assert len(got) == 5
    for mine, theirs in zip(expected, got, strict=True):
        assert torch.allclose(mine, torch.tensor(theirs), atol=1e-6)


API = """
import qsharp_exp
print(qsharp_exp.__version__)
for eta in ("0.5", "2"):  # twice: an internal import must not shadow a name of the API
    print(qsharp_exp.compose_config("+experiment=smoke", f"algo.eta={eta}").algo.eta)
print(sorted(name for name in qsharp_exp.__all__ if callable(getattr(qsharp_exp, name))))
"""


def test_the_api_works_in_a_fresh_interpreter_without_import_order_tricks(tmp_path):
    result = subprocess.run([sys.executable, "-c", API], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    version, first, second, names = result.stdout.strip().splitlines()[-4:]
    assert version[0].isdigit() and (first, second) == ("0.5", "2.0")
    assert names == str(["GuidanceLogitsProcessor", "GuidanceSettings", "SamplingSpec", "compose_config", "load_guide",
                         "load_pi_ref", "run"])


def test_the_command_line_block_of_docs_api_runs_as_written(tmp_path):
    import os
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    block = re.search(r"## From the command line\s+```bash\n(.*?)```", doc, re.S).group(1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2 and all(r["prompt"] == "1,5|1,2|2,11|5,9/1,11=" and r["kl"] >= 0 for r in rows)


def test_export_guide_pushes_the_folder_with_its_card_to_the_hub(tmp_path, monkeypatch, capsys):
    """Offline: the hub client is replaced by one that records what would be uploaded."""
    import huggingface_hub

    cli("+experiment=smoke", "progress=false", "eval.num_samples=2", f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    calls = []

    class RecordingHub:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    assert export_main([str(tmp_path / "run"), "--out", str(tmp_path / "guide"), "--push-to-hub", "me/guide",
                        "--license", "llama3.2"]) == 0
    assert calls[0] == ("create", "me/guide", False, True)
    assert calls[1][:2] == ("upload", "me/guide")
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "trunk"} <= set(calls[1][2])
    card = (tmp_path / "guide" / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers" in front and "license: llama3.2" in front and "tags: [" in front
    assert "- made by: `python -m qsharp_exp +experiment=smoke" in card and "used with: qsharp at eta=0.1" in card
    assert "pushed to https://huggingface.co/me/guide" in capsys.readouterr().out


def test_the_model_card_names_the_hub_model_the_guide_was_fine_tuned_from(tmp_path):
    from qsharp_exp.cli.export_guide import model_card

    stage = tmp_path / "return_model_round2" / "abc"
    stage.mkdir(parents=True)
    (stage / "curve.jsonl").write_text('{"step": 10, "val_acc": 0.9, "val_loss": 0.2}\n')
    metrics = {"task": "math", "algo": "qsharp", "eta": 0.1, "top_k": 20, "pass@1": 0.5}
    guide_trunk = {"model.guide.init": "scratch", "model.guide.arch.pretrained": "meta-llama/Llama-3.2-1B-Instruct"}
    assert "base_model: meta-llama/Llama-3.2-1B-Instruct" in model_card(tmp_path, metrics, guide_trunk, stage)
    from_pi_ref = {"model.guide.init": "pi_ref", "model.pi_ref.pretrained": "Qwen/Qwen2.5-7B-Instruct"}
    assert "base_model: Qwen/Qwen2.5-7B-Instruct" in model_card(tmp_path, metrics, from_pi_ref, stage)
    assert "base_model" not in model_card(tmp_path, metrics, {"model.guide.init": "scratch"}, stage)
