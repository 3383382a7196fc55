"""A third-party backend for HIPS autograd, written as docs/adapter-guide.md describes, outside the core.

Register it for one run with
    CONFORMANCE_BACKENDS="autograd=autograd_backend:AutogradBackend" PYTHONPATH=docs/examples \
        conformance run --backend torch --backend autograd
or, from a package of its own, through the `conformance.backends` entry point.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from conformance.backends.base import Backend, GradientRun, NotApplicable, UpdateRun, copied
from conformance.cases import CLIPPING
from conformance.expressions import OperatorTarget, lower
from conformance.reference.conventions import Citation, KinkConventions
from conformance.reference.optimizers import (
    ADAM_DEFAULTS,
    OptimizerDeclaration,
    UpdateSwitches,
    source_citation,
)

RELEASE = "1.9.1"  # the release whose source the declarations below were read from


def _source(path: str, text: str) -> Citation:
    return source_citation("HIPS/autograd", RELEASE, path, text)


class AutogradTarget(OperatorTarget):
    """The expression language as autograd's users write it: autograd.numpy and autograd.scipy.special."""

    def __init__(self, dtype: str):
        import autograd.numpy as anp
        import autograd.scipy.special as special

        self.np, self.special, self.dtype = anp, special, dtype

    def constant(self, value):
        return self.np.asarray(value, dtype=self.dtype)

    def sum(self, a, axis=None):
        return self.np.sum(a, axis=axis)

    def mean(self, a, axis=None):
        return self.np.mean(a, axis=axis)

    def logsumexp(self, a, axis=None):
        return self.special.logsumexp(a, axis=axis)

    def exp(self, a):
        return self.np.exp(a)

    def log(self, a):
        return self.np.log(a)

    def sqrt(self, a):
        return self.np.sqrt(a)

    def abs(self, a):
        return self.np.abs(a)

    def tanh(self, a):
        return self.np.tanh(a)

    def sigmoid(self, a):
        return self.special.expit(a)

    def softplus(self, a):
        return self.np.logaddexp(self.constant(0.0), a)

    def relu(self, a):
        return a * (a > 0)  # numpy has no relu; the mask is a constant to autograd

    def square(self, a):
        return self.np.square(a)

    def maximum(self, a, b):
        return self.np.maximum(a, b)

    def minimum(self, a, b):
        return self.np.minimum(a, b)


class AutogradBackend(Backend):
    name = "autograd"
    variants = ("default",)
    conventions = KinkConventions(
        abs_slope_at_zero=0.0,
        maximum_tie_to_first=0.5,
        minimum_tie_to_first=0.5,
        citations={
            "abs_slope_at_zero": _source(
                "autograd/numpy/numpy_vjps.py", "np_abs_vjp: g * replace_zero(conj(x), 0.0) / replace_zero(ans, 1.0)"
            ),
            "maximum_tie_to_first": _source(
                "autograd/numpy/numpy_vjps.py", "maximum's vjp: g * balanced_eq(x, ans, y) = (x == z) / (1 + (x == y))"
            ),
        },
    )
    # autograd.misc.optimizers has adam alone in a form the reference knows: its sgd is an exponential moving
    # average (velocity = mass * velocity - (1 - mass) * g) and its rmsprop starts the average of g^2 at one
    optimizers = OptimizerDeclaration(
        switches=UpdateSwitches(
            adam_eps="sqrt_v_hat",
            no_gradient="zero",
            hyperparameter_precision="as_given",
            citations={
                "adam_eps": _source(
                    "autograd/misc/optimizers.py",
                    "adam: mhat = m / (1 - b1**(i + 1)); vhat = v / (1 - b2**(i + 1)); "
                    "x = x - step_size * mhat / (np.sqrt(vhat) + eps)",
                ),
                "no_gradient": _source(
                    "autograd/misc/optimizers.py",
                    "grad(x) of a dict gives zeros for an entry the loss does not use, and adam updates it",
                ),
                "hyperparameter_precision": _source(
                    "autograd/misc/optimizers.py", "step_size, b1, b2 and eps are Python floats used as given"
                ),
            },
        ),
        defaults={"adam": {"lr": 0.001, **ADAM_DEFAULTS, "eps": 1e-8, "weight_decay": 0.0}},
        defaults_source={"adam": _source("autograd/misc/optimizers.py", "adam's keyword defaults")},
    )

    def unavailable_reason(self):
        for module in ("autograd", "scipy"):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install autograd scipy)"
        return None

    def versions(self):
        from importlib.metadata import version

        return {"autograd": version("autograd")}

    def _loss(self, case, dtype):
        target = AutogradTarget(dtype)
        return lambda params, data: lower(case.loss, target, {**params, **data})

    def gradients(self, case, inputs, dtype, variant, device):
        from autograd import value_and_grad

        params = {spec.name: np.array(inputs[spec.name], dtype=dtype) for spec in case.variables}
        data = {spec.name: np.array(inputs[spec.name], dtype=dtype) for spec in case.data}
        differentiate = value_and_grad(self._loss(case, dtype))
        values_before = copied(params, np.asarray)
        loss, grads = differentiate(params, data)
        values_after = copied(params, np.asarray)
        _, grads_repeat = differentiate(params, data)
        return GradientRun(
            float(loss),
            values_before,
            values_after,
            copied(params, np.asarray),
            copied(grads, np.asarray),
            copied(grads_repeat, np.asarray),
        )

    def updates(self, case, inputs, hyper, dtype, variant, device):
        """autograd.misc.optimizers.adam over the case's steps, the trajectory and fed gradients from its callback."""
        from autograd import grad
        from autograd.misc.optimizers import adam

        if case.update.rule != "adam" or hyper.get("amsgrad") or hyper.get("weight_decay"):
            raise NotApplicable("autograd.misc.optimizers.adam has neither amsgrad nor weight decay")
        if set(hyper) & set(CLIPPING):
            raise NotApplicable("autograd.misc.optimizers.adam takes the gradient function as it is: no clipping")
        if case.micro_batches:
            raise NotApplicable("autograd.misc.optimizers takes one gradient function, no micro-batches")
        data = {spec.name: np.array(inputs[spec.name], dtype=dtype) for spec in case.data}
        gradient = grad(lambda params: self._loss(case, dtype)(params, data))
        values, gradients = [], []

        def record(params, iteration, fed):
            values.append(copied(params, np.asarray))
            gradients.append(copied(fed, np.asarray))

        start = {spec.name: np.array(inputs[spec.name], dtype=dtype) for spec in case.variables}
        names = {"lr": "step_size", "beta1": "b1", "beta2": "b2", "eps": "eps"}
        kwargs = {names[name]: float(value) for name, value in hyper.items() if name in names}
        final = adam(lambda params, iteration: gradient(params), start, record, case.update.steps, **kwargs)
        return UpdateRun([*values, copied(final, np.asarray)], gradients, state={})
