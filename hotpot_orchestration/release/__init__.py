"""Building the API image and releasing it: canary steps, blue-green, rollback."""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.release import image, rollout
from hotpot_orchestration.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions.merge(image.build_defs(settings), rollout.build_defs(settings))
