"""PyTorch as its users write it: leaf tensors with requires_grad, `loss.backward()`, gradients in `.grad`."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import shutil
import tempfile
import types

import numpy as np

from conformance import caches
from conformance.backends import native_losses, native_optimizers
from conformance.backends.base import (
    AccumulationMechanism,
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
    **native_losses.TORCH_FORMATS,
}


class TorchTarget(native_losses.TorchLosses, OperatorTarget):
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


def _source(path: str, text: str) -> Citation:
    """A line of torch's source, at the release the optimizer declaration below was read from."""
    return source_citation("pytorch/pytorch", "2.13.0", path, text)


# The documented formulas torch's optimizers follow, and what they run with where a case gives no value.
OPTIMIZERS = OptimizerDeclaration(
    switches=UpdateSwitches(
        adam_eps="sqrt_v_hat",
        amsgrad_max="v",
        weight_decay="l2",
        sgd_momentum="gradient",
        rmsprop_momentum="gradient",
        rmsprop_eps="outside_sqrt",
        adagrad_eps="outside_sqrt",
        adamax_eps="inside_max",
        nadam_momentum="schedule",
        nadam_mu_product="float32",
        radam_eps="sqrt_v",
        radam_threshold="above",
        clip_norm_eps="norm_plus_1e-6",
        cosine_after_decay="periodic",
        piecewise_boundary="from_boundary",
        schedule_precision="float64",
        no_gradient="skip",
        hyperparameter_precision="as_given",
        citations={
            "adam_eps": _source(
                "torch/optim/adam.py",
                "_single_tensor_adam: denom = (exp_avg_sq.sqrt() / "
                "bias_correction2_sqrt).add_(eps); param.addcdiv_(exp_avg, denom, value=-step_size)",
            ),
            "amsgrad_max": _source(
                "torch/optim/adam.py",
                "torch.maximum(max_exp_avg_sqs[i], exp_avg_sq) keeps "
                "the maximum of the uncorrected v; denom = max_exp_avg_sqs[i].sqrt() / "
                "bias_correction2_sqrt + eps",
            ),
            "weight_decay": _source(
                "torch/optim/adam.py",
                "grad = grad.add(param, alpha=weight_decay) unless "
                "decoupled_weight_decay (AdamW); sgd.py, rmsprop.py and adagrad.py do the same",
            ),
            "sgd_momentum": _source(
                "torch/optim/sgd.py",
                "_single_tensor_sgd: buf = grad on the first step, "
                "then buf.mul_(momentum).add_(grad, alpha=1 - dampening); nesterov: "
                "grad.add(buf, alpha=momentum); param.add_(grad, alpha=-lr)",
            ),
            "rmsprop_momentum": _source(
                "torch/optim/rmsprop.py", "buf.mul_(momentum).addcdiv_(grad, avg); param.add_(buf, alpha=-lr)"
            ),
            "rmsprop_eps": _source(
                "torch/optim/rmsprop.py",
                "avg = square_avg.sqrt() (centered: "
                "square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()); avg = avg.add_(eps)",
            ),
            "adagrad_eps": _source(
                "torch/optim/adagrad.py",
                "_single_tensor_adagrad: std = state_sum.sqrt().add_(eps); param.addcdiv_(grad, std, value=-clr)",
            ),
            "nadam_momentum": _source(
                "torch/optim/nadam.py",
                "_single_tensor_nadam: mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay))); mu_next likewise "
                "of step + 1; param.addcdiv_(grad, denom, value=(-lr * (1.0 - mu) / (1.0 - mu_product))) and "
                "value=(-lr * mu_next) / (1.0 - mu_product_next) for exp_avg",
            ),
            "nadam_mu_product": _source(
                "torch/optim/nadam.py",
                "_init_group: state['mu_product'] = torch.ones((), dtype=_get_scalar_dtype()), float32 unless the "
                "default dtype is float64 (optimizer.py); mu_product *= mu",
            ),
            "radam_eps": _source(
                "torch/optim/radam.py",
                "_single_tensor_radam: _compute_adaptive_lr = (bias_correction2**0.5) / exp_avg_sq.sqrt().add_(eps); "
                "param.add_(bias_corrected_exp_avg * lr * _compute_adaptive_lr() * _compute_rect(), alpha=-1.0)",
            ),
            "radam_threshold": _source(
                "torch/optim/radam.py",
                "_single_tensor_radam: if rho_t > 5.0: the rectified step, else param.add_(bias_corrected_exp_avg * "
                "lr, alpha=-1.0); rho_t from Python floats (step = _get_value(step_t))",
            ),
            "adamax_eps": _source(
                "torch/optim/adamax.py",
                "_single_tensor_adamax: torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf); "
                "clr = lr / bias_correction; param.addcdiv_(exp_avg, exp_inf, value=-clr)",
            ),
            "clip_norm_eps": _source(
                "torch/nn/utils/clip_grad.py",
                "_clip_grads_with_norm_: clip_coef = max_norm / (total_norm + 1e-6); "
                "clip_coef_clamped = torch.clamp(clip_coef, max=1.0); g.mul_(clip_coef_clamped)",
            ),
            "cosine_after_decay": _source(
                "torch/optim/lr_scheduler.py",
                "CosineAnnealingLR.get_lr: (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / "
                "(1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max)) * (group['lr'] - self.eta_min) "
                "+ self.eta_min, with no bound on last_epoch",
            ),
            "schedule_precision": _source(
                "torch/optim/lr_scheduler.py",
                "every scheduler computes group['lr'] with Python floats (math.cos, float products)",
            ),
            "piecewise_boundary": _source(
                "torch/optim/lr_scheduler.py",
                "MultiStepLR.get_lr: if self.last_epoch not in self.milestones: return the lr unchanged; "
                "else lr * gamma ** self.milestones[self.last_epoch]",
            ),
            "no_gradient": _source(
                "torch/optim/adam.py",
                "_init_group takes only parameters whose p.grad is "
                "not None (backward() leaves an unused leaf's grad None); state, step included, is "
                "kept per parameter; every torch.optim optimizer does the same",
            ),
            "hyperparameter_precision": _source(
                "torch/optim/adam.py",
                "hyperparameters are Python floats "
                "used directly: bias_correction1 = 1 - beta1**step; "
                "param.addcdiv_(exp_avg, denom, value=-step_size)",
            ),
        },
    ),
    defaults=defaults_by_rule(
        sgd={"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
        adam={"lr": 1e-3, **ADAM_DEFAULTS, "eps": 1e-8, "weight_decay": 0.0},
        adamw={"lr": 1e-3, **ADAM_DEFAULTS, "eps": 1e-8, "weight_decay": 1e-2},
        rmsprop={"lr": 1e-2, "rho": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False, "weight_decay": 0.0},
        adagrad={"lr": 1e-2, "eps": 1e-10, "initial_accumulator": 0.0, "weight_decay": 0.0},
        adamax={"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
        adadelta={"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},
        nadam={"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "momentum_decay": 4e-3},
        radam={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    ),
    defaults_source={
        rule: _source(f"torch/optim/{rule}.py", "the torch.optim constructor's keyword defaults")
        for rule in RULE_HYPERPARAMETERS
    },
    absent={"lion": "torch.optim has no Lion (torch/optim/__init__.py lists its optimizers)"},
)


OPTIMIZER_IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
# the model compiled (`torch.compile(model)`, inductor), the optimizer torch's default implementation for the device
COMPILED = "compile"
TRAINING_STEPS = {**OPTIMIZER_IMPLEMENTATIONS, COMPILED: {}}


def _implementation(variant: str) -> dict[str, bool]:
    if variant not in TRAINING_STEPS:
        raise ValueError(f"torch runs updates as {', '.join(TRAINING_STEPS)}, not {variant!r}")
    return TRAINING_STEPS[variant]


def _choose_inductor_directory() -> None:
    """Where inductor writes the code it generates, unless the user chose a directory of their own: the suite's
    cache directory, which keeps it between runs (a case's graphs are compiled by g++ once, not once per run), or,
    with CONFORMANCE_CACHE_DIR=off, a temporary directory removed when the process ends."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    where = caches.directory()
    if where is None:
        scratch = tempfile.mkdtemp(prefix="conformance-inductor-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = scratch
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(where / "inductor")


@functools.cache
def _missing_cpu_compiler() -> str | None:
    """Why inductor cannot build code for the CPU here, or None: it compiles what it generates with a C++ compiler
    (`torch._inductor.config.cpp.cxx`, searched as inductor searches it), which a machine may lack."""
    import torch._inductor.cpp_builder
    import torch._inductor.exc

    try:
        torch._inductor.cpp_builder.get_cpp_compiler()
    except torch._inductor.exc.InvalidCxxCompiler as error:
        return f"torch.compile needs a C++ compiler for the CPU, and inductor found none ({error})"
    return None


def _own_code(function):
    """The function with a code object of its own. Dynamo keeps its compilations on the code object, so the
    losses of every case, one closure's code, would share one cache and its recompilation limit; each case is a
    model of its own, and gets a cache of its own."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, None, None, function.__closure__)


class TorchBackend(Backend):
    name = "torch"
    # the loss run eagerly, or under torch.compile as a compiled model runs it (forward and backward)
    variants = ("eager", COMPILED)
    # torch.optim's three implementations of each rule, asked for by name (on CPU the for-loop is the default),
    # and a step whose loss is compiled, torch's default optimizer after it
    update_variants = tuple(TRAINING_STEPS)
    accumulation_mechanism = AccumulationMechanism("sum")  # .grad sums over backward() calls
    optimizers = OPTIMIZERS
    conventions = native_losses.with_loss_conventions(
        KinkConventions(
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
        ),
        "torch",
    )

    def __init__(self):
        self._compiled: dict[tuple, object] = {}  # compiled losses, by case, dtype and device

    def unavailable_reason(self):
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'conformance[torch]')"
        return None

    @property
    def torch(self):
        import torch

        return torch

    def decay_rates_in_dtype(self, device: str, variant: str | None = None) -> bool:
        """The for-loop and foreach implementations compute 1 - beta1 ** step with step a Python float
        (torch/optim/adam.py: _single_tensor_adam, and _multi_tensor_adam when not capturable), and the compiled
        model's step runs one of them (torch's default: for-loop on CPU, foreach on CUDA); the fused kernel, and a
        variant not named, are held to the conservative bound (decay rates in the dtype)."""
        return variant not in ("for-loop", "foreach", COMPILED)

    def versions(self):
        return {"torch": self.torch.__version__}

    def devices(self):
        return ["cpu"] + (["cuda"] if self.torch.cuda.is_available() else [])

    def gradients(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> GradientRun:
        return self._differentiated(case, inputs, dtype, variant, device, repeated=True)

    def differentiate_once(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> GradientRun:
        return self._differentiated(case, inputs, dtype, variant, device, repeated=False)

    def _differentiated(
        self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str, repeated: bool
    ) -> GradientRun:
        leaves, data = self._tensors(case, inputs, dtype, device)
        loss_of = self._loss(case, dtype, device, variant)
        to_numpy = lambda tensor: tensor.detach().cpu().numpy()  # noqa: E731

        def differentiate():
            for leaf in leaves.values():
                leaf.grad = None  # what optimizer.zero_grad() does before each backward()
            loss = loss_of({**leaves, **data})
            loss.backward()
            grads = {
                name: None if leaf.grad is None else np.array(to_numpy(leaf.grad)) for name, leaf in leaves.items()
            }
            return float(loss.detach().cpu()), grads

        values_before = copied(leaves, to_numpy)
        loss, gradients = differentiate()
        values_after = copied(leaves, to_numpy)
        if not repeated:
            return GradientRun(loss, values_before, values_after, None, gradients, None)
        _, gradients_repeat = differentiate()
        return GradientRun(loss, values_before, values_after, copied(leaves, to_numpy), gradients, gradients_repeat)

    def bare_gradients(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str):
        leaves, data = self._tensors(case, inputs, dtype, device)
        loss_of = self._loss(case, dtype, device, variant)

        def differentiate():
            for leaf in leaves.values():
                leaf.grad = None
            loss_of({**leaves, **data}).backward()
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
        return leaves, data

    def _loss(self, case: Case, dtype: str, device: str, variant: str):
        """The case's loss as a function of its tensors, run eagerly or, for `compile`, as torch.compile runs a
        model: the whole graph (fullgraph: a graph break is an error, not a silent return to eager), shapes static,
        inductor's default backend, compiled once per case, dtype and device and kept, since the inputs are
        tensors and the compiled graph is guarded on their dtype, shape and device alone. A compiled loss that
        would fall back to eager after too many recompilations raises instead."""
        torch = self.torch
        target = TorchTarget(torch, getattr(torch, dtype), device)

        def loss_of(tensors):
            return lower(case.loss, target, tensors)

        if variant != COMPILED:
            return loss_of
        key = (id(case), dtype, device)
        if key not in self._compiled:
            if device == "cpu" and _missing_cpu_compiler():
                raise NotApplicable(_missing_cpu_compiler())
            _choose_inductor_directory()
            torch._dynamo.config.fail_on_recompile_limit_hit = True
            self._compiled[key] = torch.compile(_own_code(loss_of), fullgraph=True, dynamic=False)
        return self._compiled[key]

    def updates(self, case: Case, inputs: Arrays, hyper: dict, dtype: str, variant: str, device: str) -> UpdateRun:
        leaves, _ = self._tensors(case, inputs, dtype, device)
        loss_of = self._loss(case, dtype, device, variant)
        schedule = case.update.schedule
        optimizer = native_optimizers.torch_optimizer(
            case.update.rule, hyper, list(leaves.values()), _implementation(variant), schedule
        )
        scheduler_call = native_optimizers.torch_scheduler(schedule, hyper)
        scheduler = native_optimizers.build(scheduler_call, optimizer) if scheduler_call else None
        clip = native_optimizers.torch_clipping(hyper)
        to_numpy = lambda tensor: tensor.detach().cpu().numpy()  # noqa: E731
        values, gradients = [copied(leaves, to_numpy)], []
        batches = [self._tensors(case, batch, dtype, device)[1] for batch in micro_batches(case, inputs)]
        for _ in range(case.update.steps):
            optimizer.zero_grad()
            for batch in batches:  # one batch, or the micro-batches summed in .grad before one step
                loss_of({**leaves, **batch}).backward()
            gradients.append(
                {name: None if leaf.grad is None else np.array(to_numpy(leaf.grad)) for name, leaf in leaves.items()}
            )
            if clip:
                native_optimizers.build(clip, list(leaves.values()))  # on .grad in place, as users call it
            optimizer.step()
            if scheduler:
                scheduler.step()  # after optimizer.step(), as torch.optim.lr_scheduler documents
            values.append(copied(leaves, to_numpy))
        return UpdateRun(values, gradients, native_optimizers.torch_state(optimizer, leaves))

    def accumulation(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> AccumulationRun:
        """k backward() calls without zero_grad() in between: .grad holds the sum."""
        batches = micro_batches(case, inputs)
        micro_gradients = [self.differentiate_once(case, batch, dtype, variant, device).gradients for batch in batches]
        leaves, _ = self._tensors(case, inputs, dtype, device)
        loss_of = self._loss(case, dtype, device, variant)
        to_numpy = lambda tensor: tensor.detach().cpu().numpy()  # noqa: E731
        for batch in batches:
            _, data = self._tensors(case, batch, dtype, device)
            loss_of({**leaves, **data}).backward()
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

    def repro(self, case: Case, inputs: Arrays, dtype: str, variant: str = "eager") -> str:
        """Eager, or for `compile` the loss as a function compiled as the adapter compiles it."""
        lines = ["import torch", ""]
        for spec in case.tensors:
            grad = ", requires_grad=True" if spec.trainable else ""
            lines.append(f"{spec.name} = torch.tensor({literal(inputs[spec.name])}, dtype=torch.{dtype}{grad})")
        constant = f"torch.tensor({{!r}}, dtype=torch.{dtype})"  # as TorchTarget.constant: torch.minimum needs tensors
        loss = source_of(case, SOURCE_FORMATS, constant)
        if variant == COMPILED:
            names = ", ".join(spec.name for spec in case.tensors)
            lines += [
                f"def loss_function({names}):",
                f"    return {loss}",
                "",
                f"loss = torch.compile(loss_function, fullgraph=True, dynamic=False)({names})",
            ]
        else:
            lines.append(f"loss = {loss}")
        lines += [
            "loss.backward()",
            "print('loss', loss.item())",
        ]
        lines += [  # exact: floats' repr round-trips
            f"print('grad {name}', None if {name}.grad is None else {name}.grad.tolist())"
            for name in case.variable_names
        ]
        return "\n".join(lines) + "\n"
