"""The suite's Hypothesis profiles, under names of their own: loading the plugin changes no other project's profile.

The property tests carry their profile as explicit settings, chosen when their module is imported: the Hypothesis
profile loaded at that time when it is one of ours (`--hypothesis-profile=conformance-thorough`), else the one
named by CONFORMANCE_PROFILE (`ci` or `conformance-ci`), else `conformance-default`.

No example database: a verdict depends on the commit and the seed alone, not on examples an earlier run left in
`.hypothesis/`. A failure is reproduced from its record (the shrunk counterexample and a standalone script) or
from the seed.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

PREFIX = "conformance-"
ENVIRONMENT_VARIABLE = "CONFORMANCE_PROFILE"

# No explain phase: to explain a failure Hypothesis traces every line of every later example, framework code
# included (an eager Keras update item ran 2.5 times slower per example once one had failed); a failure's record
# carries the shrunk counterexample and a script that reproduces it.
_COMMON = dict(
    phases=[phase for phase in Phase if phase is not Phase.explain],
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
PROFILES = {
    "default": settings(max_examples=10, **_COMMON),
    "ci": settings(max_examples=10, derandomize=True, **_COMMON),  # the verdict depends on the commit alone
    "thorough": settings(max_examples=200, **_COMMON),
    "smoke": settings(
        max_examples=1, **{**_COMMON, "phases": [Phase.explicit, Phase.generate]}
    ),  # the harness' own tests
}
for _name, _settings in PROFILES.items():
    settings.register_profile(PREFIX + _name, _settings)


class UnknownProfile(ValueError):
    """A profile name that is not one of PROFILES; the message is one line."""


def short_name(name: str) -> str:
    """`ci` for `ci` and `conformance-ci`; UnknownProfile for any other name."""
    short = name.removeprefix(PREFIX)
    if short not in PROFILES:
        raise UnknownProfile(f"unknown profile {name!r} (known: {', '.join(PROFILES)})")
    return short


def chosen_name() -> str:
    """The short name of the profile the property tests run under (see the module's docstring)."""
    loaded = settings.get_current_profile_name()
    if loaded.startswith(PREFIX):
        return short_name(loaded)
    return short_name(os.environ.get(ENVIRONMENT_VARIABLE) or "default")


def chosen() -> settings:
    return PROFILES[chosen_name()]
