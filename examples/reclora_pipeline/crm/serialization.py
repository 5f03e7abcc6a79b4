"""Save and load a trained CRM: ``crm_model.safetensors`` (weights, no pickle) + ``crm_config.json``.

The config names the model, its hyper-parameters, the input schema (vocab_size, field names, item field, history
length) and the R_c layer, which is everything needed to rebuild it. Loading checks every weight's shape against the
rebuilt model and, when given, the features or R_c width the caller expects; a mismatch raises an error that names
the part (vocabulary, fields, history length, R_c width, or the layer whose weights do not fit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import load_file, save_file

from .base import CrmModel
from .inputs import CrmSchema, SchemaLike, as_schema
from .registry import build_crm

CRM_WEIGHTS_NAME = "crm_model.safetensors"
CRM_CONFIG_NAME = "crm_config.json"
CRM_FORMAT = "reclora-crm"
CRM_FORMAT_VERSION = 1


def save_crm(model: CrmModel, directory: Union[str, Path], *, metrics: Optional[dict] = None) -> Path:
    """Write the CRM's weights and config into ``directory`` (created if needed); ``metrics`` are stored alongside."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / CRM_WEIGHTS_NAME), metadata={"format": CRM_FORMAT})
    config = {"format": CRM_FORMAT, "format_version": CRM_FORMAT_VERSION, **model.config()}
    if metrics is not None:
        config["metrics"] = metrics
    (directory / CRM_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def read_crm_config(directory: Union[str, Path]) -> dict:
    path = Path(directory) / CRM_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a saved CRM (expected {CRM_CONFIG_NAME})")
    config = json.loads(path.read_text())
    if config.get("format") != CRM_FORMAT:
        raise ValueError(f"{path} is not a CRM config (format {config.get('format')!r}, expected {CRM_FORMAT!r})")
    if config.get("format_version", 0) > CRM_FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer version (format_version {config['format_version']})")
    for key in ("model_name", "schema", "hyper_parameters", "rc_layer", "crm_dim"):
        if key not in config:
            raise ValueError(f"{path} lacks '{key}'")
    return config


def load_crm(
    directory: Union[str, Path],
    *,
    expected_schema: Optional[SchemaLike] = None,
    expected_crm_dim: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
) -> CrmModel:
    """Rebuild a saved CRM and load its weights; returns it in eval mode.

    ``expected_schema`` (a ``CrmSchema`` or the ``CTRFeatures`` it will read) and ``expected_crm_dim`` (e.g. the
    RecLoRA adapter's ``crm_dim``) are checked against the checkpoint before anything is built.
    """
    directory = Path(directory)
    config = read_crm_config(directory)
    schema = CrmSchema.from_dict(config["schema"])
    if expected_schema is not None:
        differences = schema.differences(as_schema(expected_schema))
        if differences:
            raise ValueError(
                f"the CRM in {directory} does not fit these features (checkpoint vs expected): "
                + "; ".join(differences)
            )
    if expected_crm_dim is not None and config["crm_dim"] != expected_crm_dim:
        raise ValueError(
            f"crm_dim: the CRM in {directory} gives R_c of width {config['crm_dim']} (layer {config['rc_layer']}), "
            f"but {expected_crm_dim} is expected"
        )
    try:
        model = build_crm(
            config["model_name"], schema=schema, rc_layer=config["rc_layer"], **config["hyper_parameters"]
        )
    except TypeError as error:
        raise ValueError(f"{directory / CRM_CONFIG_NAME}: hyper_parameters do not fit {config['model_name']}: {error}")
    if model.crm_dim != config["crm_dim"]:
        raise ValueError(
            f"crm_dim: {CRM_CONFIG_NAME} says {config['crm_dim']} but its hidden_dims/rc_layer give {model.crm_dim}"
        )

    weights_path = directory / CRM_WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} does not exist")
    state = load_file(str(weights_path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights_path} does not match a {config['model_name']} model built from its config: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in expected.items():  # module order, so the first mismatch reported is the first layer's
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{weights_path}: {name} has shape {tuple(state[name].shape)} but {_part(name, model)} built from "
                f"{CRM_CONFIG_NAME} needs {tuple(tensor.shape)}"
            )
    model.load_state_dict(state)
    model.to(device)
    model.eval()
    return model


def _part(name: str, model: CrmModel) -> str:
    """Which part of the model a weight belongs to, in the words of the config."""
    if "embed" in name:
        return f"the embedding table (vocab_size={model.schema.vocab_size}, embed_dim={model.embed_dim})"
    if any(part in name for part in ("tower", "mlp", "dnn")):
        return f"the MLP (hidden_dims={list(model.hidden_dims)})"
    if "attention" in name:
        return "the target attention"
    if "positions" in name:
        return f"the position embeddings (history_length={model.schema.history_length})"
    return f"the {name.split('.')[0]} module"
