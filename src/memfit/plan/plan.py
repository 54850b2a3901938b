"""Plan: techniques to apply, with their predictions and the alternatives weighed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from memfit.errors import InvalidInputError
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
        techniques = []
        for item in data.get("techniques", ()):
            item = dict(item)
            row = by_name(str(item.pop("type", None)))
            for key, value in item.items():
                if isinstance(value, list):
                    item[key] = tuple(value)
            techniques.append(row.type(**item))
        profile = data.get("profile")
        return cls(
            techniques=tuple(techniques),
            budget=int(data.get("budget", 0)),
            device=str(data.get("device", "")),
            profile=MemoryProfile.from_dict(profile) if profile else None,
            step_time_s=data.get("step_time_s"),
            baseline_step_time_s=data.get("baseline_step_time_s"),
            frontier=tuple(FrontierPoint.from_dict(p) for p in data.get("frontier", ())),
            model_fingerprint=str(data.get("model_fingerprint", "")),
            notes=tuple(data.get("notes", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"plan is not valid JSON: {error}") from error


def _name_of(technique: Any) -> str:
    row = info(technique)
    if row is None:
        raise InvalidInputError(
            f"{technique!r} is not in memfit's technique table "
            f"({', '.join(r.type.__name__ for r in TABLE)}); a plan with it cannot be saved"
        )
    return row.name
