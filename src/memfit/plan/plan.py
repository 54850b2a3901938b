"""Plan: techniques to apply, with their predictions and the alternatives weighed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from memfit.errors import InvalidInputError
from memfit.json_fields import Fields
from memfit.plan.frontier import FrontierPoint
from memfit.profile import MemoryProfile
from memfit.step.undo import undo_all
from memfit.techniques import TABLE, Technique, by_name, info, technique_label

__all__ = ["Plan"]


@dataclass(frozen=True)
class Plan:
    """What to do to a training step so that it fits a budget, and what that is predicted to cost.

    Attributes:
        techniques: the techniques, applied in order (precision first).
        budget: the reserved-memory budget in bytes (0 for a hand-made plan).
        device: the DeviceSpec name the predictions are for.
        profile: the predicted MemoryProfile with the plan in force.
        step_time_s: predicted step time with the plan.
        baseline_step_time_s: predicted step time of the unmodified step.
        frontier: the alternatives weighed (memory against time), the chosen one marked.
        model_fingerprint: ``model_fingerprint`` of the model the plan was made for.
    """

    techniques: tuple[Technique, ...]
    budget: int = 0
    device: str = ""
    profile: MemoryProfile | None = None
    step_time_s: float | None = None
    baseline_step_time_s: float | None = None
    frontier: tuple[FrontierPoint, ...] = ()
    model_fingerprint: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        return " + ".join(technique_label(t) for t in self.techniques) or "unmodified"

    @property
    def overhead(self) -> float | None:
        """Predicted step time over the unmodified step's, minus one (0.1 = 10% slower)."""
        if not self.step_time_s or not self.baseline_step_time_s:
            return None
        return self.step_time_s / self.baseline_step_time_s - 1

    def of(self, kind: type) -> list[Any]:
        return [t for t in self.techniques if isinstance(t, kind)]

    def undo(self, model: nn.Module) -> None:
        """Restore ``model`` exactly as it was before ``memfit.apply`` changed it."""
        undo_all(model)

    def to_dict(self) -> dict[str, Any]:
        return {
            "techniques": [{"type": _name_of(t), **dataclasses.asdict(t)} for t in self.techniques],
            "label": self.label,
            "budget": self.budget,
            "device": self.device,
            "step_time_s": self.step_time_s,
            "baseline_step_time_s": self.baseline_step_time_s,
            "overhead": self.overhead,
            "model_fingerprint": self.model_fingerprint,
            "frontier": [p.to_dict() for p in self.frontier],
            "notes": list(self.notes),
            "profile": self.profile.to_dict() if self.profile else None,
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Read a plan written by ``to_dict`` (``memfit plan --out``); every field is checked.

        Raises:
            InvalidInputError: not a plan, an unknown technique or setting, or a field of the
                wrong type (the message names it).
        """
        if not isinstance(data, Mapping) or "techniques" not in data:
            found = sorted(map(str, data))[:8] if isinstance(data, Mapping) else type(data).__name__
            raise InvalidInputError(
                f"this JSON is not a memfit plan (found {found}; a plan has techniques, budget, "
                f"device, profile, ...); write one with `memfit plan MODEL --budget 16GiB --out "
                f"plan.json` or Plan.to_json()"
            )
        f = Fields(data, "plan", _FIX)
        f.unknown(_PLAN_KEYS)
        profile = f.get("profile", "object", None, optional=True)
        return cls(
            techniques=tuple(
                _read_technique(item, i) for i, item in enumerate(f.get("techniques", "list"))
            ),
            budget=f.get("budget", "bytes", 0),
            device=f.get("device", "str", ""),
            profile=MemoryProfile.from_dict(profile) if profile else None,
            step_time_s=f.get("step_time_s", "seconds", None, optional=True),
            baseline_step_time_s=f.get("baseline_step_time_s", "seconds", None, optional=True),
            frontier=tuple(
                FrontierPoint.from_dict(p, where=f"plan frontier point {i}")
                for i, p in enumerate(f.get("frontier", "list", []))
            ),
            model_fingerprint=f.get("model_fingerprint", "str", ""),
            notes=tuple(f.items("notes", "str")),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as error:
            raise InvalidInputError(
                f"plan is not valid JSON ({error}); give the text of `memfit plan ... --out "
                f"plan.json` or Plan.to_json()"
            ) from None
        return cls.from_dict(data)


_FIX = "write plans with memfit (`memfit plan ... --out plan.json`, Plan.to_json()) or correct it"
# what to_dict writes; "label" and "overhead" are derived, read back and ignored
_PLAN_KEYS = {
    "techniques",
    "label",
    "budget",
    "device",
    "step_time_s",
    "baseline_step_time_s",
    "overhead",
    "model_fingerprint",
    "frontier",
    "notes",
    "profile",
}


def _read_technique(item: Any, i: int) -> Technique:
    f = Fields(item, f"plan technique {i}", _FIX)
    row = by_name(f.get("type", "str"))
    known = {x.name for x in dataclasses.fields(row.type)}
    settings = {k: v for k, v in f.data.items() if k != "type"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InvalidInputError(
            f"plan technique {i} ({row.name}) has unknown setting(s) {unknown}; "
            f"{row.type.__name__} takes: {', '.join(sorted(known)) or 'nothing'}; {_FIX}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    try:
        technique: Technique = row.type(**values)
    except TypeError as error:  # a required setting missing
        raise InvalidInputError(f"plan technique {i} ({row.name}): {error}; {_FIX}") from None
    return technique


def _name_of(technique: Any) -> str:
    row = info(technique)
    if row is None:
        raise InvalidInputError(
            f"{technique!r} is not in memfit's technique table "
            f"({', '.join(r.type.__name__ for r in TABLE)}); a plan with it cannot be saved"
        )
    return row.name
