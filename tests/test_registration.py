import importlib
import subprocess
import sys

from peft import mapping
from peft.utils import PeftType

import peft_reclora


def test_peft_type_member_behaves_like_a_builtin():
    member = PeftType.RECLORA
    assert PeftType("RECLORA") is member and PeftType["RECLORA"] is member
    assert member in list(PeftType)
    assert member == "RECLORA" and hash(member) == hash("RECLORA")


def test_registered_in_peft_tables():
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.RECLORA] is peft_reclora.RecLoraConfig
    assert mapping.PEFT_TYPE_TO_TUNER_MAPPING[PeftType.RECLORA] is peft_reclora.RecLoraModel
    assert mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.RECLORA] == "reclora_"
    # the string from adapter_config.json resolves too
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING["RECLORA"] is peft_reclora.RecLoraConfig


def test_reimport_and_reload_are_safe():
    before = len(list(PeftType))
    importlib.reload(peft_reclora)
    peft_reclora.register()
    import peft_reclora as again  # noqa: F401

    assert len(list(PeftType)) == before
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.RECLORA] is peft_reclora.RecLoraConfig
    config = peft_reclora.RecLoraConfig(crm_dim=4)
    assert config.peft_type is PeftType.RECLORA


def test_fresh_process_registers_on_import():
    code = (
        "import peft_reclora\n"
        "from peft import PeftConfig, get_peft_model\n"
        "from peft.utils import PeftType\n"
        "assert PeftConfig.from_peft_type(peft_type='RECLORA', crm_dim=3).crm_dim == 3\n"
        "print(PeftType.RECLORA.value)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("RECLORA")
