"""The driver subsystem's public API for other subsystems' one-shot commands.

In the daemon, other subsystems learn the driver facts from ``events.DRIVER_READY``. In a one-shot
(``plan``, ``apply``, ``cdi generate``) or with ``--only`` leaving the driver out, nobody publishes them;
``current_facts`` works them out with the same pure functions the driver subsystem uses. Other
subsystems import this module and ``nodeagent.model.driver``, never the driver's internals.
"""

from __future__ import annotations

from nodeagent.aio import run_blocking
from nodeagent.backends.hostfs import Root
from nodeagent.driver import planner
from nodeagent.driver.observe import gather
from nodeagent.model.driver import DriverFacts
from nodeagent.settings import Settings


async def current_facts(root: Root, settings: Settings) -> tuple[DriverFacts | None, list[str]]:
    """(facts, []) when the driver is usable now, else (None, [the reasons])."""
    ds = settings.driver
    obs = await run_blocking(gather, root, driver_root=ds.root, dev_root=ds.dev_root)
    assessment = planner.assess(obs, settings)
    if assessment.facts is None or assessment.failures or assessment.loads:
        reasons = assessment.failures or ("the driver is not ready (modules not loaded)",)
        return None, [f"driver not ready: {'; '.join(reasons)}"]
    return assessment.facts, []
