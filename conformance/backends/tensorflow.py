"""TensorFlow as its users write it: `tf.Variable`, `tf.GradientTape`, eagerly or inside `tf.function`."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from conformance.backends import native_losses, native_optimizers
from conformance.backends.base import (
    AccumulationMechanism,
    AccumulationRun,
    Arrays,
    Backend,
    GradientRun,
    UpdateRun,
    copied,
    literal,
    micro_batches,
    source_of,
    step_resolution,
)
from conformance.cases import Case
from conformance.expressions import OperatorTarget, lower
from conformance.reference.conventions import Citation, KinkConventions
from conformance.reference.optimizers import (
    ADAM_DEFAULTS,
    RULE_HYPERPARAMETERS,
    OptimizerDeclaration,
    UpdateSwitches,
    defaults_by_rule,
    source_citation,
)

SOURCE_FORMATS = {
    "sum": "tf.reduce_sum({0})",
    "sum@axis": "tf.reduce_sum({0}, axis={axis})",
    "mean": "tf.reduce_mean({0})",
    "mean@axis": "tf.reduce_mean({0}, axis={axis})",
    "logsumexp": "tf.reduce_logsumexp({0})",
    "logsumexp@axis": "tf.reduce_logsumexp({0}, axis={axis})",
    "exp": "tf.exp({0})",
    "log": "tf.math.log({0})",
    "sqrt": "tf.sqrt({0})",
    "abs": "tf.abs({0})",
    "tanh": "tf.tanh({0})",
    "sigmoid": "tf.sigmoid({0})",
    "softplus": "tf.nn.softplus({0})",
    "relu": "tf.nn.relu({0})",
    "square": "tf.square({0})",
    "maximum": "tf.maximum({0}, {1})",
    "minimum": "tf.minimum({0}, {1})",
    "@": "tf.experimental.numpy.matmul({0}, {1})",
    **native_losses.keras_formats("tf.keras", "tf.exp({0})", "{0}.dtype.name"),
}


class TensorFlowTarget(native_losses.KerasLosses, OperatorTarget):
    def __init__(self, tf, dtype):
        self.tf, self.dtype = tf, dtype
        self.losses, self.loss_dtype = tf.keras.losses, dtype.name  # tf.keras: Keras on TensorFlow

    def constant(self, value):
        return self.tf.constant(value, dtype=self.dtype)

    def binary(self, op, left, right):
        if op == "@":  # tf.matmul wants matrices; the numpy-style matmul takes vectors as numpy does
            return self.tf.experimental.numpy.matmul(left, right)
        return super().binary(op, left, right)

    def sum(self, a, axis=None):
        return self.tf.reduce_sum(a, axis=axis)

    def mean(self, a, axis=None):
        return self.tf.reduce_mean(a, axis=axis)

    def logsumexp(self, a, axis=None):
        return self.tf.reduce_logsumexp(a, axis=axis)

    def exp(self, a):
        return self.tf.exp(a)

    def log(self, a):
        return self.tf.math.log(a)

    def sqrt(self, a):
        return self.tf.sqrt(a)

    def abs(self, a):
        return self.tf.abs(a)

    def tanh(self, a):
        return self.tf.tanh(a)

    def sigmoid(self, a):
        return self.tf.sigmoid(a)

    def softplus(self, a):
        return self.tf.nn.softplus(a)

    def relu(self, a):
        return self.tf.nn.relu(a)

    def square(self, a):
        return self.tf.square(a)

    def maximum(self, a, b):
        return self.tf.maximum(a, b)

    def minimum(self, a, b):
        return self.tf.minimum(a, b)


def _source(path: str, text: str) -> Citation:
    """A line of Keras's source, at the release the optimizer declaration below was read from."""
    return source_citation("keras-team/keras", "3.15.1", path, text)


# The documented formulas Keras's optimizers follow, and what they run with where a case gives no value.
OPTIMIZERS = OptimizerDeclaration(
    switches=UpdateSwitches(
        adam_eps="sqrt_v",
        amsgrad_max="v",
        weight_decay="decoupled",
        sgd_momentum="update",
        rmsprop_momentum="step",
        rmsprop_eps="inside_sqrt",
        adagrad_eps="inside_sqrt",
        adamax_eps="outside_max",
        nadam_momentum="schedule",
        nadam_mu_product="dtype",
        clip_norm_eps="exact",
        cosine_after_decay="hold",
        piecewise_boundary="after_boundary",
        schedule_precision="float32",
        no_gradient="skip_count_advances",
        hyperparameter_precision="float32_casts",
        citations={
            "cosine_after_decay": _source(
                "keras/src/optimizers/schedules/learning_rate_schedule.py",
                "CosineDecay.__call__: global_step_recomp = ops.minimum(global_step_recomp, decay_steps) "
                "(decay_steps + warmup_steps with a warm-up)",
            ),
            "schedule_precision": _source(
                "keras/src/optimizers/schedules/learning_rate_schedule.py",
                "initial_learning_rate = ops.convert_to_tensor(self.initial_learning_rate); dtype = "
                "initial_learning_rate.dtype (float32 from a Python float); base_optimizer.py apply: lr = "
                "ops.cast(learning_rate, variable.dtype)",
            ),
            "piecewise_boundary": _source(
                "keras/src/optimizers/schedules/learning_rate_schedule.py",
                "PiecewiseConstantDecay.__call__: values[0] where step <= boundaries[0], values[-1] where "
                "step > boundaries[-1]: a boundary's step still takes the value before it",
            ),
            "adam_eps": _source(
                "keras/src/optimizers/adam.py",
                "update_step: alpha = lr * sqrt(1 - "
                "beta_2_power) / (1 - beta_1_power); variable -= m * alpha / (sqrt(v) + epsilon)",
            ),
            "amsgrad_max": _source(
                "keras/src/optimizers/adam.py",
                "v_hat = maximum(v_hat, v) of the uncorrected v, then the same alpha and sqrt(v_hat) + epsilon",
            ),
            "weight_decay": _source(
                "keras/src/optimizers/base_optimizer.py",
                "_apply_weight_decay: "
                "variable.assign(variable - variable * wd * lr) before update_step, for the "
                "weight_decay argument of every optimizer (Adam's and SGD's too, not only AdamW's)",
            ),
            "sgd_momentum": _source(
                "keras/src/optimizers/sgd.py",
                "update_step: m = m * momentum - gradient * "
                "learning_rate; variable += m (nesterov: variable += m * momentum - gradient * "
                "learning_rate); no dampening",
            ),
            "rmsprop_momentum": _source(
                "keras/src/optimizers/rmsprop.py",
                "increment = lr * gradient / "
                "sqrt(denominator); momentum = self.momentum * momentum + increment; "
                "variable -= momentum",
            ),
            "rmsprop_eps": _source(
                "keras/src/optimizers/rmsprop.py",
                "denominator = velocity + epsilon "
                "(centered: velocity - average_grad**2 + epsilon); increment = lr * gradient / "
                "sqrt(denominator)",
            ),
            "adagrad_eps": _source(
                "keras/src/optimizers/adagrad.py", "variable -= lr * gradient / sqrt(accumulator + epsilon)"
            ),
            "nadam_momentum": _source(
                "keras/src/optimizers/nadam.py",
                "update_step: u_t = beta_1 * (1.0 - 0.5 * (ops.power(decay, local_step))) with decay = 0.96 and "
                "local_step = iterations + 1, i.e. torch's schedule with momentum_decay = 1; m_hat = u_t_1 * m / "
                "(1 - u_product_t_1) + (1 - u_t) * gradient / (1 - u_product_t)",
            ),
            "nadam_mu_product": _source(
                "keras/src/optimizers/nadam.py",
                "build: self._u_product = backend.Variable(1.0, dtype=var_list[0].dtype)",
            ),
            "adamax_eps": _source(
                "keras/src/optimizers/adamax.py",
                "u = ops.maximum(ops.multiply(self.beta_2, u), ops.abs(gradient)); variable -= lr * m / "
                "((1 - beta_1_power) * (u + self.epsilon))",
            ),
            "clip_norm_eps": _source(
                "keras/src/optimizers/base_optimizer.py",
                "clip_by_global_norm: scale_for_finite = clip_norm * ops.minimum(1.0 / use_norm, 1.0 / clip_norm); "
                "global_clipnorm, clipnorm and clipvalue are applied in apply() before weight decay and the step",
            ),
            "no_gradient": _source(
                "keras/src/optimizers/base_optimizer.py",
                "apply: _filter_empty_gradients "
                "drops variables whose gradient is None (tf.GradientTape gives None for an unused "
                "variable), then self._iterations.assign_add(1): the one shared count that Adam's "
                "local_step = iterations + 1 reads advances for them too",
            ),
            "hyperparameter_precision": _source(
                "keras/src/optimizers/base_optimizer.py",
                "__init__: "
                "learning_rate = backend.Variable(learning_rate, "
                "dtype=backend.floatx()) (float32 unless keras.config.set_floatx); "
                "wd = tf.cast(self.weight_decay, variable.dtype) "
                "(keras/src/backend/tensorflow/optimizer.py); sgd.py: "
                "ops.cast(self.momentum, variable.dtype); adam.py: ops.power(ops.cast("
                "self.beta_1, variable.dtype), local_step); adagrad.py: "
                "initializers.Constant(initial_accumulator_value), which is "
                "ops.cast(value, dtype) * ones",
            ),
        },
    ),
    defaults=defaults_by_rule(
        sgd={"lr": 1e-2, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
        adam={"lr": 1e-3, **ADAM_DEFAULTS, "eps": 1e-7, "weight_decay": 0.0},
        adamw={"lr": 1e-3, **ADAM_DEFAULTS, "eps": 1e-7, "weight_decay": 4e-3},
        rmsprop={"lr": 1e-3, "rho": 0.9, "eps": 1e-7, "momentum": 0.0, "centered": False, "weight_decay": 0.0},
        adagrad={"lr": 1e-3, "eps": 1e-7, "initial_accumulator": 0.1, "weight_decay": 0.0},
        adamax={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "weight_decay": 0.0},
        adadelta={"lr": 1e-3, "rho": 0.95, "eps": 1e-7, "weight_decay": 0.0},
        nadam={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "weight_decay": 0.0, "momentum_decay": 1.0},
        lion={"lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0},
    ),
    defaults_source={
        rule: _source(f"keras/src/optimizers/{rule}.py", "the keras.optimizers constructor's keyword defaults")
        for rule in RULE_HYPERPARAMETERS
        if rule != "radam"
    },
    absent={"radam": "keras.optimizers has no RAdam (keras/src/optimizers/__init__.py lists its optimizers)"},
)


KERAS_ACCUMULATION = "keras: SGD(learning_rate=1, gradient_accumulation_steps=k), the step taken"
KERAS_ACCUMULATION_CITATION = (
    "https://keras.io/api/optimizers/#base-optimizer-class (gradient_accumulation_steps: "
    "updated every k steps using the average value of the gradients)"
)


# How a training step runs: eagerly, traced by tf.function, or compiled whole by XLA (`jit_compile=True`), as
# keras.io's "Writing a training loop from scratch in TensorFlow" writes it. Autograph is off, as in the gradient
# items: the step's loops are over Python lists, which autograph leaves as they are.
TRAINING_STEPS = {"eager": None, "function": {"autograph": False}, "xla": {"autograph": False, "jit_compile": True}}


def _training_step(tf, train_step, variant: str):
    if variant not in TRAINING_STEPS:
        raise ValueError(f"tensorflow runs training steps as {', '.join(TRAINING_STEPS)}, not {variant!r}")
    options = TRAINING_STEPS[variant]
    return train_step if options is None else tf.function(train_step, **options)


class TensorFlowBackend(Backend):
    name = "tensorflow"
    variants = ("eager", "function")
    update_variants = tuple(TRAINING_STEPS)
    accumulation_mechanism = AccumulationMechanism("mean", step_read_back=True)  # gradient_accumulation_steps
    optimizers = OPTIMIZERS
    conventions = native_losses.with_loss_conventions(
        KinkConventions(
            abs_slope_at_zero=0.0,
            maximum_tie_to_first=1.0,
            minimum_tie_to_first=1.0,
            citations={
                "abs_slope_at_zero": Citation(
                    "Abs gradient is grad * sign(x), sign(0) = 0 (tensorflow/python/ops/math_grad.py)",
                    "https://github.com/tensorflow/tensorflow/blob/master/tensorflow/python/ops/math_grad.py",
                ),
                "maximum_tie_to_first": Citation(
                    "Maximum/Minimum gradients route a tie entirely to x: the mask is "
                    "x >= y, resp. x <= y (tensorflow/python/ops/math_grad.py, _MaximumMinimumGrad)",
                    "https://github.com/tensorflow/tensorflow/blob/master/tensorflow/python/ops/math_grad.py",
                ),
            },
        ),
        "tf.keras",
    )

    def __init__(self):
        self._compiled: dict[tuple[int, str], tuple[dict, object]] = {}

    def unavailable_reason(self):
        if importlib.util.find_spec("tensorflow") is None:
            return "tensorflow is not installed (pip install 'conformance[tensorflow]')"
        return None

    @property
    def tf(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        return tf

    def versions(self):
        tf = self.tf
        return {"tensorflow": tf.__version__, "keras": tf.keras.__version__}

    def _differentiation(self, case: Case, dtype: str, variant: str):
        """Variables and a function computing (loss, gradients); under tf.function both are built once per case."""
        tf = self.tf
        key = (id(case), dtype)
        if variant == "function" and key in self._compiled:
            return self._compiled[key]
        tf_dtype = getattr(tf, dtype)
        variables = {spec.name: tf.Variable(tf.zeros(spec.shape, tf_dtype), name=spec.name) for spec in case.variables}
        target = TensorFlowTarget(tf, tf_dtype)

        def differentiate(data):
            with tf.GradientTape() as tape:
                loss = lower(case.loss, target, {**variables, **data})
            return loss, tape.gradient(loss, variables)

        compiled = (variables, tf.function(differentiate, autograph=False) if variant == "function" else differentiate)
        if variant == "function":
            self._compiled[key] = compiled
        return compiled

    def bare_gradients(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str):
        tf = self.tf
        variables, differentiate = self._differentiation(case, dtype, variant)
        for name, variable in variables.items():
            variable.assign(tf.constant(inputs[name], dtype=getattr(tf, dtype)))
        data = {spec.name: tf.constant(inputs[spec.name], dtype=getattr(tf, dtype)) for spec in case.data}
        return lambda: differentiate(data)

    def gradients(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> GradientRun:
        return self._differentiated(case, inputs, dtype, variant, repeated=True)

    def differentiate_once(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> GradientRun:
        return self._differentiated(case, inputs, dtype, variant, repeated=False)

    def _differentiated(self, case: Case, inputs: Arrays, dtype: str, variant: str, repeated: bool) -> GradientRun:
        tf = self.tf
        tf_dtype = getattr(tf, dtype)
        variables, differentiate = self._differentiation(case, dtype, variant)
        for name, variable in variables.items():
            variable.assign(tf.constant(inputs[name], dtype=tf_dtype))
        data = {spec.name: tf.constant(inputs[spec.name], dtype=tf_dtype) for spec in case.data}
        to_numpy = lambda tensor: tensor.numpy()  # noqa: E731
        values_before = copied(variables, to_numpy)
        loss, grads = differentiate(data)
        gradients = {name: None if grad is None else np.array(grad.numpy()) for name, grad in grads.items()}
        values_after = copied(variables, to_numpy)
        if not repeated:
            return GradientRun(float(loss.numpy()), values_before, values_after, None, gradients, None)
        _, grads = differentiate(data)
        gradients_repeat = {name: None if grad is None else np.array(grad.numpy()) for name, grad in grads.items()}
        return GradientRun(
            float(loss.numpy()), values_before, values_after, copied(variables, to_numpy), gradients, gradients_repeat
        )

    def updates(self, case: Case, inputs: Arrays, hyper: dict, dtype: str, variant: str, device: str) -> UpdateRun:
        """keras.io's custom training loop: GradientTape, the micro-batches' gradients summed, then
        `apply_gradients`; one step as a function of the data, run eagerly or as `tf.function` (with
        `jit_compile=True` for xla). The optimizer is built on every variable before the first step, as
        `Model.fit` builds it (a slot of a variable that never has a gradient stays at its initial value)."""
        tf = self.tf
        tf_dtype = getattr(tf, dtype)
        variables = {
            spec.name: tf.Variable(inputs[spec.name], dtype=tf_dtype, name=spec.name) for spec in case.variables
        }
        batches = [
            {spec.name: tf.constant(batch[spec.name], dtype=tf_dtype) for spec in case.data}
            for batch in micro_batches(case, inputs)
        ]
        target = TensorFlowTarget(tf, tf_dtype)
        optimizer = native_optimizers.keras_optimizer(case.update.rule, hyper, schedule=case.update.schedule)
        optimizer.build(list(variables.values()))  # as Keras' own fit does before its first step

        def train_step(batches):
            summed = {name: None for name in variables}
            for batch in batches:
                with tf.GradientTape() as tape:
                    loss = lower(case.loss, target, {**variables, **batch})
                for name, grad in tape.gradient(loss, variables).items():
                    if grad is not None:
                        summed[name] = grad if summed[name] is None else summed[name] + grad
            optimizer.apply_gradients(
                [(summed[name], variables[name]) for name in variables if summed[name] is not None]
            )
            return summed

        step = _training_step(tf, train_step, variant)
        to_numpy = lambda tensor: tensor.numpy()  # noqa: E731
        values, gradients = [copied(variables, to_numpy)], []
        for _ in range(case.update.steps):
            summed = step(batches)
            gradients.append({name: None if grad is None else np.array(grad.numpy()) for name, grad in summed.items()})
            values.append(copied(variables, to_numpy))
        return UpdateRun(values, gradients, native_optimizers.keras_state(optimizer, case.update.rule, variables))

    def accumulation(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> AccumulationRun:
        """Keras' `gradient_accumulation_steps=k` on SGD(learning_rate=1): after k calls the step is the mean."""
        tf = self.tf
        tf_dtype = getattr(tf, dtype)
        batches = micro_batches(case, inputs)
        micro_gradients = [self.differentiate_once(case, batch, dtype, variant, device).gradients for batch in batches]
        variables = {
            spec.name: tf.Variable(inputs[spec.name], dtype=tf_dtype, name=spec.name) for spec in case.variables
        }
        optimizer = tf.keras.optimizers.SGD(learning_rate=1.0, gradient_accumulation_steps=len(batches))
        for gradients in micro_gradients:
            optimizer.apply_gradients(
                [
                    (tf.constant(gradients[name], dtype=tf_dtype), variable)
                    for name, variable in variables.items()
                    if gradients[name] is not None
                ]
            )
        accumulated = {
            name: np.asarray(inputs[name], np.float64) - np.asarray(variable.numpy(), np.float64)
            for name, variable in variables.items()
        }
        return AccumulationRun(
            KERAS_ACCUMULATION,
            self.accumulation_mechanism.promise,
            micro_gradients,
            accumulated,
            KERAS_ACCUMULATION_CITATION,
            resolution=step_resolution(inputs, {name: v.numpy() for name, v in variables.items()}, dtype),
        )

    def repro(self, case: Case, inputs: Arrays, dtype: str) -> str:
        lines = ["import tensorflow as tf", ""]
        for spec in case.tensors:
            kind = "tf.Variable" if spec.trainable else "tf.constant"
            lines.append(f"{spec.name} = {kind}({literal(inputs[spec.name])}, dtype=tf.{dtype})")
        names = ", ".join(case.variable_names)
        lines += [
            "with tf.GradientTape() as tape:",
            f"    loss = {source_of(case, SOURCE_FORMATS)}",
            f"grads = tape.gradient(loss, [{names}])",
            "print('loss', loss.numpy())",
            f"for name, grad in zip({list(case.variable_names)!r}, grads):",
            "    print('grad', name, None if grad is None else grad.numpy().tolist())  # exact: repr round-trips",
        ]
        return "\n".join(lines) + "\n"
