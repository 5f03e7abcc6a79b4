"""Check a saved adapter folder before PEFT loads it, so a missing file is reported as such.

PEFT reads ``adapter_config.json`` and then the weights; when a local folder has the config but no weights file, PEFT
takes the folder for a Hub repository id and fails with an unrelated error (``HFValidationError`` for an absolute
path). Code that loads RecLoRA adapters from folders it manages calls :func:`check_adapter_folder` first.
"""

from __future__ import annotations

import os

from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME


# What PEFT's save_pretrained writes, in the order PEFT's loader looks for the weights.
WEIGHTS_FILES = (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)


def check_adapter_folder(folder: str | os.PathLike) -> None:
    """Raise ``FileNotFoundError`` naming ``folder`` and the expected file when it is not a folder holding an adapter
    config and its weights file."""
    path = os.fspath(folder)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"The adapter folder {path!r} does not exist (or is not a folder)")
    if not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        raise FileNotFoundError(
            f"The adapter folder {path!r} has no {CONFIG_NAME}. Save the adapter with model.save_pretrained(folder)."
        )
    if not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHTS_FILES):
        raise FileNotFoundError(
            f"The adapter folder {path!r} has {CONFIG_NAME} but no weights file: expected "
            f"{WEIGHTS_FILES[0]} (or {WEIGHTS_FILES[1]}) next to it. Save the adapter with "
            "model.save_pretrained(folder), or copy the weights file into the folder."
        )
