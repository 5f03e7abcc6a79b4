"""Add ``RECLORA`` to PEFT's ``PeftType`` enum from outside the PEFT tree.

PEFT looks tuners up by ``PeftType`` member and refuses to register a method whose type is not in the enum. Members
cannot be added to a finished ``Enum`` through the public API, so this module inserts one with the same internal
bookkeeping ``Enum`` itself uses. ``PeftType`` is a ``str`` enum whose names equal their values, so the new member also
hashes and compares like the plain string ``"RECLORA"`` that saved ``adapter_config.json`` files contain.

The function is idempotent: re-imports, ``importlib.reload`` and a future PEFT release that ships the member itself all
reuse the existing member.
"""

from __future__ import annotations

from peft.utils import PeftType


RECLORA = "RECLORA"


def ensure_reclora_peft_type() -> PeftType:
    """Return ``PeftType.RECLORA``, creating the member on first use."""
    existing = PeftType.__members__.get(RECLORA)
    if existing is not None:
        return existing

    member = str.__new__(PeftType, RECLORA)
    member._name_ = RECLORA
    member._value_ = RECLORA
    member._sort_order_ = len(PeftType._member_names_)
    if hasattr(PeftType, "_add_member_"):  # Python >= 3.13 keeps the attribute and _member_map_ in sync itself
        PeftType._add_member_(RECLORA, member)
    else:
        type.__setattr__(PeftType, RECLORA, member)
        PeftType._member_map_[RECLORA] = member
    if RECLORA not in PeftType._member_names_:
        PeftType._member_names_.append(RECLORA)
    PeftType._member_map_[RECLORA] = member
    PeftType._value2member_map_[RECLORA] = member

    # self-check against Enum internals changing
    if PeftType(RECLORA) is not member or PeftType[RECLORA] is not member:
        raise RuntimeError("Could not add RECLORA to peft.utils.PeftType; this Python/PEFT combination is unsupported")
    return member
