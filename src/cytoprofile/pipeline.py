"""The profiling recipe (kept under its former name; the code is in :mod:`cytoprofile.recipe`)."""

from __future__ import annotations

from .recipe import (
    Layout,
    RunResult,
    compartment_prefixes,
    existing_output,
    processing_file,
    run,
    step_outputs,
    write_output,
)

__all__ = ["Layout", "RunResult", "compartment_prefixes", "existing_output", "processing_file", "run", "step_outputs",
           "write_output"]
