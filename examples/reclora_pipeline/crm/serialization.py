"""Save and load a trained CRM: ``crm_model.safetensors`` (weights, no pickle) + ``crm_config.json``.

The config names the model, its hyper-parameters, the input schema (vocab_size, field names, item field, history
length) and the R_c layer, which is everything needed to rebuild it. Loading checks every weight's shape against the
rebuilt model and, when given, the features or R_c width the caller expects; a mismatch raises an error that names
the part (vocabulary, fields, history length, R_c width, or the layer whose weights do not fit).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import safe_open
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
    """The checked ``crm_config.json`` of a saved CRM: every error names the file and the field."""
    path = Path(directory) / CRM_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a saved CRM (expected {CRM_CONFIG_NAME})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path} is not valid JSON ({error.__class__.__name__}: {error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a CRM config (a JSON object), got {type(config).__name__}")
    if config.get("format") != CRM_FORMAT:
        raise ValueError(f"{path} is not a CRM config (format {config.get('format')!r}, expected {CRM_FORMAT!r})")
    check_crm_config(config, path)
    return config


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_crm_config(config: dict, path: Path) -> None:
    """The fields of a CRM config have the types a CRM is built from (``ValueError`` naming ``path`` and the field);
    sizes are checked against the weights' shapes by :func:`load_crm` before anything is allocated."""
    version = config.get("format_version", 0)
    if not _is_int(version):
        raise ValueError(f"{path}: format_version must be an integer, got {version!r}")
    if version > CRM_FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer version (format_version {version})")
    for key in ("model_name", "schema", "hyper_parameters", "rc_layer", "crm_dim"):
        if key not in config:
            raise ValueError(f"{path} lacks '{key}'")
    for key, kind, fits in (("model_name", "a string", lambda v: isinstance(v, str)),
                            ("schema", "an object", lambda v: isinstance(v, dict)),
                            ("hyper_parameters", "an object", lambda v: isinstance(v, dict)),
                            ("rc_layer", "an integer", _is_int),
                            ("crm_dim", "a positive integer", lambda v: _is_int(v) and v > 0)):
        if not fits(config[key]):
            raise ValueError(f"{path}: {key} must be {kind}, got {config[key]!r}")
    schema = config["schema"]
    for key in ("vocab_size", "item_field", "history_length"):
        if not (_is_int(schema.get(key)) and schema[key] >= (1 if key != "item_field" else 0)):
            raise ValueError(f"{path}: schema.{key} must be a {'positive ' if key != 'item_field' else ''}integer, "
                             f"got {schema.get(key)!r}")
    names = schema.get("field_names")
    if not (isinstance(names, list) and names and all(isinstance(name, str) for name in names)):
        raise ValueError(f"{path}: schema.field_names must be a list of field names, got {names!r}")
    for key, value in config["hyper_parameters"].items():
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
            raise ValueError(f"{path}: hyper_parameters.{key} must be finite, got {value!r}")
        if key.endswith(("_dim", "_dims", "_heads", "_layers")) and not all(_is_int(n) and n > 0 for n in numbers):
            raise ValueError(f"{path}: hyper_parameters.{key} must be positive integers, got {value!r}")


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
    weights_path = directory / CRM_WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} does not exist")
    # Built on the meta device first: the config's sizes are checked against the weights' shapes (the file's header)
    # before a single parameter is allocated, so a config that asks for terabytes is refused, not attempted.
    with torch.device("meta"):
        model = _build(config, schema, directory)
    if model.crm_dim != config["crm_dim"]:
        raise ValueError(
            f"crm_dim: {CRM_CONFIG_NAME} says {config['crm_dim']} but its hidden_dims/rc_layer give {model.crm_dim}"
        )
    expected = model.state_dict()
    with safe_open(str(weights_path), framework="pt") as handle:
        shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    _check_shapes(shapes, expected, weights_path, config, model)
    model = _build(config, schema, directory)
    state = load_file(str(weights_path))
    model.load_state_dict(state)
    model.to(device)
    model.eval()
    return model


def _build(config: dict, schema: CrmSchema, directory: Path) -> CrmModel:
    try:
        return build_crm(config["model_name"], schema=schema, rc_layer=config["rc_layer"],
                         **config["hyper_parameters"])
    except (TypeError, ValueError, KeyError, IndexError) as error:
        raise ValueError(f"{directory / CRM_CONFIG_NAME}: hyper_parameters do not fit {config['model_name']}: "
                         f"{error}") from None


def _check_shapes(state: dict, expected: dict, weights_path: Path, config: dict, model: CrmModel) -> None:
    """Every weight of ``model`` (built from the config) is in the file with the same shape, and nothing else is."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights_path} does not match a {config['model_name']} model built from its config: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in expected.items():  # module order, so the first mismatch reported is the first layer's
        if tuple(state[name]) != tuple(tensor.shape):
            raise ValueError(
                f"{weights_path}: {name} has shape {tuple(state[name])} but {_part(name, model)} built from "
                f"{CRM_CONFIG_NAME} needs {tuple(tensor.shape)}"
            )


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
