"""`pip install .` (not editable) gives a package that runs from any directory: conf/ stays at the top of the
repository and is installed beside the package (pyproject.toml's data-files)."""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
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
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(_source_copy(tmp_path))], check=True, cwd=tmp_path, timeout=600)
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


def _declared() -> dict[str, str]:
    """The runtime dependencies' names and ranges, from pyproject.toml."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name: str(Requirement(r).specifier) for r in project["dependencies"]}


def test_the_package_declares_ranges_and_constraints_pin_each_of_them_inside():
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    for name, spec in _declared().items():
        assert "==" not in spec and "<" in spec and ">=" in spec, (name, spec)
        assert SpecifierSet(spec).contains(pins[canonicalize_name(name)]), (name, spec, pins[canonicalize_name(name)])


# Versions older than constraints.txt's but inside the declared ranges, as another tool's environment may hold.
OLDER = ["numpy==2.1.3", "tqdm==4.66.5", "matplotlib==3.9.4", "hydra-core==1.3.2", "omegaconf==2.3.0"]


@pytest.mark.slow
def test_the_wheel_installs_beside_older_versions_in_range_and_resolves_the_rest_to_the_newest(tmp_path):
    """A fresh venv that already holds OLDER; `pip install` of the wheel without constraints keeps them, takes
    the newest release inside the declared range for every other dependency, and runs the smoke preset. torch is
    given as the tested 2.13.0 (any newer one here is a CUDA build of several GB)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    subprocess.run([*pip, "install", "-q", *OLDER], check=True, timeout=900)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(_source_copy(tmp_path))], check=True, cwd=tmp_path, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("qsharp_exp-*.whl")
    subprocess.run([*pip, "install", "-q", str(wheel), "torch==2.13.0"], check=True, timeout=1800)
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(subprocess.run(
        [*pip, "list", "--format=json"], capture_output=True, text=True, check=True).stdout)}
    for kept in OLDER:
        name, version = kept.split("==")
        assert installed[name] == version, kept
    kept_names = {k.split("==")[0] for k in OLDER}
    for name, spec in _declared().items():
        key = name.lower().replace("_", "-")
        if key in kept_names or key == "torch":
            continue
        listing = subprocess.run([*pip, "index", "versions", name], capture_output=True, text=True, timeout=300)
        first = listing.stdout.split("Available versions:")[1].splitlines()[0]  # (INSTALLED, LATEST lines follow)
        available = [Version(v.strip()) for v in first.split(",")]
        newest = max(v for v in available if SpecifierSet(spec).contains(v))
        assert Version(installed[key]) == newest, (name, installed[key], newest)
    run = subprocess.run([str(venv / "bin" / "qsharp-run"), "+experiment=smoke", "progress=false",
                          f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]


def _source_copy(tmp_path: Path) -> Path:
    """pip builds in the tree it is given: a copy, so that the checkout stays clean."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "outputs",
                                                                "multirun", "wandb"))
    return source
