"""What an evaluation run found, typed: each task's frozen results, and the whole run's, which
the report renders and results.json saves.

results.json's layout: {"config", "models": {name: {"params", "completions", KEY: a result}},
"pairwise": [results across models, each with its "models"], "judge"}; KEY is the result's `key`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypeVar

from tinystories.eval.judge import MissingInfo

R = TypeVar("R", bound="Result")


@dataclass(frozen=True)
class Result:
    """A task's findings about one model, or across models; each kind a frozen dataclass of its
    own, saved in results.json under its `key`."""
    key: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    """A result and the models it is about: one, or several (a comparison)."""
    models: tuple[str, ...]
    result: Result


@dataclass(frozen=True)
class Results:
    """A whole run: its settings, each model's size and sampled beginnings, and every task's findings
    in the order the tasks ran."""
    config: dict[str, Any]  # the suite's settings (config.json)
    names: tuple[str, ...]  # the models, in the order given
    params: Mapping[str, int] = field(default_factory=dict)  # of the models loaded
    completions: Mapping[str, list[list[str]]] = field(default_factory=dict)  # of the beginnings, [i][k]
    findings: tuple[Finding, ...] = ()
    judge: Mapping[str, str] | None = None  # model and base_url, when a judge answered

    def of(self, kind: type[R]) -> dict[str, R]:
        """{model: its result of this kind}, for the models that have one, in the models' order."""
        found = {f.models[0]: f.result for f in self.findings if len(f.models) == 1 and isinstance(f.result, kind)}
        return {m: found[m] for m in self.names if m in found}

    def across(self, kind: type[R]) -> list[tuple[tuple[str, ...], R]]:
        """(models, result) of each result of this kind about several models."""
        return [(f.models, f.result) for f in self.findings if len(f.models) > 1 and isinstance(f.result, kind)]

    def missing(self) -> list[tuple[str, MissingInfo]]:
        """Each judged result's missing judgments, named "model: key" or "a vs b"."""
        out = []
        for f in self.findings:
            info = getattr(f.result, "missing_info", None)
            if isinstance(info, MissingInfo):
                out.append((f"{f.models[0]}: {f.result.key}" if len(f.models) == 1 else " vs ".join(f.models), info))
        return out

    def to_json(self) -> dict[str, Any]:
        models: dict[str, dict[str, Any]] = {m: {} for m in self.names}
        for m in self.names:
            if m in self.params:
                models[m]["params"] = self.params[m]
            if m in self.completions:
                models[m]["completions"] = self.completions[m]
        out: dict[str, Any] = {"config": self.config, "models": models, "pairwise": []}  # (always listed)
        for f in self.findings:
            if len(f.models) == 1:
                models[f.models[0]][f.result.key] = f.result.to_json()
            else:
                out.setdefault(f.result.key, []).append({"models": list(f.models), **f.result.to_json()})
        if self.judge:
            out["judge"] = dict(self.judge)
        return out
