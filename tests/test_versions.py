"""Supported versions: an unsupported torch, transformers or PEFT is refused at import with one clear error, and the
ranges the guard enforces are the ones setup.cfg declares."""

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from peft_reclora.versions import SUPPORTED


ROOT = Path(__file__).resolve().parent.parent

# Runs `import peft_reclora` with importlib.metadata reporting the given versions, and prints what happened as JSON.
FAKE_IMPORT = """
import json, sys
from importlib import metadata
fake = json.loads(sys.argv[1])
real_version = metadata.version
metadata.version = lambda name: fake[name] if name in fake else real_version(name)
try:
    import peft_reclora
except ImportError as error:
    outcome = {"error": type(error).__name__, "message": str(error)}
else:
    outcome = {"error": None, "message": ""}
outcome["peft_imported"] = "peft" in sys.modules
outcome["transformers_imported"] = "transformers" in sys.modules
print(json.dumps(outcome))
"""


def _import_with(versions: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", FAKE_IMPORT, json.dumps(versions)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("distribution, version", [("peft", "0.20.0"), ("peft", "0.22.0"), ("transformers", "4.57.1"),
                                                   ("transformers", "5.1.0"), ("torch", "2.5.1")])
def test_unsupported_version_is_refused_before_peft_is_imported(distribution, version):
    outcome = _import_with({distribution: version})
    assert outcome["error"] == "ImportError"
    assert f"{distribution} {version} is installed" in outcome["message"]
    assert f"{distribution}{SUPPORTED[distribution]}" in outcome["message"]
    assert not outcome["peft_imported"] and not outcome["transformers_imported"]


def test_every_unsupported_package_is_named_in_one_error():
    outcome = _import_with({"peft": "0.18.1", "torch": "2.4.0+cu118"})
    assert "peft 0.18.1 is installed" in outcome["message"] and "torch 2.4.0+cu118 is installed" in outcome["message"]


def test_supported_versions_import():
    outcome = _import_with({"peft": "0.21.9", "transformers": "5.99.0", "torch": "2.6.0+cu124"})
    assert outcome["error"] is None, outcome["message"]


def test_setup_cfg_declares_the_ranges_the_import_guard_enforces():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = {}
    for line in config["options"]["install_requires"].split("\n"):
        if line.strip():
            requirement = Requirement(line.strip())
            declared[requirement.name] = str(requirement.specifier)
    for distribution, specifier in SUPPORTED.items():
        assert distribution in declared, f"setup.cfg does not declare {distribution}"
        assert sorted(declared[distribution].split(",")) == sorted(specifier.split(",")), distribution
