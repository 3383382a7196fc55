"""Keras 3 on its JAX and PyTorch engines, as Keras' guides "Writing a training loop from scratch in JAX" and "...
in PyTorch" write it: `keras.Variable`s, the loss in `keras.ops`, the engine's own differentiation, and Keras'
own optimizers (`stateless_apply` inside a jitted step on JAX, `apply` under `torch.no_grad()` on PyTorch).

Keras fixes its engine at its first import, so each engine runs in a process of its own (own_process.py): the
backends `keras-jax` and `keras-torch` the registry loads are proxies, and the adapters below run in their child.
Keras on TensorFlow is the `tensorflow` backend.

`keras.ops` lowers to the engine's own functions (keras/src/backend/jax/numpy.py, .../torch/nn.py), so the kinks
follow the engine's conventions; the optimizers follow Keras' documented formulas, as on TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util

import numpy as np

from conformance.backends import jax as jax_backend
from conformance.backends import native_losses, native_optimizers
from conformance.backends import tensorflow as tensorflow_backend
from conformance.backends import torch as torch_backend
from conformance.backends.base import (
    AccumulationRun,
    Arrays,
    Backend,
    GradientRun,
    NotApplicable,
    UpdateRun,
    copied,
    literal,
    micro_batches,
    source_of,
    step_resolution,
)
from conformance.backends.own_process import OwnProcess
from conformance.cases import Case
from conformance.expressions import OperatorTarget, lower
from conformance.reference.optimizers import OptimizerDeclaration, source_citation

SOURCE_FORMATS = {
    "sum": "keras.ops.sum({0})",
    "sum@axis": "keras.ops.sum({0}, axis={axis})",
    "mean": "keras.ops.mean({0})",
    "mean@axis": "keras.ops.mean({0}, axis={axis})",
    "logsumexp": "keras.ops.logsumexp({0})",
    "logsumexp@axis": "keras.ops.logsumexp({0}, axis={axis})",
    "exp": "keras.ops.exp({0})",
    "log": "keras.ops.log({0})",
    "sqrt": "keras.ops.sqrt({0})",
    "abs": "keras.ops.abs({0})",
    "tanh": "keras.ops.tanh({0})",
    "sigmoid": "keras.ops.sigmoid({0})",
    "softplus": "keras.ops.softplus({0})",
    "relu": "keras.ops.relu({0})",
    "square": "keras.ops.square({0})",
    "maximum": "keras.ops.maximum({0}, {1})",
    "minimum": "keras.ops.minimum({0}, {1})",
    "@": "keras.ops.matmul({0}, {1})",
    **native_losses.keras_formats("keras", "keras.ops.exp({0})", "keras.backend.standardize_dtype({0}.dtype)"),
}


class KerasOpsTarget(native_losses.KerasLosses, OperatorTarget):
    """Lowers a loss to `keras.ops`, which calls the engine's own functions, and to `keras.losses`."""

    def __init__(self, ops, dtype: str):
        import keras

        self.ops, self.dtype = ops, dtype
        self.losses, self.loss_dtype = keras.losses, dtype

    def constant(self, value):
        return self.ops.convert_to_tensor(value, dtype=self.dtype)

    def binary(self, op, left, right):
        if op == "@":
            return self.ops.matmul(left, right)
        return super().binary(op, left, right)

    def sum(self, a, axis=None):
        return self.ops.sum(a, axis=axis)

    def mean(self, a, axis=None):
        return self.ops.mean(a, axis=axis)

    def logsumexp(self, a, axis=None):
        return self.ops.logsumexp(a, axis=axis)

    def exp(self, a):
        return self.ops.exp(a)

    def log(self, a):
        return self.ops.log(a)

    def sqrt(self, a):
        return self.ops.sqrt(a)

    def abs(self, a):
        return self.ops.abs(a)

    def tanh(self, a):
        return self.ops.tanh(a)

    def sigmoid(self, a):
        return self.ops.sigmoid(a)

    def softplus(self, a):
        return self.ops.softplus(a)

    def relu(self, a):
        return self.ops.relu(a)

    def square(self, a):
        return self.ops.square(a)

    def maximum(self, a, b):
        return self.ops.maximum(a, b)

    def minimum(self, a, b):
        return self.ops.minimum(a, b)


def _keras_source(path: str, text: str):
    return source_citation("keras-team/keras", "3.15.1", path, text)


def _declaration(**engine_switches) -> OptimizerDeclaration:
    """Keras' optimizers as declared for TensorFlow (the formulas are Keras', whatever the engine; float32 runs
    only, see FLOAT64_DEMOTED), but for `engine_switches`: switch name -> (value, citation), where the engine's
    differentiation or its own optimizer code decides."""
    keras = tensorflow_backend.OPTIMIZERS
    switches = dataclasses.replace(
        keras.switches,
        **{name: value for name, (value, _) in engine_switches.items()},
        citations={**keras.switches.citations, **{name: cited for name, (_, cited) in engine_switches.items()}},
    )
    return dataclasses.replace(keras, switches=switches)


FLOAT64_DEMOTED = (
    "Keras 3 on {engine} computes float64 partly in float32: keras.backend.result_type maps float64 to float32 on "
    "every engine but TensorFlow (keras/src/backend/common/dtypes.py, BIT64_TO_BIT32_DTYPE), so keras.ops.mean "
    "computes in result_type(x, float32) and casts back, and ops such as matmul (torch) and tanh (jax) return "
    "float32{also}; a float64 run would be judged as float64 and is not"
)


class _KerasOnEngine(Backend):
    """What both engines share: the variables, the optimizer and what is read back from them, the native
    accumulation (`gradient_accumulation_steps`, as on TensorFlow), and float64 refused (FLOAT64_DEMOTED)."""

    engine = ""
    float64_also = ""  # what else of the engine computes a float64 run in float32
    accumulation_mechanism = tensorflow_backend.TensorFlowBackend.accumulation_mechanism

    def __init__(self):
        self._compiled: dict[tuple, object] = {}

    def unavailable_reason(self):
        for module in ("keras", self.engine):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install 'conformance[{self.name}]')"
        return None

    @property
    def keras(self):
        import keras

        if keras.backend.backend() != self.engine:
            raise RuntimeError(f"keras runs on {keras.backend.backend()}, not {self.engine}: KERAS_BACKEND is unset")
        return keras

    def versions(self):
        return {"keras": self.keras.__version__, self.engine: importlib.import_module(self.engine).__version__}

    def _variables(self, case: Case, inputs: Arrays, dtype: str) -> dict:
        keras = self.keras
        return {
            spec.name: keras.Variable(np.asarray(inputs[spec.name]), dtype=dtype, name=spec.name)
            for spec in case.variables
        }

    def _optimizer(self, case: Case, hyper: dict, variables: dict):
        optimizer = native_optimizers.keras_optimizer(case.update.rule, hyper, "keras", case.update.schedule)
        optimizer.build(list(variables.values()))  # as fit() builds it, on every variable
        return optimizer

    def _refuse_float64(self, dtype: str) -> None:
        if dtype == "float64":
            raise NotApplicable(FLOAT64_DEMOTED.format(engine=self.engine, also=self.float64_also))

    def _no_grad(self):
        """Where the optimizer is applied: outside any gradient recording (torch.no_grad() on PyTorch)."""
        return contextlib.nullcontext()

    def gradients(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> GradientRun:
        return self._differentiated(case, inputs, dtype, repeated=True)

    def differentiate_once(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> GradientRun:
        return self._differentiated(case, inputs, dtype, repeated=False)

    def accumulation(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> AccumulationRun:
        """`gradient_accumulation_steps=k` on SGD(learning_rate=1), applied to each micro-batch's gradient."""
        keras = self.keras
        batches = micro_batches(case, inputs)
        micro_gradients = [self.differentiate_once(case, batch, dtype, variant, device).gradients for batch in batches]
        variables = self._variables(case, inputs, dtype)
        optimizer = keras.optimizers.SGD(learning_rate=1.0, gradient_accumulation_steps=len(batches))
        for gradients in micro_gradients:
            given = [name for name in variables if gradients[name] is not None]
            with self._no_grad():
                optimizer.apply(
                    [keras.ops.convert_to_tensor(gradients[name], dtype=dtype) for name in given],
                    [variables[name] for name in given],
                )
        end = copied(variables, keras.ops.convert_to_numpy)
        accumulated = {name: np.asarray(inputs[name], np.float64) - end[name].astype(np.float64) for name in end}
        return AccumulationRun(
            tensorflow_backend.KERAS_ACCUMULATION,
            self.accumulation_mechanism.promise,
            micro_gradients,
            accumulated,
            tensorflow_backend.KERAS_ACCUMULATION_CITATION,
            resolution=step_resolution(inputs, end, dtype),
        )

    def _differentiated(self, case: Case, inputs: Arrays, dtype: str, repeated: bool) -> GradientRun:
        self._refuse_float64(dtype)
        variables = self._variables(case, inputs, dtype)
        to_numpy = self.keras.ops.convert_to_numpy
        values_before = copied(variables, to_numpy)
        loss, gradients = self._differentiate(case, variables, inputs, dtype)
        values_after = copied(variables, to_numpy)
        if not repeated:
            return GradientRun(loss, values_before, values_after, None, gradients, None)
        _, gradients_repeat = self._differentiate(case, variables, inputs, dtype)
        return GradientRun(loss, values_before, values_after, copied(variables, to_numpy), gradients, gradients_repeat)

    def _differentiate(self, case: Case, variables: dict, inputs: Arrays, dtype: str):
        raise NotImplementedError

    def _repro_header(self) -> list[str]:
        return ["import os", "", f"os.environ['KERAS_BACKEND'] = {self.engine!r}  # before keras is imported"]


class KerasOnJax(_KerasOnEngine):
    """Keras on JAX: `jax.value_and_grad` of a loss in keras.ops, the whole training step under `jax.jit` with
    `optimizer.stateless_apply`, as Keras' JAX guide and `Model.fit` on JAX run it."""

    name = "keras-jax"
    engine = "jax"
    variants = ("jit",)
    conventions = native_losses.with_loss_conventions(jax_backend.JaxBackend.conventions, "keras")
    optimizers = _declaration(
        no_gradient=(
            "zero",
            _keras_source(
                "keras/src/optimizers/base_optimizer.py",
                "stateless_apply applies every gradient it is given; jax.grad gives zeros for a variable the loss "
                "does not use, so Keras updates it with a zero gradient (weight decay and moments act)",
            ),
        )
    )

    @property
    def jax(self):
        import jax

        return jax

    def _loss_function(self, case: Case, dtype: str):
        target = KerasOpsTarget(self.keras.ops, dtype)
        names = case.variable_names

        def loss_function(values, data):
            return lower(case.loss, target, {**dict(zip(names, values, strict=True)), **data})

        return loss_function

    def _data(self, case: Case, batch: Arrays, dtype: str) -> dict:
        convert = self.keras.ops.convert_to_tensor
        return {spec.name: convert(np.asarray(batch[spec.name]), dtype=dtype) for spec in case.data}

    def _differentiate(self, case: Case, variables: dict, inputs: Arrays, dtype: str):
        jax = self.jax
        key = ("gradients", id(case), dtype)
        if key not in self._compiled:
            self._compiled[key] = jax.jit(jax.value_and_grad(self._loss_function(case, dtype)))
        values = [variable.value for variable in variables.values()]
        loss, grads = self._compiled[key](values, self._data(case, inputs, dtype))
        return float(loss), {name: np.array(grad) for name, grad in zip(variables, grads, strict=True)}

    def updates(self, case: Case, inputs: Arrays, hyper: dict, dtype: str, variant: str, device: str) -> UpdateRun:
        """The micro-batches' gradients summed, then `optimizer.stateless_apply`, the whole step jitted; the
        values the step returns are assigned back to the variables and the optimizer's slots at the end, as
        Keras' JAX guide does, so that the state is read from the optimizer itself."""
        self._refuse_float64(dtype)
        jax = self.jax
        variables = self._variables(case, inputs, dtype)
        optimizer = self._optimizer(case, hyper, variables)
        value_and_grad = jax.value_and_grad(self._loss_function(case, dtype))
        batches = [self._data(case, batch, dtype) for batch in micro_batches(case, inputs)]

        def train_step(trainable, optimizer_values, batches):
            summed = None
            for batch in batches:
                _, grads = value_and_grad(trainable, batch)
                summed = grads if summed is None else [total + grad for total, grad in zip(summed, grads, strict=True)]
            trainable, optimizer_values = optimizer.stateless_apply(optimizer_values, summed, trainable)
            return trainable, optimizer_values, summed

        step = jax.jit(train_step)
        trainable = [variable.value for variable in variables.values()]
        optimizer_values = [variable.value for variable in optimizer.variables]
        values, gradients = [copied(variables, np.asarray)], []
        for _ in range(case.update.steps):
            trainable, optimizer_values, summed = step(trainable, optimizer_values, batches)
            gradients.append({name: np.array(grad) for name, grad in zip(variables, summed, strict=True)})
            values.append({name: np.array(value) for name, value in zip(variables, trainable, strict=True)})
        for variable, value in zip(variables.values(), trainable, strict=True):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, optimizer_values, strict=True):
            variable.assign(value)
        return UpdateRun(values, gradients, native_optimizers.keras_state(optimizer, case.update.rule, variables))

    def repro(self, case: Case, inputs: Arrays, dtype: str) -> str:
        lines = [*self._repro_header(), "import jax", "import keras", ""]
        for spec in case.data:
            lines.append(f"{spec.name} = keras.ops.convert_to_tensor({literal(inputs[spec.name])}, dtype={dtype!r})")
        arguments = [*case.variable_names, *(spec.name for spec in case.data)]  # the data too, as the adapter jits
        lines += [
            f"def loss_function({', '.join(arguments)}):",
            f"    return {source_of(case, SOURCE_FORMATS)}",
            "",
            *(
                f"{spec.name} = keras.Variable({literal(inputs[spec.name])}, dtype={dtype!r}, name={spec.name!r})"
                for spec in case.variables
            ),
            f"argnums = {tuple(range(len(case.variables)))!r}",
            "loss, grads = jax.jit(jax.value_and_grad(loss_function, argnums=argnums))("
            + ", ".join([*(f"{name}.value" for name in case.variable_names), *(spec.name for spec in case.data)])
            + ")",
            "print('loss', float(loss))",
            f"for name, grad in zip({list(case.variable_names)!r}, grads):",
            "    print('grad', name, grad.tolist())  # exact: repr round-trips",
        ]
        return "\n".join(lines) + "\n"


class KerasOnTorch(_KerasOnEngine):
    """Keras on PyTorch: the loss in keras.ops on the variables' torch tensors, `loss.backward()`, and
    `optimizer.apply(gradients, variables)` under `torch.no_grad()`, as Keras' PyTorch guide writes it; `Model.fit`
    on PyTorch runs eagerly by default, and so does this."""

    name = "keras-torch"
    engine = "torch"
    variants = ("eager",)
    float64_also = (
        ", and its decoupled weight decay multiplies by 1 - weight_decay * learning_rate computed in float32 "
        "(keras/src/backend/torch/optimizers/torch_optimizer.py, _apply_weight_decay)"
    )
    conventions = native_losses.with_loss_conventions(torch_backend.TorchBackend.conventions, "keras")
    optimizers = _declaration(
        no_gradient=(
            "skip_count_advances",
            _keras_source(
                "keras/src/optimizers/base_optimizer.py",
                "apply: _filter_empty_gradients drops variables whose gradient is None (torch leaves .grad None for "
                "a variable the loss does not use), then self._iterations.assign_add(1): the one shared count "
                "that Adam's local_step = iterations + 1 reads advances for them too",
            ),
        ),
        weight_decay=(
            "decoupled",
            _keras_source(
                "keras/src/backend/torch/optimizers/torch_optimizer.py",
                "_apply_weight_decay: torch._foreach_mul_(variables, 1 - weight_decay * learning_rate) before the "
                "update step, for every optimizer's weight_decay (decoupled)",
            ),
        ),
    )

    @property
    def torch(self):
        import torch

        return torch

    def _backward(self, case: Case, variables: dict, batch: Arrays, dtype: str):
        """The loss at `batch`, its gradients added to the variables' `.grad` by backward()."""
        ops = self.keras.ops
        data = {spec.name: ops.convert_to_tensor(np.asarray(batch[spec.name]), dtype=dtype) for spec in case.data}
        tensors = {name: variable.value for name, variable in variables.items()}
        loss = lower(case.loss, KerasOpsTarget(ops, dtype), {**tensors, **data})
        loss.backward()
        return loss

    def _gradients(self, variables: dict) -> dict:
        return {
            name: None if variable.value.grad is None else variable.value.grad.detach().cpu().numpy().copy()
            for name, variable in variables.items()
        }

    def _no_grad(self):
        return self.torch.no_grad()

    @staticmethod
    def _zero_grad(variables: dict) -> None:
        for variable in variables.values():
            variable.value.grad = None  # what model.zero_grad() does before each backward()

    def _differentiate(self, case: Case, variables: dict, inputs: Arrays, dtype: str):
        self._zero_grad(variables)
        loss = self._backward(case, variables, inputs, dtype)
        return float(loss.detach().cpu()), self._gradients(variables)

    def updates(self, case: Case, inputs: Arrays, hyper: dict, dtype: str, variant: str, device: str) -> UpdateRun:
        """zero_grad, backward() for each micro-batch (`.grad` sums them), then `optimizer.apply`."""
        self._refuse_float64(dtype)
        variables = self._variables(case, inputs, dtype)
        optimizer = self._optimizer(case, hyper, variables)
        to_numpy = self.keras.ops.convert_to_numpy
        values, gradients = [copied(variables, to_numpy)], []
        batches = micro_batches(case, inputs)
        for _ in range(case.update.steps):
            self._zero_grad(variables)
            for batch in batches:
                self._backward(case, variables, batch, dtype)
            gradients.append(self._gradients(variables))
            with self._no_grad():
                optimizer.apply([variable.value.grad for variable in variables.values()], list(variables.values()))
            values.append(copied(variables, to_numpy))
        return UpdateRun(values, gradients, native_optimizers.keras_state(optimizer, case.update.rule, variables))

    def repro(self, case: Case, inputs: Arrays, dtype: str) -> str:
        lines = [*self._repro_header(), "import keras", ""]
        for spec in case.tensors:
            kind = "keras.Variable" if spec.trainable else "keras.ops.convert_to_tensor"
            lines.append(f"{spec.name} = {kind}({literal(inputs[spec.name])}, dtype={dtype!r})")
        lines += [
            *(f"{name} = {name}.value  # the torch tensor keras.ops computes with" for name in case.variable_names),
            f"loss = {source_of(case, SOURCE_FORMATS)}",
            "loss.backward()",
            "print('loss', loss.item())",
            *(
                f"print('grad {name}', None if {name}.grad is None else {name}.grad.tolist())"
                for name in case.variable_names
            ),
        ]
        return "\n".join(lines) + "\n"


class KerasJaxBackend(OwnProcess, KerasOnJax):
    """`keras-jax`: KerasOnJax in a process with KERAS_BACKEND=jax, on the CPU (the device its items name)."""

    process_environment = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}


class KerasTorchBackend(OwnProcess, KerasOnTorch):
    """`keras-torch`: KerasOnTorch in a process with KERAS_BACKEND=torch, on the CPU (the device its items name)."""

    process_environment = {"KERAS_BACKEND": "torch", "KERAS_TORCH_DEVICE": "cpu"}
