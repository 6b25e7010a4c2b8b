"""NVML events: the XID event set, registered per GPU at open and drained after each sample sweep."""

from __future__ import annotations

from nodeagent.backends.gpu.nvml.base import INVALID_ID as _INVALID_ID
from nodeagent.backends.gpu.nvml.base import NvmlBase, log
from nodeagent.backends.gpu.nvml.readers import text
from nodeagent.backends.gpu.sweep import Hop
from nodeagent.model.gpu import XidEvent

MAX_EVENTS_PER_SWEEP = 256


class NvmlEvents(NvmlBase):
    def _create_event_set(self) -> None:
        nv = self.nv
        try:
            es = nv.nvmlEventSetCreate()
        except self.nvml_error as err:
            log.warning("nvml_events_unavailable", reason=str(err))
            return
        registered = 0
        for g in self._gpus:
            if g.handle is None:
                continue
            try:
                nv.nvmlDeviceRegisterEvents(g.handle, nv.nvmlEventTypeXidCriticalError, es)
                registered += 1
            except self.nvml_error as err:
                log.info("nvml_xid_events_unsupported", gpu=g.index, reason=str(err))
        self._event_set = es
        log.info("nvml_xid_events", gpus=registered)

    def _poll_events(self, hop: Hop) -> list[XidEvent]:
        """Drain the XID event set without waiting (timeout 0)."""
        nv = self.nv
        if self._event_set is None:
            return []
        events: list[XidEvent] = []
        by_uuid = {g.uuid: g.index for g in self._gpus if g.uuid}
        for _ in range(MAX_EVENTS_PER_SWEEP):
            try:
                data = hop.call("nvmlEventSetWait", nv.nvmlEventSetWait, self._event_set, 0)
            except self.nvml_error as err:
                if getattr(err, "value", None) != nv.NVML_ERROR_TIMEOUT:
                    hop.fail("nvmlEventSetWait")
                break
            if not data.eventType & nv.nvmlEventTypeXidCriticalError:
                continue
            uuid = ""
            try:
                uuid = text(hop.call("nvmlDeviceGetUUID", nv.nvmlDeviceGetUUID, data.device))
            except self.nvml_error:
                hop.fail("nvmlDeviceGetUUID")
            gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
            events.append(
                XidEvent(
                    gpu_index=by_uuid.get(uuid, -1),
                    gpu_uuid=uuid,
                    xid=int(data.eventData),
                    timestamp=self._clock(),
                    gpu_instance_id=None if gi == _INVALID_ID else gi,
                    compute_instance_id=None if ci == _INVALID_ID else ci,
                )
            )
        if events:
            log.warning("gpu_xid", events=[(e.gpu_index, e.xid) for e in events])
        return events
