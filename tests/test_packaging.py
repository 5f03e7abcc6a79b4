"""Packaging: the sdist carries the whole test suite and every package, and setup.cfg lists every subpackage."""

import configparser
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


def _declared_packages() -> set:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return set(config["options"]["packages"].split())


def _package_dirs() -> set:
    found = set()
    for top, name in ((ROOT / "peft_reclora", "peft_reclora"),
                      (ROOT / "examples" / "reclora_pipeline", "reclora_pipeline")):
        for init in top.rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                found.add(".".join([name, *init.parent.relative_to(top).parts]))
    return found


def test_setup_cfg_lists_every_package():
    assert _package_dirs() == _declared_packages()


def test_sdist_carries_the_tests_and_their_support(tmp_path):
    pytest.importorskip("build")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=300)
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as handle:
        names = {name.split("/", 1)[1] for name in handle.getnames() if "/" in name}
    tests = {path.relative_to(ROOT).as_posix() for path in (ROOT / "tests").rglob("*.py")}
    assert tests <= names, sorted(tests - names)
    assert {"tests/conftest.py", "tests/support/synthetic_data.py", "LICENSE", "README.md", "CHANGELOG.md"} <= names
    sources = {path.relative_to(ROOT).as_posix() for top in ("peft_reclora", "examples/reclora_pipeline")
               for path in (ROOT / top).rglob("*.py") if "__pycache__" not in path.parts}
    assert sources <= names, sorted(sources - names)
