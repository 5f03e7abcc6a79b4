"""examples/quickstart.py, the shortest tour of the tuner on the embedded SmolLM2-135M, keeps working."""

import importlib.util
import json
from pathlib import Path


QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_quickstart_trains_saves_and_reloads_identically(tmp_path, capsys, smollm2_dir):
    spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    quickstart.main(["--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "OK: the reloaded adapter scores identically" in printed
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "RECLORA" and config["num_meta_loras"] == 16
