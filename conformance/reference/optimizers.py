"""The update-rule oracle: every rule in float64 numpy, with a switch for each documented framework variant.

Pure functions in the style of optax: `init` makes the state, `step` returns new parameters and a new state and
changes neither argument. A state is a plain dict, slot name -> variable name -> array (`"step"` holds each
variable's step count), named after torch's state keys so that every framework's native state can be read into
the same shape. A backend's difference from another is *explained* only when this reference, run with that
backend's declared switches and defaults (an `OptimizerDeclaration`, which each adapter keeps beside its code),
reproduces it; every switch value cites the source line it follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np

from conformance.cases import CLIPPING, RULES, Schedule
from conformance.reference import schedules
from conformance.reference.conventions import Citation

Params = dict[str, np.ndarray]
State = dict[str, dict[str, np.ndarray]]
Hyper = Mapping[str, float | bool]  # a complete one may hold the case's Schedule too, as "schedule"

RULE_HYPERPARAMETERS = {
    "sgd": ("lr", "momentum", "dampening", "nesterov", "weight_decay"),
    "adam": ("lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad"),
    "adamw": ("lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad"),
    "rmsprop": ("lr", "rho", "eps", "momentum", "centered", "weight_decay"),
    "adagrad": ("lr", "eps", "initial_accumulator", "weight_decay"),
    "adamax": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "adadelta": ("lr", "rho", "eps", "weight_decay"),
    "nadam": ("lr", "beta1", "beta2", "eps", "weight_decay", "momentum_decay"),
    "radam": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "lion": ("lr", "beta1", "beta2", "weight_decay"),
}
DECOUPLED = ("adamw", "lion")  # rules whose weight decay is decoupled in every framework
ALIASES = {"momentum": "sgd", "nesterov": "sgd", "amsgrad": "adam"}  # a rule that is another with a flag set
FORCED = {"nesterov": {"nesterov": True}, "amsgrad": {"amsgrad": True}}
REQUIRED = {"momentum": ("momentum",), "nesterov": ("momentum",)}  # no framework has a non-zero default


def source_citation(repository: str, release: str, path: str, text: str) -> Citation:
    """A line of a framework's source at the release it was read from (a newer release may have moved it)."""
    return Citation(f"{path}: {text}", f"https://github.com/{repository}/blob/v{release}/{path}")


def base_rule(rule: str) -> str:
    """The rule an alias stands for: momentum and nesterov are sgd, amsgrad is adam."""
    return ALIASES.get(rule, rule)


def check_hyperparameters(rule: str, given: Hyper) -> None:
    """Raises ValueError, naming the hyperparameter, where a case's update table does not fit its rule."""
    if rule not in RULES:
        raise ValueError(f"update.rule: unknown rule {rule!r} (known: {', '.join(RULES)})")
    for name in given:
        if name not in RULE_HYPERPARAMETERS[base_rule(rule)] and name not in CLIPPING:
            raise ValueError(f"update.{name}: rule {rule!r} has no hyperparameter {name!r}")
    for name, value in FORCED.get(rule, {}).items():
        if name in given and given[name] != value:
            raise ValueError(f"update.{name}: rule {rule!r} means {name} = {str(value).lower()}")
    for name in REQUIRED.get(rule, ()):
        if name not in given:
            raise ValueError(f"update.{name}: rule {rule!r} needs it (no framework has a non-zero default)")


def hyperparameters(
    rule: str, framework: str, declared: OptimizerDeclaration, given: Hyper, schedule: Schedule | None = None
) -> dict:
    """The complete hyperparameters `framework` runs `rule` with: the case's values over the defaults it declares,
    and the case's learning-rate schedule, if any, as "schedule"."""
    check_hyperparameters(rule, given)
    if rule not in declared.defaults:
        why = f": {declared.absent[rule]}" if rule in declared.absent else ""
        raise ValueError(f"update.rule: {framework} declares no native optimizer for {rule!r}{why}")
    complete = {**declared.defaults[rule], **given, **FORCED.get(rule, {})}
    missing = [name for name in RULE_HYPERPARAMETERS[base_rule(rule)] if name not in complete]
    if missing:
        raise ValueError(f"update.{missing[0]}: {framework} has no default for it in {rule!r}; the case must give it")
    return {**complete, "schedule": schedule} if schedule is not None else complete


# ---------------------------------------------------------------------------------------------------- switches

SWITCH_MEANINGS: dict[str, dict[str, str]] = {
    "adam_eps": {
        "sqrt_v_hat": "eps is added to sqrt(v_hat), v_hat = v / (1 - beta2^t)",
        "sqrt_v": "the bias corrections are folded into the step size lr * sqrt(1 - beta2^t) / (1 - beta1^t) and eps "
        "is added to sqrt(v), i.e. eps / sqrt(1 - beta2^t) in terms of v_hat: much larger for small t",
    },
    "amsgrad_max": {
        "v": "the running maximum is taken of the uncorrected v and divided by the current 1 - beta2^t",
        "v_hat": "the running maximum is taken of the bias-corrected v_hat of each step",
    },
    "weight_decay": {
        "l2": "weight_decay * p is added to the gradient before the rule (L2 regularisation)",
        "decoupled": "p -= lr * weight_decay * p before the rule, outside its moments (decoupled, as AdamW)",
    },
    "sgd_momentum": {
        "gradient": "the buffer is in gradient units: buf = momentum * buf + (1 - dampening) * g, p -= lr * buf",
        "step": "the buffer holds lr: buf = momentum * buf + lr * g, p -= buf",
        "update": "the buffer holds the signed update: m = momentum * m - lr * g, p += m",
    },
    "rmsprop_eps": {
        "outside_sqrt": "g / (sqrt(v) + eps)",
        "inside_sqrt": "g / sqrt(v + eps)",
    },
    "adagrad_eps": {
        "outside_sqrt": "g / (sqrt(sum) + eps)",
        "inside_sqrt": "g / sqrt(sum + eps)",
    },
    "no_gradient": {
        "skip": "a variable without a gradient is left alone: no decay, its state and its own step count unchanged",
        "skip_count_advances": "a variable without a gradient is left alone, but the one shared step count advances",
        "zero": "a variable without a gradient gets a zero gradient and is updated like any other",
    },
    "nadam_momentum": {
        "schedule": "Dozat's momentum schedule mu_t = beta1 (1 - 0.5 * 0.96^(t * momentum_decay)), the step "
        "(1 - mu_t) g / (1 - prod mu) + mu_t+1 m / (1 - mu_t+1 prod mu)",
        "constant": "mu_t = beta1 at every step: the step (1 - beta1) g / (1 - beta1^t) + beta1 m / (1 - beta1^(t+1))",
    },
    "nadam_mu_product": {
        "dtype": "the running product of the mu_t is held in the run's dtype",
        "float32": "the running product of the mu_t is held in float32, in float64 runs too",
    },
    "adamax_eps": {
        "inside_max": "the infinity norm takes eps in: u = max(beta2 * u, |g| + eps), step m_hat / u",
        "outside_max": "u = max(beta2 * u, |g|), step m_hat / (u + eps)",
    },
    "radam_eps": {
        "sqrt_v_hat": "the rectified step is r_t m_hat / (sqrt(v_hat) + eps)",
        "sqrt_v": "the rectified step is r_t m_hat sqrt(1 - beta2^t) / (sqrt(v) + eps), i.e. eps / sqrt(1 - beta2^t) "
        "in terms of v_hat: much larger for small t",
    },
    "radam_threshold": {
        "above": "the rectified step once rho_t > 5, m_hat alone before",
        "from": "the rectified step once rho_t >= 5, m_hat alone before",
    },
    "clip_norm_eps": {
        "exact": "clip_norm scales the gradients by min(1, clip_norm / norm)",
        "norm_plus_1e-6": "clip_norm scales the gradients by min(1, clip_norm / (norm + 1e-6)): a clipped norm "
        "comes out short of clip_norm by 1e-6 / (norm + 1e-6) relative, and a norm just below clip_norm is scaled too",
    },
    "hyperparameter_precision": {
        "as_given": "hyperparameters enter the arithmetic as the Python floats given",
        "float32_casts": "a float64 run uses float32-rounded lr (held in a floatx variable), weight_decay, SGD's "
        "momentum, Adagrad's initial accumulator, the betas of Adam's bias corrections and of Nadam's and Lion's "
        "whole step, and Nadam's 0.96 (each "
        "passes through ops.cast(python_float, dtype), which makes a float32 tensor first); "
        "1 - beta2 in float32 is off by 1.3e-5 relative, so early Adam steps move by ~1e-5",
    },
}
SWITCH_MEANINGS["rmsprop_momentum"] = SWITCH_MEANINGS["sgd_momentum"]
SWITCH_MEANINGS.update(schedules.SWITCH_MEANINGS)

_SCHEDULES = ("cosine_after_decay", "piecewise_boundary", "schedule_precision")
_EVERY_RULE = ("clip_norm_eps", *_SCHEDULES, "no_gradient", "hyperparameter_precision")
RULE_SWITCHES = {
    "sgd": ("weight_decay", "sgd_momentum", *_EVERY_RULE),
    "adam": ("adam_eps", "amsgrad_max", "weight_decay", *_EVERY_RULE),
    "adamw": ("adam_eps", "amsgrad_max", *_EVERY_RULE),  # decoupled in every framework
    "rmsprop": ("rmsprop_eps", "rmsprop_momentum", "weight_decay", *_EVERY_RULE),
    "adagrad": ("adagrad_eps", "weight_decay", *_EVERY_RULE),
    "adamax": ("adamax_eps", "weight_decay", *_EVERY_RULE),
    "adadelta": ("weight_decay", *_EVERY_RULE),  # the same formula in torch, Keras and optax
    "nadam": ("nadam_momentum", "nadam_mu_product", "weight_decay", *_EVERY_RULE),
    "radam": ("radam_eps", "radam_threshold", "weight_decay", *_EVERY_RULE),
    "lion": _EVERY_RULE,  # decoupled weight decay in every framework
}


@dataclass(frozen=True)
class UpdateSwitches:
    """The documented variants a framework follows; `citations` says where, one per switch."""

    adam_eps: str = "sqrt_v_hat"
    amsgrad_max: str = "v"
    weight_decay: str = "l2"
    sgd_momentum: str = "gradient"
    rmsprop_momentum: str = "gradient"
    rmsprop_eps: str = "outside_sqrt"
    adagrad_eps: str = "outside_sqrt"
    adamax_eps: str = "inside_max"
    nadam_momentum: str = "schedule"
    nadam_mu_product: str = "dtype"
    radam_eps: str = "sqrt_v_hat"
    radam_threshold: str = "from"
    clip_norm_eps: str = "exact"
    cosine_after_decay: str = "hold"
    piecewise_boundary: str = "from_boundary"
    schedule_precision: str = "float64"
    no_gradient: str = "skip"
    hyperparameter_precision: str = "as_given"
    citations: dict[str, Citation] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in self.names():
            if getattr(self, name) not in SWITCH_MEANINGS[name]:
                raise ValueError(f"switch {name} = {getattr(self, name)!r}: one of {', '.join(SWITCH_MEANINGS[name])}")

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(f.name for f in fields(UpdateSwitches) if f.name != "citations")


# ---------------------------------------------------------------------------------------------------- defaults


def defaults_by_rule(**by_base: dict) -> dict[str, dict]:
    """A framework's defaults for every rule it has, from those of the base rules (aliases set their flag)."""
    return {rule: {**by_base[base_rule(rule)], **FORCED.get(rule, {})} for rule in RULES if base_rule(rule) in by_base}


ADAM_DEFAULTS = {"beta1": 0.9, "beta2": 0.999, "amsgrad": False}  # the same in torch, Keras and optax


@dataclass(frozen=True)
class OptimizerDeclaration:
    """What a backend declares about its native optimizers, beside its adapter: the documented switch of each
    formula (cited), what each rule runs with where a case gives no value (rule -> hyperparameter -> value; a knob
    the framework lacks is given the value at which it does nothing, and a hyperparameter it has no default for is
    left out), and where those defaults are written (one citation per base rule)."""

    switches: UpdateSwitches
    defaults: dict[str, dict[str, float | bool]]
    defaults_source: dict[str, Citation]
    absent: dict[str, str] = field(default_factory=dict)  # rule -> why the framework has no native optimizer for it


# ---------------------------------------------------------------------------------------------------- the rules


def init(rule: str, hyper: Hyper, switches: UpdateSwitches, params: Mapping[str, np.ndarray]) -> State:
    """The state before the first step: the rule's slots at their initial values and step counts of 0.

    Every framework starts its moments at zero (rmsprop's too, in torch, Keras and optax)."""
    state = {
        slot: {
            name: np.full(() if slot in SCALAR_SLOTS else np.shape(value), initial, dtype=np.float64)
            for name, value in params.items()
        }
        for slot, initial in _initial_slots(base_rule(rule), hyper, switches).items()
    }
    state["step"] = {name: np.asarray(0, dtype=np.int64) for name in params}
    return state


SCALAR_SLOTS = ("mu_product",)  # one number per variable, as torch keeps it


def _initial_slots(rule: str, hyper: Hyper, switches: UpdateSwitches) -> dict[str, float]:
    if rule == "sgd":
        return {"momentum": 0.0} if hyper["momentum"] else {}
    if rule in ("adam", "adamw"):
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0, **({"max_exp_avg_sq": 0.0} if hyper["amsgrad"] else {})}
    if rule == "rmsprop":
        centered = {"grad_avg": 0.0} if hyper["centered"] else {}
        return {"square_avg": 0.0, **centered, **({"momentum": 0.0} if hyper["momentum"] else {})}
    if rule == "adamax":
        return {"exp_avg": 0.0, "exp_inf": 0.0}
    if rule == "adadelta":
        return {"square_avg": 0.0, "acc_delta": 0.0}
    if rule == "nadam":
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0, "mu_product": 1.0}
    if rule == "radam":
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    if rule == "lion":
        return {"exp_avg": 0.0}
    return {"sum": _precision(hyper["initial_accumulator"], switches)}


def step(
    rule: str,
    hyper: Hyper,
    switches: UpdateSwitches,
    params: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray | None],
    state: State,
    iteration: int = 0,
    lr_offset: float = 0.0,
) -> tuple[Params, State]:
    """One update, the one with `iteration` steps before it. `hyper` is complete (see `hyperparameters`); a gradient
    that is None or missing means the framework gives none (tf.GradientTape's None, torch's .grad None), and
    `switches.no_gradient` says what then. `lr_offset` is added to the learning rate (for bounds: how far a step
    moves when a framework's schedule is off by that much)."""
    rule = base_rule(rule)
    grads = clipped(grads, hyper, switches)
    lr = _precision(scheduled_lr(hyper, switches, iteration), switches) + lr_offset
    new_params = {name: np.array(value, dtype=np.float64) for name, value in params.items()}
    new_state = {slot: dict(values) for slot, values in state.items()}
    for name in params:
        gradient = grads.get(name)
        if gradient is None and switches.no_gradient != "zero":
            if switches.no_gradient == "skip_count_advances":  # and what the shared count drives
                new_state["step"][name] = new_state["step"][name] + 1
                if "mu_product" in new_state and switches.nadam_momentum == "schedule":
                    count = int(new_state["step"][name])
                    new_state["mu_product"][name] = _nadam_product(
                        new_state["mu_product"][name], hyper, switches, count
                    )
            continue
        p, g, slots = _prepared(rule, hyper, switches, lr, new_params[name], gradient, new_state, name)
        new_params[name] = _RULES[rule](p, g, lr, hyper, switches, slots)
        for slot, value in slots.items():
            new_state[slot][name] = value
    return new_params, new_state


def _prepared(rule, hyper, switches, lr, p, gradient, state, name):
    """A variable's parameter and gradient after weight decay (decoupled or L2), and its slots with the step counted:
    what the rule's own formula starts from."""
    g = np.zeros_like(p) if gradient is None else np.asarray(gradient, dtype=np.float64)
    slots = {slot: values[name] for slot, values in state.items() if name in values}
    slots["step"] = slots["step"] + 1
    weight_decay = _precision(hyper["weight_decay"], switches)
    if rule in DECOUPLED or switches.weight_decay == "decoupled":
        return p - lr * weight_decay * p, g, slots
    return p, g + weight_decay * p, slots


def branch_allowance(
    rule: str,
    hyper: Hyper,
    switches: UpdateSwitches,
    params: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray | None],
    state: State,
    iteration: int,
    u: float,
    carried: State,
    scalars_dtype: str,
) -> dict[str, np.ndarray]:
    """How far a framework's step may lie from `step`'s beyond the roundings of its arithmetic, where the rule
    branches on a computed value (Lion's sign, RAdam's rectification threshold) or amplifies a scalar's rounding
    (RAdam's rho_t): 0 for the other rules. `u` is the unit roundoff of the tensors' arithmetic, `carried` bounds
    how far the framework's state may lie from `state` (slot -> name -> array), and `scalars_dtype` is the dtype of
    the framework's decay powers ("float64" where it keeps Python floats)."""
    rule = base_rule(rule)
    allowance = {name: np.zeros(np.shape(value)) for name, value in params.items()}
    if rule not in _BRANCHES:
        return allowance
    grads, lr = clipped(grads, hyper, switches), _precision(scheduled_lr(hyper, switches, iteration), switches)
    for name in params:
        if grads.get(name) is None and switches.no_gradient != "zero":
            continue
        _, g, slots = _prepared(rule, hyper, switches, lr, np.asarray(params[name]), grads.get(name), state, name)
        off = {slot: by_name[name] for slot, by_name in carried.items() if name in by_name}
        allowance[name] = lr * _BRANCHES[rule](g, hyper, switches, slots, off, u, scalars_dtype)
    return allowance


def scheduled_lr(hyper: Hyper, switches: UpdateSwitches, iteration: int) -> float:
    """The learning rate of the step with `iteration` steps before it: the lr, or the case's schedule from it."""
    schedule = hyper.get("schedule")
    if schedule is None:
        return float(hyper["lr"])
    lr = schedules.learning_rate(
        schedule, float(hyper["lr"]), iteration, switches.cosine_after_decay, switches.piecewise_boundary
    )
    return float(np.float32(lr)) if schedules.in_float32(schedule, switches.schedule_precision) else lr


def clipped(grads: Mapping[str, np.ndarray | None], hyper: Hyper, switches: UpdateSwitches) -> dict:
    """The gradients after the case's clip, before the rule and its weight decay, as every framework orders them:
    the global norm over the variables that have a gradient, each variable's own norm, or each element."""
    present = {name: np.asarray(g, dtype=np.float64) for name, g in grads.items() if g is not None}
    if "clip_norm" in hyper:
        norm = float(np.sqrt(sum(np.sum(g * g) for g in present.values())))
        shift = 1e-6 if switches.clip_norm_eps == "norm_plus_1e-6" else 0.0
        scale = min(1.0, float(hyper["clip_norm"]) / (norm + shift)) if norm + shift > 0 else 1.0
        present = {name: g * scale for name, g in present.items()}
    elif "clip_norm_per_variable" in hyper:
        threshold = float(hyper["clip_norm_per_variable"])
        present = {name: g * (threshold / max(float(np.sqrt(np.sum(g * g))), threshold)) for name, g in present.items()}
    elif "clip_value" in hyper:
        present = {name: np.clip(g, -hyper["clip_value"], hyper["clip_value"]) for name, g in present.items()}
    return {name: present.get(name) for name in grads}


def _precision(value: float | bool, switches: UpdateSwitches) -> float:
    """A hyperparameter at the precision the framework computes with it (only where Keras casts it)."""
    return float(np.float32(value)) if switches.hyperparameter_precision == "float32_casts" else float(value)


def _momentum(
    form: str,
    buffer: np.ndarray,
    direction: np.ndarray,
    into_buffer: np.ndarray,
    momentum: float,
    lr: float,
    nesterov: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(new buffer, change to p): torch keeps the buffer in gradient units, Keras and optax keep lr inside it."""
    scale = {"gradient": 1.0, "step": lr, "update": -lr}[form]
    buffer = momentum * buffer + scale * into_buffer
    moved = scale * direction + momentum * buffer if nesterov else buffer
    return buffer, {"gradient": -lr * moved, "step": -moved, "update": moved}[form]


def _sgd(p, g, lr, hyper, switches, slots):
    momentum = _precision(hyper["momentum"], switches)
    if not momentum:
        return p - lr * g
    # torch sets buf = grad on a parameter's first step, so dampening starts on the second
    damped = g if int(slots["step"]) == 1 else (1 - float(hyper["dampening"])) * g
    slots["momentum"], change = _momentum(
        switches.sgd_momentum, slots["momentum"], g, damped, momentum, lr, bool(hyper["nesterov"])
    )
    return p + change


def _adam_moments(slots: dict, g: np.ndarray, beta1: float, beta2: float) -> None:
    slots["exp_avg"] = beta1 * slots["exp_avg"] + (1 - beta1) * g
    slots["exp_avg_sq"] = beta2 * slots["exp_avg_sq"] + (1 - beta2) * g * g


def _adam(p, g, lr, hyper, switches, slots):
    beta1, beta2, eps, t = float(hyper["beta1"]), float(hyper["beta2"]), float(hyper["eps"]), int(slots["step"])
    _adam_moments(slots, g, beta1, beta2)
    correction1 = 1 - _precision(beta1, switches) ** t
    correction2 = 1 - _precision(beta2, switches) ** t
    v = slots["exp_avg_sq"]
    if hyper["amsgrad"] and switches.amsgrad_max == "v":
        v = slots["max_exp_avg_sq"] = np.maximum(slots["max_exp_avg_sq"], v)
    elif hyper["amsgrad"]:
        slots["max_exp_avg_sq"] = np.maximum(slots["max_exp_avg_sq"], v / correction2)
        v = slots["max_exp_avg_sq"] * correction2
    if switches.adam_eps == "sqrt_v":
        return p - slots["exp_avg"] * (lr * np.sqrt(correction2) / correction1) / (np.sqrt(v) + eps)
    return p - lr * (slots["exp_avg"] / correction1) / (np.sqrt(v / correction2) + eps)


def _rmsprop(p, g, lr, hyper, switches, slots):
    rho, eps, momentum = float(hyper["rho"]), float(hyper["eps"]), float(hyper["momentum"])
    slots["square_avg"] = rho * slots["square_avg"] + (1 - rho) * g * g
    variance = slots["square_avg"]
    if hyper["centered"]:
        slots["grad_avg"] = rho * slots["grad_avg"] + (1 - rho) * g
        variance = variance - slots["grad_avg"] ** 2
    scaled = g / (np.sqrt(variance) + eps if switches.rmsprop_eps == "outside_sqrt" else np.sqrt(variance + eps))
    if not momentum:
        return p - lr * scaled
    slots["momentum"], change = _momentum(
        switches.rmsprop_momentum, slots["momentum"], scaled, scaled, momentum, lr, nesterov=False
    )
    return p + change


def _adagrad(p, g, lr, hyper, switches, slots):
    eps = float(hyper["eps"])
    total = slots["sum"] = slots["sum"] + g * g
    return p - lr * g / (np.sqrt(total) + eps if switches.adagrad_eps == "outside_sqrt" else np.sqrt(total + eps))


def _adamax(p, g, lr, hyper, switches, slots):
    beta1, beta2, eps, t = float(hyper["beta1"]), float(hyper["beta2"]), float(hyper["eps"]), int(slots["step"])
    slots["exp_avg"] = beta1 * slots["exp_avg"] + (1 - beta1) * g
    inside = switches.adamax_eps == "inside_max"
    slots["exp_inf"] = np.maximum(beta2 * slots["exp_inf"], np.abs(g) + (eps if inside else 0.0))
    correction = 1 - _precision(beta1, switches) ** t
    return p - lr * (slots["exp_avg"] / correction) / (slots["exp_inf"] + (0.0 if inside else eps))


def _adadelta(p, g, lr, hyper, switches, slots):
    rho, eps = float(hyper["rho"]), float(hyper["eps"])
    slots["square_avg"] = rho * slots["square_avg"] + (1 - rho) * g * g
    delta = np.sqrt(slots["acc_delta"] + eps) / np.sqrt(slots["square_avg"] + eps) * g
    slots["acc_delta"] = rho * slots["acc_delta"] + (1 - rho) * delta * delta
    return p - lr * delta


def _nadam(p, g, lr, hyper, switches, slots):
    # Keras casts the betas and 0.96 to the variable's dtype (through float32) for the step, moments included
    beta1, beta2 = _precision(hyper["beta1"], switches), _precision(hyper["beta2"], switches)
    eps, t = float(hyper["eps"]), int(slots["step"])
    _adam_moments(slots, g, beta1, beta2)
    denominator = np.sqrt(slots["exp_avg_sq"] / (1 - beta2**t)) + eps
    if switches.nadam_momentum == "constant":
        return (
            p
            - lr * (beta1 * slots["exp_avg"] / (1 - beta1 ** (t + 1)) + (1 - beta1) * g / (1 - beta1**t)) / denominator
        )
    decay, base = float(hyper["momentum_decay"]), _precision(0.96, switches)
    mu, mu_next = (beta1 * (1 - 0.5 * base ** (step * decay)) for step in (t, t + 1))
    slots["mu_product"] = _nadam_product(slots["mu_product"], hyper, switches, t)
    product = float(slots["mu_product"])
    return p - lr * ((1 - mu) / (1 - product) * g + mu_next / (1 - product * mu_next) * slots["exp_avg"]) / denominator


def _nadam_product(product: np.ndarray, hyper: Hyper, switches: UpdateSwitches, t: int) -> np.ndarray:
    """The running product of the momentum factors after step t, from the Python floats (Keras' _backend_update_step
    multiplies by self.beta_1 and 0.96 as given, though its step casts them), held as `nadam_mu_product` says."""
    mu = float(hyper["beta1"]) * (1 - 0.5 * 0.96 ** (t * float(hyper["momentum_decay"])))
    if switches.nadam_mu_product == "float32":
        return np.asarray(np.float32(product) * np.float32(mu), dtype=np.float64)
    return np.asarray(product * mu, dtype=np.float64)


def radam_rho(beta2: float, t: int) -> float:
    """rho_t, the length of the simple moving average that Adam's exponential one approximates after t steps
    (Liu et al. 2020, eq. 7): rho_inf - 2 t beta2^t / (1 - beta2^t), rho_inf = 2 / (1 - beta2) - 1."""
    return 2 / (1 - beta2) - 1 - 2 * t * beta2**t / (1 - beta2**t)


def rho_with_power_in(beta2: float, t: int, dtype: str) -> float:
    """rho_t, exactly, as a framework forms it with beta2^t in `dtype`: rho_inf from the Python float, the power from
    beta2 rounded to `dtype` (optax's b2 ** count of an int32 count, float32 in float32 runs)."""
    power = float(np.asarray(beta2, dtype)) ** t
    return 2 / (1 - beta2) - 1 - 2 * t * power / (1 - power)


def _rectification(beta2: float, rho: float) -> float:
    """r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t)), 0 where rho_t <= 4."""
    rho_inf = 2 / (1 - beta2) - 1
    return float(np.sqrt(max((rho - 4) * (rho - 2), 0.0) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)))


def _passes(rho: float, switches: UpdateSwitches) -> bool:
    return rho > 5 if switches.radam_threshold == "above" else rho >= 5


def _radam_direction(hyper: Hyper, switches: UpdateSwitches, slots: dict, rho: float) -> np.ndarray:
    """m_hat, or where rho passes the threshold m_hat times r(rho) over the adaptive denominator (`radam_eps`)."""
    beta1, beta2, eps, t = float(hyper["beta1"]), float(hyper["beta2"]), float(hyper["eps"]), int(slots["step"])
    m_hat = slots["exp_avg"] / (1 - beta1**t)
    if not _passes(rho, switches):
        return m_hat
    r, correction2, v = _rectification(beta2, rho), 1 - beta2**t, slots["exp_avg_sq"]
    if switches.radam_eps == "sqrt_v":
        return m_hat * r * np.sqrt(correction2) / (np.sqrt(v) + eps)
    return m_hat * r / (np.sqrt(v / correction2) + eps)


def _radam(p, g, lr, hyper, switches, slots):
    beta2 = float(hyper["beta2"])
    _adam_moments(slots, g, float(hyper["beta1"]), beta2)
    return p - lr * _radam_direction(hyper, switches, slots, radam_rho(beta2, int(slots["step"])))


def _rho_error(beta2: float, t: int, u: float) -> float:
    """A bound on the error of rho_t computed at unit roundoff u from a beta2 exact there: beta2^t is off by (t + 2) u
    relative (XLA's float32 pow of a scalar errs more as t grows, 22 ulps at t = 200, as t - 1 multiplications
    would), 1 - beta2^t then by that times beta2^t / (1 - beta2^t) and u more, their quotient times 2 t by the sum
    and three more, and rho_inf - that quotient, a cancellation of two numbers near rho_inf, by u (rho_inf +
    |rho_t|) more. For beta2 = 0.999 in float32 this is 0.16 at t = 6."""
    q, power = beta2**t, (t + 2) * u
    quotient = 2 * t * q / (1 - q)
    return quotient * (power + power * q / (1 - q) + 4 * u) + u * (2 / (1 - beta2) - 1 + abs(radam_rho(beta2, t)))


def _radam_branch(g, hyper, switches, slots, carried, u, scalars_dtype):
    """The step at every rho_t the framework may compute: from beta2 rounded to `scalars_dtype` (optax's b2 ** count
    in float32 runs: 0.039 below the exact rho_6 at beta2 = 0.999, 3.3 above rho_2 at 0.9999), within `_rho_error`;
    r_t grows with rho_t, so the ends of that interval and the threshold, where it lies inside, bound the step."""
    slots, beta2 = dict(slots), float(hyper["beta2"])
    _adam_moments(slots, g, float(hyper["beta1"]), beta2)
    t, u_scalars = int(slots["step"]), float(np.finfo(scalars_dtype).eps) / 2
    centre = rho_with_power_in(beta2, t, scalars_dtype)
    error = _rho_error(float(np.asarray(beta2, scalars_dtype)), t, u_scalars)
    first = 5.0 if switches.radam_threshold == "from" else float(np.nextafter(5.0, 6.0))  # the first rho it passes
    candidates = [centre - error, centre + error] + ([first] if centre - error < first <= centre + error else [])
    own = _radam_direction(hyper, switches, slots, radam_rho(beta2, t))
    spread = np.max([np.abs(_radam_direction(hyper, switches, slots, rho) - own) for rho in candidates], axis=0)
    return spread + 8 * u_scalars * np.abs(own)


def _lion_interpolation(g, hyper, switches, slots) -> tuple[np.ndarray, float]:
    beta1 = _precision(hyper["beta1"], switches)  # Keras casts beta_1 and beta_2, then computes 1 - beta there
    return beta1 * slots["exp_avg"] + (1 - beta1) * g, beta1


def _lion(p, g, lr, hyper, switches, slots):
    interpolation, _ = _lion_interpolation(g, hyper, switches, slots)
    beta2 = _precision(hyper["beta2"], switches)
    slots["exp_avg"] = beta2 * slots["exp_avg"] + (1 - beta2) * g
    return p - lr * np.sign(interpolation)


def _lion_branch(g, hyper, switches, slots, carried, u, scalars_dtype):
    """Where beta1 m + (1 - beta1) g is within its rounding of 0 (two products, a sum, 1 - beta1 from a beta1 rounded
    to the dtype, off by beta1 / (1 - beta1) u, and beta1 times the momentum's own carried error), the sign may come
    out either way: a step of up to 2 lr."""
    interpolation, beta1 = _lion_interpolation(g, hyper, switches, slots)
    terms = np.abs(beta1 * slots["exp_avg"]) + np.abs((1 - beta1) * g)
    error = (3 + beta1 / (1 - beta1)) * u * terms + beta1 * carried.get("exp_avg", 0.0)
    return np.where((np.abs(interpolation) <= error) & (error > 0), 2.0, 0.0)


_BRANCHES = {"radam": _radam_branch, "lion": _lion_branch}

_RULES = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adam,
    "rmsprop": _rmsprop,
    "adagrad": _adagrad,
    "adamax": _adamax,
    "adadelta": _adadelta,
    "nadam": _nadam,
    "radam": _radam,
    "lion": _lion,
}


# ---------------------------------------------------------------------------------------------------- explanations


class Difference(NamedTuple):
    """One reason two frameworks' updates differ, with where each documents its side: a switch, or a default
    (`switch` then names the hyperparameter, which may share a switch's name: weight_decay)."""

    switch: str
    text: str
    citations: tuple[Citation, ...]
    default: bool = False


def _matters(switch: str, rule: str, hyper: Hyper) -> bool:
    """Whether a switch can change the result (trajectory or state) under these hyperparameters."""
    rule = base_rule(rule)
    if switch == "weight_decay":  # for plain sgd, L2 and decoupled decay are the same update
        return bool(hyper.get("weight_decay", 1)) and not (rule == "sgd" and not hyper.get("momentum", 1))
    if switch == "amsgrad_max":
        return bool(hyper.get("amsgrad", True))
    if switch in ("sgd_momentum", "rmsprop_momentum"):
        return bool(hyper.get("momentum", 1))
    if switch == "clip_norm_eps":
        return "clip_norm" in hyper
    kind = getattr(hyper.get("schedule"), "kind", None)
    if switch == "cosine_after_decay":
        return kind in ("cosine", "warmup_cosine")
    if switch == "piecewise_boundary":
        return kind == "piecewise"
    if switch == "schedule_precision":
        return kind is not None
    return True


def explain(
    rule: str, switches_a: UpdateSwitches, switches_b: UpdateSwitches, hyper: Hyper | None = None
) -> list[Difference]:
    """The switches on which two frameworks differ for `rule`; with the case's `hyper`, only those that can matter
    there (a hyperparameter it leaves out counts as one that might)."""
    differences = []
    for name in RULE_SWITCHES[base_rule(rule)]:
        value_a, value_b = getattr(switches_a, name), getattr(switches_b, name)
        if value_a == value_b or (hyper is not None and not _matters(name, rule, hyper)):
            continue
        meanings = SWITCH_MEANINGS[name]
        text = f"{name}: {value_a} ({meanings[value_a]}) vs {value_b} ({meanings[value_b]})"
        citations = tuple(c for c in (switches_a.citations.get(name), switches_b.citations.get(name)) if c)
        differences.append(Difference(name, text, citations))
    return differences


def explain_defaults(
    rule: str,
    framework_a: str,
    declared_a: OptimizerDeclaration,
    framework_b: str,
    declared_b: OptimizerDeclaration,
    given: Hyper,
) -> list[Difference]:
    """The hyperparameters a case leaves to the frameworks on which their defaults differ."""
    differences = []
    for name in RULE_HYPERPARAMETERS[base_rule(rule)]:
        value_a, value_b = declared_a.defaults[rule].get(name), declared_b.defaults[rule].get(name)
        if name in given or value_a == value_b:
            continue
        text = f"default {name}: {value_a} in {framework_a} vs {value_b} in {framework_b}"
        sources = (declared_a.defaults_source[base_rule(rule)], declared_b.defaults_source[base_rule(rule)])
        differences.append(Difference(name, text, sources, default=True))
    return differences
