"""transformers' side of reloading a stripped model: a loader registered under ``quant_method: hf_prune``.

transformers builds a model from its config before loading weights; a quantizer is the only hook it
offers, on 4.57 and 5.x alike, between the two. :class:`PrunedShapesLoader` narrows the freshly
built model to the recorded shapes there, so ``AutoModel*.from_pretrained(dir)``, ``pipeline(model=dir)``
and a Trainer's best-model reload return the stripped model; after loading, every trace of
quantization is removed (the model trains, saves and exports like any other).

Importing this module imports transformers' quantization machinery (seconds): it is registered only
once transformers has imported ``modeling_utils`` (and with it that machinery), by the start-up hook an
installed hf_prune puts in place (:mod:`hf_prune_autoload`) or by ``import hf_prune``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING, register_quantization_config, register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..graph.config_widths import set_fields
from ..graph.record import CONFIG_NAME, QUANT_METHOD, narrow, set_record
from .weights import check_weights, weight_files

if TYPE_CHECKING:  # not at run time: this module is imported while transformers.modeling_utils is
    from transformers import PreTrainedModel

__all__ = ["PrunedShapesConfig", "PrunedShapesLoader", "register"]


class PrunedShapesConfig(QuantizationConfigMixin):
    """The pruning record of a transformers config.json, as transformers' quantization machinery reads it."""

    def __init__(self, **record: Any) -> None:
        self.quant_method = QUANT_METHOD
        self.record = {**record, "quant_method": QUANT_METHOD}

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.record)

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()


class PrunedShapesLoader(HfQuantizer):
    """Not a quantizer: narrows the freshly built model to the recorded shapes before its weights load,
    then removes every trace of quantization from the loaded model, keeping the record in its config."""

    requires_calibration = False

    def _process_model_before_weight_loading(self, model: PreTrainedModel, **kwargs: Any) -> None:
        source = str(model.config.name_or_path)
        record = self.quantization_config.record
        narrow(model, record, Path(source) / CONFIG_NAME)
        files = kwargs.get("checkpoint_files")  # transformers 5: the resolved files, local or from the Hub
        if files is None and Path(source).is_dir():
            files = weight_files(Path(source))
        if files:
            check_weights(model, [Path(f) for f in files], source, only_recorded=record)

    def _process_model_after_weight_loading(self, model: PreTrainedModel, **kwargs: Any) -> None:
        self.remove_quantization_config(model)
        for attribute in ("is_quantized", "quantization_method", "hf_quantizer"):
            model.__dict__.pop(attribute, None)
        record = self.quantization_config.to_dict()
        set_fields(model.config, record.get("stripped_config") or {})  # a constructor may have derived one anew
        set_record(model, record)

    def is_serializable(self, safe_serialization: bool | None = None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True


def register() -> None:
    """Register the loader with transformers (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(PrunedShapesConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(PrunedShapesLoader)
