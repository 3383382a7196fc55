"""PyTorch as its users write it: leaf tensors with requires_grad, `loss.backward()`, gradients in `.grad`."""

from __future__ import annotations

import importlib.util

import numpy as np

from conformance.backends import native_optimizers
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
)
from conformance.cases import Case
from conformance.expressions import OperatorTarget, lower
from conformance.reference.conventions import Citation, KinkConventions

SOURCE_FORMATS = {
    "sum": "torch.sum({0})",
    "sum@axis": "torch.sum({0}, dim={axis})",
    "mean": "torch.mean({0})",
    "mean@axis": "torch.mean({0}, dim={axis})",
    "logsumexp": "torch.logsumexp({0}.reshape(-1), dim=0)",
    "logsumexp@axis": "torch.logsumexp({0}, dim={axis})",
    "exp": "torch.exp({0})",
    "log": "torch.log({0})",
    "sqrt": "torch.sqrt({0})",
    "abs": "torch.abs({0})",
    "tanh": "torch.tanh({0})",
    "sigmoid": "torch.sigmoid({0})",
    "softplus": "torch.nn.functional.softplus({0})",
    "relu": "torch.relu({0})",
    "square": "torch.square({0})",
    "maximum": "torch.maximum({0}, {1})",
    "minimum": "torch.minimum({0}, {1})",
}


class TorchTarget(OperatorTarget):
    def __init__(self, torch, dtype, device):
        self.torch, self.dtype, self.device = torch, dtype, device

    def constant(self, value):
        return self.torch.tensor(value, dtype=self.dtype, device=self.device)

    def sum(self, a, axis=None):
        return self.torch.sum(a) if axis is None else self.torch.sum(a, dim=axis)

    def mean(self, a, axis=None):
        return self.torch.mean(a) if axis is None else self.torch.mean(a, dim=axis)

    def logsumexp(self, a, axis=None):
        return self.torch.logsumexp(a.reshape(-1), dim=0) if axis is None else self.torch.logsumexp(a, dim=axis)

    def exp(self, a):
        return self.torch.exp(a)

    def log(self, a):
        return self.torch.log(a)

    def sqrt(self, a):
        return self.torch.sqrt(a)

    def abs(self, a):
        return self.torch.abs(a)

    def tanh(self, a):
        return self.torch.tanh(a)

    def sigmoid(self, a):
        return self.torch.sigmoid(a)

    def softplus(self, a):
        return self.torch.nn.functional.softplus(a)

    def relu(self, a):
        return self.torch.relu(a)

    def square(self, a):
        return self.torch.square(a)

    def maximum(self, a, b):
        return self.torch.maximum(a, b)

    def minimum(self, a, b):
        return self.torch.minimum(a, b)


class TorchBackend(Backend):
    name = "torch"
    variants = ("eager",)
    accumulation_mechanism = AccumulationMechanism("sum")  # .grad sums over backward() calls
    conventions = KinkConventions(
        abs_slope_at_zero=0.0,
        maximum_tie_to_first=0.5,
        minimum_tie_to_first=0.5,
        softplus_linear_above=20.0,
        citations={
            "softplus_linear_above": Citation(
                "torch.nn.functional.softplus reverts to the linear function when "
                "input * beta > threshold (default 20), gradient exactly 1",
                "https://pytorch.org/docs/stable/generated/torch.nn.Softplus.html",
            ),
            "abs_slope_at_zero": Citation(
                "abs backward is grad * sgn(x), sgn(0) = 0 (tools/autograd/derivatives.yaml)",
                "https://github.com/pytorch/pytorch/blob/main/tools/autograd/derivatives.yaml",
            ),
            "maximum_tie_to_first": Citation(
                "maximum/minimum backward splits ties evenly (derivatives.yaml: "
                "at::where(self == other, grad / 2, grad)...)",
                "https://github.com/pytorch/pytorch/blob/main/tools/autograd/derivatives.yaml",
            ),
        },
    )

    def unavailable_reason(self):
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'conformance[torch]')"
        return None

    @property
    def torch(self):
        import torch

        return torch

    def decay_rates_in_dtype(self, device: str) -> bool:
        """On CPU torch.optim takes the for-loop path (torch/optim/adam.py, _single_tensor_adam: bias_correction1 =
        1 - beta1 ** step with step a Python float); on CUDA the foreach and fused paths raise float32 step tensors
        to beta's power."""
        return device != "cpu"

    def versions(self):
        return {"torch": self.torch.__version__}

    def devices(self):
        return ["cpu"] + (["cuda"] if self.torch.cuda.is_available() else [])

    def gradients(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> GradientRun:
        leaves, data, target = self._tensors(case, inputs, dtype, device)
        to_numpy = lambda tensor: tensor.detach().cpu().numpy()  # noqa: E731

        def differentiate():
            for leaf in leaves.values():
                leaf.grad = None  # what optimizer.zero_grad() does before each backward()
            loss = lower(case.loss, target, {**leaves, **data})
            loss.backward()
            grads = {
                name: None if leaf.grad is None else np.array(to_numpy(leaf.grad)) for name, leaf in leaves.items()
            }
            return float(loss.detach().cpu()), grads

        values_before = copied(leaves, to_numpy)
        loss, gradients = differentiate()
        values_after = copied(leaves, to_numpy)
        _, gradients_repeat = differentiate()
        return GradientRun(loss, values_before, values_after, copied(leaves, to_numpy), gradients, gradients_repeat)

    def bare_gradients(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str):
        leaves, data, target = self._tensors(case, inputs, dtype, device)

        def differentiate():
            for leaf in leaves.values():
                leaf.grad = None
            lower(case.loss, target, {**leaves, **data}).backward()
            if device != "cpu":
                self.torch.cuda.synchronize()

        return differentiate

    def _tensors(self, case: Case, inputs: Arrays, dtype: str, device: str):
        torch = self.torch
        torch_dtype = getattr(torch, dtype)
        leaves = {
            spec.name: torch.tensor(inputs[spec.name], dtype=torch_dtype, device=device, requires_grad=True)
            for spec in case.variables
        }
        data = {spec.name: torch.tensor(inputs[spec.name], dtype=torch_dtype, device=device) for spec in case.data}
        return leaves, data, TorchTarget(torch, torch_dtype, device)

    def updates(self, case: Case, inputs: Arrays, hyper: dict, dtype: str, variant: str, device: str) -> UpdateRun:
        leaves, data, target = self._tensors(case, inputs, dtype, device)
        optimizer = native_optimizers.torch_optimizer(case.update.rule, hyper, list(leaves.values()))
        to_numpy = lambda tensor: tensor.detach().cpu().numpy()  # noqa: E731
        values, gradients = [copied(leaves, to_numpy)], []
        batches = [self._tensors(case, batch, dtype, device)[1] for batch in micro_batches(case, inputs)]
        for _ in range(case.update.steps):
            optimizer.zero_grad()
            for batch in batches:  # one batch, or the micro-batches summed in .grad before one step
                lower(case.loss, target, {**leaves, **batch}).backward()
            gradients.append(
                {name: None if leaf.grad is None else np.array(to_numpy(leaf.grad)) for name, leaf in leaves.items()}
            )
            optimizer.step()
            values.append(copied(leaves, to_numpy))
        return UpdateRun(values, gradients, native_optimizers.torch_state(optimizer, leaves))

    def accumulation(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> AccumulationRun:
        """k backward() calls without zero_grad() in between: .grad holds the sum."""
        batches = micro_batches(case, inputs)
        micro_gradients = [self.gradients(case, batch, dtype, variant, device).gradients for batch in batches]
        leaves, _, target = self._tensors(case, inputs, dtype, device)
        to_numpy = lambda tensor: tensor.detach().cpu().numpy()  # noqa: E731
        for batch in batches:
            _, data, _ = self._tensors(case, batch, dtype, device)
            lower(case.loss, target, {**leaves, **data}).backward()
        accumulated = {
            name: np.zeros(leaf.shape) if leaf.grad is None else np.array(to_numpy(leaf.grad))
            for name, leaf in leaves.items()
        }
        return AccumulationRun(
            "torch: .grad accumulated over k backward() calls",
            self.accumulation_mechanism.promise,
            micro_gradients,
            accumulated,
            "https://pytorch.org/docs/stable/generated/torch.Tensor.backward.html",
        )

    def repro(self, case: Case, inputs: Arrays, dtype: str) -> str:
        lines = ["import torch", ""]
        for spec in case.tensors:
            grad = ", requires_grad=True" if spec.trainable else ""
            lines.append(f"{spec.name} = torch.tensor({literal(inputs[spec.name])}, dtype=torch.{dtype}{grad})")
        constant = f"torch.tensor({{!r}}, dtype=torch.{dtype})"  # as TorchTarget.constant: torch.minimum needs tensors
        lines += [
            f"loss = {source_of(case, SOURCE_FORMATS, constant)}",
            "loss.backward()",
            "print('loss', loss.item())",
        ]
        lines += [  # exact: floats' repr round-trips
            f"print('grad {name}', None if {name}.grad is None else {name}.grad.tolist())"
            for name in case.variable_names
        ]
        return "\n".join(lines) + "\n"
