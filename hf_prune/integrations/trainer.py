"""Filter pruning inside ``transformers.Trainer``: :class:`PruningTrainer` and :class:`PruningCallback`.

The callback carries the whole behaviour (schedule, masks shared by every process, logging, pruning
state in every checkpoint, resume, best-checkpoint gating), so a user's own ``Trainer`` subclass gets it
with ``PruningCallback(config).install(trainer)``. :class:`PruningTrainer` adds what only a Trainer can do:
it builds the controller before the model is wrapped, adds the controller's loss in ``compute_loss``,
trains timm models (tensor in, logits out) without user code, and strips the model at the end.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..algorithm.bn_adaptation import _accepts_kwarg
from ..algorithm.controller import FilterPruningController
from ..algorithm.ranking import RankingCoefficients
from ..config import PruningConfig
from ..errors import HfPruneError
from .distributed import PruningRun, as_pruning_config, example_inputs_from_dataset
from .serialization import STATE_NAME

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
    return model if _accepts_kwarg(model, "pixel_values") else ImageClassifierAdapter(model)


class PruningCallback(TrainerCallback):
    """Prunes filters on the NNCF schedule while any ``transformers.Trainer`` trains.

    - ``on_train_begin``: builds the controller (unless a :class:`PruningTrainer` did), restores the
      pruning state when the Trainer resumed, else runs BatchNorm adaptation if ``pruning_init`` > 0;
    - ``on_epoch_begin`` / ``on_step_end``: ``scheduler.epoch_step()`` / ``scheduler.step()``; masks are
      decided on the main process and broadcast;
    - ``on_pre_optimizer_step``: adds the gradients of the controller's loss (if it is not zero);
    - ``on_log``: adds ``pruning/level``, ``pruning/flops_reduction``, ``pruning/compression_stage``;
    - ``on_save``: writes ``pruning_state.pt`` into the checkpoint (main process, atomically);
    - ``on_evaluate``: while the model is not fully compressed, its ``metric_for_best_model`` is NaN in the
      metrics the Trainer selects the best checkpoint from (logged values are untouched), so only fully
      compressed checkpoints can win; ``on_train_end`` then restores the best checkpoint's masks.
    """

    def __init__(self, pruning_config: PruningConfig | Mapping[str, Any] | str | os.PathLike[str],
                 example_inputs: Any = None) -> None:
        self.config = as_pruning_config(pruning_config)
        self.example_inputs = example_inputs
        self.run: PruningRun | None = None
        self.adds_loss_gradients = True
        self._restored = False
        self._training = False

    @property
    def controller(self) -> FilterPruningController:
        """The controller (built at the latest when training begins)."""
        if self.run is None:
            raise HfPruneError("the pruning controller is built when training begins")
        return self.run.controller

    def install(self, trainer: Trainer) -> PruningCallback:
        """Put this callback first among ``trainer``'s callbacks, ahead of the reporting integrations
        (TensorBoard, W&B, ...), so that they log the pruning values too. Returns the callback."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        return self

    def build(self, model: nn.Module, dataset: Any = None) -> PruningRun:
        """Build the controller on the unwrapped ``model``; example inputs come from ``dataset[0]`` if
        none were given."""
        inputs = self.example_inputs
        if inputs is None and dataset is not None:
            inputs = example_inputs_from_dataset(model, dataset)
        self.run = PruningRun(model, self.config, inputs)
        return self.run

    def load_checkpoint(self, checkpoint: str | os.PathLike[str]) -> None:
        """Restore the masks and schedule position saved in ``checkpoint``; errors name what does not match."""
        self.run.check_trainable()
        path = os.path.join(checkpoint, STATE_NAME)
        if not os.path.isfile(path):
            raise HfPruneError(f"{checkpoint} has no {STATE_NAME}: it was not written by a pruning run, "
                               "so its masks and schedule position cannot be restored")
        self.run.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), source=path)
        self._restored = True

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, train_dataloader: Any = None, **kwargs: Any) -> None:
        if self.run is None:
            self.build(model, getattr(train_dataloader, "dataset", None))
        self.run.check_trainable()
        self._training = True
        if state.global_step > 0 and not self._restored:
            self.load_checkpoint(args.resume_from_checkpoint
                                 or os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))
        elif state.global_step == 0 and train_dataloader is not None:
            self.run.adapt_batchnorm(train_dataloader)

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self.run.epoch_step(int(state.epoch or 0))

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        if self.adds_loss_gradients:
            _accumulate_gradients(self.run.loss(), self.run.model)

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
            _save_atomic(self.run.state_dict(), os.path.join(checkpoint, STATE_NAME))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self.load_checkpoint(state.best_model_checkpoint)
        self._training = self._restored = False


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
        self.pruning_callback.adds_loss_gradients = False  # compute_loss adds the loss itself
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
        # config is refused before anything changes.
        self.pruning_callback.load_checkpoint(resume_from_checkpoint)
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
        """``Trainer.train``; with ``learned_ranking`` and no coefficients file, LeGR searches first."""
        params = self.controller.config.params
        if (params.interlayer_ranking_type == "learned_ranking" and not params.load_ranking_coeffs_path
                and not resume_from_checkpoint and not self._ranking_learned):
            self.learn_ranking()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def learn_ranking(self) -> RankingCoefficients:
        """LeGR's search with this trainer's data: each candidate is fine-tuned ``legr_params.train_steps``
        steps (SGD at ``args.learning_rate``) and rewarded with minus the evaluation loss."""
        if self.eval_dataset is None:
            raise HfPruneError("learned_ranking needs eval_dataset=: the LeGR reward is minus the evaluation loss")
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

    def push_to_hub(self, repo_id: str | None = None, commit_message: str = "Upload model pruned with hf_prune",
                    recipe: Any = None, base_model: str | None = None, **kwargs: Any) -> Any:
        """Upload the stripped model (a stripped copy while masks are still active) with a model card
        holding the pruning statistics, config and ``recipe``; see :func:`hf_prune.push_to_hub`.

        ``repo_id`` defaults to ``args.hub_model_id``; the token and privacy come from the arguments.
        """
        from .hub import push_to_hub

        repo_id = repo_id or self.args.hub_model_id
        if not repo_id:
            raise HfPruneError("push_to_hub needs a repo_id (or TrainingArguments(hub_model_id=...))")
        if not self.is_world_process_zero():
            return None
        return push_to_hub(self.pruning_run.model, repo_id, controller=self.controller, recipe=recipe,
                           base_model=base_model, private=self.args.hub_private_repo, token=self.args.hub_token,
                           commit_message=commit_message)

    def strip_model(self) -> nn.Module:
        """Remove the pruned channels for good (masks detached) and return the user's model, now smaller.

        The trainer keeps the stripped model (``evaluate`` and ``save_model`` use it) but refuses to
        ``train`` again: its optimizer holds the old tensors.
        """
        return self.pruning_run.strip_model()


def _accumulate_gradients(loss: torch.Tensor, model: nn.Module) -> None:
    """Add ``d loss / d parameter`` to each parameter's ``.grad`` (bypassing DDP's gradient hooks)."""
    if not loss.requires_grad:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p, grad in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
        if grad is not None:
            p.grad = grad if p.grad is None else p.grad.add_(grad)


def _save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".pruning_state.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
