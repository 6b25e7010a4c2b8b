"""NVML events: the XID event set, registered per GPU at open.

Once the GPU-state owner watches (``watch_events``), a thread of its own blocks in ``nvmlEventSetWait`` and
hands each XID to the loop as it happens; NVML is thread-safe, and the sampling worker thread is not held up
by the wait. Until then (and for direct users of the backend) each sample sweep drains the set without
waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from nodeagent.backends.gpu.nvml.base import INVALID_ID as _INVALID_ID
from nodeagent.backends.gpu.nvml.base import NvmlBase, log
from nodeagent.backends.gpu.nvml.readers import text
from nodeagent.backends.gpu.sweep import Hop
from nodeagent.model.gpu import XidEvent

MAX_EVENTS_PER_SWEEP = 256
WAIT_MS = 500
"""One wait of the watching thread: how long closing the backend may wait for it to notice."""
FAILED_WAIT_BACKOFF_S = 5.0


class EventWatcher:
    """The thread that waits on the event set for one watcher."""

    def __init__(self, wait: Callable[[], list[XidEvent] | None], deliver: Callable[[list[XidEvent]], None]) -> None:
        self._wait = wait
        self._deliver = deliver
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="nvml-events", daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            got = self._wait()
            if got is None:  # the wait failed (not a timeout): do not spin on a broken event set
                self.stopping.wait(FAILED_WAIT_BACKOFF_S)
            elif got:  # even when stopping: an XID taken from the set is not dropped
                self._deliver(got)

    def stop(self, *, join_s: float = 0.0) -> None:
        self.stopping.set()
        if join_s and self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(join_s)


class NvmlEvents(NvmlBase):
    _watcher: EventWatcher | None = None

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

    # ---- pushed: a thread of its own waits

    def watch_events(self, sink: Callable[[XidEvent], None]) -> Callable[[], None]:
        """Each XID goes to ``sink`` on this loop as NVML reports it (nvmlEventSetWait on the watcher thread)."""
        self._stop_watching()
        if self._event_set is None:
            log.info("nvml_xid_events_not_watched", reason="no event set")
            return lambda: None
        loop = asyncio.get_running_loop()

        def deliver(events: list[XidEvent]) -> None:
            def on_loop() -> None:
                for e in events:
                    sink(e)

            if not loop.is_closed():
                loop.call_soon_threadsafe(on_loop)

        watcher = EventWatcher(self._wait_events, deliver)
        self._watcher = watcher
        watcher.thread.start()

        def unwatch() -> None:  # closing the backend joins the thread
            watcher.stop()

        return unwatch

    def _stop_watching(self, *, join_s: float = 0.0) -> None:
        if self._watcher is not None:
            self._watcher.stop(join_s=join_s)
            self._watcher = None

    def _wait_events(self) -> list[XidEvent] | None:
        """Block up to WAIT_MS for the first event, then take what else is queued. None: the wait failed."""
        nv, es = self.nv, self._event_set
        if es is None:
            return None
        events: list[XidEvent] = []
        timeout_ms = WAIT_MS
        for _ in range(MAX_EVENTS_PER_SWEEP):
            try:
                data = nv.nvmlEventSetWait(es, timeout_ms)
            except self.nvml_error as err:
                if getattr(err, "value", None) == nv.NVML_ERROR_TIMEOUT:
                    break
                log.warning("nvml_event_wait_failed", error=str(err))
                return events or None
            timeout_ms = 0
            event = self._xid_event(data, self._uuid_direct)
            if event is not None:
                events.append(event)
        if events:
            log.warning("gpu_xid", events=[(e.gpu_index, e.xid) for e in events])
        return events

    def _uuid_direct(self, device: Any) -> str:
        try:
            return text(self.nv.nvmlDeviceGetUUID(device))
        except self.nvml_error:
            return ""

    # ---- swept: drained at the end of a sample hop while nobody watches

    def _sample_tail(self) -> Callable[[Hop], list[XidEvent]] | None:
        watched = self._watcher is not None and not self._watcher.stopping.is_set()
        return None if watched else self._poll_events

    def _poll_events(self, hop: Hop) -> list[XidEvent]:
        """Drain the XID event set without waiting (timeout 0)."""
        nv = self.nv
        if self._event_set is None:
            return []
        events: list[XidEvent] = []

        def uuid_of(device: Any) -> str:
            try:
                return text(hop.call("nvmlDeviceGetUUID", nv.nvmlDeviceGetUUID, device))
            except self.nvml_error:
                hop.fail("nvmlDeviceGetUUID")
                return ""

        for _ in range(MAX_EVENTS_PER_SWEEP):
            try:
                data = hop.call("nvmlEventSetWait", nv.nvmlEventSetWait, self._event_set, 0)
            except self.nvml_error as err:
                if getattr(err, "value", None) != nv.NVML_ERROR_TIMEOUT:
                    hop.fail("nvmlEventSetWait")
                break
            event = self._xid_event(data, uuid_of)
            if event is not None:
                events.append(event)
        if events:
            log.warning("gpu_xid", events=[(e.gpu_index, e.xid) for e in events])
        return events

    def _xid_event(self, data: Any, uuid_of: Callable[[Any], str]) -> XidEvent | None:
        if not data.eventType & self.nv.nvmlEventTypeXidCriticalError:
            return None
        uuid = uuid_of(data.device)
        by_uuid = {g.uuid: g.index for g in self._gpus if g.uuid}
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        return XidEvent(
            gpu_index=by_uuid.get(uuid, -1),
            gpu_uuid=uuid,
            xid=int(data.eventData),
            timestamp=self._clock(),
            gpu_instance_id=None if gi == _INVALID_ID else gi,
            compute_instance_id=None if ci == _INVALID_ID else ci,
        )
