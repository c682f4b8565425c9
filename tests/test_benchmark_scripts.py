"""The benchmark scripts' command lines answer --help and name bad arguments (they are run by hand,
so a broken import or option would otherwise go unnoticed until someone measures)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / "paired.py"), *args], capture_output=True, text=True,
                          timeout=120)


def test_paired_help_explains_the_measurement():
    done = _run("--help")
    assert done.returncode == 0
    assert "--baseline" in done.stdout and "median" in done.stdout


def test_paired_names_a_baseline_without_the_package(tmp_path):
    done = _run("--work-dir", str(tmp_path), "--baseline", str(tmp_path))
    assert done.returncode == 2
    assert "holds no itk_odereg package" in done.stderr


def test_paired_names_a_work_dir_without_pairs(tmp_path):
    (tmp_path / "base" / "itk_odereg").mkdir(parents=True)
    (tmp_path / "base" / "itk_odereg" / "__init__.py").write_text("")
    done = _run("--work-dir", str(tmp_path), "--baseline", str(tmp_path / "base"))
    assert done.returncode == 2
    assert "no prepared mono pairs" in done.stderr
