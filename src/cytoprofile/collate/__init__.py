"""Backend creation for whole plates: one pass from site CSVs to backend, profiles and report.

Each plate is read once: every trusted site is written to the single-cell
backend(s) and, as soon as a well's last site is in, the well is aggregated and
its cells dropped. Outputs appear only when complete; the report is written last,
so a plate with a report is a finished plate and a re-run after a crash redoes
exactly the unfinished ones.

The package, by role: :mod:`.plate` routes a plate (local, pushed, on a URL,
ExportToDatabase) and runs a batch; :mod:`.plan` decides what a run builds; :mod:`.read` is
the one pass over the sites, with :mod:`.wells` holding each well until it is complete;
:mod:`.outputs` keeps the commit record (report, generation ids, the swap);
:mod:`.reaggregate` re-aggregates an existing backend; :mod:`.staging` stages and publishes
plates of a workspace on object storage.
"""

from __future__ import annotations

from .outputs import (
    BackendKind,
    PlateResult,
    generation_of,
    plate_outputs,
    plate_profiles,
    trusted_outputs,
)
from .plan import input_fingerprint
from .plate import collate, collate_plate

__all__ = [
    "BackendKind",
    "PlateResult",
    "collate",
    "collate_plate",
    "generation_of",
    "input_fingerprint",
    "plate_outputs",
    "plate_profiles",
    "trusted_outputs",
]
