"""One test item of the suite: (property, case, backend, variant, device, dtype), what it observed, and its record.

Property tests call `draw_inputs`, `gradients`, `reference` and `check`; the item keeps the worst error seen
over all Hypothesis examples, the shrunk counterexample and a reproducer, and turns them into a result record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis
import numpy as np
import pytest

from conformance import backends as backend_registry
from conformance import strategies
from conformance.backends import contract
from conformance.backends.base import Backend, GradientRun, NotApplicable, repro_of
from conformance.cases import Case
from conformance.known_failures import KnownFailure
from conformance.reference.conventions import KinkConventions
from conformance.reference.gradients import ReferenceGradient, exact_gradient
from conformance.results import ResultRecord
from conformance.tolerance import Comparison

NOT_APPLICABLE = "not applicable: "


def framework_version(versions: dict[str, str]) -> str:
    """The framework's version, then its companions' (`0.10.2 (optax 0.2.8)`): two optax releases on one jax are
    two columns of the report."""
    if not versions:
        return "not installed"
    first, *companions = versions.items()
    return first[1] + (f" ({', '.join(f'{name} {version}' for name, version in companions)})" if companions else "")


class PropertyFailed(AssertionError):
    """A property does not hold; the message says where and by how much."""


class BackendError(RuntimeError):
    """The framework (or its adapter) raised instead of returning a result."""


@dataclass(frozen=True)
class ItemSpec:
    property: str
    case: Case
    backend: str
    variant: str
    device: str
    dtype: str

    @property
    def id(self) -> str:
        return f"{self.case.id}-{self.backend}-{self.variant}-{self.device}-{self.dtype}"


@dataclass
class ConformanceItem:
    spec: ItemSpec
    other_backends: list[str]
    known: list[KnownFailure] = field(default_factory=list)  # the known failures that apply to this item
    known_matched: KnownFailure | None = None
    examples: int = 0
    discarded: dict[str, int] = field(default_factory=dict)  # examples filtered out, by reason
    sensitivity: float = float("inf")
    worst: Comparison | None = None
    failure: Comparison | None = None
    last_inputs: dict[str, np.ndarray] | None = None
    explanation: str | None = None
    citation: str | None = None
    repro: str | None = None
    trajectory: dict | None = None
    probe_seed: int = 0  # see observations.probe_inputs
    observations: dict | None = None  # what the backend computed at the run's probe inputs (observations.py)
    example_ratio: float | None = None  # the current example's largest finite error / tolerance, Hypothesis' target

    @property
    def case(self) -> Case:
        return self.spec.case

    @property
    def backend(self) -> Backend:
        return backend_registry.load(self.spec.backend)

    def draw_inputs(self, data) -> dict[str, np.ndarray]:
        inputs = data.draw(strategies.inputs(self.case, self.spec.dtype), label="inputs")
        self.last_inputs, self.examples = inputs, self.examples + 1
        return inputs

    def goldens(self) -> dict[str, np.ndarray]:
        """The case's goldens that hold in this item's dtype; none is a 'not applicable' item, with the reason."""
        goldens = self.case.goldens(self.spec.dtype)
        if not goldens:
            stated = ", ".join(sorted(set(self.case.expect_dtypes.values())))
            pytest.skip(f"{NOT_APPLICABLE}the goldens hold to {stated} precision only")
        return goldens

    def gradients(
        self, inputs: dict[str, np.ndarray], backend: Backend | None = None, repeated: bool = False
    ) -> GradientRun:
        """The backend's gradients at `inputs`: one differentiation, or with `repeated` a second one at the same
        point (its fields, None otherwise, are what differentiation.* read)."""
        return self.call("gradients" if repeated else "differentiate_once", inputs, backend=backend)

    def call(self, method: str, *args, backend: Backend | None = None, partner: bool = False):
        """`backend.<method>(case, *args, dtype, variant, device)`, crashes and what the adapter's contract does not
        allow (conformance.backends.contract) turned into BackendError. A case the backend cannot run natively makes
        the item not applicable, or, for a comparison `partner`, gives None (that partner is left out)."""
        backend = backend or self.backend
        if backend is self.backend:
            variant = self.spec.variant
        else:  # a partner runs its first variant of the kind
            variant = (backend.training_step_variants() if method == "updates" else backend.variants)[0]
        device = self.spec.device if backend is self.backend else "cpu"
        try:
            result = getattr(backend, method)(self.case, *args, self.spec.dtype, variant, device)
        except NotApplicable as reason:
            if partner:
                return None
            pytest.skip(f"{NOT_APPLICABLE}{reason}")
        except Exception as error:  # noqa: BLE001 - any crash inside a framework is a result, not a harness bug
            first_line = str(error).splitlines()[0][:300] if str(error) else ""
            raise BackendError(f"{backend.name} raised {type(error).__name__}: {first_line}") from error
        try:
            contract.check(method, result, self.case, self.spec.dtype)
        except contract.ContractViolation as violation:
            raise BackendError(f"the {backend.name} adapter breaks its contract: {violation}") from None
        return result

    def reference(self, inputs: dict[str, np.ndarray], conventions: KinkConventions | None = None) -> ReferenceGradient:
        """The exact gradient at `inputs`, whose data may be one micro-batch of the case's."""
        return exact_gradient(self.case, inputs, conventions or self.backend.conventions, self.spec.dtype)

    def discard(self, reason: str) -> None:
        """Filter this example out (on the drawn inputs and the reference only), counting why."""
        self.discarded[reason] = self.discarded.get(reason, 0) + 1
        hypothesis.assume(False)

    def check(self, comparison: Comparison, expected: dict[str, np.ndarray] | None = None) -> None:
        """Keep the worst comparison; fail the example, with a reproducer attached, when it does not hold, unless
        it fails with the signature of a known failure of this item (then it is that failure, not shrunk)."""
        self.sensitivity = min(self.sensitivity, comparison.sensitivity)
        if self.worst is None or comparison.ratio >= self.worst.ratio:
            self.worst = comparison
        if np.isfinite(comparison.ratio):
            self.example_ratio = max(self.example_ratio or 0.0, float(comparison.ratio))
        if comparison.ok:
            return
        known = next((entry for entry in self.known if entry.matches(comparison)), None)
        if known is not None:
            self.known_matched, self.failure = known, comparison
            return
        self.failure = comparison
        message = f"{self.spec.property}: {comparison.where}: {comparison.detail}"
        if comparison.tolerance:
            message += f" (error {comparison.max_error:.3g} = {comparison.ratio:.3g} x tolerance)"
        error = PropertyFailed(message)
        self.repro = self._reproducer(expected)
        if self.repro:
            error.add_note(f"Reproduce with {self.spec.backend} alone:\n{self.repro}")
        raise error

    def explain(self, explanation: str, citation: str, difference: Comparison | None = None) -> None:
        """The example differs between backends, and a documented switch of the reference explains it."""
        self.explanation, self.citation = explanation, citation
        if difference is not None and (self.worst is None or difference.ratio >= self.worst.ratio):
            self.worst = difference

    def _reproducer(self, expected: dict[str, np.ndarray] | None) -> str | None:
        if self.last_inputs is None:
            return None
        try:
            script = repro_of(self.backend, self.case, self.last_inputs, self.spec.dtype, self.spec.variant)
        except NotImplementedError:
            return None
        if expected:
            script += "".join(
                f"# expected {name}: {np.asarray(value).tolist()!r}\n" for name, value in expected.items()
            )
        return script

    def record(self, report: pytest.TestReport, call: pytest.CallInfo) -> ResultRecord:
        spec, backend = self.spec, backend_registry.load(self.spec.backend)
        reason = backend.unavailable_reason()
        versions = backend_registry.versions(backend) if reason is None else {}
        outcome, message = self._outcome(report, call)
        shown = self.failure if outcome == "fail" else self.worst
        return ResultRecord(
            case=spec.case.id,
            property=spec.property,
            backend=spec.backend,
            variant=spec.variant,
            device=spec.device,
            dtype=spec.dtype,
            framework_version=framework_version(versions),
            outcome=outcome,
            title=spec.case.title,
            tags=list(spec.case.tags),
            explanation=self.explanation,
            citation=self.citation,
            examples=self.examples - sum(self.discarded.values()),
            discarded=dict(self.discarded),
            elapsed_s=round(report.duration, 4),
            sensitivity=None if not np.isfinite(self.sensitivity) else self.sensitivity,
            max_error=None if shown is None else shown.max_error,
            tolerance=None if shown is None else shown.tolerance,
            counterexample=self.last_inputs if outcome == "fail" else None,
            repro=self.repro if outcome == "fail" else None,
            message=message,
            trajectory=self.trajectory,
            observations=self.observations,
        )

    def _outcome(self, report: pytest.TestReport, call: pytest.CallInfo) -> tuple[str, str | None]:
        if report.skipped and hasattr(report, "wasxfail"):  # a known framework failure: still a failure in the results
            return "fail", report.wasxfail
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            reason = reason.removeprefix("Skipped: ")
            if reason.startswith(NOT_APPLICABLE):
                return "not_applicable", reason.removeprefix(NOT_APPLICABLE)
            return "skip", reason
        if report.passed:
            stale = [entry.reason for entry in self.known]
            return ("divergent" if self.explanation else "pass"), (
                f"stale known failure (no example failed so): {stale[0]}" if stale else None
            )
        error = call.excinfo.value if call.excinfo else None
        first_line = str(error).splitlines()[0] if error is not None and str(error) else report.longreprtext[-300:]
        if isinstance(error, (PropertyFailed, AssertionError)) and not isinstance(error, BackendError):
            return "fail", first_line
        return "error", first_line
