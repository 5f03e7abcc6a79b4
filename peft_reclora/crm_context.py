"""How ``crm_embeds`` travels from a model call to the RecLoRA layers, one call at a time.

Transformers models do not pass unknown keyword arguments down to their linear layers, so the CRM embedding is taken
out of the call by a forward pre-hook on the wrapped model and published as the *active call* in a
``contextvars.ContextVar``. Layers look it up there. A context variable is private to its thread and to its asyncio
task, so several threads (a web server) or tasks sharing one model each see only their own ``crm_embeds``; and it is
reset when the call ends (also when it raises), so a layer reached after the call, or outside any RecLoRA model call,
finds no CRM and raises instead of reusing an earlier one.

Design points, each one forced by a way a simpler alternative fails:
- ``CrmContext`` (one per model, a plain object, not an ``nn.Module``: no parameters, nothing in state dicts) holds
  what belongs to the model: the gates' dropout settings and dtypes, and the checkpointing bookkeeping. ``CrmCall``
  holds what belongs to one call: the validated CRM tensor, its gate dropout masks, alpha and backend caches.
- Gradient checkpointing (transformers' own, or PyTorch's ``checkpoint_wrapper``) re-runs the layers during
  backward, after the call has returned (and, on GPUs, in autograd's own threads). The call of a checkpointed training
  forward is therefore kept as the model's *pending backward call* and used only by layers running inside backward. A
  second training forward before that backward would replace it, so with checkpointing active that pattern raises a
  clear error instead of producing wrong gradients.
- Each layer computes its gate from the raw CRM tensor (a (batch, crm_dim) MLP: negligible), which keeps the gate's
  parameters inside the checkpointed region; alpha computed once outside would break reentrant checkpointing. Without
  gradients, alpha is cached per call (and per ``generate``), so inference evaluates each gate once.
- Gate dropout masks are drawn once per call, before any layer runs, so every layer sees the same alpha (one gate per
  user, as in the paper) and checkpoint recomputation replays the same random numbers.
- ``crm_embeds`` is validated once per model call, and once per ``generate`` (its decoding steps inherit the checked
  tensor). The finiteness check needs one device-to-host synchronisation; it runs once per call and can be switched
  off with ``RecLoraModel.check_crm_finite = False``. Nothing per layer or per decoding step synchronises.
- Batch expansion (one CRM row repeated over several layer rows) happens only inside ``generate``, by the factors
  ``generate`` itself expands by (``num_beams``, ``num_return_sequences``); a plain forward needs one row per sample.
"""

from __future__ import annotations

import contextvars
import os
from typing import Optional

import torch


try:
    from torch.distributed._composable.contract import _get_registry
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
except ImportError:  # a PyTorch build without torch.distributed has neither kind of checkpointing
    CheckpointWrapper, _get_registry = (), None

from .ops import BACKEND_ENV_VAR, resolve_backend


CRM_KWARG = "crm_embeds"

TRAINER_HINT = (
    "With the transformers Trainer, have the data collator put a `crm_embeds` tensor in every batch and set "
    "TrainingArguments(remove_unused_columns=False), which otherwise drops the column before it reaches the model."
)


def _inside_backward() -> bool:
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


class CrmCall:
    """What one model call (or one ``generate`` / ``use_crm_embeds`` scope) knows about its CRM."""

    __slots__ = (
        "owner", "module", "kind", "crm_embeds", "batch_multiples", "dropout_masks", "alpha_cache", "backends",
        "backend_override", "parent", "token", "checkpointing",
    )

    def __init__(self, owner, module, kind, crm_embeds, batch_multiples, parent, backend_override):
        self.owner = owner
        self.module = module
        self.kind = kind  # "forward", "generate" or "scope"
        self.crm_embeds: Optional[torch.Tensor] = crm_embeds
        self.batch_multiples: frozenset = batch_multiples
        self.dropout_masks: dict[str, torch.Tensor] = {}
        self.alpha_cache: dict = {}
        self.backends: dict = {}
        self.backend_override = None if backend_override in (None, "", "auto") else backend_override
        self.parent: Optional[CrmCall] = parent
        self.token = None
        self.checkpointing = False

    def backend(self, requested: str, device: torch.device, dtype: torch.dtype) -> str:
        """The concrete kernel backend for ``requested`` on (device, dtype), resolved once per call."""
        key = (requested, device, dtype)
        chosen = self.backends.get(key)
        if chosen is None:
            if requested == "auto" and self.backend_override:
                chosen = resolve_backend(self.backend_override, device, dtype, use_environment=False,
                                         source=f"the {BACKEND_ENV_VAR} environment variable")
            else:
                chosen = resolve_backend(requested, device, dtype, use_environment=False)
            self.backends[key] = chosen
        return chosen


_ACTIVE_CALL: contextvars.ContextVar[Optional[CrmCall]] = contextvars.ContextVar("peft_reclora_active_call",
                                                                                   default=None)
ONE_ROW_PER_SAMPLE = frozenset({1})


class CrmContext:
    def __init__(self):
        # adapter name -> (gate hidden width, gate dropout probability); registered by the tuner.
        self.gate_dropout: dict[str, tuple[int, float]] = {}
        # adapter name -> gate modules (the shared one, or one per adapted module): their dtypes bound what a finite
        # crm_embeds must stay finite in.
        self.gates: dict[str, list] = {}
        self.check_finite = True
        self._pending_backward: Optional[CrmCall] = None
        self._awaiting_backward = False

    def __getstate__(self):
        """Copies and pickles of a model start with no call in flight (calls belong to the running process)."""
        state = dict(self.__dict__)
        state["_pending_backward"], state["_awaiting_backward"] = None, False
        return state

    # ----------------------------------------------------------------------------------------------------------------
    # call boundaries (driven by the hooks and generate override below)

    def current_call(self) -> Optional[CrmCall]:
        """The active call of this model in the current thread/task; inside backward, the pending checkpointed call."""
        if self._pending_backward is not None and _inside_backward():
            return self._pending_backward
        call = _ACTIVE_CALL.get()
        while call is not None and call.owner is not self:
            call = call.parent
        return call

    def open_call(self, module, kind: str, crm_embeds: Optional[torch.Tensor], batch_multiples=ONE_ROW_PER_SAMPLE,
                  training: bool = False, checkpointing: bool = False, inherit: Optional[CrmCall] = None) -> CrmCall:
        """Create a call (crm_embeds already validated), draw its gate dropout masks and make it the active call."""
        if checkpointing and self._awaiting_backward:
            raise RuntimeError(
                "RecLoRA with gradient checkpointing needs backward() on a training forward's output before the next "
                "training forward: the checkpointed layers are re-run during backward and would otherwise see the "
                "later call's `crm_embeds`. Call backward() first, or run the extra forward under torch.no_grad() or "
                "in eval mode."
            )
        parent = _ACTIVE_CALL.get()
        override = inherit.backend_override if inherit is not None else os.environ.get(BACKEND_ENV_VAR, "auto")
        call = CrmCall(self, module, kind, crm_embeds, batch_multiples, parent, override)
        call.checkpointing = checkpointing
        if inherit is not None and not training:  # decoding steps share the generate call's gates and backends
            call.alpha_cache = inherit.alpha_cache
            call.backends = inherit.backends
        if training and crm_embeds is not None:
            for adapter_name, (hidden_dim, p) in self.gate_dropout.items():
                if p > 0:
                    keep = torch.full((crm_embeds.shape[0], hidden_dim), 1.0 - p, device=crm_embeds.device)
                    call.dropout_masks[adapter_name] = torch.bernoulli(keep) / (1.0 - p)
        call.token = _ACTIVE_CALL.set(call)
        return call

    @staticmethod
    def release(call: CrmCall) -> None:
        """End ``call``: the active call is again the one that was active before it."""
        _ACTIVE_CALL.reset(call.token)
        call.token = None

    def close_call(self, call: CrmCall) -> None:
        """End a forward call; a checkpointed training call stays readable for the recomputation in backward."""
        self.release(call)
        if call.checkpointing:
            self._pending_backward = call
            self._awaiting_backward = True

    def mark_layer_run(self) -> None:
        """Called by layers; a layer running inside backward is a checkpoint recomputation of the pending call."""
        if self._awaiting_backward and _inside_backward():
            self._awaiting_backward = False

    def validate(self, crm_embeds) -> torch.Tensor:
        """Type, rank and finiteness checks, once per call; errors name ``crm_embeds``.

        Finite means finite in every gate's dtype: a float64 1e300 is finite but overflows a float32 gate.
        """
        crm_embeds = check_crm_embeds_layout(crm_embeds)
        if self.check_finite:
            dtypes = {gate.fc1_weight.dtype for gates in self.gates.values() for gate in gates} or {crm_embeds.dtype}
            finite = torch.stack([torch.isfinite(crm_embeds.to(dtype)).all() for dtype in sorted(dtypes, key=str)])
            if not bool(finite.all()):
                names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
                raise ValueError(
                    f"`crm_embeds` contains NaN or Inf values, or values too large for the gate's dtype ({names})"
                )
        return crm_embeds

    # ----------------------------------------------------------------------------------------------------------------
    # what the layers read

    def require_call(self, adapter_name: str) -> CrmCall:
        call = self.current_call()
        if call is None:
            raise ValueError(
                f"The RecLoRA adapter '{adapter_name}' needs `crm_embeds`, but its layer was reached outside a call "
                "of the RecLoRA model: pass crm_embeds=<tensor of shape (batch, crm_dim)> to the PEFT model's "
                "forward() or generate(); to run an inner module directly, wrap it in `with "
                "model.base_model.use_crm_embeds(crm_embeds):`; or run the base model inside `with "
                "model.disable_adapter():`."
            )
        if call.crm_embeds is None:
            raise ValueError(
                f"The RecLoRA adapter '{adapter_name}' needs `crm_embeds`: pass crm_embeds=<tensor of shape "
                "(batch, crm_dim)> to forward() or generate(), or run the base model inside `with "
                f"model.disable_adapter():`. {TRAINER_HINT}"
            )
        return call

    def gate(
        self, call: CrmCall, adapter_name: str, gate_module, batch_size: int, device: torch.device
    ) -> torch.Tensor:
        """Mixing weights (batch_size, num_meta_loras) of ``gate_module`` for ``call``, on ``device``.

        Inside ``generate``, beam search and ``num_return_sequences`` expand the batch by interleaving rows, so the CRM
        rows are expanded the same way, by those factors only.
        """
        crm_embeds = call.crm_embeds
        if crm_embeds.shape[1] != gate_module.crm_dim:
            raise ValueError(
                f"`crm_embeds` has width {crm_embeds.shape[1]} but the RecLoRA adapter '{adapter_name}' expects "
                f"(batch, crm_dim={gate_module.crm_dim})"
            )
        crm_batch = crm_embeds.shape[0]
        if batch_size != crm_batch:
            factor = batch_size // crm_batch if crm_batch and batch_size % crm_batch == 0 else None
            if factor not in call.batch_multiples:
                raise ValueError(
                    f"`crm_embeds` has batch size {crm_batch} but the adapted layer sees batch size {batch_size}; "
                    "pass one CRM row per sample (rows are repeated only for generate's beams and "
                    "num_return_sequences)"
                )
        cache_key = (adapter_name, id(gate_module))
        use_cache = not torch.is_grad_enabled()
        alpha = call.alpha_cache.get(cache_key) if use_cache else None
        if alpha is None:
            mask = call.dropout_masks.get(adapter_name) if gate_module.training else None
            alpha = gate_module(crm_embeds, dropout_mask=mask)
            if use_cache:
                call.alpha_cache[cache_key] = alpha
        if batch_size != crm_batch:
            alpha = alpha.repeat_interleave(batch_size // crm_batch, dim=0)
        return alpha.to(device)


def check_crm_embeds_layout(crm_embeds) -> torch.Tensor:
    """Type, rank and dtype checks that need no device synchronisation; errors name ``crm_embeds``."""
    if not isinstance(crm_embeds, torch.Tensor):
        raise ValueError(
            f"`crm_embeds` must be a torch.Tensor of shape (batch, crm_dim), got {type(crm_embeds).__name__}"
        )
    if crm_embeds.dim() != 2:
        raise ValueError(f"`crm_embeds` must have shape (batch, crm_dim), got {tuple(crm_embeds.shape)}")
    if not crm_embeds.is_floating_point():
        raise ValueError(f"`crm_embeds` must be a floating-point tensor, got dtype {crm_embeds.dtype}")
    return crm_embeds


def validate_crm_embeds(crm_embeds) -> torch.Tensor:
    """Layout and finiteness checks for code outside a model call (gate inspection, export)."""
    crm_embeds = check_crm_embeds_layout(crm_embeds)
    if not bool(torch.isfinite(crm_embeds).all()):
        raise ValueError("`crm_embeds` contains NaN or Inf values")
    return crm_embeds


def input_batch_size(args: tuple, kwargs: dict, keys=("input_ids", "inputs_embeds")) -> Optional[int]:
    """Batch size of a transformers model call, from the first of ``keys`` present, else the first positional
    tensor."""
    for value in (*(kwargs.get(key) for key in keys), args[0] if args else None):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return value.shape[0]
    return None


GENERATE_INPUT_KEYS = ("input_ids", "inputs", "inputs_embeds", "attention_mask")


def generation_expansions(model, kwargs: dict) -> frozenset:
    """The factors by which ``generate`` repeats each prompt: beams, returned sequences, and both."""
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)

    def setting(name: str) -> int:
        value = kwargs.get(name)
        if value is None:
            value = getattr(config, name, None)
        return max(int(value or 1), 1)

    beams, sequences = setting("num_beams"), setting("num_return_sequences")
    return frozenset({1, beams, sequences, beams * sequences})


# --------------------------------------------------------------------------------------------------------------------
# Hooks installed on the wrapped transformers model. They are module-level functions that find the context through
# the model, so that deep copies and pickles of the model stay wired to their own context.

CONTEXT_ATTR = "_reclora_crm_context"


def capture_crm_embeds_hook(module, args, kwargs):
    context: CrmContext = getattr(module, CONTEXT_ATTR)
    explicit = kwargs.pop(CRM_KWARG, None)
    training = module.training and torch.is_grad_enabled()
    checkpointing = training and _is_checkpointing(module)
    if explicit is not None:
        crm_embeds = context.validate(explicit)
        batch = input_batch_size(args, kwargs)
        if batch is not None and batch != crm_embeds.shape[0]:
            raise ValueError(
                f"`crm_embeds` has batch size {crm_embeds.shape[0]} but the input has batch size {batch}; pass one "
                "CRM row per sample"
            )
        context.open_call(module, "forward", crm_embeds, training=module.training, checkpointing=checkpointing)
        return args, kwargs
    outer = context.current_call() if not _inside_backward() else None
    if outer is not None and outer.kind in ("generate", "scope"):
        context.open_call(module, "forward", outer.crm_embeds, outer.batch_multiples, training=module.training,
                          checkpointing=checkpointing, inherit=outer)
    else:
        context.open_call(module, "forward", None, training=module.training, checkpointing=checkpointing)
    return args, kwargs


def finish_call_hook(module, args, kwargs, output):
    """Runs also when the forward raised (``always_call=True``), so a failed call leaves nothing behind."""
    call = _ACTIVE_CALL.get()
    if call is not None and call.module is module and call.kind == "forward":
        call.owner.close_call(call)
    return None


def generate_with_crm(model, *args, **kwargs):
    """Instance-level ``generate`` of a wrapped model: takes ``crm_embeds`` and keeps it for every decoding step."""
    context: CrmContext = getattr(model, CONTEXT_ATTR)
    crm_embeds = kwargs.pop(CRM_KWARG, None)
    if crm_embeds is None:
        return type(model).generate(model, *args, **kwargs)
    crm_embeds = context.validate(crm_embeds)
    batch = input_batch_size(args, kwargs, keys=GENERATE_INPUT_KEYS)
    batch = 1 if batch is None else batch  # generate starts from one BOS token when given no prompt
    if batch != crm_embeds.shape[0]:
        raise ValueError(
            f"`crm_embeds` has batch size {crm_embeds.shape[0]} but generate() was given {batch} prompt(s); pass one "
            "CRM row per prompt (beams and num_return_sequences are expanded from it)"
        )
    call = context.open_call(model, "generate", crm_embeds, generation_expansions(model, kwargs))
    try:
        return type(model).generate(model, *args, **kwargs)
    finally:
        context.release(call)


class GenerateWithCrm:
    """The wrapped model's instance-level ``generate`` (``model.generate = GenerateWithCrm(model)``).

    A small callable object rather than a bound method of ``generate_with_crm``: pickle stores a bound method as
    "look the function up on the object by name", which fails for a function installed on one instance, and with it
    ``pickle``, ``torch.save`` and multiprocessing's spawn of the whole model. This object pickles with the model it
    belongs to, so a copy's ``generate`` drives the copy.
    """

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        return generate_with_crm(self.model, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<RecLoRA generate of {type(self.model).__name__}>"


def _is_checkpointing(module) -> bool:
    """Only asked for grad-enabled training calls (it walks the modules).

    Both kinds re-run layers during backward: transformers' gradient checkpointing, and PyTorch's own
    (``checkpoint_wrapper`` / ``apply_activation_checkpointing``, the one FSDP users are told to choose, or the
    composable ``checkpoint(module)``).
    """
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers >= 5.x renamed it
        if hasattr(type(module), name):
            if getattr(module, name):
                return True
            break
    else:
        if any(getattr(m, "gradient_checkpointing", False) for m in module.modules()):
            return True
    return any(_checkpointed_by_pytorch(m) for m in module.modules())


def _checkpointed_by_pytorch(module) -> bool:
    """Wrapped by ``checkpoint_wrapper``, or marked by the composable ``torch.distributed._composable.checkpoint``."""
    if isinstance(module, CheckpointWrapper):
        return True
    registry = _get_registry(module) if _get_registry is not None else None
    return bool(registry) and "checkpoint" in registry
