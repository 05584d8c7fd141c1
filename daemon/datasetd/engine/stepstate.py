"""What the executor remembers of each key between two observations, and what a run comes to.

One frozen `StepState` per (component, unit) key (kopf's HandlerState is the model), replaced,
never mutated, by the executor (engine/executor.py); `outcome` reads the final observation to say
which components are ready and, for each one that is not, why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from datasetd.config.manifest import Manifest
from datasetd.core.model import Action, ComponentState
from datasetd.core.planning import is_ready

Key = tuple[str, str]  # (component, unit); unit "" for component-level steps


@dataclass(frozen=True)
class StepState:
    """Everything the executor knows of one key between two observations."""

    attempts: int = 0
    retry_at: float | None = None  # monotonic time before which the key is not planned again
    failed: str | None = None  # permanent failure: the key stays in error until the manifest changes
    running: Action | None = None
    verified_at: float | None = None  # verified, waiting for the group commit since
    flushed: bool = False  # its files survive power loss: only the archive's verdict may still be awaited

    @property
    def busy(self) -> bool:
        return self.running is not None or self.verified_at is not None


@dataclass
class Outcome:
    ready: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # component -> first error
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.stopped


def after_manifest_edit(states: Mapping[Key, StepState], enabled: set[str]) -> dict[Key, StepState]:
    """A manifest edit is the user acting: failures and backoffs start afresh. What is in flight
    stays tracked; what waits for a commit stays only for components that are still enabled."""
    return {key: StepState(running=s.running, verified_at=s.verified_at if key[0] in enabled else None,
                           flushed=s.flushed and key[0] in enabled)
            for key, s in states.items() if s.running is not None
            or (s.verified_at is not None and key[0] in enabled)}


def failures(states: Mapping[Key, StepState]) -> dict[str, str]:
    """component -> its first failure message."""
    out: dict[str, str] = {}
    for (component, _), state in sorted(states.items()):
        if state.failed is not None:
            out.setdefault(component, state.failed)
    return out


def outcome(manifest: Manifest, observed: Mapping[str, ComponentState], failed: dict[str, str],
            stopped: bool) -> Outcome:
    """The run's result: every enabled component ready, failed (its first error), or said why not."""
    out = Outcome(stopped=stopped, failed=failed)
    for comp in manifest.enabled():
        if is_ready(comp, observed.get(comp.name)):
            out.ready.append(comp.name)
        elif comp.name not in out.failed and not out.stopped:
            waiting = [d for d in comp.after if not is_ready(manifest.components[d], observed.get(d))]
            out.failed[comp.name] = (f"not started: waits for {', '.join(waiting)} (components.{comp.name}.after)"
                                     if waiting else "did not converge; run again or see the log")
    return out
