"""Faults planted in the frameworks themselves, the way a regression would look, to show the suite catches them.

Each fault patches a framework's public API (or, where a mechanism has none, the attribute its documentation
describes) below the unmodified adapters, so that the adapters run exactly as in the suite. `conformance mutate`
runs the suite once per fault (`plant_from_environment` plants it in every pytest process, xdist workers
included); the unit self-tests plant the same faults one at a time and undo them.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

FAULT_ENVIRONMENT = "CONFORMANCE_FAULT"  # "<fault>:<backend>", read by the pytest plugin
SCALE = 1 + 1e-3  # 0.1%: the size of error the design says must always be caught
GRADIENT_CASES = ("seed/linear-square", "losses/linear-regression", "losses/matrix-variable")
UPDATE_CASES = ("seed/adam-step", "optimizers/adam-hyperparameters", "optimizers/sgd-momentum")
ADAM_CASES = UPDATE_CASES[:2]
ACCUMULATION_CASES = ("seed/accumulate-sgd", "accumulation/mse-four-micro-batches")
UPDATE_ONLY = "update_matches or update_agrees"  # the update properties' test functions, nothing else
TRAINING_CASES = ("optimizers/sgd-plain", "optimizers/sgd-momentum", "optimizers/adam-hyperparameters")
CLIP_CASES = ("clipping/sgd-global-norm", "clipping/adam-global-norm")
SCHEDULE_CASES = ("schedules/sgd-exponential", "schedules/adam-cosine")
LOSS_CASES = ("losses/mse-linear", "losses/cross-entropy-label-smoothing", "losses/kl-divergence")
RADAM_CASES = ("optimizers/radam",)
LION_CASES = ("optimizers/lion",)


class Patches:
    """Changes to a framework that `undo` reverts: monkeypatched attributes and removable hooks."""

    def __init__(self) -> None:
        self._monkeypatch = pytest.MonkeyPatch()
        self._handles: list = []

    def setattr(self, target: object, name: str, value: object) -> None:
        self._monkeypatch.setattr(target, name, value)

    def keep(self, handle) -> None:
        """A hook's removable handle, removed on `undo`."""
        self._handles.append(handle)

    def undo(self) -> None:
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()
        self._monkeypatch.undo()


@dataclass(frozen=True)
class Fault:
    name: str
    backend: str
    description: str
    cases: tuple[str, ...]  # the shipped cases a mutation run checks it on
    expected: tuple[str, ...]  # the properties meant to catch it (others may catch it too)
    plant: Callable[[Patches], None]
    keyword: str | None = None  # pytest -k: the properties a mutation run selects (default: all)
    own_process: bool = False  # the backend runs in a process of its own, which plants the fault (own_process.py)
    variants: tuple[str, ...] = ()  # the variants it acts in, where not every one (a compiler's fault: its own)

    @property
    def selected(self) -> str:
        return {None: "all", UPDATE_ONLY: "update.*"}.get(self.keyword, self.keyword)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.backend}"


# ---------------------------------------------------------------------------------------------------- torch


def _leaves_of(loss) -> list:
    """The leaf tensors behind `loss`: its autograd graph's AccumulateGrad nodes hold them as `.variable`."""
    leaves, pending, seen = [], [loss.grad_fn], set()
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        pending.extend(child for child, _ in node.next_functions)
    return leaves


def _wrap_torch_backward(patches: Patches, before=None, seed=None, after=None) -> None:
    """`Tensor.backward` with `before(leaves)`, a replaced seed gradient, and `after(leaves)` around the original."""
    import torch

    original = torch.Tensor.backward

    def backward(self, gradient=None, *args, **kwargs):
        leaves = _leaves_of(self)
        if before:
            before(leaves)
        result = original(self, seed(self) if seed else gradient, *args, **kwargs)
        if after:
            with torch.no_grad():
                after(leaves)
        return result

    patches.setattr(torch.Tensor, "backward", backward)


def _after_torch_steps(patches: Patches, after) -> None:
    """Every torch.optim step runs as released, then `after(optimizer, parameters, values_before)` (global hooks)."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    before: dict[int, list] = {}

    def remember(optimizer, args, kwargs):
        before[id(optimizer)] = [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]

    def change(optimizer, args, kwargs):
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        with torch.no_grad():
            after(optimizer, parameters, before.pop(id(optimizer)))

    patches.keep(register_optimizer_step_pre_hook(remember))
    patches.keep(register_optimizer_step_post_hook(change))


def torch_scaled_gradients(patches: Patches) -> None:
    """backward() seeds the loss' gradient with 1 + 1e-3 instead of 1: every gradient is 0.1% too large."""
    import torch

    _wrap_torch_backward(patches, seed=lambda loss: torch.full_like(loss, SCALE))


def torch_nudged_variables(patches: Patches) -> None:
    """backward() moves every leaf it reaches up by one ulp, as a framework that touched variables in place would."""
    import torch

    def nudge(leaves):
        for leaf in leaves:
            leaf.copy_(torch.nextafter(leaf, torch.full_like(leaf, math.inf)))

    _wrap_torch_backward(patches, after=nudge)


def torch_leaked_gradients(patches: Patches) -> None:
    """`leaf.grad = None` (what zero_grad() does) is ignored, so a second backward() adds to the first gradient."""
    import torch

    native = torch._C.TensorBase.grad

    def set_grad(self, value):
        if value is not None:
            native.__set__(self, value)

    patches.setattr(torch.Tensor, "grad", property(native.__get__, set_grad))


def torch_miscompiled_backward(patches: Patches) -> None:
    """What torch.compile builds returns the right loss with every gradient 1 + 1e-3 times too large, as a compiler
    regression in the generated backward would: inductor compiles as released, and each output of the compiled
    program passes through a function whose backward scales the gradient. Eager torch is untouched."""
    import torch

    class ScaledBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):
            return value.clone()

        @staticmethod
        def backward(ctx, gradient):
            return gradient * SCALE

    def miscompiling(graph, example_inputs):
        compiled = torch._inductor.compile(graph, example_inputs)

        def run(*args):
            return [ScaledBackward.apply(output) for output in compiled(*args)]

        return run

    original = torch.compile

    def compile(model=None, **options):
        return original(model, **{**options, "backend": miscompiling})

    patches.setattr(torch, "compile", compile)


def torch_overwritten_accumulation(patches: Patches) -> None:
    """backward() replaces `.grad` instead of adding to it: accumulation keeps only the last micro-batch."""

    def forget(leaves):
        for leaf in leaves:
            leaf.grad = None

    _wrap_torch_backward(patches, before=forget)


def torch_longer_steps(patches: Patches) -> None:
    """Every parameter change a torch.optim optimizer makes is 1.001 times what it computed."""

    def lengthen(optimizer, parameters, before):
        for parameter, old in zip(parameters, before, strict=True):
            parameter.copy_(old + (parameter - old) * SCALE)

    _after_torch_steps(patches, lengthen)


def torch_uncorrected_adam(patches: Patches) -> None:
    """torch.optim.Adam without bias correction: p = p_old - lr * exp_avg / (sqrt(exp_avg_sq) + eps)."""
    import torch

    def uncorrect(optimizer, parameters, before):
        if type(optimizer) is not torch.optim.Adam:
            return
        group = optimizer.param_groups[0]
        for parameter, old in zip(parameters, before, strict=True):
            state = optimizer.state[parameter]
            if state:
                parameter.copy_(old - group["lr"] * state["exp_avg"] / (state["exp_avg_sq"].sqrt() + group["eps"]))

    _after_torch_steps(patches, uncorrect)


def torch_loose_clip(patches: Patches) -> None:
    """torch.nn.utils.clip_grad_norm_ clips to a norm 1.001 times the max_norm it is given."""
    import torch

    original = torch.nn.utils.clip_grad_norm_

    def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
        return original(parameters, max_norm * SCALE, *args, **kwargs)

    patches.setattr(torch.nn.utils, "clip_grad_norm_", clip_grad_norm_)


def torch_miscounted_mean(patches: Patches) -> None:
    """torch.nn.functional's mse_loss, cross_entropy and kl_div divide their mean by one more than its count."""
    import torch

    functional = torch.nn.functional

    def miscounted(original, count_of):
        def loss(input, target, *args, reduction="mean", **kwargs):
            if reduction not in ("mean", "batchmean"):
                return original(input, target, *args, reduction=reduction, **kwargs)
            count = count_of(input, reduction)
            return original(input, target, *args, reduction="sum", **kwargs) / (count + 1)

        return loss

    every_element = lambda input, reduction: input.numel()  # noqa: E731
    patches.setattr(functional, "mse_loss", miscounted(functional.mse_loss, every_element))
    patches.setattr(
        functional, "cross_entropy", miscounted(functional.cross_entropy, lambda x, _: x.numel() // x.shape[1])
    )
    patches.setattr(
        functional,
        "kl_div",
        miscounted(functional.kl_div, lambda x, reduction: x.shape[0] if reduction == "batchmean" else x.numel()),
    )


def torch_late_schedule(patches: Patches) -> None:
    """Every scheduler steps once more when it is built, so that each optimizer step takes the learning rate of
    the step after it: a scheduler stepped before `optimizer.step()` instead of after."""
    from torch.optim import lr_scheduler

    original = lr_scheduler.LRScheduler._initial_step

    def initial_step(self):
        original(self)
        with warnings.catch_warnings():  # torch warns of exactly this order of calls
            warnings.simplefilter("ignore", UserWarning)
            self.step()

    patches.setattr(lr_scheduler.LRScheduler, "_initial_step", initial_step)


def torch_bfloat16_parameters(patches: Patches) -> None:
    """Parameters are rounded through bfloat16 after every step, as a lossy master copy would."""
    import torch

    def round_parameters(optimizer, parameters, before):
        for parameter in parameters:
            parameter.copy_(parameter.to(torch.bfloat16).to(parameter.dtype))

    _after_torch_steps(patches, round_parameters)


def torch_dropped_micro_batch(patches: Patches) -> None:
    """backward() adds nothing where the leaves already hold a gradient: a step sums only its first micro-batch."""
    import torch

    original = torch.Tensor.backward

    def backward(self, gradient=None, *args, **kwargs):
        leaves = _leaves_of(self)
        if leaves and all(leaf.grad is not None for leaf in leaves):
            return None
        return original(self, gradient, *args, **kwargs)

    patches.setattr(torch.Tensor, "backward", backward)


def torch_stale_gradients(patches: Patches) -> None:
    """Every torch.optim step after the first applies the gradient of the step before (a stale parameter's)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    previous: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # an id would pass to the next optimizer

    def stale(optimizer, args, kwargs):
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        current = [None if p.grad is None else p.grad.detach().clone() for p in parameters]
        for parameter, old in zip(parameters, previous.get(optimizer, []), strict=False):
            if old is not None and parameter.grad is not None:
                parameter.grad.copy_(old)
        previous[optimizer] = current

    patches.keep(register_optimizer_step_pre_hook(stale))


# ---------------------------------------------------------------------------------------------------- keras


def _wrap_tape_gradient(patches: Patches, change) -> None:
    """`tf.GradientTape.gradient` returns `change(gradients, sources)`; eagerly and under tf.function alike."""
    import tensorflow as tf

    original = tf.GradientTape.gradient

    def gradient(self, target, sources, *args, **kwargs):
        return change(original(self, target, sources, *args, **kwargs), sources)

    patches.setattr(tf.GradientTape, "gradient", gradient)


def _each(structure, function):
    """`function` on every tensor of a dict or list of gradients; None (no gradient) stays None."""
    if isinstance(structure, dict):
        return {name: None if value is None else function(value) for name, value in structure.items()}
    return [None if value is None else function(value) for value in structure]


def keras_scaled_gradients(patches: Patches) -> None:
    """GradientTape.gradient returns every gradient 0.1% too large."""
    _wrap_tape_gradient(patches, lambda gradients, sources: _each(gradients, lambda g: g * SCALE))


def keras_nudged_variables(patches: Patches) -> None:
    """GradientTape.gradient moves every variable it differentiated for up by one ulp."""
    import tensorflow as tf

    def nudge(gradients, sources):
        for variable in sources.values() if isinstance(sources, dict) else sources:
            if isinstance(variable, tf.Variable):
                upwards = tf.fill(tf.shape(variable), tf.constant(math.inf, variable.dtype))
                variable.assign(tf.math.nextafter(variable, upwards))
        return gradients

    _wrap_tape_gradient(patches, nudge)


def _after_keras_applies(patches: Patches, before_apply=None, after=None) -> None:
    """Every Keras optimizer's `apply_gradients` runs as released, between `before_apply(optimizer)` and
    `after(optimizer, variable, value_before)` for each variable it was given. Values are read and assigned with
    TensorFlow ops, so that the fault acts eagerly and in a training step under tf.function or XLA alike (a traced
    function runs reads and assignments of one variable in the order written)."""
    import tensorflow as tf

    base = tf.keras.optimizers.Optimizer
    original = base.apply_gradients

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        pairs = list(grads_and_vars)
        if before_apply:
            before_apply(self)
        before = [tf.identity(variable) for _, variable in pairs]
        result = original(self, pairs, *args, **kwargs)
        if after:
            for (_, variable), old in zip(pairs, before, strict=True):
                after(self, variable, old)
        return result

    patches.setattr(base, "apply_gradients", apply_gradients)


def keras_longer_steps(patches: Patches) -> None:
    """Every variable change a Keras optimizer makes is 1.001 times what it computed."""

    def lengthen(optimizer, variable, old):
        variable.assign(old + (variable - old) * SCALE)

    _after_keras_applies(patches, after=lengthen)


def keras_uncorrected_adam(patches: Patches) -> None:
    """keras Adam without bias correction: p = p_old - lr * m / (sqrt(v) + eps), from the optimizer's own slots."""
    import tensorflow as tf

    def uncorrect(optimizer, variable, old):
        if type(optimizer) is not tf.keras.optimizers.Adam:
            return
        index = optimizer._get_variable_index(variable)
        m, v = optimizer._momentums[index], optimizer._velocities[index]
        lr, eps = tf.cast(optimizer.learning_rate, old.dtype), tf.cast(optimizer.epsilon, old.dtype)
        variable.assign(old - lr * m / (tf.sqrt(v) + eps))

    _after_keras_applies(patches, after=uncorrect)


def keras_loose_clip(patches: Patches) -> None:
    """Keras' global_clipnorm clips to a norm 1.001 times the one it is given, on every engine (the function is
    Keras' own: keras/src/optimizers/base_optimizer.py)."""
    from keras.src.optimizers import base_optimizer

    original = base_optimizer.clip_by_global_norm
    patches.setattr(
        base_optimizer, "clip_by_global_norm", lambda values, clip_norm: original(values, clip_norm * SCALE)
    )


def keras_miscounted_mean(patches: Patches) -> None:
    """A Keras loss' "sum_over_batch_size" divides by one more than the count of its values, on every engine
    (keras/src/losses/loss.py, reduce_values)."""
    from keras import ops
    from keras.src.losses import loss

    original = loss.reduce_values

    def reduce_values(values, sample_weight=None, reduction="sum_over_batch_size"):
        if reduction != "sum_over_batch_size" or sample_weight is not None:
            return original(values, sample_weight, reduction)
        return ops.sum(values) / ops.cast(ops.size(values) + 1, values.dtype)

    patches.setattr(loss, "reduce_values", reduce_values)


def keras_momentum_sign(patches: Patches) -> None:
    """keras.optimizers.Lion steps by the sign of its new momentum: beta_2 in place of beta_1, on every engine (the
    torch engine's Lion, a subclass, steps in `_parallel_update_step`: both read beta_1 within `apply`)."""
    from keras.src.optimizers.lion import Lion

    original = Lion.apply

    def apply(self, *args, **kwargs):
        beta_1, self.beta_1 = self.beta_1, self.beta_2
        try:
            return original(self, *args, **kwargs)
        finally:
            self.beta_1 = beta_1

    patches.setattr(Lion, "apply", apply)


def keras_late_schedule(patches: Patches) -> None:
    """A Keras optimizer asks its schedule for the learning rate at `iterations + 1`, on every engine."""
    from keras.src.optimizers import base_optimizer
    from keras.src.optimizers.schedules import learning_rate_schedule

    original = base_optimizer.BaseOptimizer._get_current_learning_rate

    def current_learning_rate(self):
        if isinstance(self._learning_rate, learning_rate_schedule.LearningRateSchedule):
            return self._learning_rate(self._iterations + 1)
        return original(self)

    patches.setattr(base_optimizer.BaseOptimizer, "_get_current_learning_rate", current_learning_rate)


def keras_bfloat16_variables(patches: Patches) -> None:
    """Variables are rounded through bfloat16 after every step."""
    import tensorflow as tf

    _after_keras_applies(
        patches,
        after=lambda optimizer, variable, old: variable.assign(tf.cast(tf.cast(variable, tf.bfloat16), variable.dtype)),
    )


def keras_overwritten_accumulation(patches: Patches) -> None:
    """gradient_accumulation_steps keeps only the last micro-batch: the accumulators (the optimizer's
    `_accumulated_gradients`, which Keras documents no public name for) are zeroed before every call."""
    import tensorflow as tf

    def forget(optimizer):
        for accumulator in getattr(optimizer, "_accumulated_gradients", None) or []:
            accumulator.assign(tf.zeros_like(accumulator))

    _after_keras_applies(patches, before_apply=forget)


def keras_dropped_micro_batch(patches: Patches) -> None:
    """Every second call of GradientTape.gradient returns zeros: a step's micro-batch sum drops every other one.
    The calls are counted in a variable made outside any function, so that a step under tf.function or XLA counts
    each time it runs, not once when it is traced."""
    import tensorflow as tf

    counter: list = []

    def drop(gradients, sources):
        if not counter:
            with tf.init_scope():
                counter.append(tf.Variable(0, dtype=tf.int64, trainable=False))
        dropped = tf.equal(counter[0].assign_add(1) % 2, 0)
        return _each(gradients, lambda g: tf.where(dropped, tf.zeros_like(g), g))

    _wrap_tape_gradient(patches, drop)


def keras_stale_gradients(patches: Patches) -> None:
    """GradientTape.gradient returns the gradients of its previous call of the same shapes, as if taken at a stale
    parameter. They are kept in variables made outside any function (`tf.init_scope`), which a training step
    under tf.function or XLA reads and assigns each time it runs, as an eager step does."""
    import tensorflow as tf

    kept: dict[tuple, tuple[dict, object]] = {}

    def stale(gradients, sources):
        named = dict(gradients) if isinstance(gradients, dict) else dict(enumerate(gradients))
        present = {key: gradient for key, gradient in named.items() if gradient is not None}
        signature = tuple((key, tuple(g.shape), g.dtype.name) for key, g in present.items())
        if signature not in kept:
            with tf.init_scope():
                kept[signature] = (
                    {key: tf.Variable(tf.zeros(g.shape, g.dtype), trainable=False) for key, g in present.items()},
                    tf.Variable(False, trainable=False),
                )
        previous, filled = kept[signature]
        was_filled = tf.identity(filled)
        result = {key: tf.where(was_filled, tf.identity(previous[key]), g) for key, g in present.items()}
        for key, gradient in present.items():
            previous[key].assign(gradient)
        filled.assign(True)
        changed = {key: result.get(key) for key in named}
        return changed if isinstance(gradients, dict) else [changed[index] for index in range(len(gradients))]

    _wrap_tape_gradient(patches, stale)


# ------------------------------------------------------------------------------------ keras on jax and torch


def _after_keras3_applies(patches: Patches, before_apply=None, after=None, feed=None) -> None:
    """Every Keras 3 optimizer's `apply` (which `stateless_apply` calls too) runs as released, given
    `feed(optimizer, grads)` for the gradients where `feed` is set, between `before_apply(optimizer)` and
    `after(optimizer, variable, value_before)` for each variable it updates. Values are read and assigned through
    `keras.Variable`, which inside `stateless_apply`'s StatelessScope reads and records the step's own values, so
    the fault acts in a jitted JAX step as in an eager PyTorch one."""
    import keras

    base = keras.optimizers.Optimizer
    original = base.apply

    def apply(self, grads, trainable_variables=None):
        if before_apply:
            before_apply(self)
        if feed:
            grads = feed(self, list(grads))
        variables = list(trainable_variables if trainable_variables is not None else self._trainable_variables)
        before = [keras.ops.copy(variable.value) for variable in variables]
        result = original(self, grads, trainable_variables)
        if after:
            for variable, old in zip(variables, before, strict=True):
                after(self, variable, old)
        return result

    patches.setattr(base, "apply", apply)


def keras3_longer_steps(patches: Patches) -> None:
    """Every variable change a Keras 3 optimizer makes is 1.001 times what it computed."""
    _after_keras3_applies(
        patches, after=lambda optimizer, variable, old: variable.assign(old + (variable.value - old) * SCALE)
    )


def keras3_uncorrected_adam(patches: Patches) -> None:
    """Keras 3 Adam without bias correction: p = p_old - lr * m / (sqrt(v) + eps), from the optimizer's slots."""
    import keras

    def uncorrect(optimizer, variable, old):
        adam = isinstance(optimizer, keras.optimizers.Adam) and not isinstance(optimizer, keras.optimizers.AdamW)
        if not adam:
            return
        index = optimizer._get_variable_index(variable)
        m, v = optimizer._momentums[index].value, optimizer._velocities[index].value
        lr = keras.ops.cast(optimizer.learning_rate, old.dtype)
        variable.assign(old - lr * m / (keras.ops.sqrt(v) + optimizer.epsilon))

    _after_keras3_applies(patches, after=uncorrect)


def keras3_bfloat16_variables(patches: Patches) -> None:
    """Variables are rounded through bfloat16 after every Keras 3 step."""
    import keras

    def round_through_bfloat16(optimizer, variable, old):
        variable.assign(keras.ops.cast(keras.ops.cast(variable.value, "bfloat16"), variable.dtype))

    _after_keras3_applies(patches, after=round_through_bfloat16)


def keras3_overwritten_accumulation(patches: Patches) -> None:
    """gradient_accumulation_steps keeps only the last micro-batch: Keras 3's accumulators (`_accumulated_gradients`,
    no public name) are zeroed before every `apply`."""
    import keras

    def forget(optimizer):
        for accumulator in getattr(optimizer, "_accumulated_gradients", None) or []:
            if accumulator is not None:
                accumulator.assign(keras.ops.zeros_like(accumulator.value))

    _after_keras3_applies(patches, before_apply=forget)


def keras3_stale_gradients(patches: Patches) -> None:
    """Every Keras 3 `apply` after an optimizer's first is fed the gradients of the one before (an eager step's:
    on JAX, whose steps are jitted, jax_stale_gradients acts inside jax.value_and_grad instead)."""
    import keras

    previous: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def stale(optimizer, grads):
        current = [None if grad is None else keras.ops.copy(grad) for grad in grads]
        fed = previous.get(optimizer, current)
        previous[optimizer] = current
        return [new if old is None or new is None else old for old, new in zip(fed, grads, strict=True)]

    _after_keras3_applies(patches, feed=stale)


# ---------------------------------------------------------------------------------------------------- jax


def jax_scaled_gradients(patches: Patches) -> None:
    """jax.value_and_grad returns every gradient 0.1% too large (under jax.jit as well as eagerly)."""
    import jax

    original = jax.value_and_grad

    def value_and_grad(function, *args, **kwargs):
        differentiate = original(function, *args, **kwargs)

        def scaled(*call_args, **call_kwargs):
            value, grads = differentiate(*call_args, **call_kwargs)
            return value, jax.tree_util.tree_map(lambda gradient: gradient * SCALE, grads)

        return scaled

    patches.setattr(jax, "value_and_grad", value_and_grad)


def _wrap_gradients_on_host(patches: Patches, change) -> None:
    """The gradients `jax.value_and_grad` returns pass through `change` (numpy arrays in, the same shapes and dtypes
    out) on the host every time they are computed, eagerly or inside a compiled training step: through jax's
    `io_callback`, which a jitted program calls, in order, each time it runs (a plain wrapper would act once, when
    jit traces it)."""
    import jax
    from jax.experimental import io_callback

    original = jax.value_and_grad

    def value_and_grad(function, *args, **kwargs):
        differentiate = original(function, *args, **kwargs)

        def changed(*call_args, **call_kwargs):
            value, grads = differentiate(*call_args, **call_kwargs)
            shapes = jax.tree.map(lambda g: jax.ShapeDtypeStruct(g.shape, g.dtype), grads)
            return value, io_callback(change, shapes, grads, ordered=True)

        return changed

    patches.setattr(jax, "value_and_grad", value_and_grad)


def jax_dropped_micro_batch(patches: Patches) -> None:
    """Every second gradient jax.value_and_grad computes is zeros: a step's micro-batch sum drops every other one."""
    import jax

    calls = itertools.count()
    _wrap_gradients_on_host(patches, lambda grads: jax.tree.map(np.zeros_like, grads) if next(calls) % 2 else grads)


def jax_stale_gradients(patches: Patches) -> None:
    """jax.value_and_grad returns the gradients of its previous computation of the same shapes and dtypes, as if
    taken at a stale parameter."""
    import jax

    previous: list = []

    def signature(grads):
        return jax.tree.map(lambda g: (g.shape, g.dtype), grads)

    def stale(grads):
        result = previous[0] if previous and signature(previous[0]) == signature(grads) else grads
        previous[:] = [grads]
        return result

    _wrap_gradients_on_host(patches, stale)


def optax_longer_steps(patches: Patches) -> None:
    """optax.apply_updates applies every update 1.001 times over."""
    import jax
    import optax

    original = optax.apply_updates

    def apply_updates(params, updates):
        return original(params, jax.tree.map(lambda update: update * SCALE, updates))

    patches.setattr(optax, "apply_updates", apply_updates)


def optax_uncorrected_adam(patches: Patches) -> None:
    """optax.tree.bias_correction returns the moment as it is, so scale_by_adam divides by nothing."""
    import optax

    patches.setattr(optax.tree, "bias_correction", lambda moment, decay, count: moment)


def optax_loose_clip(patches: Patches) -> None:
    """optax.clip_by_global_norm clips to a norm 1.001 times the max_norm it is given."""
    import optax

    original = optax.clip_by_global_norm
    patches.setattr(optax, "clip_by_global_norm", lambda max_norm: original(max_norm * SCALE))


def optax_paper_threshold(patches: Patches) -> None:
    """optax.radam rectifies from rho_t >= 4, the tractability condition of Liu et al.'s Algorithm 2 (rho_t > 4),
    instead of its own threshold 5."""
    import optax

    original = optax.radam
    patches.setattr(optax, "radam", lambda *args, **kwargs: original(*args, **{**kwargs, "threshold": 4.0}))


def optax_momentum_sign(patches: Patches) -> None:
    """optax.lion steps by the sign of its new momentum: scale_by_lion is given b2 in place of b1."""
    from optax._src import transform

    original = transform.scale_by_lion
    patches.setattr(transform, "scale_by_lion", lambda b1=0.9, b2=0.99, **kwargs: original(b1=b2, b2=b2, **kwargs))


def optax_late_schedule(patches: Patches) -> None:
    """optax's schedules give the value of the count after the one they are called with."""
    import optax

    def late(make):
        def make_late(*args, **kwargs):
            schedule = make(*args, **kwargs)
            return lambda count: schedule(count + 1)

        return make_late

    for name in (
        "exponential_decay",
        "cosine_decay_schedule",
        "warmup_cosine_decay_schedule",
        "piecewise_constant_schedule",
    ):
        patches.setattr(optax, name, late(getattr(optax, name)))


def optax_bfloat16_parameters(patches: Patches) -> None:
    """optax.apply_updates rounds the new parameters through bfloat16."""
    import jax
    import optax

    original = optax.apply_updates

    def apply_updates(params, updates):
        return jax.tree.map(lambda p: p.astype(jax.numpy.bfloat16).astype(p.dtype), original(params, updates))

    patches.setattr(optax, "apply_updates", apply_updates)


def optax_overwritten_accumulation(patches: Patches) -> None:
    """optax.MultiSteps keeps only the last micro-batch: its public state's acc_grads are zeroed before each update."""
    import jax
    import optax

    original = optax.MultiSteps.update

    def update(self, updates, state, params=None, **extra_args):
        state = state._replace(acc_grads=jax.tree.map(jax.numpy.zeros_like, state.acc_grads))
        return original(self, updates, state, params, **extra_args)

    patches.setattr(optax.MultiSteps, "update", update)


# ---------------------------------------------------------------------------------------------------- registry


def _in_own_process(name: str, backend: str, description: str, cases, expected, plant, keyword=None) -> Fault:
    """A fault of a backend that runs in a process of its own (Keras 3 on jax or torch), planted there only."""
    return Fault(name, backend, description, cases, expected, plant, keyword, own_process=True)


GRADIENT_PROPERTY = ("gradient.matches_reference",)
UPDATE_PROPERTY = ("update.matches_reference",)
FAULTS = (
    Fault(
        "scaled-gradients",
        "torch",
        "every gradient 1 + 1e-3 times too large",
        GRADIENT_CASES,
        GRADIENT_PROPERTY,
        torch_scaled_gradients,
    ),
    Fault(
        "scaled-gradients",
        "tensorflow",
        "every gradient 1 + 1e-3 times too large",
        GRADIENT_CASES,
        GRADIENT_PROPERTY,
        keras_scaled_gradients,
    ),
    Fault(
        "scaled-gradients",
        "jax",
        "every gradient 1 + 1e-3 times too large",
        GRADIENT_CASES,
        GRADIENT_PROPERTY,
        jax_scaled_gradients,
    ),
    Fault(
        "miscompiled-backward",
        "torch",
        "the compiled backward makes every gradient 0.1% too large",
        GRADIENT_CASES,
        GRADIENT_PROPERTY,
        torch_miscompiled_backward,
        variants=("compile",),
    ),
    Fault(
        "nudged-variable",
        "torch",
        "differentiation moves each variable by one ulp",
        GRADIENT_CASES,
        ("differentiation.values_unchanged",),
        torch_nudged_variables,
    ),
    Fault(
        "nudged-variable",
        "tensorflow",
        "differentiation moves each variable by one ulp",
        GRADIENT_CASES,
        ("differentiation.values_unchanged",),
        keras_nudged_variables,
    ),
    Fault(
        "leaked-gradients",
        "torch",
        "a second differentiation adds to the first gradient",
        GRADIENT_CASES,
        ("differentiation.repeatable",),
        torch_leaked_gradients,
    ),
    Fault(
        "longer-step", "torch", "every optimizer step 0.1% too long", UPDATE_CASES, UPDATE_PROPERTY, torch_longer_steps
    ),
    Fault(
        "longer-step",
        "tensorflow",
        "every optimizer step 0.1% too long",
        UPDATE_CASES,
        UPDATE_PROPERTY,
        keras_longer_steps,
    ),
    Fault(
        "longer-step", "jax", "every optimizer step 0.1% too long", UPDATE_CASES, UPDATE_PROPERTY, optax_longer_steps
    ),
    Fault(
        "no-bias-correction",
        "torch",
        "Adam without its bias correction",
        ADAM_CASES,
        UPDATE_PROPERTY,
        torch_uncorrected_adam,
    ),
    Fault(
        "no-bias-correction",
        "tensorflow",
        "Adam without its bias correction",
        ADAM_CASES,
        UPDATE_PROPERTY,
        keras_uncorrected_adam,
    ),
    Fault(
        "no-bias-correction",
        "jax",
        "Adam without its bias correction",
        ADAM_CASES,
        UPDATE_PROPERTY,
        optax_uncorrected_adam,
    ),
    Fault(
        "overwritten-accumulation",
        "torch",
        ".grad overwritten instead of accumulated",
        ACCUMULATION_CASES,
        ("accumulation.native",),
        torch_overwritten_accumulation,
    ),
    Fault(
        "overwritten-accumulation",
        "tensorflow",
        "gradient_accumulation_steps keeps only the last micro-batch",
        ACCUMULATION_CASES,
        ("accumulation.native",),
        keras_overwritten_accumulation,
    ),
    Fault(
        "overwritten-accumulation",
        "jax",
        "MultiSteps keeps only the last micro-batch",
        ACCUMULATION_CASES,
        ("accumulation.native",),
        optax_overwritten_accumulation,
    ),
    Fault(
        "bfloat16-parameters",
        "torch",
        "parameters rounded to bfloat16 after each step",
        UPDATE_CASES,
        UPDATE_PROPERTY,
        torch_bfloat16_parameters,
    ),
    Fault(
        "bfloat16-parameters",
        "tensorflow",
        "parameters rounded to bfloat16 after each step",
        UPDATE_CASES,
        UPDATE_PROPERTY,
        keras_bfloat16_variables,
    ),
    Fault(
        "bfloat16-parameters",
        "jax",
        "parameters rounded to bfloat16 after each step",
        UPDATE_CASES,
        UPDATE_PROPERTY,
        optax_bfloat16_parameters,
    ),
    # the training path alone, judged by the update properties only
    Fault(
        "training-gradients",
        "torch",
        "the gradients a training step feeds its optimizer 0.1% too large",
        TRAINING_CASES,
        UPDATE_PROPERTY,
        torch_scaled_gradients,
        UPDATE_ONLY,
    ),
    Fault(
        "training-gradients",
        "tensorflow",
        "the gradients a training step feeds its optimizer 0.1% too large",
        TRAINING_CASES,
        UPDATE_PROPERTY,
        keras_scaled_gradients,
        UPDATE_ONLY,
    ),
    Fault(
        "training-gradients",
        "jax",
        "the gradients a training step feeds its optimizer 0.1% too large",
        TRAINING_CASES,
        UPDATE_PROPERTY,
        jax_scaled_gradients,
        UPDATE_ONLY,
    ),
    Fault(
        "dropped-micro-batch",
        "torch",
        "a training step's micro-batch sum keeps only the first",
        ACCUMULATION_CASES,
        UPDATE_PROPERTY,
        torch_dropped_micro_batch,
        UPDATE_ONLY,
    ),
    Fault(
        "dropped-micro-batch",
        "tensorflow",
        "a training step's micro-batch sum drops every other one",
        ACCUMULATION_CASES,
        UPDATE_PROPERTY,
        keras_dropped_micro_batch,
        UPDATE_ONLY,
    ),
    Fault(
        "dropped-micro-batch",
        "jax",
        "a training step's micro-batch sum drops every other one",
        ACCUMULATION_CASES,
        UPDATE_PROPERTY,
        jax_dropped_micro_batch,
        UPDATE_ONLY,
    ),
    Fault(
        "stale-gradients",
        "torch",
        "each step applies the previous step's gradient",
        TRAINING_CASES,
        UPDATE_PROPERTY,
        torch_stale_gradients,
        UPDATE_ONLY,
    ),
    Fault(
        "stale-gradients",
        "tensorflow",
        "each step is fed the gradient at the previous parameters",
        TRAINING_CASES,
        UPDATE_PROPERTY,
        keras_stale_gradients,
        UPDATE_ONLY,
    ),
    Fault(
        "stale-gradients",
        "jax",
        "each step is fed the gradient at the previous parameters",
        TRAINING_CASES,
        UPDATE_PROPERTY,
        jax_stale_gradients,
        UPDATE_ONLY,
    ),
    *(
        Fault(
            "loose-clip",
            backend,
            "the global norm clip's threshold 0.1% too high",
            CLIP_CASES,
            UPDATE_PROPERTY,
            plant,
            UPDATE_ONLY,
        )
        for backend, plant in (("torch", torch_loose_clip), ("tensorflow", keras_loose_clip), ("jax", optax_loose_clip))
    ),
    *(
        Fault(
            "late-schedule",
            backend,
            "the learning-rate schedule one step ahead: each step takes the next step's learning rate",
            SCHEDULE_CASES,
            UPDATE_PROPERTY,
            plant,
            UPDATE_ONLY,
        )
        for backend, plant in (
            ("torch", torch_late_schedule),
            ("tensorflow", keras_late_schedule),
            ("jax", optax_late_schedule),
        )
    ),
    # Keras 3 on jax and torch: the engines' own differentiation faults and Keras' optimizers, in their processes
    _in_own_process(
        "scaled-gradients",
        "keras-jax",
        "every gradient 1 + 1e-3 times too large",
        GRADIENT_CASES,
        GRADIENT_PROPERTY,
        jax_scaled_gradients,
    ),
    _in_own_process(
        "longer-step",
        "keras-jax",
        "every optimizer step 0.1% too long",
        UPDATE_CASES,
        UPDATE_PROPERTY,
        keras3_longer_steps,
    ),
    _in_own_process(
        "no-bias-correction",
        "keras-jax",
        "Adam without its bias correction",
        ADAM_CASES,
        UPDATE_PROPERTY,
        keras3_uncorrected_adam,
    ),
    _in_own_process(
        "overwritten-accumulation",
        "keras-jax",
        "gradient_accumulation_steps keeps only the last micro-batch",
        ACCUMULATION_CASES,
        ("accumulation.native",),
        keras3_overwritten_accumulation,
    ),
    _in_own_process(
        "bfloat16-parameters",
        "keras-jax",
        "parameters rounded to bfloat16 after each step",
        UPDATE_CASES,
        UPDATE_PROPERTY,
        keras3_bfloat16_variables,
    ),
    _in_own_process(
        "training-gradients",
        "keras-jax",
        "the gradients a training step feeds its optimizer 0.1% too large",
        TRAINING_CASES,
        UPDATE_PROPERTY,
        jax_scaled_gradients,
        UPDATE_ONLY,
    ),
    _in_own_process(
        "dropped-micro-batch",
        "keras-jax",
        "a training step's micro-batch sum drops every other one",
        ACCUMULATION_CASES,
        UPDATE_PROPERTY,
        jax_dropped_micro_batch,
        UPDATE_ONLY,
    ),
    _in_own_process(
        "stale-gradients",
        "keras-jax",
        "each step is fed the gradient at the previous parameters",
        TRAINING_CASES,
        UPDATE_PROPERTY,
        jax_stale_gradients,
        UPDATE_ONLY,
    ),
    _in_own_process(
        "scaled-gradients",
        "keras-torch",
        "every gradient 1 + 1e-3 times too large",
        GRADIENT_CASES,
        GRADIENT_PROPERTY,
        torch_scaled_gradients,
    ),
    _in_own_process(
        "nudged-variable",
        "keras-torch",
        "differentiation moves each variable by one ulp",
        GRADIENT_CASES,
        ("differentiation.values_unchanged",),
        torch_nudged_variables,
    ),
    _in_own_process(
        "leaked-gradients",
        "keras-torch",
        "a second differentiation adds to the first gradient",
        GRADIENT_CASES,
        ("differentiation.repeatable",),
        torch_leaked_gradients,
    ),
    _in_own_process(
        "longer-step",
        "keras-torch",
        "every optimizer step 0.1% too long",
        UPDATE_CASES,
        UPDATE_PROPERTY,
        keras3_longer_steps,
    ),
    _in_own_process(
        "no-bias-correction",
        "keras-torch",
        "Adam without its bias correction",
        ADAM_CASES,
        UPDATE_PROPERTY,
        keras3_uncorrected_adam,
    ),
    _in_own_process(
        "overwritten-accumulation",
        "keras-torch",
        "gradient_accumulation_steps keeps only the last micro-batch",
        ACCUMULATION_CASES,
        ("accumulation.native",),
        keras3_overwritten_accumulation,
    ),
    _in_own_process(
        "bfloat16-parameters",
        "keras-torch",
        "parameters rounded to bfloat16 after each step",
        UPDATE_CASES,
        UPDATE_PROPERTY,
        keras3_bfloat16_variables,
    ),
    _in_own_process(
        "training-gradients",
        "keras-torch",
        "the gradients a training step feeds its optimizer 0.1% too large",
        TRAINING_CASES,
        UPDATE_PROPERTY,
        torch_scaled_gradients,
        UPDATE_ONLY,
    ),
    _in_own_process(
        "dropped-micro-batch",
        "keras-torch",
        "a training step's micro-batch sum keeps only the first",
        ACCUMULATION_CASES,
        UPDATE_PROPERTY,
        torch_dropped_micro_batch,
        UPDATE_ONLY,
    ),
    _in_own_process(
        "stale-gradients",
        "keras-torch",
        "each step applies the previous step's gradient",
        TRAINING_CASES,
        UPDATE_PROPERTY,
        keras3_stale_gradients,
        UPDATE_ONLY,
    ),
    *(
        _in_own_process(
            "loose-clip",
            backend,
            "the global norm clip's threshold 0.1% too high",
            CLIP_CASES,
            UPDATE_PROPERTY,
            keras_loose_clip,
            UPDATE_ONLY,
        )
        for backend in ("keras-jax", "keras-torch")
    ),
    Fault(
        "miscounted-mean",
        "torch",
        "the loss functions' mean divides by one more than its count",
        LOSS_CASES,
        GRADIENT_PROPERTY,
        torch_miscounted_mean,
    ),
    Fault(
        "miscounted-mean",
        "tensorflow",
        "the loss functions' mean divides by one more than its count",
        LOSS_CASES,
        GRADIENT_PROPERTY,
        keras_miscounted_mean,
    ),
    *(
        _in_own_process(
            "miscounted-mean",
            backend,
            "the loss functions' mean divides by one more than its count",
            LOSS_CASES,
            GRADIENT_PROPERTY,
            keras_miscounted_mean,
        )
        for backend in ("keras-jax", "keras-torch")
    ),
    Fault(
        "paper-threshold",
        "jax",
        "RAdam rectifies from rho_t >= 4 (the paper's Algorithm 2) instead of 5",
        RADAM_CASES,
        UPDATE_PROPERTY,
        optax_paper_threshold,
        UPDATE_ONLY,
    ),
    *(
        Fault(
            "momentum-sign",
            backend,
            "Lion steps by the sign of its new momentum (beta2 in place of beta1)",
            LION_CASES,
            UPDATE_PROPERTY,
            plant,
            UPDATE_ONLY,
        )
        for backend, plant in (("tensorflow", keras_momentum_sign), ("jax", optax_momentum_sign))
    ),
    *(
        _in_own_process(
            "momentum-sign",
            backend,
            "Lion steps by the sign of its new momentum (beta2 in place of beta1)",
            LION_CASES,
            UPDATE_PROPERTY,
            keras_momentum_sign,
            UPDATE_ONLY,
        )
        for backend in ("keras-jax", "keras-torch")
    ),
    *(
        _in_own_process(
            "late-schedule",
            backend,
            "the learning-rate schedule one step ahead: each step takes the next step's learning rate",
            SCHEDULE_CASES,
            UPDATE_PROPERTY,
            keras_late_schedule,
            UPDATE_ONLY,
        )
        for backend in ("keras-jax", "keras-torch")
    ),
)
NOT_PLANTED = {
    ("paper-threshold", "torch"): "torch.optim.RAdam's threshold is the literal 5.0 in _single_tensor_radam's body",
    ("momentum-sign", "torch"): "torch.optim has no Lion",
    ("miscounted-mean", "jax"): "optax's losses return a loss per element or example; the mean is the user's jnp.mean",
    ("nudged-variable", "jax"): "JAX arrays are immutable: jax.grad cannot change the values it differentiates at",
    ("leaked-gradients", "tensorflow"): "tf.GradientTape returns new tensors and keeps no gradient between calls",
    ("leaked-gradients", "jax"): "jax.grad is a pure function and keeps no gradient between calls",
    ("nudged-variable", "keras-jax"): "jax.grad differentiates at the variables' values, immutable JAX arrays",
    ("leaked-gradients", "keras-jax"): "jax.grad is a pure function and keeps no gradient between calls",
}


def find(key: str) -> Fault:
    """The fault `<name>:<backend>`; a ValueError that lists the known ones otherwise."""
    for fault in FAULTS:
        if fault.key == key:
            return fault
    raise ValueError(f"unknown fault {key!r} (known: {', '.join(fault.key for fault in FAULTS)})")


_planted: Patches | None = None


def plant_from_environment() -> str | None:
    """Plants the fault that CONFORMANCE_FAULT names, for the life of this process, unless its backend runs in a
    process of its own (there `plant_in_process` plants it); returns its key."""
    key = os.environ.get(FAULT_ENVIRONMENT)
    if key and not find(key).own_process:
        _plant(find(key))
    return key


def plant_in_process(backend: str) -> None:
    """In the process of a backend that runs in one of its own (own_process.py): plants the fault that
    CONFORMANCE_FAULT names when it is that backend's, and no other (a fault of the frameworks it shares, jax's or
    torch's, belongs to those backends' items)."""
    key = os.environ.get(FAULT_ENVIRONMENT)
    if key and find(key).backend == backend:
        _plant(find(key))


def _plant(fault: Fault) -> None:
    global _planted
    if _planted is None:
        _planted = Patches()
        fault.plant(_planted)
