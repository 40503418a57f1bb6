"""Exceptions raised by hf_prune."""


class HfPruneError(Exception):
    """Base class of every error hf_prune raises on purpose."""


class AnalysisError(HfPruneError, RuntimeError):
    """The model could not be traced or analysed (names the module and op where it failed)."""


class NothingPrunableError(AnalysisError):
    """Pruning was asked for, but the analysis found no prunable group (names the ops and reasons)."""


class PruningLevelError(HfPruneError, ValueError):
    """A pruning level or a group-level mapping is invalid."""


class PrunedModelError(HfPruneError, ValueError):
    """A pruned model cannot be saved or loaded; the message names the file and the mismatch."""


class PruningStateError(HfPruneError, ValueError):
    """A saved pruning state does not belong to this model and pruning config (or is no pruning state)."""


class ScopeError(HfPruneError, ValueError):
    """``ignored_scopes`` / ``target_scopes`` name modules the model does not have."""
