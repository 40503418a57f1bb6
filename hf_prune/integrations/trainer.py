"""Filter pruning inside ``transformers.Trainer``: :class:`PruningTrainer` and :class:`PruningCallback`.

The callback carries the whole behaviour (schedule, masks shared by every process, logging, pruning
state in every checkpoint, resume, best-checkpoint gating), so a user's own ``Trainer`` subclass gets it
with ``PruningCallback(config).install(trainer)``. :class:`PruningTrainer` adds what only a Trainer can do:
it builds the controller before the model is wrapped, adds the controller's loss in ``compute_loss``,
trains timm models (tensor in, logits out) without user code, and strips the model at the end.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, ExportableState
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..algorithm.controller import FilterPruningController
from ..algorithm.ranking import RankingCoefficients
from ..config import PruningConfig
from ..distributed import broadcast_from_main
from ..errors import HfPruneError, MissingInputError, PruningStateError, UnsupportedSetupError
from ..model_kind import takes_pixel_values
from .checkpoints import (
    RECORD_KEY, TRAINER_STATE_NAME, decode_state, encode_state, find_record, last_complete_checkpoint,
    read_trainer_record, weights_digest,
)
from .distributed import PruningRun, as_pruning_config, example_inputs_from_dataset
from .pruning_state import save_pruning_state

FULLY_COMPRESSED = 2


class ImageClassifierAdapter(nn.Module):
    """Gives a model mapping an image tensor to logits (timm) the ``pixel_values`` / ``labels`` interface
    of transformers image classifiers. ``state_dict`` is the wrapped model's, without a prefix."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        logits = self.model(pixel_values)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)


def trainer_model(model: nn.Module) -> nn.Module:
    """``model`` as ``transformers.Trainer`` calls it (``model(pixel_values=..., labels=...)``): itself if it
    takes ``pixel_values``, else (timm) wrapped in an :class:`ImageClassifierAdapter`."""
    return model if takes_pixel_values(model) else ImageClassifierAdapter(model)


class PruningCallback(TrainerCallback, ExportableState):
    """Prunes filters on the NNCF schedule while any ``transformers.Trainer`` trains.

    - ``on_init_end``: moves itself ahead of the reporting integrations (TensorBoard, W&B, ...) so they
      log the pruning values too;
    - ``on_train_begin``: builds the controller (unless a :class:`PruningTrainer` did); when the Trainer
      resumed, restores the pruning state saved in the checkpoint's ``trainer_state.json`` after checking
      that it belongs to the weights the Trainer loaded; else runs BatchNorm adaptation if
      ``pruning_init`` > 0;
    - ``on_epoch_begin`` / ``on_step_end``: ``scheduler.epoch_step()`` / ``scheduler.step()``; every process
      plans masks, then the main process's replace the others' (broadcast);
    - while training, the controller's loss is added to the model output's ``loss`` (a forward hook), so
      its gradients are clipped and accumulated with the task's exactly as in :class:`PruningTrainer`;
      set ``adds_loss = False`` when your own ``compute_loss`` adds ``callback.run.loss()``;
    - ``on_log``: adds ``pruning/level``, ``pruning/flops_reduction``, ``pruning/compression_stage``;
    - :meth:`state` (called by the Trainer right before it writes ``trainer_state.json``, the last file
      of a checkpoint): the masks, schedule position and a digest of the weights, so a checkpoint holds
      its pruning state exactly when it is complete (see :mod:`.checkpoints`); ``on_save`` also writes
      ``pruning_state.pt`` for :func:`~hf_prune.load_pruning_controller`;
    - ``on_evaluate``: while the model is not fully compressed, its ``metric_for_best_model`` is NaN in the
      metrics the Trainer selects the best checkpoint from (logged values are untouched), so only fully
      compressed checkpoints can win; ``on_train_end`` then restores the best checkpoint's masks.

    With your own ``Trainer``, resume with ``train(resume_from_checkpoint=last_complete_checkpoint(dir))``
    (:func:`~hf_prune.integrations.checkpoints.last_complete_checkpoint`): ``resume_from_checkpoint=True``
    makes the Trainer take the newest folder even when a kill cut its save short.
    """

    def __init__(self, pruning_config: PruningConfig | Mapping[str, Any] | str | os.PathLike[str],
                 example_inputs: Any = None) -> None:
        self.config = as_pruning_config(pruning_config)
        self.example_inputs = example_inputs
        self.run: PruningRun | None = None
        self.adds_loss = True
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._training = False

    @property
    def controller(self) -> FilterPruningController:
        """The controller (built at the latest when training begins)."""
        if self.run is None:
            raise UnsupportedSetupError("the pruning controller is built when training begins")
        return self.run.controller

    def install(self, trainer: Trainer) -> PruningCallback:
        """Put this callback first among ``trainer``'s callbacks, ahead of the reporting integrations
        (TensorBoard, W&B, ...), so that they log the pruning values too. Returns the callback.
        Only needed when the callback was not passed as ``Trainer(callbacks=[...])``."""
        _check_arguments(trainer.args)
        _move_first(trainer.callback_handler, self)
        return self

    def build(self, model: nn.Module, dataset: Any = None) -> PruningRun:
        """Build the controller on the unwrapped ``model``; example inputs come from ``dataset[0]`` if
        none were given."""
        inputs = self.example_inputs
        if inputs is None and dataset is not None:
            inputs = example_inputs_from_dataset(model, dataset)
        self.run = PruningRun(model, self.config, inputs)
        return self.run

    def load_checkpoint(self, checkpoint: str | os.PathLike[str], check_weights: bool = True) -> None:
        """Restore the masks and schedule position saved in ``checkpoint``; errors name what does not match.

        With ``check_weights``, the model must hold the weights the state was saved with."""
        self.run.check_trainable()
        record = read_trainer_record(checkpoint)
        if record is None:
            raise PruningStateError(f"{checkpoint} has no pruning state in {TRAINER_STATE_NAME}: it was not written by "
                               "a pruning run (or its save was cut short), so its masks and schedule position "
                               "cannot be restored")
        self._restore(record, checkpoint, check_weights)

    def state(self) -> dict[str, Any]:
        """``ExportableState``: the pruning record the Trainer stores in ``trainer_state.json``."""
        record = None if self.run is None else {
            "weights_sha256": weights_digest(self.run.model), "state": encode_state(self.run.state_dict())}
        return {"args": {}, "attributes": {RECORD_KEY: record}}

    def _restore(self, record: Mapping[str, Any], source: str | os.PathLike[str], check_weights: bool) -> None:
        if check_weights and record["weights_sha256"] != weights_digest(self.run.model):
            raise PruningStateError(
                f"the weights loaded from {source} are not those its pruning state was saved with (was the "
                "checkpoint overwritten in part?): refusing to resume with masks that disagree with the weights")
        self.run.load_state_dict(decode_state(record["state"]), source=source)

    # ------------------------------------------------------------------ events
    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        _check_arguments(args)
        handler = _calling_handler()
        if handler is not None:
            _move_first(handler, self)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, train_dataloader: Any = None, **kwargs: Any) -> None:
        if self.run is None:
            self.build(model, getattr(train_dataloader, "dataset", None))
        self.run.check_trainable()
        if self.controller.data_loader is None:
            self.controller.data_loader = train_dataloader
        self._training = True
        if self.adds_loss and self._hook is None:
            self._hook = model.register_forward_hook(self._add_loss)
        if state.global_step > 0:
            record = find_record(state.stateful_callbacks or {})
            if record is None:
                raise PruningStateError(f"the checkpoint resumed at step {state.global_step} has no pruning state in its "
                                   f"{TRAINER_STATE_NAME}: it was not written by a pruning run, so its masks and "
                                   "schedule position cannot be restored")
            self._restore(record, f"the checkpoint of step {state.global_step}", check_weights=True)
        elif train_dataloader is not None:
            self.run.adapt_batchnorm(train_dataloader)

    def _add_loss(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if not module.training:
            return output
        extra = self.run.loss()
        if not extra.requires_grad:  # regularization_weight 0
            return output
        if not (isinstance(output, Mapping) and output.get("loss") is not None):
            raise UnsupportedSetupError(
                f"regularization_weight > 0 but {type(module).__name__}'s output has no 'loss' to add the pruning "
                "loss to: set callback.adds_loss = False and add callback.run.loss() in your compute_loss")
        output["loss"] = output["loss"] + extra
        return output

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self.run.epoch_step(int(state.epoch or 0))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        self.run.step()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.run is None or logs is None:
            return
        values = self.run.log_values()
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)  # Trainer.log stored a copy before calling back

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        key = args.metric_for_best_model
        if not (self._training and key and metrics) or self.controller.compression_stage() == FULLY_COMPRESSED:
            return
        key = key if key.startswith("eval_") else f"eval_{key}"
        if key in metrics:
            metrics[key] = math.nan

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(checkpoint):
            save_pruning_state(self.run.controller, checkpoint)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self.load_checkpoint(state.best_model_checkpoint)
        self._training = False


def _check_arguments(args: TrainingArguments) -> None:
    if args.restore_callback_states_from_checkpoint:
        raise UnsupportedSetupError(
            "restore_callback_states_from_checkpoint=True would replace the PruningCallback by a new one without "
            "its controller; the pruning state is restored from the checkpoint anyway: leave it False")


def _move_first(handler: CallbackHandler, callback: TrainerCallback) -> None:
    """Put ``callback`` first in ``handler``'s list (a new list: a loop over the old one is unaffected)."""
    handler.callbacks = [callback, *(cb for cb in handler.callbacks if cb is not callback)]


def _calling_handler() -> CallbackHandler | None:
    """The ``CallbackHandler`` dispatching the current event: Trainer events do not pass it, and the
    callbacks given to ``Trainer(callbacks=...)`` are placed after the reporting integrations, which would
    then log before the pruning values are added."""
    frame = inspect.currentframe()
    for _ in range(2):  # _calling_handler <- on_init_end <- CallbackHandler.call_event
        frame = frame.f_back if frame is not None else None
    handler = frame.f_locals.get("self") if frame is not None else None
    return handler if isinstance(handler, CallbackHandler) else None


class PruningTrainer(Trainer):
    """``transformers.Trainer`` that prunes filters while it trains (a :class:`PruningCallback` inside).

    ``model`` is a transformers model or a timm model (called on ``pixel_values``, cross-entropy loss
    on ``labels``). The controller is built here, on the unwrapped model; ``example_inputs`` default to
    the shape of ``train_dataset[0]``'s ``pixel_values``. Every other argument is ``Trainer``'s.
    """

    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None, *,
                 pruning_config: PruningConfig | Mapping[str, Any] | str | os.PathLike[str],
                 example_inputs: Any = None, **kwargs: Any) -> None:
        self.pruning_callback = PruningCallback(pruning_config, example_inputs)
        self._ranking_learned = False
        if not isinstance(model, nn.Module):
            raise TypeError("PruningTrainer needs model= (a torch.nn.Module; model_init is not supported): "
                            f"the pruning controller is built on it, got {type(model).__name__}")
        super().__init__(model=trainer_model(model), args=args, **kwargs)
        self.pruning_callback.build(model, self.train_dataset)
        self.pruning_callback.adds_loss = False  # compute_loss adds the loss itself
        self.pruning_callback.install(self)

    @property
    def pruning_run(self) -> PruningRun:
        return self.pruning_callback.run

    @property
    def controller(self) -> FilterPruningController:
        return self.pruning_callback.controller

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | None = None):
        """The Trainer's loss, plus the controller's loss while training."""
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not model.training:
            return result
        if return_outputs:
            loss, outputs = result
            return loss + self.pruning_run.loss(), outputs
        return result + self.pruning_run.loss()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # The pruning state is checked before any weight is loaded: a checkpoint of another model or
        # config is refused before anything changes (on_train_begin then checks the loaded weights).
        self.pruning_callback.load_checkpoint(resume_from_checkpoint, check_weights=False)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # transformers 4.57 maps the optimizer state to args.device in distributed runs; on CPU that is
        # "cpu:0", which torch.load rejects. Load it to "cpu" instead (what single-process runs do).
        optimizer_file = os.path.join(checkpoint or "", OPTIMIZER_NAME)
        if not (self.args.world_size > 1 and self.args.device.type == "cpu" and os.path.isfile(optimizer_file)):
            return super()._load_optimizer_and_scheduler(checkpoint)
        self.optimizer.load_state_dict(torch.load(optimizer_file, map_location="cpu", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """``Trainer.train``; with ``learned_ranking`` and no coefficients file, LeGR searches first.

        ``resume_from_checkpoint=True`` resumes from the newest *complete* checkpoint in ``output_dir``
        (chosen by the main process for all), warning about newer ones a kill cut short; when a kill cut
        the first save short, training starts from the beginning."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = self._last_complete_checkpoint()
        params = self.controller.config.params
        if (params.interlayer_ranking_type == "learned_ranking" and not params.load_ranking_coeffs_path
                and not resume_from_checkpoint and not self._ranking_learned):
            self.learn_ranking()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _last_complete_checkpoint(self) -> str | None:
        choice: str | None | HfPruneError = None
        if self.is_world_process_zero():
            try:
                choice = last_complete_checkpoint(self.args.output_dir, self.args.world_size)
            except HfPruneError as exc:
                choice = exc
        choice = broadcast_from_main(choice)  # the other processes never look at a checkpoint being written
        if isinstance(choice, HfPruneError):
            raise choice
        return choice

    def learn_ranking(self) -> RankingCoefficients:
        """LeGR's search with this trainer's data: each candidate is fine-tuned ``legr_params.train_steps``
        steps (SGD at ``args.learning_rate``) and rewarded with minus the evaluation loss."""
        if self.eval_dataset is None:
            raise MissingInputError("learned_ranking needs eval_dataset=: the LeGR reward is minus the evaluation loss")
        model, train_loader, eval_loader = self.model, self.get_train_dataloader(), self.get_eval_dataloader()

        def train_fn(_: nn.Module, steps: int) -> None:
            optimizer = torch.optim.SGD(model.parameters(), lr=self.args.learning_rate)
            model.train()
            batches = iter(train_loader)
            for _ in range(steps):
                batch = next(batches, None)
                if batch is None:
                    batches = iter(train_loader)
                    batch = next(batches)
                loss = self.compute_loss(model, self._prepare_inputs(batch))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        @torch.no_grad()
        def reward_fn(_: nn.Module) -> float:
            model.eval()
            total, count = 0.0, 0
            for batch in eval_loader:
                inputs = self._prepare_inputs(batch)
                n = len(inputs["labels"])
                total += float(self.compute_loss(model, inputs)) * n
                count += n
            return -total / max(count, 1)

        coefficients = self.controller.learn_ranking(train_fn, reward_fn, show_progress=self.is_world_process_zero())
        self._ranking_learned = True
        return coefficients

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, **kwargs: Any) -> Any:
        """``Trainer.push_to_hub``, uploading the stripped model (a stripped copy while masks are still
        active) with a model card holding the pruning statistics and config; see :func:`hf_prune.push_to_hub`.

        The repository is ``args.hub_model_id`` (or ``repo_id=``); token and privacy come from the
        arguments. Keyword arguments: ``repo_id``, ``recipe`` (shown on the card), ``base_model`` (or
        Trainer's ``finetuned_from``). Returns the commit info, or a future when ``blocking=False``;
        ``None`` on processes other than the main one. ``save_model`` with ``push_to_hub=True`` calls it.
        """
        from huggingface_hub import HfApi

        from .hub import push_to_hub

        unknown = set(kwargs) - {"repo_id", "recipe", "base_model", "finetuned_from"}
        if unknown:
            raise TypeError(f"PruningTrainer.push_to_hub got unsupported keyword arguments {sorted(unknown)}: "
                            "it accepts repo_id, recipe, base_model (or finetuned_from)")
        repo_id = kwargs.get("repo_id") or self.args.hub_model_id
        if not repo_id:
            raise MissingInputError("push_to_hub needs TrainingArguments(hub_model_id=...) (or repo_id=)")
        if not self.is_world_process_zero():
            return None
        token = token or self.args.hub_token
        upload = dict(controller=self.controller, recipe=kwargs.get("recipe"), private=self.args.hub_private_repo,
                      base_model=kwargs.get("base_model") or kwargs.get("finetuned_from"), token=token,
                      commit_message=commit_message or "Upload model pruned with hf_prune", revision=revision)
        if blocking:
            return push_to_hub(self.pruning_run.model, repo_id, **upload)
        return HfApi(token=token).run_as_future(push_to_hub, self.pruning_run.model, repo_id, **upload)

    def strip_model(self) -> nn.Module:
        """Remove the pruned channels for good (masks detached) and return the user's model, now smaller.

        The trainer keeps the stripped model (``evaluate`` and ``save_model`` use it) but refuses to
        ``train`` again: its optimizer holds the old tensors.
        """
        return self.pruning_run.strip_model()
