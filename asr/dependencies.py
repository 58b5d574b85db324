"""Native packages, imported where a feature first needs them, so that a broken install says so.

A wheel that does not match its neighbours (torchaudio 2.11.1 beside torch 2.11.0 was one) fails
with an undefined symbol or a missing shared library deep inside whatever loaded it first, and
the user sees "cannot load a CTC model". `require` turns that failure into a `DependencyError`
that names the feature, the package and its version, and the cure.
"""

import importlib
import importlib.metadata
from types import ModuleType

from asr.errors import DependencyError

REINSTALL_HINT = "the installed packages differ from requirements.lock: run `make install`"


def require(module: str, feature: str) -> ModuleType:
    """Import `module` for `feature`, or raise `DependencyError` saying what to do."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as e:
        raise DependencyError(
            f"{feature} needs {installed_description(module)}, which failed to load ({e}); {REINSTALL_HINT}"
        ) from e


def installed_description(module: str) -> str:
    """`flashlight-text 0.0.7` for `flashlight.lib.text.decoder`; the module name when unknown."""
    top = module.split(".", 1)[0]
    names = importlib.metadata.packages_distributions().get(top, [])
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"{module} (not installed)" if not names else module
