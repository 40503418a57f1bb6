"""Lets transformers load models stripped by hf_prune in a process that never imports hf_prune.

The hf_prune distribution installs ``hf_prune_autoload.pth`` into site-packages; Python runs its one
line, ``import hf_prune_autoload; hf_prune_autoload.install()``, at start-up. This module imports nothing heavy (no torch, no
transformers, not hf_prune itself): it only puts a post-import hook on ``sys.meta_path``. When (and if)
``transformers.modeling_utils`` (where ``from_pretrained`` lives) has been imported, the hook registers
hf_prune's loader of stripped shapes (:mod:`hf_prune.integrations.loader`) with transformers'
quantizers, so ``AutoModel*.from_pretrained(dir)`` and
``pipeline(model=dir)`` rebuild a stripped model like any other. Set ``HF_PRUNE_NO_AUTOLOAD=1`` to opt
out; ``import hf_prune`` then still registers the loader.

:func:`after_import` is hf_prune's one post-import mechanism.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing would cost more than all of this module
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable

__all__ = ["DISABLE_ENV", "TRANSFORMERS_MODULE", "after_import", "install", "register_loader"]

DISABLE_ENV = "HF_PRUNE_NO_AUTOLOAD"
"""Environment variable: set to ``1`` to keep the start-up hook from being installed."""
TRANSFORMERS_MODULE = "transformers.modeling_utils"
"""Once it is imported, so are transformers' quantizers (it imports them; they do not import it): the loader
registers itself then, with no half-imported transformers module around, before any ``from_pretrained``."""


class _AfterImport:
    """A ``sys.meta_path`` finder that runs callbacks right after a module is first executed."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[[], Any]]] = {}

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        callbacks = self.callbacks.pop(name, None)
        if callbacks is None:
            return None
        import importlib.util

        spec = importlib.util.find_spec(name)  # the other finders' answer (this one no longer knows ``name``)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_call(module: ModuleType) -> None:
            exec_module(module)
            for callback in callbacks:
                callback()

        spec.loader.exec_module = exec_then_call  # type: ignore[method-assign]
        return spec


def after_import(name: str, callback: Callable[[], Any]) -> None:
    """Call ``callback()`` right after module ``name`` is first imported, or now if it already is.

    Registering the same callback twice for a module that is not imported yet calls it once.
    """
    if name in sys.modules:
        callback()
        return
    finder = next((f for f in sys.meta_path if isinstance(f, _AfterImport)), None)
    if finder is None:
        finder = _AfterImport()
        sys.meta_path.insert(0, finder)
    callbacks = finder.callbacks.setdefault(name, [])
    if callback not in callbacks:
        callbacks.append(callback)


def register_loader() -> None:
    """Register hf_prune's loader; a broken hf_prune must not break ``import transformers``."""
    try:
        from hf_prune.integrations.loader import register

        register()
    except Exception as exc:  # noqa: BLE001 - reported, never raised into transformers' import
        import warnings

        warnings.warn(f"hf_prune could not register its loader of stripped models with transformers ({exc!r}); "
                      f"`import hf_prune` to see the error, or set {DISABLE_ENV}=1 to silence this", RuntimeWarning,
                      stacklevel=2)


def install() -> None:
    """The start-up hook (run by ``hf_prune_autoload.pth``), unless ``HF_PRUNE_NO_AUTOLOAD`` is set."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return
    after_import(TRANSFORMERS_MODULE, register_loader)
