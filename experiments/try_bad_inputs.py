"""Try bad inputs through the real CLI, as a new user would, and print what happened as a Markdown table
(docs/reliability.md holds its output).

    python experiments/try_bad_inputs.py [--out table.md]

Each case runs `python -m qsharp_exp` (or the report command) in a scratch directory and records the exit
code, whether a traceback was printed, and the last line of the error output. A few cases first fill a
cache with a small run and then damage it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SMOKE = ["+experiment=smoke", "progress=false"]
GSM8K_TINY = ["task=gsm8k", "model=math_tiny", "hardware=cpu", "task.num_pretrain=8", "task.num_train=8",
              "task.num_test=4", "pretrain.steps=5", "progress=false"]
ROW = {"problem": "What is 1 + 1?", "solution": "1 + 1 = 2.", "answer": "2"}


def run(args: list[str], cwd: Path, env: dict | None = None, module: str = "qsharp_exp") -> dict:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=900)
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and "[WARNING]" not in line and "HYDRA_FULL_ERROR" not in line]
    return {"rc": result.returncode, "traceback": "Traceback" in result.stderr, "stderr": result.stderr,
            "log": result.stdout,
            "message": _telling(lines)}


def _telling(lines: list[str]) -> str:
    """The line that says what went wrong: ours ('error: ...') or Hydra's ('Could not ...'), else the last."""
    for line in lines:
        if line.startswith(("error:", "config error:")) or "Could not" in line:
            return line + (" (then lists the available options)" if "Could not find" in line else "")
    return lines[-1] if lines else "(nothing on stderr)"


def data_dir(work: Path, train: bytes | None, test: bytes | None = None) -> Path:
    d = work / "data"
    d.mkdir(exist_ok=True)
    (d / "gsm8k_test.jsonl").write_bytes(test or json.dumps(ROW).encode() + b"\n")
    (d / "gsm8k_train.jsonl").unlink(missing_ok=True)
    if train is not None:
        (d / "gsm8k_train.jsonl").write_bytes(train)
    return d


def cached_run(work: Path) -> Path:
    """A small finished run whose cache the damage cases change."""
    cache = work / "cache"
    run([*SMOKE, f"cache_dir={cache}", f"hydra.run.dir={work / 'first'}"], work)
    return cache


def stage_file(cache: Path, stage: str, name: str) -> Path:
    return next((cache / stage).glob(f"*/{name}"))


def damage(cache: Path, stage: str, name: str, change: Callable[[Path], None]) -> None:
    change(stage_file(cache, stage, name))


def zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def cut_lines(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def cases(work: Path, second: bool = False) -> list[tuple[str, Callable[[], dict]]]:
    """The inputs tried; `second`: only those of the second round (docs/reliability.md's second table)."""
    def cli(*args: str, env: dict | None = None) -> Callable[[], dict]:
        return lambda: run([*args, f"cache_dir={work / 'c'}", f"hydra.run.dir={work / 'r'}"], work, env)

    def with_data(train: bytes | None, test: bytes | None = None) -> Callable[[], dict]:
        return lambda: run([*GSM8K_TINY, f"task.data_dir={data_dir(work, train, test)}", f"cache_dir={work / 'c'}",
                            f"hydra.run.dir={work / 'r'}"], work)

    def pretrained(broken: bool) -> Callable[[], dict]:
        def go() -> dict:
            from transformers import GPT2Config, GPT2LMHeadModel

            from qsharp_exp.tasks.star_graph import StarGraphConfig, StarGraphTask

            path = work / "lm"
            tokenizer = StarGraphTask(StarGraphConfig(num_nodes=12, num_pretrain=1, num_train=1, num_test=1)
                                      ).build_tokenizer()
            config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer),
                                eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
            GPT2LMHeadModel(config).save_pretrained(path)
            tokenizer.save_pretrained(path)
            if broken:
                truncate(path / "model.safetensors")
            return cli(*SMOKE, f"model.pi_ref.pretrained={path if broken else work / 'missing'}")()
        return go

    def damaged(stage: str, name: str, change: Callable[[Path], None]) -> Callable[[], dict]:
        def go() -> dict:
            shutil.rmtree(work / "cache", ignore_errors=True)
            cache = cached_run(work)
            damage(cache, stage, name, change)
            return run([*SMOKE, f"cache_dir={cache}", f"hydra.run.dir={work / 'again'}"], work)
        return go

    def damaged_resume_batch() -> dict:
        shutil.rmtree(work / "cache", ignore_errors=True)
        cache = cached_run(work)
        evaluation = next((cache / "evaluation").glob("*/stage.json")).parent
        shutil.rmtree(evaluation)  # as if killed during the evaluation, with a damaged batch kept
        resume = evaluation.with_name(f"{evaluation.name}.resume")
        resume.mkdir()
        (resume / "batch000000.json").write_text('[{"response": [1, 2], "kl":')
        result = run([*SMOKE, f"cache_dir={cache}", f"hydra.run.dir={work / 'again'}"], work)
        warned = [line for line in result["log"].splitlines() if "discarding" in line]
        result["message"] = "(the run completes) " + (warned[0].split(" - ", 1)[-1] if warned else "")
        return result

    def broken_report() -> dict:
        runs = work / "report"
        for name in ("a", "b"):
            (runs / name).mkdir(parents=True, exist_ok=True)
        (runs / "a" / "metrics.json").write_text('{"task": "star_graph", "algo": "cd"')
        shutil.copy(work / "first" / "metrics.json", runs / "b" / "metrics.json")
        result = run([str(runs)], work, module="qsharp_exp.cli.report")
        skipped = [line for line in result["stderr"].splitlines() if "skipping" in line]
        result["message"] = "(the report of the other run is written) " + (skipped[0] if skipped else "")
        return result

    def interrupted() -> dict:
        """Ctrl-C once pi_ref is being built."""
        log = work / "interrupt.log"
        with log.open("w") as out:
            job = subprocess.Popen([sys.executable, "-m", "qsharp_exp", *SMOKE, f"cache_dir={work / 'c'}",
                                    f"hydra.run.dir={work / 'r'}"], cwd=work, stdout=out, stderr=subprocess.PIPE,
                                   text=True)
            while "pi_ref: building" not in log.read_text() and job.poll() is None:
                time.sleep(0.05)
            job.send_signal(signal.SIGINT)
            _, stderr = job.communicate(timeout=300)
        lines = [line for line in stderr.splitlines() if line.strip()]
        return {"rc": job.returncode, "traceback": "Traceback" in stderr, "message": lines[-1] if lines else ""}

    def other_labels() -> dict:
        """A pi_ref saved with a 12-label star-graph tokenizer, run on 16 labels."""
        from transformers import GPT2Config, GPT2LMHeadModel

        from qsharp_exp.tasks.star_graph import StarGraphConfig, StarGraphTask

        path = work / "lm12"
        tokenizer = StarGraphTask(StarGraphConfig(num_nodes=12, num_pretrain=1, num_train=1, num_test=1)
                                  ).build_tokenizer()
        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer))).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return cli(*SMOKE, "task.num_nodes=16", "model.pi_ref_init=scratch", "model.guide.init=scratch",
                   f"model.pi_ref.pretrained={path}")()

    def encoder() -> dict:
        """A BERT encoder with the task's own tokenizer beside it."""
        from transformers import BertConfig, BertModel

        from qsharp_exp.tasks.star_graph import StarGraphConfig, StarGraphTask

        path = work / "bert"
        tokenizer = StarGraphTask(StarGraphConfig(num_nodes=12, num_pretrain=1, num_train=1, num_test=1)
                                  ).build_tokenizer()
        BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             vocab_size=len(tokenizer))).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return cli(*SMOKE, "model.pi_ref_init=scratch", "model.guide.init=scratch", f"model.pi_ref.pretrained={path}")()

    def seeds_in_one_report() -> dict:
        """Two Q# runs that differ in the seed only, reported together."""
        result = run(["-m", *SMOKE, "eval.num_samples=2", "seed=0,1", f"cache_dir={work / 'c'}",
                      f"hydra.sweep.dir={work / 'sweep'}"], work)
        if result["rc"] != 0:
            return result
        table = run([str(work / "sweep")], work, module="qsharp_exp.cli.report")
        rows = [" ".join(line.split("|")[1:4]).split() for line in table["log"].splitlines() if line.startswith("| Q#")]
        table["message"] = "(the report is written) its Q# rows: " + "; ".join(" ".join(r) for r in rows)
        return table

    def new_eval_batch_size() -> dict:
        """The same run with eval.batch_size 64, then 7, on one cache: which stages are built again."""
        first = cli(*SMOKE, "eval.num_samples=2", "eval.batch_size=64")()
        if first["rc"] != 0:
            return first
        again = cli(*SMOKE, "eval.num_samples=2", "eval.batch_size=7")()
        built = [line.split(": building")[0].split()[-1] for line in again["log"].splitlines() if ": building" in line]
        again["message"] = "(the run completes) built again: " + ", ".join(built)
        return again

    def sweep(*args: str) -> Callable[[], dict]:
        """A sweep: its error line, then the jobs it names."""
        def go() -> dict:
            result = run(["-m", *args, f"cache_dir={work / 'c'}", f"hydra.sweep.dir={work / 'sweep'}"], work)
            jobs = [line.strip() for line in result["stderr"].splitlines() if line.startswith("  job ")]
            result["message"] = " / ".join([result["message"], *jobs])
            return result
        return go

    (work / "a_file").write_text("")
    long_problem = json.dumps({**ROW, "problem": "What is " + "1 + " * 5_000 + "1?"}).encode() + b"\n"
    second_round = [
        ("`algo.eta=1e-300`", cli("algo.eta=1e-300")),
        ("`model.guide.distribution=histogram model.guide.v_max=inf`",
         cli("model.guide.distribution=histogram", "model.guide.v_max=inf")),
        ("`model.pi_ref_init=scratch model.pi_ref.n_head=0`",
         cli("model.pi_ref_init=scratch", "model.pi_ref.n_head=0")),
        ("`model.base.dropout=2`", cli("model.base.dropout=2")),
        ("`model.base.initializer_range=-1`", cli("model.base.initializer_range=-1")),
        ("`hardware=zero3 hardware.device=cpu` without torchrun", cli(*SMOKE, "hardware=zero3", "hardware.device=cpu")),
        ("`hydra.run.dir` below a file", lambda: run([*SMOKE, f"hydra.run.dir={work / 'a_file' / 'run'}"], work)),
        ("Ctrl-C while pi_ref is built", interrupted),
        ("gsm8k train file: an answer that is not a number (`seven`)",
         with_data(json.dumps(ROW).encode() + b"\n" + json.dumps({**ROW, "answer": "seven"}).encode() + b"\n")),
        ("`model.pi_ref.pretrained=` a BERT encoder", encoder),
        ("`task.num_nodes=16` with a pi_ref saved for 12 labels", other_labels),
        ("`guide_train.val_fraction=0`", cli(*SMOKE, "guide_train.val_fraction=0")),
        ("report: two Q# runs that differ in `seed` only", seeds_in_one_report),
        ("`eval.batch_size=7` after the same run with 64, one cache", new_eval_batch_size),
        ("gsm8k test file: a 20,000-character problem", with_data((json.dumps(ROW).encode() + b"\n") * 8,
                                                                   json.dumps(ROW).encode() + b"\n" + long_problem)),
        ("`collect.samples_per_problem=1`", cli(*SMOKE, "collect.samples_per_problem=1")),
        ("sweep `-m algo.eta=0,0.1,1 algo=cd,qsharp`", sweep(*SMOKE, "algo.eta=0,0.1,1", "algo=cd,qsharp")),
    ]
    return second_round if second else [
        ("`algo.eta=-1`", cli("algo.eta=-1")),
        ("`algo.eta=inf`", cli("algo.eta=inf")),
        ("`algo.top_k=0`", cli("algo.top_k=0")),
        ("`algo.top_k=1000` (19-token vocabulary)", cli(*SMOKE, "algo.top_k=1000")),
        ("`algo=foo`", cli("algo=foo")),
        ("`algo.name=foo`", cli("algo.name=foo")),
        ("`algo.guide_round=3`", cli("algo.guide_round=3")),
        ("`task.degree=1`", cli("task.degree=1")),
        ("`task.path_length=1`", cli("task.path_length=1")),
        ("`task.num_nodes=4`", cli("task.num_nodes=4")),
        ("`task.num_nodes=5` (too few distinct graphs)", cli("task.num_nodes=5")),
        ("`task.num_train=null`", cli("task.num_train=null")),
        ("`task.degree=two`", cli("task.degree=two")),
        ("`task.name=foo`", cli("task.name=foo")),
        ("`+task.data_dir=D` on star-graph", cli("+task.data_dir=D")),
        ("`+algo.temprature=0.5` (misspelt key)", cli("+algo.temprature=0.5")),
        ("`model.guide.head=w`", cli("model.guide.head=w")),
        ("`model.guide.distribution=l2`", cli("model.guide.distribution=l2")),
        ("`model.pi_ref.n_head=3`", cli("model.pi_ref.n_head=3")),
        ("`model.pi_ref.n_kv_head=3` (gpt2)", cli("model.pi_ref.n_kv_head=3")),
        ("`eval.top_p=0`", cli("eval.top_p=0")),
        ("`eval.temperature=0`", cli("eval.temperature=0")),
        ("`eval.max_new_tokens=0`", cli("eval.max_new_tokens=0")),
        ("`eval.max_new_tokens=300` (context 256)", cli(*SMOKE, "eval.max_new_tokens=300")),
        ("`collect.explore_prob=2`", cli("collect.explore_prob=2")),
        ("`pretrain.lr=nan`", cli("pretrain.lr=nan")),
        ("`guide_train.lr=nan`", cli("guide_train.lr=nan")),
        ("`pretrain.weight_decay=-1`", cli("pretrain.weight_decay=-1")),
        ("`guide_train.val_fraction=2`", cli("guide_train.val_fraction=2")),
        ("`guide_train.epochs=0`", cli("guide_train.epochs=0")),
        ("`hardware.num_threads=-1`", cli("hardware.num_threads=-1")),
        ("`hardware.zero_stage=1`", cli("hardware.zero_stage=1")),
        ("`hardware.offload=true` without ZeRO-3", cli("hardware.offload=true")),
        ("`hardware=gpu` without CUDA", cli(*SMOKE, "hardware=gpu")),
        ("`logger.mode=sometimes`", cli("logger.mode=sometimes")),
        ("`cache_dir=` (empty)", lambda: run([*SMOKE, "cache_dir=", f"hydra.run.dir={work / 'r'}"], work)),
        ("`cache_dir` is a file", lambda: run([*SMOKE, f"cache_dir={work / 'a_file'}", f"hydra.run.dir={work / 'r'}"],
                                             work)),
        ("gsm8k train file: malformed JSON line", with_data(json.dumps(ROW).encode() + b"\n{not json\n")),
        ("gsm8k train file: a row without `answer`", with_data(b'{"problem": "1+1?", "solution": "2"}\n')),
        ("gsm8k train file: empty", with_data(b"")),
        ("gsm8k train file: a non-UTF-8 byte", with_data(b'{"problem": "caf\xe9", "solution": "2", "answer": "2"}\n')),
        ("gsm8k train file: missing", with_data(None)),
        ("`task=gsm8k` with the hub offline", cli("task=gsm8k", "hardware=cpu", env={"HF_HUB_OFFLINE": "1",
                                                                                      "HF_DATASETS_OFFLINE": "1"})),
        ("`model.pi_ref.pretrained=` a missing directory", pretrained(broken=False)),
        ("`model.pi_ref.pretrained=` truncated safetensors", pretrained(broken=True)),
        ("cache: pi_ref weights zeroed in place (same size)", damaged("pi_ref", "model/model.safetensors", zero)),
        ("cache: `rollouts.jsonl` cut at a line boundary", damaged("rollouts_round1", "rollouts.jsonl", cut_lines)),
        ("cache: return model safetensors truncated", damaged("return_model_round1", "model/model.safetensors",
                                                             truncate)),
        ("cache: evaluation `metrics.json` truncated", damaged("evaluation", "metrics.json", truncate)),
        ("cache: a damaged resume batch", damaged_resume_batch),
        ("report: one `metrics.json` broken", broken_report),
    ]


PAYLOAD = "import os; os.mkdir({marker!r})"  # what a planted pickle would run: it leaves a directory behind


class _Planted:
    """Unpickling this runs PAYLOAD (exec), as a planted checkpoint's code would."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (PAYLOAD.format(marker=self.marker),))


def _logged(result: dict, needle: str, prefix: str) -> dict:
    """The run's log line that contains `needle`, as its message."""
    lines = [line.split(" - ", 1)[-1] for line in result["log"].splitlines() + result["stderr"].splitlines()
             if needle in line]
    if result["rc"] == 0:
        result["message"] = f"{prefix} " + (lines[0] if lines else f"(no line with {needle!r})")
    result["message"] = re.sub(r"/tmp/tmp[^/]+", "<scratch>", result["message"])
    return result


def third_round(work: Path) -> list[tuple[str, Callable[[], dict]]]:
    """The inputs of the third round (docs/reliability.md's third table): a shared cache as an attacker would
    leave it, the generate and report commands, paths from another directory."""
    def fresh_cache() -> Path:
        shutil.rmtree(work / "cache", ignore_errors=True)
        return cached_run(work)

    def again(cache: Path, *extra: str, cwd: Path | None = None) -> dict:
        return run([*SMOKE, *extra, f"cache_dir={cache}", f"hydra.run.dir={work / 'again'}"], cwd or work)

    def unfinished(cache: Path, stage: str) -> Path:
        """Remove a finished stage (and what was built on it), as if its job was killed; returns its resume dir."""
        done = next((cache / stage).glob("*/stage.json")).parent
        for later in ("return_model_round1", "rollouts_round2", "return_model_round2", "evaluation"):
            if later == stage or stage == "return_model_round1":
                shutil.rmtree(cache / later, ignore_errors=True)
        resume = done.with_name(f"{done.name}.resume")
        resume.mkdir(parents=True, exist_ok=True)
        return resume

    def planted_pickle() -> dict:
        import pickle

        cache = fresh_cache()
        resume = unfinished(cache, "return_model_round1")
        (resume / "global_step_5").mkdir(parents=True)
        marker = work / "payload_ran"
        (resume / "global_step_5" / "state.pt").write_bytes(pickle.dumps({"model": _Planted(str(marker))}))
        (resume / "latest").write_text("global_step_5")
        result = _logged(again(cache, "guide_train.checkpoint_every=5"), "ignoring the checkpoint", "(completes)")
        result["message"] += f" [payload ran: {'yes' if marker.exists() else 'no'}]"
        return result

    def planted_batch() -> dict:
        cache = fresh_cache()
        genuine = json.loads((work / "first" / "metrics.json").read_text())
        resume = unfinished(cache, "evaluation")
        rows = [{"response": [2], "kl": 0.0}] * 64
        (resume / "batch000000.json").write_text(json.dumps({"seal": "0" * 64, "samples": rows}))
        result = _logged(again(cache), "discarding the resume batch", "(completes)")
        metrics = json.loads((work / "again" / "metrics.json").read_text()) if result["rc"] == 0 else {}
        same = metrics.get("accuracy") == genuine["accuracy"] and metrics.get("kl_mean") == genuine["kl_mean"]
        result["message"] += f" [accuracy and KL as the genuine run's: {'yes' if same else 'no'}]"
        return result

    def symlinked(suffix: str) -> Callable[[], dict]:
        def go() -> dict:
            cache = fresh_cache()
            done = next((cache / "evaluation").glob("*/stage.json")).parent
            shutil.rmtree(done)
            target = work / "precious"
            target.mkdir(exist_ok=True)
            (target / "file").write_text("keep me")
            link = done.with_name(done.name + suffix)
            shutil.rmtree(link, ignore_errors=True) if link.is_dir() and not link.is_symlink() else link.unlink(
                missing_ok=True)
            link.symlink_to(target / "file" if suffix == ".lock" else target)
            result = again(cache)
            kept = (target / "file").read_text() == "keep me" and len(list(target.iterdir())) == 1
            result["message"] = f"[target untouched: {'yes' if kept else 'no'}] {result['message']}"
            return result
        return go

    def generate(*args: str, guide: str | None = None) -> Callable[[], dict]:
        def go() -> dict:
            if not (work / "first" / "metrics.json").exists():
                fresh_cache()
            metrics = json.loads((work / "first" / "metrics.json").read_text())
            folders = {"pi_ref": f"{metrics['dir_pi_ref']}/model",
                       "guide": f"{metrics['dir_return_model_round2']}/model"}
            (work / "empty").mkdir(exist_ok=True)
            named = {"stage": metrics["dir_return_model_round2"], "empty": str(work / "empty"),
                     "file": str(work / "a_file"), "missing": str(work / "missing")}
            result = run(["--pi-ref", folders["pi_ref"], "--guide", named.get(guide, folders["guide"]),
                          "--max-new-tokens", "8", *args], work, module="qsharp_exp.cli.generate")
            result["message"] = result["message"].replace(str(work), "<scratch>")
            return result
        return go

    def report_with_nan() -> dict:
        fresh_cache()
        runs = work / "report"
        shutil.rmtree(runs, ignore_errors=True)
        (runs / "a").mkdir(parents=True)
        metrics = json.loads((work / "first" / "metrics.json").read_text())
        (runs / "a" / "metrics.json").write_text(json.dumps({**metrics, "kl_mean": float("nan")}))
        result = run([str(runs)], work, module="qsharp_exp.cli.report")
        warned = [line for line in result["stderr"].splitlines() if "non-finite" in line]
        result["message"] = "(the report is written) " + (warned[0] if warned else "(no warning)")
        return result

    def elsewhere(*what: str) -> Callable[[], dict]:
        def go() -> dict:
            fresh_cache()
            other = work / "elsewhere"
            other.mkdir(exist_ok=True)
            shutil.rmtree(other / "guide", ignore_errors=True)
            if "deleted" in what:
                shutil.rmtree(work / "cache")
            result = run([str(work / "first"), "--out", "guide"], other, module="qsharp_exp.cli.export_guide")
            if result["rc"] == 0:
                result["message"] = "(exported) " + result["log"].strip().splitlines()[-1]
            return result
        return go

    def chdir_twice() -> dict:
        launch = work / "launch"
        shutil.rmtree(launch, ignore_errors=True)
        launch.mkdir()
        first = run([*SMOKE, "hydra.job.chdir=true", "hydra.run.dir=runs/a"], launch)
        if first["rc"] != 0:
            return first
        second = run([*SMOKE, "hydra.job.chdir=true", "hydra.run.dir=runs/b"], launch)
        built = [line.split(": building")[0].split()[-1] for line in second["log"].splitlines() if ": building" in line]
        second["message"] = "(the run completes) built again: " + (", ".join(built) or "nothing")
        return second

    def other_threads() -> dict:
        cache = fresh_cache()
        return _logged(again(cache, "hardware.num_threads=1"), "built again although", "(completes)")

    def interrupted_early() -> dict:
        job = subprocess.Popen([sys.executable, "-m", "qsharp_exp", *SMOKE], cwd=work, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        job.send_signal(signal.SIGINT)
        _, stderr = job.communicate(timeout=300)
        lines = [line for line in stderr.splitlines() if line.strip()]
        return {"rc": job.returncode, "traceback": "Traceback" in stderr, "message": lines[-1] if lines else ""}

    long_prompt = "1,5|1,2|2,11|5,9/1,11=" * 40
    return [
        ("cache: a planted pickle as a return-model checkpoint", planted_pickle),
        ("cache: a planted evaluation resume batch (every answer right, KL 0)", planted_batch),
        ("cache: `<key>.lock` a symlink to another file", symlinked(".lock")),
        ("cache: `<key>.resume` a symlink to another directory", symlinked(".resume")),
        ("cache filled with 2 threads, rerun with `hardware.num_threads=1`", other_threads),
        ("`seed=18446744073709551615`", lambda: run([*SMOKE, "seed=18446744073709551615"], work)),
        ("`seed=18446744073709551616` (2**64)", lambda: run([*SMOKE, "seed=18446744073709551616"], work)),
        ("two runs with `hydra.job.chdir=true`, default cache", chdir_twice),
        ("Ctrl-C 0.5 s after the start (imports)", interrupted_early),
        ("generate: `--samples 0`", generate("--prompt", "1,5|1,2/1,2=", "--samples", "0")),
        ("generate: `--top-k 0`", generate("--prompt", "1,5|1,2/1,2=", "--top-k", "0")),
        ("generate: a label outside pi_ref's vocabulary", generate("--prompt", "1,5|1,2|2,77/1,2=", "--top-k", "5")),
        ("generate: a prompt longer than the context", generate("--prompt", long_prompt, "--top-k", "5")),
        ("generate: `--top-k 20` (the default) with a 19-token vocabulary", generate("--prompt", "1,5|1,2/1,2=")),
        ("generate: `--device cuda` without CUDA", generate("--prompt", "1,5|1,2/1,2=", "--device", "cuda")),
        ("generate: `--guide` a missing folder", generate("--prompt", "1,5|1,2/1,2=", guide="missing")),
        ("generate: `--guide` an empty folder", generate("--prompt", "1,5|1,2/1,2=", guide="empty")),
        ("generate: `--guide` a file", generate("--prompt", "1,5|1,2/1,2=", guide="file")),
        ("generate: `--guide` the stage directory, not its `model/`",
         generate("--prompt", "1,5|1,2/1,2=", guide="stage")),
        ("report: `--out` a file", lambda: run([str(work / "first"), "--out", str(work / "a_file")], work,
                                               module="qsharp_exp.cli.report")),
        ("report: a run whose metrics.json holds NaN", report_with_nan),
        ("export_guide from another directory", elsewhere()),
        ("export_guide after the run's cache was deleted", elsewhere("deleted")),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--second-round", action="store_true", help="only the inputs of the second round")
    parser.add_argument("--third-round", action="store_true", help="only the inputs of the third round")
    args = parser.parse_args(argv)
    rows = ["| input | exit code | traceback | what the user reads (last line) |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "a_file").write_text("")
        for name, case in third_round(work) if args.third_round else cases(work, args.second_round):
            result = case()
            message = str(result["message"]).replace(str(work), "<scratch>").replace("|", "\\|")
            if len(message) > 300:
                message = message[:297] + "..."
            rows.append(f"| {name} | {result['rc']} | {'yes' if result['traceback'] else 'no'} | {message} |")
            print(rows[-1], flush=True)
            for scratch in ("c", "r", "again", "sweep"):
                shutil.rmtree(work / scratch, ignore_errors=True)
    if args.out:
        args.out.write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
