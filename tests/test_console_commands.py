"""Every program has a console command (pyproject's [project.scripts]) that prints its help."""

import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

COMMANDS = [ep.name for ep in distribution("qsharp_exp").entry_points if ep.group == "console_scripts"]


def test_each_program_has_a_console_command():
    assert set(COMMANDS) == {"qsharp-run", "qsharp-report", "qsharp-generate", "qsharp-export-guide", "qsharp-bench",
                             "qsharp-memory", "qsharp-lm-eval"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_console_command_prints_its_help(command, tmp_path):
    executable = Path(sys.executable).parent / command
    assert executable.exists(), f"{command} is not installed: reinstall the package (make install)"
    result = subprocess.run([str(executable), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # qsharp-lm-eval is lm-evaluation-harness's own command line (its help names it lm-eval).
    name = "lm-eval" if command == "qsharp-lm-eval" else command
    assert name in result.stdout.splitlines()[0], result.stdout[:300]
