"""Exceptions raised by hf_prune: one hierarchy under :class:`HfPruneError`, so one ``except`` catches them all.

The errors of one job live next to it (``PruningConfigError`` in :mod:`hf_prune.config`, ``PrunedModelError``
in :mod:`hf_prune.integrations.serialization`, ``RecipeError`` in :mod:`hf_prune.app.recipes`, ...); those
every wing may raise are here. Each also subclasses the built-in exception callers would expect
(``ValueError``, ``FileNotFoundError``, ...).
"""


class HfPruneError(Exception):
    """Base class of every error hf_prune raises on purpose."""


class AnalysisError(HfPruneError, RuntimeError):
    """The model could not be traced or analysed (names the module and op where it failed)."""


class NothingPrunableError(AnalysisError):
    """Pruning was asked for, but the analysis found no prunable group (names the ops and reasons)."""


class PruningLevelError(HfPruneError, ValueError):
    """A pruning level or a group-level mapping is invalid."""


class PruningStateError(HfPruneError, ValueError):
    """A saved pruning state does not belong to this model and pruning config (or is no pruning state)."""


class ScopeError(HfPruneError, ValueError):
    """``ignored_scopes`` / ``target_scopes`` name modules the model does not have."""


class MissingFileError(HfPruneError, FileNotFoundError):
    """A file, directory or Hub repository hf_prune was pointed at does not exist (names it)."""


class MissingInputError(HfPruneError, ValueError):
    """A step needs an input it was not given (names the argument to pass)."""
