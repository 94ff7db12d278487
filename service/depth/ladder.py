"""The depth ladder: one served model per depth, shallowest first (docs/cascade.md).

`depth=152` picks the ladder's rung of depth 152, `model=auto` climbs the ladder (service/depth/cascade.py),
and a request that names no model gets the default model: `--default-model`, or else the shallowest
rung. Plain Python over the loaded models' cards; nothing here runs a model.

The default ladder takes, per depth, the variant that runs fastest on the provider its session got:
int8, then fp32, then fp16 on the CPU (ONNX Runtime's CPU kernels for fp16 are slower than fp32);
fp16, then fp32, then int8 on CUDA (int8 QDQ graphs fall back to CPU kernels there). resnet-export
writes an fp16 or int8 file only when its accuracy gate against fp32 passed, so a file that exists
has passed. Among variants of one precision, the one whose name is the bare arch wins, then the first
by name. Only models sharing the shallowest model's class list join the default ladder; the others
stay servable by name. `--ladder NAME,NAME,...` replaces the rule and is checked strictly.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import InvalidParameter, ServiceError
from service.engine.runtime import PROVIDERS, LoadedModel

# Precision preference per provider, fastest first (see the module docstring for why).
SPEED_ORDER = {
    PROVIDERS["cpu"]: ("int8", "fp32", "fp16"),
    PROVIDERS["cuda"]: ("fp16", "fp32", "int8"),
}


class LadderError(ValueError):
    """A ladder or default model the service cannot serve; the message names the bad value."""


class UnknownDepth(ServiceError):
    """The request asks for a depth that no rung of the ladder has."""

    status, code = 404, "unknown_depth"


@dataclass(frozen=True)
class Ladder:
    """Served model names, one per depth, shallowest first, sharing one class list."""

    rungs: tuple[str, ...]
    depths: tuple[int, ...]  # depths[i] is the depth of rungs[i], strictly increasing
    default_model: str  # what a request naming no model gets
    rule: str  # "fastest variant per depth" or "--ladder"

    def by_depth(self, depth: int) -> str:
        """The rung of this depth, or UnknownDepth (404) listing the depths served."""
        if depth not in self.depths:
            served = ", ".join(map(str, self.depths))
            raise UnknownDepth(f"no model of depth {depth} is served; depths: {served}", depths=list(self.depths))
        return self.rungs[self.depths.index(depth)]


def _speed_rank(model: LoadedModel) -> tuple[int, int, str]:
    order = SPEED_ORDER.get(model.providers[0] if model.providers else "", SPEED_ORDER[PROVIDERS["cpu"]])
    rank = order.index(model.card.precision) if model.card.precision in order else len(order)
    return rank, model.name != model.card.arch, model.name


def default_rungs(models: dict[str, LoadedModel]) -> list[str]:
    """One model per depth by the module's rule, among those sharing the shallowest model's classes."""
    shallowest = min(models.values(), key=lambda m: (m.card.depth, _speed_rank(m)))
    classes = shallowest.card.class_ids
    by_depth: dict[int, list[LoadedModel]] = {}
    for model in models.values():
        if model.card.class_ids == classes:
            by_depth.setdefault(model.card.depth, []).append(model)
    return [min(by_depth[depth], key=_speed_rank).name for depth in sorted(by_depth)]


def check_rungs(names: tuple[str, ...], models: dict[str, LoadedModel]) -> list[str]:
    """An explicit --ladder: every name served, one per depth, one class list; sorted by depth."""
    missing = [name for name in names if name not in models]
    if missing:
        raise LadderError(f"--ladder names {', '.join(missing)}, not served; served: {', '.join(sorted(models))}")
    if len(set(names)) != len(names):
        raise LadderError(f"--ladder names a model twice: {','.join(names)}")
    depths: dict[int, str] = {}
    for name in names:
        depth = models[name].card.depth
        if depth in depths:
            raise LadderError(f"--ladder has two models of depth {depth}: {depths[depth]} and {name}")
        depths[depth] = name
    first = models[names[0]].card
    for name in names[1:]:
        if models[name].card.class_ids != first.class_ids:
            raise LadderError(
                f"--ladder mixes class lists: {name} has {models[name].card.num_classes} classes "
                f"({models[name].card.class_ids[0]}, ...), {first.name} has {first.num_classes} "
                f"({first.class_ids[0]}, ...)"
            )
    return [depths[depth] for depth in sorted(depths)]


def build(models: dict[str, LoadedModel], names: tuple[str, ...] = (), default_model: str = "") -> Ladder:
    """The ladder for the loaded models: `names` (from --ladder) if given, else the default rule."""
    if not models:
        raise LadderError("no models to build a ladder from")
    rungs = check_rungs(names, models) if names else default_rungs(models)
    if default_model and default_model not in models:
        raise LadderError(f"default model {default_model!r} is not served; served: {', '.join(sorted(models))}")
    depths = tuple(models[name].card.depth for name in rungs)
    return Ladder(tuple(rungs), depths, default_model or rungs[0], "--ladder" if names else "fastest variant per depth")


def resolve(ladder: Ladder, models: dict[str, LoadedModel], model: str | None, depth: int | None) -> str | None:
    """The model a request asks for by `model` and/or `depth`; None means the default model.

    `model=auto` stays "auto" (the cascade); with a depth it is a 422, as is a model whose depth
    differs from the one asked for."""
    if depth is None:
        return model
    if model == "auto":
        raise InvalidParameter("model=auto climbs the ladder itself; it takes no depth", parameter="depth")
    if model is not None and model in models:
        if models[model].card.depth != depth:
            raise InvalidParameter(
                f"model {model!r} has depth {models[model].card.depth}, the request asks for depth {depth}",
                parameter="depth",
            )
        return model
    return model if model is not None else ladder.by_depth(depth)
