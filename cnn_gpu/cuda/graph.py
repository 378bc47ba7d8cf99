"""CUDA-graph capture and replay of a step function (CuPy streams and memory pools): what lets a training step
of many small kernels run as one graph launch.

GraphedStep(step, examples, sources) captures step(*buffers) once, on a stream of its own, on static device
buffers shaped like `examples`, every allocation from the graphs' own memory pool; capturing runs nothing.
`sources` (layers, an optimizer) have step scalars (Dropout's mask seeds, Adam's step size: see
cnn_gpu.layers.base) that change from step to step: during the capture they read them from one device
buffer (StepScalarFeed). replay(*arrays) then does what an eager step would, in order with the eager work
around it on the current stream: the host draws each source's next step scalars, writes them and the new
inputs into the static buffers (uploads queued without waiting) and launches the graph; it returns what
the captured call returned (its arrays are rewritten by every replay).
"""
from __future__ import annotations

import functools

import numpy


class GraphedStep:
    """step(*buffers) captured as a CUDA graph; see the module docstring. Raises what the capture raised."""

    def __init__(self, step, examples, sources):
        import cupy

        self.buffers = tuple(cupy.empty(a.shape, a.dtype) for a in examples)
        self._sources = list(sources)
        self._feed = StepScalarFeed(self._sources)
        for source, arrays in zip(self._sources, self._feed.arrays, strict=True):
            source.read_step_scalars_from(arrays)
        stream = capture_stream(cupy.cuda.Device().id)
        try:
            with stream, cupy.cuda.using_allocator(graph_memory_pool().malloc):
                stream.begin_capture()
                try:
                    self.result = step(*self.buffers)
                finally:
                    graph = stream.end_capture()
        finally:
            for source in self._sources:
                source.read_step_scalars_from(None)
        self._graph = graph

    def replay(self, *arrays):
        """The captured step on `arrays` (host or device arrays of the buffers' shapes and dtypes), launched on
        the current stream; returns the captured call's result."""
        self._feed.write_next_step()
        for static, array in zip(self.buffers, arrays, strict=True):
            copy_without_waiting(static, array)
        self._graph.launch()
        return self.result


class StepScalarFeed:
    """The step scalars of some sources (layers, an optimizer) in one device buffer, 8 bytes a value.

    ``arrays`` holds, per source, the one-element device arrays (views into the buffer) it reads its
    scalars from; write_next_step() asks every source for its next step's values (advancing its host
    state, as an eager step would) and uploads them all in one copy, queued without waiting.
    """

    SLOT_BYTES = 8  # room for any scalar dtype, and the alignment of the largest

    def __init__(self, sources):
        import cupy

        self._sources = list(sources)
        self._slots = []  # per source: [(byte offset, dtype)]
        offset = 0
        for source in self._sources:
            slots = []
            for dtype in map(numpy.dtype, source.step_scalar_dtypes):
                assert dtype.itemsize <= self.SLOT_BYTES, dtype
                slots.append((offset, dtype))
                offset += self.SLOT_BYTES
            self._slots.append(slots)
        self._host = numpy.zeros(offset, numpy.uint8)
        self._device = cupy.zeros(offset, numpy.uint8)
        self.arrays = [tuple(self._device[o:o + dtype.itemsize].view(dtype) for o, dtype in slots)
                       for slots in self._slots]

    def write_next_step(self) -> None:
        for source, slots in zip(self._sources, self._slots):
            for (offset, dtype), value in zip(slots, source.next_step_scalars(), strict=True):
                self._host[offset:offset + dtype.itemsize].view(dtype)[0] = value
        if self._host.size:
            copy_without_waiting(self._device, self._host)


def copy_without_waiting(device, host: numpy.ndarray) -> None:
    """host into the device array of its shape and dtype, queued on the current stream: staged through
    pinned memory as cupy.asarray stages it, so the host neither waits nor may change what is sent."""
    import cupy

    staged = cupy.asarray(host)
    if staged.shape != device.shape or staged.dtype != device.dtype:
        raise ValueError(f"a batch of shape {staged.shape} and dtype {staged.dtype} does not fit the captured "
                         f"step's buffer of shape {device.shape} and dtype {device.dtype}")
    device.data.copy_from_device_async(staged.data, staged.nbytes)


@functools.lru_cache(maxsize=None)
def capture_stream(device_id: int):
    """The stream training steps are captured on, one per device (capture cannot use the legacy default
    stream; a non-blocking one is not disturbed by work other code queues there meanwhile)."""
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.cuda.Stream(non_blocking=True)


@functools.lru_cache(maxsize=None)
def graph_memory_pool():
    """The memory captures allocate from, kept for the life of the process. A graph reads and writes its
    capture's allocations at every replay, also those whose arrays Python has since dropped: from the
    default pool they could be handed to other work or freed (on an out-of-memory retry, or by
    free_all_blocks()); this pool serves nothing but captures, and never frees. Graphs replayed one
    after another may share its blocks (each replay writes its scratch before reading it); replays
    overlapping on two streams may not, hence one cuda_graph fit at a time per device."""
    import cupy

    return cupy.cuda.MemoryPool()
