"""How ``crm_embeds`` travels from a model call to the RecLoRA layers.

Transformers models do not pass unknown keyword arguments down to their linear layers, so the CRM embedding is taken
out of the call by a forward pre-hook on the wrapped model and kept in a ``CrmContext`` that every RecLoRA layer of
that model holds a reference to. The context is a plain object, not an ``nn.Module``: it holds no parameters and must
not appear in state dicts.

Design points, each one forced by a way the simpler alternatives fail:
- The CRM tensor is overwritten at the start of every model call (``None`` when absent), so a missing ``crm_embeds``
  raises instead of silently reusing the previous batch's.
- It is not cleared at the end of the call: gradient checkpointing re-runs the layers during backward, after the call
  returned, and they must see the same CRM again. A second training forward before that backward would overwrite it,
  so with checkpointing active that pattern raises a clear error instead of producing wrong gradients.
- Each layer computes its gate from the raw CRM tensor (a (batch, crm_dim) MLP: negligible), which keeps the gate's
  parameters inside the checkpointed region; alpha computed once outside would break reentrant checkpointing. Under
  ``torch.no_grad()`` alpha is cached per call, so inference evaluates each gate once.
- Gate dropout masks are drawn once per call, before any layer runs, so every layer sees the same alpha (one gate per
  user, as in the paper) and checkpoint recomputation replays the same random numbers.
- ``generate`` sets a "sticky" CRM used by every decoding step, because transformers calls the model once per step
  without the extra keyword argument.
"""

from __future__ import annotations

from typing import Optional

import torch

CRM_KWARG = "crm_embeds"


def _inside_backward() -> bool:
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


class CrmContext:
    def __init__(self):
        self.crm_embeds: Optional[torch.Tensor] = None
        self.sticky_crm_embeds: Optional[torch.Tensor] = None
        # adapter name -> (gate hidden width, gate dropout probability); registered by the tuner.
        self.gate_dropout: dict[str, tuple[int, float]] = {}
        self.dropout_masks: dict[str, torch.Tensor] = {}
        self._alpha_cache: dict[tuple[str, int], torch.Tensor] = {}
        self._awaiting_backward = False

    # ----------------------------------------------------------------------------------------------------------------
    # call boundaries (driven by hooks on the wrapped model)

    def begin_call(self, crm_embeds: Optional[torch.Tensor], training: bool, checkpointing: bool) -> None:
        """Start a model call: store the CRM, draw gate dropout masks, check the checkpointing contract."""
        if checkpointing and training and torch.is_grad_enabled() and self._awaiting_backward:
            raise RuntimeError(
                "RecLoRA with gradient checkpointing needs backward() on a training forward's output before the next "
                "training forward: the checkpointed layers are re-run during backward and would otherwise see the "
                "later call's `crm_embeds`. Call backward() first, or run the extra forward under torch.no_grad() or "
                "in eval mode."
            )
        if crm_embeds is not None:
            crm_embeds = validate_crm_embeds(crm_embeds)
        self.crm_embeds = crm_embeds
        self._alpha_cache.clear()
        self.dropout_masks = {}
        if training and crm_embeds is not None:
            for adapter_name, (hidden_dim, p) in self.gate_dropout.items():
                if p > 0:
                    keep = torch.full((crm_embeds.shape[0], hidden_dim), 1.0 - p, device=crm_embeds.device)
                    self.dropout_masks[adapter_name] = torch.bernoulli(keep) / (1.0 - p)

    def end_call(self, training: bool, checkpointing: bool) -> None:
        if checkpointing and training and torch.is_grad_enabled():
            self._awaiting_backward = True

    def mark_layer_run(self) -> None:
        """Called by layers; a layer running inside backward is a checkpoint recomputation of the pending call."""
        if self._awaiting_backward and _inside_backward():
            self._awaiting_backward = False

    # ----------------------------------------------------------------------------------------------------------------
    # what the layers read

    def require_crm_embeds(self, adapter_name: str) -> torch.Tensor:
        if self.crm_embeds is None:
            raise ValueError(
                f"The RecLoRA adapter '{adapter_name}' needs `crm_embeds`: pass crm_embeds=<tensor of shape "
                "(batch, crm_dim)> to forward() or generate(), or run the base model inside `with "
                "model.disable_adapter():`."
            )
        return self.crm_embeds

    def gate(self, adapter_name: str, gate_module, batch_size: int, device: torch.device) -> torch.Tensor:
        """Mixing weights (batch_size, num_meta_loras) of ``gate_module`` for the current call, on ``device``.

        Beam search and ``num_return_sequences`` expand the batch by interleaving rows, so a CRM batch that divides
        the layer's batch is expanded the same way.
        """
        crm_embeds = self.require_crm_embeds(adapter_name)
        if crm_embeds.shape[1] != gate_module.crm_dim:
            raise ValueError(
                f"`crm_embeds` has width {crm_embeds.shape[1]} but the RecLoRA adapter '{adapter_name}' expects "
                f"(batch, crm_dim={gate_module.crm_dim})"
            )
        crm_batch = crm_embeds.shape[0]
        if batch_size != crm_batch and (crm_batch == 0 or batch_size % crm_batch != 0):
            raise ValueError(
                f"`crm_embeds` has batch size {crm_batch} but the model input has batch size {batch_size}; pass one "
                "CRM row per sample"
            )
        cache_key = (adapter_name, id(gate_module))
        use_cache = not torch.is_grad_enabled()
        alpha = self._alpha_cache.get(cache_key) if use_cache else None
        if alpha is None:
            mask = self.dropout_masks.get(adapter_name) if gate_module.training else None
            alpha = gate_module(crm_embeds, dropout_mask=mask)
            if use_cache:
                self._alpha_cache[cache_key] = alpha
        if batch_size != crm_batch:
            alpha = alpha.repeat_interleave(batch_size // crm_batch, dim=0)
        return alpha.to(device)


def validate_crm_embeds(crm_embeds) -> torch.Tensor:
    """Type, rank and finiteness checks that do not depend on the adapter; errors name ``crm_embeds``."""
    if not isinstance(crm_embeds, torch.Tensor):
        raise ValueError(f"`crm_embeds` must be a torch.Tensor of shape (batch, crm_dim), got {type(crm_embeds).__name__}")
    if crm_embeds.dim() != 2:
        raise ValueError(f"`crm_embeds` must have shape (batch, crm_dim), got {tuple(crm_embeds.shape)}")
    if not crm_embeds.is_floating_point():
        raise ValueError(f"`crm_embeds` must be a floating-point tensor, got dtype {crm_embeds.dtype}")
    if not bool(torch.isfinite(crm_embeds).all()):
        raise ValueError("`crm_embeds` contains NaN or Inf values")
    return crm_embeds


def input_batch_size(args: tuple, kwargs: dict) -> Optional[int]:
    """Batch size of a transformers model call, from input_ids or inputs_embeds."""
    for key in ("input_ids", "inputs_embeds"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return value.shape[0]
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
        return args[0].shape[0]
    return None


# --------------------------------------------------------------------------------------------------------------------
# Hooks installed on the wrapped transformers model. They are module-level functions that find the context through
# the model, so that deep copies and pickles of the model stay wired to their own context.

CONTEXT_ATTR = "_reclora_crm_context"


def capture_crm_embeds_hook(module, args, kwargs):
    context: CrmContext = getattr(module, CONTEXT_ATTR)
    explicit = kwargs.pop(CRM_KWARG, None)
    if explicit is not None:
        explicit = validate_crm_embeds(explicit)
        batch = input_batch_size(args, kwargs)
        if batch is not None and batch != explicit.shape[0]:
            raise ValueError(
                f"`crm_embeds` has batch size {explicit.shape[0]} but the input has batch size {batch}; pass one CRM "
                "row per sample"
            )
    crm_embeds = explicit if explicit is not None else context.sticky_crm_embeds
    context.begin_call(crm_embeds, training=module.training, checkpointing=_is_checkpointing(module))
    return args, kwargs


def finish_call_hook(module, args, kwargs, output):
    getattr(module, CONTEXT_ATTR).end_call(training=module.training, checkpointing=_is_checkpointing(module))
    return output


def generate_with_crm(model, *args, **kwargs):
    """Instance-level ``generate`` of a wrapped model: takes ``crm_embeds`` and keeps it for every decoding step."""
    context: CrmContext = getattr(model, CONTEXT_ATTR)
    crm_embeds = kwargs.pop(CRM_KWARG, None)
    if crm_embeds is None:
        return type(model).generate(model, *args, **kwargs)
    crm_embeds = validate_crm_embeds(crm_embeds)
    batch = input_batch_size(args, kwargs)
    if batch is not None and batch != crm_embeds.shape[0]:
        raise ValueError(
            f"`crm_embeds` has batch size {crm_embeds.shape[0]} but the input has batch size {batch}; pass one CRM "
            "row per prompt"
        )
    previous = context.sticky_crm_embeds
    context.sticky_crm_embeds = crm_embeds
    try:
        return type(model).generate(model, *args, **kwargs)
    finally:
        context.sticky_crm_embeds = previous


def _is_checkpointing(module) -> bool:
    """Only asked for grad-enabled training calls (it walks the modules)."""
    if not (module.training and torch.is_grad_enabled()):
        return False
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers >= 5.x renamed it
        if hasattr(type(module), name):
            return bool(getattr(module, name))
    return any(getattr(m, "gradient_checkpointing", False) for m in module.modules())
