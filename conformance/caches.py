"""Where the suite keeps what it compiled between runs: the reference's generated functions
(`conformance.reference.cache`), XLA's compilations for JAX (`conformance.backends.jax`) and inductor's for
`torch.compile` (`conformance.backends.torch`). Each is keyed by what it was made from, so a kept entry is never
stale; deleting the directory costs only time.

The directory is CONFORMANCE_CACHE_DIR, else `$XDG_CACHE_HOME/conformance`, else `~/.cache/conformance`;
CONFORMANCE_CACHE_DIR=off keeps nothing on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

ENVIRONMENT_VARIABLE = "CONFORMANCE_CACHE_DIR"


def directory() -> Path | None:
    """The suite's cache directory; None when it keeps nothing."""
    chosen = os.environ.get(ENVIRONMENT_VARIABLE)
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "conformance"
