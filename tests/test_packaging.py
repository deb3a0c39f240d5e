"""`pip install .` (not editable) gives a package that runs from any directory: conf/ stays at the top of the
repository and is installed beside the package (pyproject.toml's data-files)."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_folder_is_installed_with_the_package():
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    folders = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "conf").rglob("*.yaml")}
    assert {target.removeprefix("share/qsharp_exp/") for target in data_files} == folders


def test_a_non_editable_install_runs_the_smoke_pipeline_from_another_directory(tmp_path):
    """A fresh venv installs the package's wheel alone (`--no-deps`; the wheel built by this venv's setuptools);
    its dependencies come from this venv's site-packages, added after its own, so that what is tested is the
    installed package, not the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    Path(fresh_site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp_path / "source"  # pip builds in the tree it is given: a copy, so the checkout stays clean
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "outputs",
                                                                "multirun", "wandb"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, cwd=tmp_path, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("qsharp_exp-*.whl")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, cwd=tmp_path,
                   timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import qsharp_exp.compose as c; print(c.__file__, c.CONF_DIR)"],
                           capture_output=True, text=True, cwd=elsewhere, check=True).stdout.split()
    assert where[0].startswith(str(venv)) and where[1].startswith(str(venv)), where  # not the checkout's
    run = subprocess.run([python, "-m", "qsharp_exp", "+experiment=smoke", "progress=false", "eval.num_samples=2",
                          f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, cwd=elsewhere, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").exists()


def test_the_changelogs_newest_version_heading_is_the_packages_version():
    import re

    import qsharp_exp

    changelog = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## (\S+)", changelog, re.M)
    assert versions and versions[0] == qsharp_exp.__version__, versions[:3]
