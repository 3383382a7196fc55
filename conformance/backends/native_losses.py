"""The frameworks' own loss functions, called as their users call them, for the loss functions of the table.

Each is lowered to the framework's function, never rebuilt from primitives here: its reduction, clamps and label
smoothing are what the suite checks (`reference.symbolic` defines them from primitives, the small print as
conventions). A framework without one makes the case not applicable, with the reason.
"""

from __future__ import annotations

import dataclasses

from conformance.backends.base import NotApplicable
from conformance.reference.conventions import KinkConventions
from conformance.reference.optimizers import source_citation

KERAS_REDUCTIONS = {"mean": "sum_over_batch_size", "sum": "sum"}


class TorchLosses:
    """`torch.nn.functional`'s losses; a target with `self.torch`. The class axis is torch's dimension 1."""

    def cross_entropy(self, logits, targets, axis, label_smoothing, reduction):
        logits, targets = (self.torch.movedim(tensor, axis, 1) for tensor in (logits, targets))
        functional = self.torch.nn.functional
        return functional.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction=reduction)

    def binary_cross_entropy_with_logits(self, logits, targets, reduction):
        return self.torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)

    def binary_cross_entropy(self, probabilities, targets, reduction):
        return self.torch.nn.functional.binary_cross_entropy(probabilities, targets, reduction=reduction)

    def huber(self, predictions, targets, delta, reduction):
        return self.torch.nn.functional.huber_loss(predictions, targets, reduction=reduction, delta=delta)

    def mse(self, predictions, targets, reduction):
        return self.torch.nn.functional.mse_loss(predictions, targets, reduction=reduction)

    def kl_divergence(self, log_predictions, targets, reduction):
        # "batchmean" is the mean torch documents as the divergence's; its "mean" divides by every element
        torch_reduction = "batchmean" if reduction == "mean" else "sum"
        return self.torch.nn.functional.kl_div(log_predictions, targets, reduction=torch_reduction)


TORCH_FORMATS = {
    "cross_entropy": "torch.nn.functional.cross_entropy(torch.movedim({0}, {axis}, 1), torch.movedim({1}, {axis}, 1), "
    "label_smoothing={label_smoothing!r}, reduction={reduction!r})",
    "binary_cross_entropy_with_logits": "torch.nn.functional.binary_cross_entropy_with_logits({0}, {1}, "
    "reduction={reduction!r})",
    "binary_cross_entropy": "torch.nn.functional.binary_cross_entropy({0}, {1}, reduction={reduction!r})",
    "huber": "torch.nn.functional.huber_loss({0}, {1}, reduction={reduction!r}, delta={delta!r})",
    "mse": "torch.nn.functional.mse_loss({0}, {1}, reduction={reduction!r})",
    "kl_divergence": "torch.nn.functional.kl_div({0}, {1}, "
    "reduction={{'mean': 'batchmean', 'sum': 'sum'}}[{reduction!r}])",
}


class KerasLosses:
    """`keras.losses`' classes, as `model.compile(loss=...)` takes them; a target with `self.losses` (the module),
    `self.loss_dtype` and `exp`. The run's dtype is passed: without it a Keras loss computes in floatx, float32."""

    def _loss(self, name: str, targets, predictions, reduction: str, **options):
        loss = getattr(self.losses, name)(reduction=KERAS_REDUCTIONS[reduction], dtype=self.loss_dtype, **options)
        return loss(targets, predictions)

    def cross_entropy(self, logits, targets, axis, label_smoothing, reduction):
        options = {"from_logits": True, "label_smoothing": label_smoothing, "axis": axis}
        return self._loss("CategoricalCrossentropy", targets, logits, reduction, **options)

    def binary_cross_entropy_with_logits(self, logits, targets, reduction):
        return self._loss("BinaryCrossentropy", targets, logits, reduction, from_logits=True)

    def binary_cross_entropy(self, probabilities, targets, reduction):
        return self._loss("BinaryCrossentropy", targets, probabilities, reduction)

    def huber(self, predictions, targets, delta, reduction):
        return self._loss("Huber", targets, predictions, reduction, delta=delta)

    def mse(self, predictions, targets, reduction):
        return self._loss("MeanSquaredError", targets, predictions, reduction)

    def kl_divergence(self, log_predictions, targets, reduction):
        # KLDivergence takes probabilities: a user holding log-probabilities exponentiates them
        return self._loss("KLDivergence", targets, self.exp(log_predictions), reduction)


def keras_formats(module: str, exp: str, dtype_of: str) -> dict[str, str]:
    """Reproducer templates for `module.losses` (tf.keras or keras); `exp` is the exponential's template and
    `dtype_of` the template of a tensor's dtype name, both of the predictions, `{0}`."""

    def loss(name: str, options: str = "") -> str:
        reduction = "reduction={{'mean': 'sum_over_batch_size', 'sum': 'sum'}}[{reduction!r}]"
        return f"{module}.losses.{name}({options}{reduction}, dtype={dtype_of})({{1}}, {{0}})"

    return {
        "cross_entropy": loss(
            "CategoricalCrossentropy", "from_logits=True, label_smoothing={label_smoothing!r}, axis={axis}, "
        ),
        "binary_cross_entropy_with_logits": loss("BinaryCrossentropy", "from_logits=True, "),
        "binary_cross_entropy": loss("BinaryCrossentropy"),
        "huber": loss("Huber", "delta={delta!r}, "),
        "mse": loss("MeanSquaredError"),
        "kl_divergence": loss("KLDivergence").replace("({1}, {0})", "({1}, " + exp.format("{0}") + ")"),
    }


NO_OPTAX_BCE = (
    "optax has no binary cross-entropy of probabilities: only sigmoid_binary_cross_entropy, of logits "
    "(optax/losses/_classification.py)"
)


class OptaxLosses:
    """`optax.losses`' functions, per example or element, reduced with `jnp.mean` or `jnp.sum` as optax's users do;
    a target with `self.jnp`."""

    @property
    def optax(self):
        import optax

        return optax

    def _reduced(self, losses, reduction: str):
        return self.jnp.sum(losses) if reduction == "sum" else self.jnp.mean(losses)

    def cross_entropy(self, logits, targets, axis, label_smoothing, reduction):
        if label_smoothing:
            targets = self.optax.smooth_labels(targets, label_smoothing, axis=axis)
        return self._reduced(self.optax.losses.softmax_cross_entropy(logits, targets, axis=axis), reduction)

    def binary_cross_entropy_with_logits(self, logits, targets, reduction):
        return self._reduced(self.optax.losses.sigmoid_binary_cross_entropy(logits, targets), reduction)

    def binary_cross_entropy(self, probabilities, targets, reduction):
        raise NotApplicable(NO_OPTAX_BCE)

    def huber(self, predictions, targets, delta, reduction):
        return self._reduced(self.optax.losses.huber_loss(predictions, targets, delta=delta), reduction)

    def mse(self, predictions, targets, reduction):
        return self._reduced(self.optax.losses.squared_error(predictions, targets), reduction)

    def kl_divergence(self, log_predictions, targets, reduction):
        return self._reduced(self.optax.losses.kl_divergence(log_predictions, targets), reduction)


OPTAX_FORMATS = {
    "cross_entropy": "jnp.{reduction}(optax.losses.softmax_cross_entropy({0}, "
    "optax.smooth_labels({1}, {label_smoothing!r}, axis={axis}), axis={axis}))",
    "binary_cross_entropy_with_logits": "jnp.{reduction}(optax.losses.sigmoid_binary_cross_entropy({0}, {1}))",
    "huber": "jnp.{reduction}(optax.losses.huber_loss({0}, {1}, delta={delta!r}))",
    "mse": "jnp.{reduction}(optax.losses.squared_error({0}, {1}))",
    "kl_divergence": "jnp.{reduction}(optax.losses.kl_divergence({0}, {1}))",
}


def _keras(path: str, text: str):
    return source_citation("keras-team/keras", "3.15.1", path, text)


def _torch(path: str, text: str):
    return source_citation("pytorch/pytorch", "2.13.0", path, text)


def _optax(path: str, text: str):
    return source_citation("google-deepmind/optax", "0.2.8", path, text)


def with_loss_conventions(base: KinkConventions, framework: str) -> KinkConventions:
    """`base` (the engine's kinks) with the small print of `framework`'s loss functions ("keras", "tf.keras",
    "torch" or "optax") in place of any that `base` has (Keras on torch is Keras' losses on torch's kinks)."""
    values, citations = LOSS_CONVENTIONS[framework]
    kept = {name: cited for name, cited in base.citations.items() if name not in LOSS_SWITCHES}
    return dataclasses.replace(base, **{**LOSS_SWITCHES, **values}, citations={**kept, **citations})


LOSS_SWITCHES = {  # and their values where a framework declares none
    "probability_clip": 0.0,
    "smoothing_classes_last_axis": 0.0,
    "kl_mean_over_first_axis": 0.0,
    "sum_of_row_means": 0.0,
    "cross_entropy_normalized_targets": 0.0,
}


LOSS_CONVENTIONS = {
    "keras": (
        {"probability_clip": 1e-7, "smoothing_classes_last_axis": 1.0, "sum_of_row_means": 1.0},
        {
            "probability_clip": _keras(
                "keras/src/backend/tensorflow/nn.py",
                "binary_crossentropy: output = tf.clip_by_value(output, backend.epsilon(), 1.0 - backend.epsilon()) "
                "(the same in jax/nn.py and torch/nn.py; losses.py kl_divergence clips y_true and y_pred to "
                "[epsilon, 1]); epsilon() is 1e-7",
            ),
            "smoothing_classes_last_axis": _keras(
                "keras/src/losses/losses.py",
                "categorical_crossentropy: num_classes = ops.cast(ops.shape(y_true)[-1], y_pred.dtype), whatever axis",
            ),
            "sum_of_row_means": _keras(
                "keras/src/losses/losses.py",
                "mean_squared_error: ops.mean(ops.square(y_true - y_pred), axis=-1) (huber and binary_crossentropy "
                'too); loss.py reduce_values: reduction "sum" sums those',
            ),
        },
    ),
    "torch": (
        {"kl_mean_over_first_axis": 1.0},
        {
            "probability_clip": _torch(
                "aten/src/ATen/native/Loss.cpp",
                "binary_cross_entropy: log clamped at -100; its backward: grad * (input - target) / "
                "max((1 - input) * input, EPSILON), EPSILON = 1e-12 (measured in float64 runs: float32(1e-12) "
                "eagerly, the double 1e-12 under torch.compile)",
            ),
            "kl_mean_over_first_axis": _torch(
                "torch/nn/functional.py",
                'kl_div: reduction == "batchmean": reduced = torch.sum(reduced) / input.size()[0]',
            ),
        },
    ),
    "optax": (
        {},
        {
            "smoothing_classes_last_axis": _optax(
                "optax/losses/_smoothing.py", "smooth_labels: num_categories = jnp.size(labels, axis)"
            ),
        },
    ),
}
_KERAS_VALUES, _KERAS_CITATIONS = LOSS_CONVENTIONS["keras"]
LOSS_CONVENTIONS["tf.keras"] = (  # Keras on TensorFlow: its categorical cross-entropy is TensorFlow's fused kernel
    {**_KERAS_VALUES, "cross_entropy_normalized_targets": 1.0},
    {
        **_KERAS_CITATIONS,
        "cross_entropy_normalized_targets": _keras(
            "keras/src/backend/tensorflow/nn.py",
            "categorical_crossentropy: tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=output, "
            "axis=axis), whose backprop output is softmax(logits) - labels (labels must be probability "
            "distributions, its documentation says)",
        ),
    },
)
