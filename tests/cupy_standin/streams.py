"""``cupy.cuda.Stream``, ``Event``, ``Device`` and the current-stream state, with CUDA's
ordering semantics recorded by :mod:`.tracking` (work itself runs eagerly).

* A non-blocking stream orders with nothing but itself, events it waits on and the host's
  program order at issue time; the legacy default stream (``Stream.null``) orders with every
  *blocking* stream both ways, and with non-blocking ones not at all.
* Priorities are clamped into the range of :data:`PRIORITY_RANGE` (greatest, least) as
  ``cudaStreamCreateWithPriority`` does.
"""
from __future__ import annotations

import itertools
import threading

from hpcinv.backend.checker import _join

from .tracking import STATE, host_join

#: ``cudaDeviceGetStreamPriorityRange`` of the stand-in device: (least, greatest) = (0, -5),
#: as on an H100.
PRIORITY_RANGE = (0, -5)

_ptrs = itertools.count(0x1000, 0x10)
_serial = itertools.count(1)
_local = threading.local()
_streams: list = []


def device_count() -> int:
    import os
    return int(os.environ.get("HPCINV_CUPY_STANDIN_DEVICES", "1") or 1)


class Stream:
    """CUDA stream (``cupy.cuda.Stream(null=False, non_blocking=False, ptds=False,
    priority=None)``)."""

    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        if ptds:
            raise NotImplementedError("CuPy stand-in: the per-thread default stream")
        least, greatest = PRIORITY_RANGE
        if null:
            self.ptr, self.device_id, self._priority = 0, -1, least
            self.non_blocking, self.key = False, "legacy default"
        else:
            p = least if priority is None else int(priority)
            self._priority = min(least, max(greatest, p))
            self.ptr, self.device_id = next(_ptrs), get_device_id()
            self.non_blocking = bool(non_blocking)
            self.key = (f"#{next(_serial)} priority {self._priority}"
                        f"{'' if non_blocking else ' blocking'}")
        self.clock = {self.key: 0}
        _streams.append(self)

    def _order_before_issue(self, host_clock):
        _join(self.clock, host_clock)
        if self.ptr == 0:               # legacy stream: after all blocking streams' work
            for s in _streams:
                if s is not self and not s.non_blocking:
                    _join(self.clock, s.clock)
        elif not self.non_blocking:     # blocking stream: after the legacy stream's work
            _join(self.clock, Stream.null.clock)

    def __eq__(self, other):
        return isinstance(other, Stream) and self.ptr == other.ptr

    def __hash__(self):
        return self.ptr

    def __repr__(self):
        return f"<Stream {self.ptr} (device {self.device_id}) stand-in {self.key}>"

    def __enter__(self):
        _stack().append(self)
        return self

    def __exit__(self, *args):
        _stack().pop()

    def use(self):
        """Makes this stream current."""
        _stack()[0] = self
        return self

    @property
    def priority(self) -> int:
        return self._priority

    def synchronize(self):
        """The host waits for the work issued on this stream so far."""
        with STATE.tracker.lock:
            host_join(dict(self.clock))

    def record(self, event=None):
        """Records ``event`` (a new one when ``None``) on this stream and returns it."""
        if event is None:
            event = Event()
        event.record(self)
        return event

    def wait_event(self, event):
        """Work issued on this stream after this call runs after ``event``'s work."""
        with STATE.tracker.lock:
            _join(self.clock, event._clock)


def _stack() -> list:
    st = getattr(_local, "stack", None)
    if st is None:
        st = _local.stack = [Stream.null]
    return st


def get_current_stream(device_id=-1):
    """The current stream of this thread."""
    return _stack()[-1]


class Event:
    """CUDA event (``cupy.cuda.Event(block=False, disable_timing=False,
    interprocess=False)``)."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        if interprocess and not disable_timing:
            raise ValueError('Timing must be disabled for interprocess events')
        self.ptr = next(_ptrs)
        self._clock = {}

    def record(self, stream=None):
        """Records the event on ``stream`` (default: the current stream)."""
        s = get_current_stream() if stream is None else stream
        with STATE.tracker.lock:
            s._order_before_issue(STATE.tracker.host)
            self._clock = dict(s.clock)

    def synchronize(self):
        """The host waits for the work the event marks."""
        host_join(dict(self._clock))


class Device:
    """CUDA device (``cupy.cuda.Device(device=None)``)."""

    def __init__(self, device=None):
        if isinstance(device, Device):
            device = device.id
        self.id = get_device_id() if device is None else int(device)
        if not 0 <= self.id < device_count():
            from .runtime import CUDARuntimeError
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        self._prev = []

    def use(self):
        _local.device = self.id

    def __enter__(self):
        self._prev.append(get_device_id())
        self.use()
        return self

    def __exit__(self, *args):
        _local.device = self._prev.pop()

    @property
    def pci_bus_id(self) -> str:
        return f"0000:{0x10 + self.id:02x}:00.0"

    def synchronize(self):
        for s in list(_streams):
            s.synchronize()


def get_device_id() -> int:
    return getattr(_local, "device", 0)


def reset():
    """Forget every stream's history (a new stand-in device)."""
    _streams.clear()
    Stream.null = Stream(null=True)
    _local.stack = [Stream.null]
    _local.device = 0


Stream.null = Stream(null=True)
