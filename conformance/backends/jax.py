"""JAX as its users write it: a pure loss function of a parameter dict, `jax.value_and_grad`, with `jax.jit` or not.

float64 runs inside `jax.enable_x64(True)`, a context manager, so 64-bit mode never leaks into other tests.
"""

from __future__ import annotations

import contextlib
import importlib.util

import numpy as np

from conformance import caches
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
    "sum": "jnp.sum({0})",
    "sum@axis": "jnp.sum({0}, axis={axis})",
    "mean": "jnp.mean({0})",
    "mean@axis": "jnp.mean({0}, axis={axis})",
    "logsumexp": "jax.nn.logsumexp({0})",
    "logsumexp@axis": "jax.nn.logsumexp({0}, axis={axis})",
    "exp": "jnp.exp({0})",
    "log": "jnp.log({0})",
    "sqrt": "jnp.sqrt({0})",
    "abs": "jnp.abs({0})",
    "tanh": "jnp.tanh({0})",
    "sigmoid": "jax.nn.sigmoid({0})",
    "softplus": "jax.nn.softplus({0})",
    "relu": "jax.nn.relu({0})",
    "square": "jnp.square({0})",
    "maximum": "jnp.maximum({0}, {1})",
    "minimum": "jnp.minimum({0}, {1})",
    **native_losses.OPTAX_FORMATS,
}


class JaxTarget(native_losses.OptaxLosses, OperatorTarget):
    def __init__(self, jax, dtype):
        self.jax, self.jnp, self.dtype = jax, jax.numpy, dtype

    def constant(self, value):
        return self.jnp.asarray(value, dtype=self.dtype)

    def sum(self, a, axis=None):
        return self.jnp.sum(a, axis=axis)

    def mean(self, a, axis=None):
        return self.jnp.mean(a, axis=axis)

    def logsumexp(self, a, axis=None):
        return self.jax.nn.logsumexp(a, axis=axis)

    def exp(self, a):
        return self.jnp.exp(a)

    def log(self, a):
        return self.jnp.log(a)

    def sqrt(self, a):
        return self.jnp.sqrt(a)

    def abs(self, a):
        return self.jnp.abs(a)

    def tanh(self, a):
        return self.jnp.tanh(a)

    def sigmoid(self, a):
        return self.jax.nn.sigmoid(a)

    def softplus(self, a):
        return self.jax.nn.softplus(a)

    def relu(self, a):
        return self.jax.nn.relu(a)

    def square(self, a):
        return self.jnp.square(a)

    def maximum(self, a, b):
        return self.jnp.maximum(a, b)

    def minimum(self, a, b):
        return self.jnp.minimum(a, b)


def _narrowest(arrays: list) -> str:
    return str(min((np.dtype(array.dtype) for array in arrays), key=lambda dtype: dtype.itemsize))


def _documented(held: str) -> str | None:
    """The accumulator's dtype where it is the documented one; any other is no explanation (then the sum is judged
    in the run's dtype)."""
    return held if held == JaxBackend.accumulation_mechanism.accumulator_dtype else None


def _source(path: str, text: str) -> Citation:
    """A line of optax's source, at the release the optimizer declaration below was read from."""
    return source_citation("google-deepmind/optax", "0.2.8", path, text)


# The documented formulas optax's optimizers follow, and what they run with where a case gives no value.
OPTIMIZERS = OptimizerDeclaration(
    switches=UpdateSwitches(
        adam_eps="sqrt_v_hat",
        amsgrad_max="v_hat",
        weight_decay="l2",
        sgd_momentum="gradient",
        rmsprop_momentum="update",
        rmsprop_eps="inside_sqrt",
        adagrad_eps="inside_sqrt",
        adamax_eps="inside_max",
        nadam_momentum="constant",
        nadam_mu_product="dtype",
        radam_eps="sqrt_v_hat",
        radam_threshold="from",
        clip_norm_eps="exact",
        cosine_after_decay="hold",
        piecewise_boundary="from_boundary",
        schedule_precision="float32_exponential_warmup",
        no_gradient="zero",
        hyperparameter_precision="as_given",
        citations={
            "cosine_after_decay": _source(
                "optax/schedules/_schedule.py",
                "cosine_decay_schedule: count = jnp.minimum(count, decay_steps); "
                "cosine_decay = 0.5 * (1 + jnp.cos(jnp.pi * count / decay_steps))",
            ),
            "schedule_precision": _source(
                "optax/schedules/_schedule.py",
                "the count is int32 (transform.py scale_by_schedule: count=jnp.zeros([], jnp.int32)); "
                "exponential_decay: p = decreased_count / transition_steps and polynomial_schedule (the warm-up): "
                "count / transition_steps, an int32 over an int, are float32; cosine_decay_schedule divides by "
                "float(decay_steps) and stays in float64 under x64",
            ),
            "piecewise_boundary": _source(
                "optax/schedules/_schedule.py",
                "piecewise_constant_schedule: indicator = jnp.maximum(0.0, jnp.sign(threshold - count)); "
                "v = v * indicator + (1 - indicator) * scale * v (scaled once count >= threshold)",
            ),
            "adam_eps": _source(
                "optax/_src/transform.py",
                "scale_by_adam: mu_hat = bias_correction(mu, b1, "
                "count_inc); nu_hat = bias_correction(nu, b2, count_inc); "
                "m / (sqrt(v + eps_root) + eps)",
            ),
            "amsgrad_max": _source(
                "optax/_src/transform.py",
                "scale_by_amsgrad: nu_max = maximum(state.nu_max, "
                "bias_correction(nu, b2, count_inc)): the maximum of the bias-corrected v_hat",
            ),
            "weight_decay": _source(
                "optax/transforms/_adding.py",
                "optax.sgd/adam/amsgrad/rmsprop/adagrad have "
                "no weight decay; a user chains add_decayed_weights (g + weight_decay * p) in front "
                "of the optimizer, which is L2 (native_optimizers.py builds exactly that)",
            ),
            "sgd_momentum": _source(
                "optax/transforms/_accumulation.py",
                "optax.sgd = chain(trace(momentum, "
                "nesterov), scale_by_learning_rate); trace: new_trace = g + decay * trace, nesterov: "
                "g + decay * new_trace; no dampening",
            ),
            "rmsprop_momentum": _source(
                "optax/_src/alias.py",
                "rmsprop = chain(scale_by_rms, "
                "scale_by_learning_rate(learning_rate), trace(decay=momentum)): the trace "
                "accumulates the already lr-scaled, sign-flipped update",
            ),
            "rmsprop_eps": _source(
                "optax/_src/transform.py",
                "scale_by_rms / scale_by_stddev with "
                "eps_in_sqrt=True (optax.rmsprop's default): rsqrt(nu + eps), centered: "
                "rsqrt(nu - mu**2 + eps)",
            ),
            "adagrad_eps": _source(
                "optax/_src/transform.py",
                "scale_by_rss: where(sum_of_squares > 0, rsqrt(sum_of_squares + eps), 0) * g",
            ),
            "nadam_momentum": _source(
                "optax/_src/alias.py",
                "nadam = functools.partial(adam, nesterov=True); transform.py scale_by_adam: mu_hat = b1 * "
                "bias_correction(mu, b1, count + 1) + (1 - b1) * bias_correction(updates, b1, count): a constant b1",
            ),
            "nadam_mu_product": _source(
                "optax/_src/transform.py",
                "scale_by_adam keeps no product of momentum factors: its bias corrections are powers of b1",
            ),
            "radam_eps": _source(
                "optax/_src/transform.py",
                "scale_by_radam: _radam_update: r * m / (jnp.sqrt(v + eps_root) + eps) of mu_hat and nu_hat, "
                "both bias-corrected",
            ),
            "radam_threshold": _source(
                "optax/_src/transform.py",
                "scale_by_radam: jnp.where(ro >= threshold, _radam_update(ro, mu_hat, nu_hat), mu_hat), threshold 5.0; "
                "ro from b2**count_inc, an int32 count: float32 unless under jax_enable_x64",
            ),
            "adamax_eps": _source(
                "optax/tree_utils/_tree_math.py",
                "tree_update_infinity_moment: jnp.maximum(jnp.abs(g) + eps, decay * t); scale_by_adamax: "
                "updates = mu_hat / nu",
            ),
            "clip_norm_eps": _source(
                "optax/transforms/_clipping.py",
                "clip_by_global_norm: trigger = g_norm < max_norm; jax.lax.select(trigger, t, (t / g_norm) * max_norm)",
            ),
            "no_gradient": _source(
                "optax/_src/transform.py",
                "jax.grad gives zeros for an input the loss does "
                "not use, and optax updates it like any other: moments decay, count advances, "
                "add_decayed_weights decays it",
            ),
            "hyperparameter_precision": _source(
                "optax/_src/transform.py",
                "hyperparameters are Python "
                "floats, weakly typed, so float64 under jax_enable_x64: "
                "scale_by_learning_rate is scale(-learning_rate)",
            ),
        },
    ),
    defaults=defaults_by_rule(  # optax has no default learning rate: a case must give lr
        sgd={"momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
        adam={**ADAM_DEFAULTS, "eps": 1e-8, "weight_decay": 0.0},
        adamw={**ADAM_DEFAULTS, "eps": 1e-8, "weight_decay": 1e-4},
        rmsprop={"rho": 0.9, "eps": 1e-8, "momentum": 0.0, "centered": False, "weight_decay": 0.0},
        adagrad={"eps": 1e-7, "initial_accumulator": 0.1, "weight_decay": 0.0},
        adamax={"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
        adadelta={"rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},
        nadam={"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "momentum_decay": 4e-3},
        radam={"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
        lion={"beta1": 0.9, "beta2": 0.99, "weight_decay": 1e-3},
    ),
    defaults_source={
        rule: _source("optax/_src/alias.py", f"optax.{rule}'s keyword defaults") for rule in RULE_HYPERPARAMETERS
    },
)


def _keep_compilations(jax) -> None:
    """XLA's compilations kept on disk between runs (jax's persistent compilation cache, keyed by the program and
    the compiler), in the suite's cache directory unless the user chose one of their own: a case's first eager
    differentiation compiles every primitive for its shapes, which was a third of eager JAX's time."""
    where = caches.directory()
    if where is None or jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(where / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


TRAINING_STEPS = ("jit", "eager")  # the whole training step compiled by jax.jit, or every call eager


class JaxBackend(Backend):
    name = "jax"
    variants = ("jit", "eager")
    update_variants = TRAINING_STEPS
    # optax.MultiSteps averages; its documented default accumulator_dtype is float32
    accumulation_mechanism = AccumulationMechanism("mean", step_read_back=True, accumulator_dtype="float32")
    optimizers = OPTIMIZERS
    conventions = native_losses.with_loss_conventions(
        KinkConventions(
            abs_slope_at_zero=1.0,
            maximum_tie_to_first=0.5,
            minimum_tie_to_first=0.5,
            citations={
                "abs_slope_at_zero": Citation(
                    "jnp.abs differentiates as select(x >= 0, 1, -1): slope 1 at 0 "
                    "(jax/_src/lax/lax.py, abs_p's JVP uses sign with the positive branch at 0)",
                    "https://github.com/jax-ml/jax/blob/main/jax/_src/lax/lax.py",
                ),
                "maximum_tie_to_first": Citation(
                    "lax.max_p / min_p JVPs give each argument half of the gradient at a tie "
                    "(jax/_src/lax/lax.py, _balanced_eq)",
                    "https://github.com/jax-ml/jax/blob/main/jax/_src/lax/lax.py",
                ),
            },
        ),
        "optax",
    )

    def __init__(self):
        self._compiled: dict[tuple, object] = {}  # jitted functions, by case and dtype or by use
        self._compilations_kept = False

    def unavailable_reason(self):
        if importlib.util.find_spec("jax") is None:
            return "jax is not installed (pip install 'conformance[jax]')"
        return None

    @property
    def jax(self):
        import jax

        if not self._compilations_kept:
            _keep_compilations(jax)
            self._compilations_kept = True
        return jax

    def versions(self):
        versions = {"jax": self.jax.__version__}
        if importlib.util.find_spec("optax") is not None:
            try:
                import optax
            except Exception as error:  # noqa: BLE001 - a release that does not fit this jax: the updates say so
                versions["optax"] = f"cannot be imported ({type(error).__name__})"
            else:
                versions["optax"] = optax.__version__
        return versions

    def devices(self):
        platforms = {device.platform for device in self.jax.devices()}
        return ["cpu"] + (["gpu"] if "gpu" in platforms else [])

    def precision(self, dtype: str):
        """64-bit mode for float64 only, scoped to the call."""
        return self.jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()

    def _loss_function(self, case: Case, dtype: str):
        """The case's loss as a pure function of a parameter dict and a data dict."""
        target = JaxTarget(self.jax, getattr(self.jax.numpy, dtype))

        def loss_function(params, data):
            return lower(case.loss, target, {**params, **data})

        return loss_function

    def _value_and_grad(self, case: Case, dtype: str, variant: str):
        jax = self.jax
        loss_function = self._loss_function(case, dtype)
        if variant == "eager":
            return jax.value_and_grad(loss_function)
        key = (id(case), dtype)
        if key not in self._compiled:
            self._compiled[key] = jax.jit(jax.value_and_grad(loss_function))
        return self._compiled[key]

    def _placed(self, case: Case, inputs: Arrays, dtype: str, device: str) -> tuple[dict, dict]:
        """The case's parameters and data as arrays of `dtype` on `device` (inside `precision(dtype)`)."""
        jax = self.jax
        placement, jnp_dtype = jax.devices(device)[0], getattr(jax.numpy, dtype)
        placed = {name: jax.device_put(jax.numpy.asarray(inputs[name], jnp_dtype), placement) for name in inputs}
        return {s.name: placed[s.name] for s in case.variables}, {s.name: placed[s.name] for s in case.data}

    def gradients(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> GradientRun:
        return self._differentiated(case, inputs, dtype, variant, device, repeated=True)

    def differentiate_once(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> GradientRun:
        return self._differentiated(case, inputs, dtype, variant, device, repeated=False)

    def _differentiated(
        self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str, repeated: bool
    ) -> GradientRun:
        with self.precision(dtype):
            params, data = self._placed(case, inputs, dtype, device)
            value_and_grad = self._value_and_grad(case, dtype, variant)
            values_before = copied(params, np.asarray)
            loss, grads = value_and_grad(params, data)
            gradients = copied(grads, np.asarray)
            values_after = copied(params, np.asarray)
            if not repeated:
                return GradientRun(float(loss), values_before, values_after, None, gradients, None)
            _, grads = value_and_grad(params, data)
            return GradientRun(
                float(loss),
                values_before,
                values_after,
                copied(params, np.asarray),
                gradients,
                copied(grads, np.asarray),
            )

    def bare_gradients(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str):
        jax = self.jax
        with self.precision(dtype):
            params, data = self._placed(case, inputs, dtype, device)
        value_and_grad = self._value_and_grad(case, dtype, variant)

        def differentiate():
            with self.precision(dtype):
                return jax.block_until_ready(value_and_grad(params, data))

        return differentiate

    def updates(self, case: Case, inputs: Arrays, hyper: dict, dtype: str, variant: str, device: str) -> UpdateRun:
        """A training step as optax's guides write it: `jax.value_and_grad` per micro-batch, summed, then
        `optimizer.update` and `optax.apply_updates`; the whole step under `jax.jit` (jit), or every call eager."""
        jax = self.jax
        placement = jax.devices(device)[0]
        with self.precision(dtype):
            jnp_dtype = getattr(jax.numpy, dtype)
            place = lambda value: jax.device_put(jax.numpy.asarray(value, jnp_dtype), placement)  # noqa: E731
            params = {spec.name: place(inputs[spec.name]) for spec in case.variables}
            batches = [
                {spec.name: place(batch[spec.name]) for spec in case.data} for batch in micro_batches(case, inputs)
            ]
            optimizer, step = self._training_step(case, hyper, dtype, variant)
            state = optimizer.init(params)
            values, gradients = [copied(params, np.asarray)], []
            for _ in range(case.update.steps):
                params, state, grads = step(params, state, batches)
                gradients.append(copied(grads, np.asarray))
                values.append(copied(params, np.asarray))
            return UpdateRun(values, gradients, native_optimizers.optax_state(state, list(params), case.update.rule))

    def _training_step(self, case: Case, hyper: dict, dtype: str, variant: str):
        """The optimizer and a step closed over it, so that under jit its hyperparameters are constants of the
        compiled program, as in a user's training loop (compiled anew for each run: each draws hyperparameters)."""
        if variant not in TRAINING_STEPS:
            raise ValueError(f"jax runs training steps as {', '.join(TRAINING_STEPS)}, not {variant!r}")
        import optax

        jax = self.jax
        optimizer = native_optimizers.optax_optimizer(case.update.rule, hyper, case.update.schedule)
        loss_function = self._loss_function(case, dtype)

        def train_step(params, state, batches):
            grads = None
            for batch in batches:
                _, batch_grads = jax.value_and_grad(loss_function)(params, batch)
                grads = batch_grads if grads is None else jax.tree_util.tree_map(lambda a, b: a + b, grads, batch_grads)
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state, grads

        return optimizer, jax.jit(train_step) if variant == "jit" else train_step

    def accumulation(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> AccumulationRun:
        """optax.MultiSteps(optax.sgd(1.0), every_k_schedule=k): the k-th call applies the mean."""

        jax = self.jax
        batches = micro_batches(case, inputs)
        micro_gradients = [self.differentiate_once(case, batch, dtype, variant, device).gradients for batch in batches]
        with self.precision(dtype):
            jnp_dtype = getattr(jax.numpy, dtype)
            params = {spec.name: jax.numpy.asarray(inputs[spec.name], jnp_dtype) for spec in case.variables}
            optimizer, step = self._multi_steps(len(batches), variant)
            state = optimizer.init(params)
            for gradients in micro_gradients:
                grads = {name: jax.numpy.asarray(gradients[name], jnp_dtype) for name in params}
                params, state = step(grads, state, params)
            accumulated = {
                name: np.asarray(inputs[name], np.float64) - np.asarray(params[name], np.float64) for name in params
            }
        return AccumulationRun(
            "optax: MultiSteps(sgd(1.0), every_k_schedule=k), the step taken",
            self.accumulation_mechanism.promise,
            micro_gradients,
            accumulated,
            "https://optax.readthedocs.io/en/latest/api/optimizer_wrappers.html#optax.MultiSteps "
            "(gradients are averaged over k steps; accumulator_dtype defaults to float32)",
            resolution=step_resolution(inputs, {name: np.asarray(v) for name, v in params.items()}, dtype),
            accumulator_dtype=_documented(_narrowest(jax.tree_util.tree_leaves(state.acc_grads))),
        )

    def _multi_steps(self, every: int, variant: str):
        """optax.MultiSteps over `every` micro-batches and its step (update, then apply), jitted once per count for
        the jit variant, as a training loop jits its step; eager otherwise."""
        import optax

        key = ("multi_steps", every, variant)
        if key not in self._compiled:
            optimizer = optax.MultiSteps(optax.sgd(1.0), every_k_schedule=every)

            def step(grads, state, params):
                updates, state = optimizer.update(grads, state, params)
                return optax.apply_updates(params, updates), state

            self._compiled[key] = (optimizer, self.jax.jit(step) if variant == "jit" else step)
        return self._compiled[key]

    def repro(self, case: Case, inputs: Arrays, dtype: str) -> str:
        lines = ["import jax", "import jax.numpy as jnp", "import optax", ""]
        if dtype == "float64":
            lines.append("jax.config.update('jax_enable_x64', True)")
        for spec in case.tensors:
            lines.append(f"{spec.name} = jnp.asarray({literal(inputs[spec.name])}, dtype=jnp.{dtype})")
        names = ", ".join(case.variable_names)
        lines += [
            f"def loss_function({names}):",
            f"    return {source_of(case, SOURCE_FORMATS)}",
            "",
            f"argnums = tuple(range({len(case.variables)}))",
            f"loss, grads = jax.value_and_grad(loss_function, argnums=argnums)({names})",
            "print('loss', loss)",
            f"for name, grad in zip({list(case.variable_names)!r}, grads):",
            "    print('grad', name, grad.tolist())  # exact: floats' repr round-trips",
        ]
        return "\n".join(lines) + "\n"
