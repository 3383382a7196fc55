"""Each framework's own optimizer, built from a rule and canonical hyperparameters the way its users write it.

Only the hyperparameters a case gives are passed, so that everything else takes the framework's own default
(which each adapter's `OptimizerDeclaration` states). The constructor is kept as data (`Call`) so that the same thing
is run and printed in a reproducer. Where a user of a framework has no way to ask for a hyperparameter, the pair
is `NotApplicable` with the reason, never a substitute. The one composition built here is optax's own idiom,
`optax.chain(<clip>, optax.add_decayed_weights(wd), optax.<rule>(...))`: optax's optimizers other than adamw take
no weight decay, and a transform in front of the optimizer adds `wd * p` to the gradient, which is what torch's
`weight_decay` does; a clip goes first, on the raw gradients, where torch's `clip_grad_norm_` (called before
`optimizer.step()`) and Keras' `global_clipnorm` (applied before its weight decay) put it.

Frameworks are imported only inside the functions that use them.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conformance.backends.base import NotApplicable
from conformance.cases import CLIPPING, Schedule
from conformance.reference.optimizers import DECOUPLED, FORCED, Hyper, State, base_rule, check_hyperparameters

# how a reproducer imports each root name
MODULES = {"torch": "torch", "tf": "tensorflow", "keras": "keras", "optax": "optax"}


class _Placeholder:
    """Stands for what a call is built on (torch's parameters, or the optimizer a scheduler is built on) until
    `build` is given it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PARAMS, OPTIMIZER = _Placeholder("params"), _Placeholder("optimizer")


@dataclass(frozen=True)
class Call:
    """A constructor call as data: `function` is a dotted name from a root in MODULES; arguments may be Calls."""

    function: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def source(self) -> str:
        """The call as a user writes it, e.g. `torch.optim.Adam(params, lr=0.1)`."""
        arguments = [_source(a) for a in self.args] + [f"{k}={_source(v)}" for k, v in self.kwargs.items()]
        return f"{self.function}({', '.join(arguments)})"

    def imports(self) -> list[str]:
        """The import lines the source needs."""
        return sorted({_import_line(root) for root in self._roots()})

    def _roots(self) -> set[str]:
        arguments = [*self.args, *self.kwargs.values()]
        nested = [c for a in arguments for c in (a if isinstance(a, list) else [a]) if isinstance(c, Call)]
        return {self.function.split(".")[0]}.union(*(call._roots() for call in nested))


def _import_line(root: str) -> str:
    return f"import {root}" if MODULES[root] == root else f"import {MODULES[root]} as {root}"


def _source(value: Any) -> str:
    if isinstance(value, list):
        return f"[{', '.join(_source(item) for item in value)}]"
    return value.source() if isinstance(value, Call) else repr(value)


def build_target(call: Call) -> Any:
    """What the call calls: imports the framework and resolves the dotted name by attribute access."""
    root, *path = call.function.split(".")
    return functools.reduce(getattr, path, importlib.import_module(MODULES[root]))


def build(call: Call, on: Any = None) -> Any:
    """Runs the call (see build_target), with `on` for its placeholder (PARAMS, OPTIMIZER)."""

    def built(value: Any) -> Any:
        if isinstance(value, list):
            return [built(item) for item in value]
        return on if isinstance(value, _Placeholder) else build(value, on) if isinstance(value, Call) else value

    return build_target(call)(*map(built, call.args), **{k: built(v) for k, v in call.kwargs.items()})


def native_call(framework: str, rule: str, given: Hyper, schedule: Schedule | None = None) -> Call:
    """How a user of `framework` ("torch", "tensorflow", "keras": Keras 3 on any engine, "jax") writes `rule` with
    the case's hyperparameters and learning-rate schedule; NotApplicable where they cannot. A schedule goes in
    place of Keras' and optax's learning rate; torch's optimizer gets the lr its scheduler scales
    (`native_schedules.torch_base_lr`)."""
    from conformance.backends import native_schedules  # which builds on this module's Call

    check_hyperparameters(rule, given)
    hyper: dict[str, Any] = {**given, **FORCED.get(rule, {})}
    if schedule is not None:
        lr = float(hyper["lr"])
        if framework == "torch":
            hyper["lr"] = native_schedules.torch_base_lr(schedule, lr)
        elif framework == "jax":
            hyper["lr"] = native_schedules.optax_schedule(schedule, lr)
        else:
            hyper["lr"] = native_schedules.keras_schedule(
                schedule, lr, "tf.keras" if framework == "tensorflow" else "keras"
            )
    calls = {
        "torch": _torch_call,
        "tensorflow": functools.partial(_keras_call, module="tf.keras"),
        "keras": functools.partial(_keras_call, module="keras"),
        "jax": _optax_call,
    }
    return calls[framework](base_rule(rule), hyper)


def torch_scheduler(schedule: Schedule | None, given: Hyper) -> Call | None:
    """The scheduler a torch user builds on the optimizer and steps after each `optimizer.step()`; None without a
    schedule."""
    from conformance.backends import native_schedules

    return None if schedule is None else native_schedules.torch_scheduler(schedule, float(given["lr"]))


# ---------------------------------------------------------------------------------------------------- torch

_TORCH_CLASSES = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
    "adamax": "Adamax",
    "adadelta": "Adadelta",
    "nadam": "NAdam",
    "radam": "RAdam",
}
_TORCH_NAMES = {"rho": "alpha", "initial_accumulator": "initial_accumulator_value"}
_RHO_AS_RHO = {"adadelta": {"rho": "rho"}}  # RMSprop's rho is torch's alpha and optax's decay; Adadelta's is rho


def _torch_call(rule: str, hyper: dict) -> Call:
    if rule not in _TORCH_CLASSES:
        raise NotApplicable(f"torch.optim has no optimizer for {rule!r} (torch/optim/__init__.py)")
    if "clip_norm_per_variable" in hyper:
        raise NotApplicable(
            "torch has no clip of each parameter's own norm: torch.nn.utils.clip_grad_norm_ clips the global norm of "
            "the parameters it is given (torch/nn/utils/clip_grad.py)"
        )
    if hyper.get("nesterov") and (not hyper.get("momentum") or hyper.get("dampening")):
        raise NotApplicable(
            "torch.optim.SGD rejects nesterov=True without momentum or with dampening "
            "(torch/optim/sgd.py raises ValueError)"
        )
    kwargs = {
        {**_TORCH_NAMES, **_RHO_AS_RHO.get(rule, {})}.get(name, name): _native_value(value)
        for name, value in hyper.items()
        if name not in ("beta1", "beta2", *CLIPPING)
    }
    if "beta1" in hyper or "beta2" in hyper:  # torch takes both as `betas`; the other keeps torch's default
        from conformance.backends.torch import OPTIMIZERS  # the adapter imports this module

        defaults = OPTIMIZERS.defaults[rule]
        kwargs["betas"] = (float(hyper.get("beta1", defaults["beta1"])), float(hyper.get("beta2", defaults["beta2"])))
    return Call(f"torch.optim.{_TORCH_CLASSES[rule]}", (PARAMS,), kwargs)


def torch_clipping(given: Hyper) -> Call | None:
    """The clip a torch user calls between `backward()` and `optimizer.step()`, on the parameters' `.grad`;
    None without one."""
    if "clip_norm" in given:
        return Call("torch.nn.utils.clip_grad_norm_", (PARAMS,), {"max_norm": float(given["clip_norm"])})
    if "clip_value" in given:
        return Call("torch.nn.utils.clip_grad_value_", (PARAMS,), {"clip_value": float(given["clip_value"])})
    return None


# ---------------------------------------------------------------------------------------------------- keras

_KERAS_CLASSES = {  # the same names as torch's but for Nadam; Lion and no RAdam
    **{rule: name for rule, name in _TORCH_CLASSES.items() if rule != "radam"},
    "nadam": "Nadam",
    "lion": "Lion",
}
_KERAS_NAMES = {
    "lr": "learning_rate",
    "beta1": "beta_1",
    "beta2": "beta_2",
    "eps": "epsilon",
    "initial_accumulator": "initial_accumulator_value",
    "clip_norm": "global_clipnorm",
    "clip_norm_per_variable": "clipnorm",
    "clip_value": "clipvalue",
}


def _keras_call(rule: str, hyper: dict, module: str) -> Call:
    if rule not in _KERAS_CLASSES:
        raise NotApplicable(f"keras.optimizers has no optimizer for {rule!r} (keras/src/optimizers/__init__.py)")
    if hyper.pop("dampening", 0.0):
        raise NotApplicable("keras.optimizers.SGD has no dampening (keras/src/optimizers/sgd.py)")
    if "momentum_decay" in hyper:
        raise NotApplicable(
            "keras.optimizers.Nadam has no momentum_decay: its momentum schedule is beta_1 * (1 - 0.5 * 0.96^t) "
            "(keras/src/optimizers/nadam.py)"
        )
    kwargs = {_KERAS_NAMES.get(name, name): _native_value(value) for name, value in hyper.items()}
    return Call(f"{module}.optimizers.{_KERAS_CLASSES[rule]}", (), kwargs)


# ---------------------------------------------------------------------------------------------------- optax

_OPTAX_NAMES = {
    "lr": "learning_rate",
    "beta1": "b1",
    "beta2": "b2",
    "rho": "decay",
    "initial_accumulator": "initial_accumulator_value",
}


def _optax_call(rule: str, hyper: dict) -> Call:
    amsgrad = hyper.pop("amsgrad", False)
    if rule == "adamw" and amsgrad:
        raise NotApplicable(
            "optax.adamw has no amsgrad option and optax.amsgrad has no decoupled weight decay (optax/_src/alias.py)"
        )
    if hyper.pop("dampening", 0.0):
        raise NotApplicable("optax.sgd's momentum (optax.trace) has no dampening (optax/transforms/_accumulation.py)")
    if "momentum_decay" in hyper:
        raise NotApplicable(
            "optax.nadam has no momentum schedule to decay: it is optax.adam(nesterov=True), mu_t = b1 "
            "(optax/_src/alias.py)"
        )
    function = "amsgrad" if amsgrad else rule
    if "lr" not in hyper:
        raise NotApplicable(f"optax.{function} has no default learning rate, and the case gives no lr")
    if "momentum" in hyper and not hyper["momentum"]:
        del hyper["momentum"]  # None is optax's way to say no momentum; 0 would keep an idle trace in the state
    decay = hyper.pop("weight_decay", 0.0) if rule not in DECOUPLED else 0.0  # theirs are their own, decoupled
    clip = _optax_clip(hyper)
    names = {**_OPTAX_NAMES, **_RHO_AS_RHO.get(rule, {})}
    kwargs = {names.get(name, name): _native_value(value) for name, value in hyper.items()}
    chain = [
        *([clip] if clip else []),
        *([Call("optax.add_decayed_weights", (float(decay),))] if decay else []),
        Call(f"optax.{function}", (), kwargs),
    ]
    return Call("optax.chain", tuple(chain)) if len(chain) > 1 else chain[0]


def _optax_clip(hyper: dict) -> Call | None:
    """The clip a user chains first, on the raw gradients (then decay, then the rule); taken out of `hyper`."""
    if "clip_norm_per_variable" in hyper:
        raise NotApplicable(
            "optax has no clip of each leaf's own norm: clip_by_global_norm clips the global norm and "
            "clip_by_block_rms each leaf's root mean square, norm / sqrt(size) (optax/transforms/_clipping.py)"
        )
    if "clip_norm" in hyper:
        return Call("optax.clip_by_global_norm", (float(hyper.pop("clip_norm")),))
    if "clip_value" in hyper:
        return Call("optax.clip", (float(hyper.pop("clip_value")),))
    return None


def _native_value(value: float | bool | Call) -> float | bool | Call:
    """Keras insists on Python floats (`learning_rate`, SGD's `momentum`); booleans and schedules stay as they are."""
    return value if isinstance(value, (bool, Call)) else float(value)


# ---------------------------------------------------------------------------------------------------- building


def torch_optimizer(
    rule: str,
    given: Hyper,
    params: list[Any],
    implementation: Mapping[str, bool] | None = None,
    schedule: Schedule | None = None,
) -> Any:
    """`torch.optim.<Rule>(params, ...)` for a list of leaf tensors, with `implementation` (`foreach=True`,
    `fused=True`) among its arguments; NotApplicable where the class has no such argument."""
    import inspect

    import torch

    call = native_call("torch", rule, given, schedule)
    accepted = inspect.signature(build_target(call)).parameters
    implementation = implementation or {}
    for argument in implementation:
        if argument not in accepted:
            raise NotApplicable(
                f"{call.function} has no {argument} implementation (its constructor takes no `{argument}`, torch "
                f"{torch.__version__})"
            )
    return build(Call(call.function, call.args, {**call.kwargs, **implementation}), params)


def keras_optimizer(rule: str, given: Hyper, framework: str = "tensorflow", schedule: Schedule | None = None) -> Any:
    """`tf.keras.optimizers.<Rule>(...)`, or `keras.optimizers.<Rule>(...)` for the framework "keras" (Keras 3 on
    another engine); not yet built (it builds its slots in `build` or on the first `apply_gradients`)."""
    return build(native_call(framework, rule, given, schedule))


def optax_optimizer(rule: str, given: Hyper, schedule: Schedule | None = None) -> Any:
    """`optax.<rule>(...)`, chained after `optax.add_decayed_weights` for L2 weight decay and after the clip."""
    return build(native_call("jax", rule, given, schedule))


# ---------------------------------------------------------------------------------------------------- state


def _array(value: Any, slot: str) -> np.ndarray:
    """A copy, so that later in-place updates cannot change what was read; step counts as int64."""
    array = np.array(value, copy=True)
    return array.astype(np.int64) if slot == "step" else array


_TORCH_SLOTS = {"momentum_buffer": "momentum"}  # every other torch state key is already the reference's name


def torch_state(optimizer: Any, params: Mapping[str, Any]) -> State:
    """`optimizer.state[p]` for each named parameter; a parameter that never had a gradient has none."""
    state: State = {}
    for name, parameter in params.items():
        for key, value in optimizer.state.get(parameter, {}).items():
            slot = _TORCH_SLOTS.get(key, key)
            state.setdefault(slot, {})[name] = _array(value.detach().cpu().numpy(), slot)
    return state


_KERAS_SLOTS = {
    "sgd": {"momentum": "momentum"},
    "adam": {"momentum": "exp_avg", "velocity": "exp_avg_sq", "velocity_hat": "max_exp_avg_sq"},
    "adamw": {"momentum": "exp_avg", "velocity": "exp_avg_sq", "velocity_hat": "max_exp_avg_sq"},
    "rmsprop": {"velocity": "square_avg", "average_gradient": "grad_avg", "momentum": "momentum"},
    "adagrad": {"accumulator": "sum"},
    "adamax": {"momentum": "exp_avg", "norm": "exp_inf"},
    "adadelta": {"accumulated_grad": "square_avg", "accumulated_delta_var": "acc_delta"},
    "nadam": {"momentum": "exp_avg", "velocity": "exp_avg_sq"},
    "lion": {"momentum": "exp_avg"},
}


def keras_state(optimizer: Any, rule: str, variables: Mapping[str, Any]) -> State:
    """`optimizer.variables`, found by the names Keras gives them (`<variable>_<slot>`); `iterations` is every
    variable's step count, since Keras keeps one."""
    by_name = {variable.name: variable for variable in optimizer.variables}
    state: State = {"step": {name: _array(optimizer.iterations.numpy(), "step") for name in variables}}
    for name, variable in variables.items():
        prefix = _keras_slot_prefix(variable)
        for suffix, slot in _KERAS_SLOTS[base_rule(rule)].items():
            if f"{prefix}_{suffix}" in by_name:
                state.setdefault(slot, {})[name] = _array(by_name[f"{prefix}_{suffix}"].numpy(), slot)
    return state


def _keras_slot_prefix(variable: Any) -> str:
    """As keras/src/optimizers/base_optimizer.py add_variable_from_reference names a slot after its variable."""
    if hasattr(variable, "path"):
        return variable.path.replace("/", "_")
    return str(variable.name).replace("/", "_").replace(":", "_")


_OPTAX_SLOTS = {
    "TraceState": {"trace": "momentum"},
    "ScaleByAdamState": {"count": "step", "mu": "exp_avg", "nu": "exp_avg_sq"},
    "ScaleByAmsgradState": {"count": "step", "mu": "exp_avg", "nu": "exp_avg_sq", "nu_max": "max_exp_avg_sq"},
    "ScaleByRmsState": {"nu": "square_avg"},
    "ScaleByRStdDevState": {"mu": "grad_avg", "nu": "square_avg"},
    "ScaleByRssState": {"sum_of_squares": "sum"},
    "ScaleByAdaDeltaState": {"e_g": "square_avg", "e_x": "acc_delta"},
    "ScaleByLionState": {"count": "step", "mu": "exp_avg"},
}


_OPTAX_RULE_SLOTS = {"adamax": {"ScaleByAdamState": {"count": "step", "mu": "exp_avg", "nu": "exp_inf"}}}


def optax_state(opt_state: Any, names: list[str], rule: str) -> State:
    """The named tuples of an optax state (nested through chain), read by their fields; a count is shared.
    scale_by_adamax keeps its infinity norm in scale_by_adam's state type, as `nu`."""
    state: State = {}
    slots_of = {**_OPTAX_SLOTS, **_OPTAX_RULE_SLOTS.get(base_rule(rule), {})}
    for node in _named_tuples(opt_state):
        for field_name, slot in slots_of.get(type(node).__name__, {}).items():
            value = getattr(node, field_name)
            for name in names:
                state.setdefault(slot, {})[name] = _array(value if slot == "step" else value[name], slot)
    return state


def _named_tuples(node: Any):
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        yield node
    if isinstance(node, (tuple, list)):
        for child in node:
            yield from _named_tuples(child)
