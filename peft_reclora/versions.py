"""The torch, transformers and PEFT releases RecLoRA supports, checked before anything else is imported.

RecLoRA plugs into PEFT through names PEFT does not promise to keep (``_get_in_out_features``,
``quantization_extra_repr``, ``_filter_state_dict_by_key_prefixes``, ...), so outside the tested range an import would
die on whichever of them is missing first. Reading the installed versions from the packages' metadata (not by importing
them) lets ``import peft_reclora`` refuse an unsupported environment with one error that says what to install.

``SUPPORTED`` is the one owner of these ranges; ``setup.cfg`` repeats them as pins and a test keeps the two equal.
"""

from __future__ import annotations

from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


# torch: transformers >= 5.20 disables PyTorch below 2.6. transformers: the lowest release the tuner tests pass with.
# peft: 0.21 added the private hooks RecLoRA overrides (``_filter_state_dict_by_key_prefixes``, ``uses_shared_state``);
# the next minor release may move them again.
SUPPORTED = {
    "torch": ">=2.6,<3",
    "transformers": ">=5.2,<6",
    "peft": ">=0.21,<0.22",
}


def installed_version(distribution: str):
    """The installed version string of ``distribution``, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def unsupported_versions() -> list[str]:
    """One line per supported package whose installed version is missing or outside its range."""
    problems = []
    for distribution, specifier in SUPPORTED.items():
        found = installed_version(distribution)
        if found is None:
            problems.append(f"{distribution} is not installed (supported: {distribution}{specifier})")
            continue
        try:
            inside = SpecifierSet(specifier).contains(Version(found), prereleases=True)
        except InvalidVersion:
            inside = False
        if not inside:
            problems.append(f"{distribution} {found} is installed (supported: {distribution}{specifier})")
    return problems


def check_supported_versions() -> None:
    """Raise one ImportError naming every installed version outside its supported range."""
    problems = unsupported_versions()
    if problems:
        pins = " ".join(f"'{name}{spec}'" for name, spec in SUPPORTED.items())
        raise ImportError(
            "peft_reclora cannot run with the installed packages:\n  - " + "\n  - ".join(problems)
            + f"\nInstall supported releases, e.g. pip install {pins}"
        )
