"""The manual approval a canary step with `gate: manual` waits for, given from the Dagster UI."""

import time

import dagster as dg

from hotpot_orchestration.release.rollout.controller import Approval
from hotpot_orchestration.release.rollout.plan import Step
from hotpot_orchestration.release.rollout.releases import APPROVAL_ASSET, GROUP

APPROVAL_SPEC = dg.AssetSpec(
    APPROVAL_ASSET,
    group_name=GROUP,
    description="Operator approval of a manual release gate. To approve a waiting step, choose 'Report "
    "materialization event' on this asset (the description is recorded as the note); a description "
    "starting with 'reject' rejects the release instead.",
)


class OperatorApproval:
    """A manual gate answered from the UI: the operator reports a materialization of `release_approval`.

    Any report made after the gate opened counts (only one release runs at a time). Its description is the
    note recorded with the step; a description starting with "reject" rejects the step instead.
    """

    def __init__(self, context, step: Step, timeout: float):
        self.context = context
        self.step = step
        self.timeout = timeout
        self.opened_at = time.time()

    def open(self) -> None:
        self.opened_at = time.time()
        self.context.log.warning(
            f"{self.step.label} passed its analysis and waits for approval (up to {self.timeout:g}s): in "
            f"the UI, open the asset {APPROVAL_ASSET} and choose 'Report materialization event'. A "
            "description starting with 'reject' rejects the release; terminating the run rolls it back too."
        )

    def poll(self) -> Approval | None:
        event = self.context.instance.get_latest_materialization_event(dg.AssetKey(APPROVAL_ASSET))
        if event is None or event.timestamp <= self.opened_at:
            return None
        note = (event.asset_materialization.description or "").strip()
        return Approval(
            approved=not note.lower().startswith("reject"), note=note or "approved without a note"
        )
