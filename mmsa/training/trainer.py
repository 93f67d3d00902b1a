"""`MmsaTrainer`: the `Trainer` with one learning rate per part of the model (text tower, image tower, head),
layer-wise decay in the text tower, and the search hooks of `mmsa.training.search`."""

import logging

from transformers import Trainer

from ..modeling_mmsa import text_layers


logger = logging.getLogger(__name__)


class MmsaTrainer(Trainer):
    """`Trainer` whose optimizer gives the text tower, the image tower and the fusion head their own learning rates
    (`learning_rates={"text": ..., "vision": ..., "head": ...}`); bias and norm weights get no weight decay.

    With `layerwise_lr_decay` γ < 1 the text tower's learning rate decays with depth below its top layer: layer `i`
    of `L` gets `text_lr * γ ** (L - 1 - i)`, the embeddings `text_lr * γ ** L` (layer-wise learning-rate decay,
    as in ELECTRA and the BERT fine-tuning recipes of Sun et al., 2019).
    """

    def __init__(
        self, *args, learning_rates: dict[str, float] | None = None, layerwise_lr_decay: float = 1.0, **kwargs
    ):
        self.learning_rates = learning_rates or {}
        self.layerwise_lr_decay = layerwise_lr_decay
        super().__init__(*args, **kwargs)

    def text_depths(self, model) -> dict[str, int]:
        """How many layers below the top each text-tower parameter sits: 0 for the top layer and the parameters
        above the layers (the pooler), the layer count for the embeddings. The layers are `text_layers`', the one
        helper that modelling (`text_trainable_layers`) uses too."""
        tower = model.mmsa.text_model if hasattr(model, "mmsa") else model.text_model
        layers = text_layers(tower)
        depth_of = {id(p): len(layers) - 1 - index for index, layer in enumerate(layers) for p in layer.parameters()}
        depth_of.update({id(p): len(layers) for p in tower.get_input_embeddings().parameters()})
        embeddings = getattr(tower, "embeddings", None)
        if embeddings is not None:
            depth_of.update({id(p): len(layers) for p in embeddings.parameters()})
        return {
            name: depth_of.get(id(parameter), 0)
            for name, parameter in model.named_parameters()
            if self.parameter_group(name) == "text"
        }

    @staticmethod
    def parameter_group(name: str) -> str:
        if ".text_model." in f".{name}":
            return "text"
        if ".vision_model." in f".{name}":
            return "vision"
        return "head"

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        depths = self.text_depths(opt_model) if self.layerwise_lr_decay != 1.0 else {}
        groups = {}
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            part = self.parameter_group(name)
            depth = depths.get(name, 0)
            key = (part, name in decay, depth)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "weight_decay": self.args.weight_decay if name in decay else 0.0,
                    "lr": self.learning_rates.get(part, self.args.learning_rate) * self.layerwise_lr_decay**depth,
                    "group_name": part if not depth else f"{part}-{depth}",
                }
            groups[key]["params"].append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(list(groups.values()), **optimizer_kwargs)
        for (_, decayed, _), group in groups.items():
            logger.info(
                "optimizer group %s (decay=%s): %d tensors, lr %g",
                group["group_name"],
                decayed,
                len(group["params"]),
                group["lr"],
            )
        return self.optimizer

    def _clip_grad_norm(self, model):
        """Clips over the parameters that train: frozen tower parameters hold no gradient, so the norm is the same,
        without walking the towers' modules at every step (a large part of a step on cached features)."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type not in (
            DistributedType.NO,
            DistributedType.MULTI_CPU,
            DistributedType.MULTI_GPU,
        ) or self._has_mixed_mesh_grads(model):
            return super()._clip_grad_norm(model)
        cached = getattr(self, "_trained_parameters", None)
        if cached is None or cached[0] is not model:
            cached = self._trained_parameters = (model, [p for p in model.parameters() if p.requires_grad])
        return self.accelerator.clip_grad_norm_(cached[1], self.args.max_grad_norm)

    # --- hyperparameter search (mmsa.training.search) -------------------------------------------------------------------

    def _hp_search_setup(self, trial):
        """The `Trainer` sets a trial's `TrainingArguments` fields; the group learning rates are set here (and the
        `MmsaConfig` fields by `model_init`), so the `Trainer` sees only its own fields."""
        if self.hp_search_backend is None or trial is None:
            return super()._hp_search_setup(trial)
        from .search import GROUP_LEARNING_RATES

        space = self.hp_space
        params = space(trial)
        self.hp_space = lambda t: {key: value for key, value in space(t).items() if hasattr(self.args, key)}
        try:
            super()._hp_search_setup(trial)
        finally:
            self.hp_space = space
        for key, group in GROUP_LEARNING_RATES.items():
            if key in params:
                self.learning_rates[group] = params[key]

    def _report_to_hp_search(self, trial, step, metrics):
        """A trial's objective is the best validation score it reached (the checkpoint a run would keep), not its
        last one."""
        previous = getattr(self, "objective", None)
        super()._report_to_hp_search(trial, step, metrics)
        if previous is not None and self.objective is not None:
            better = max if self.args.greater_is_better is not False else min
            self.objective = better(previous, self.objective)
