"""Kernel launches straight through the CUDA driver (cuLaunchKernel), for the launch-bound small calls.

Why: CuPy's RawKernel.__call__ builds a small C object per argument on every call: 5.7 µs of host time
with 1 argument and 9.9 µs with 16 on the H200's host (benchmarks/host_overhead.py), and our kernels
take 10-20. A DriverKernel is called the same way, kernel(grid, block, args), and launches the same
CUfunction with the same argument bytes on the current stream (so CUDA-graph stream capture records it
as before), from buffers each host thread builds once per argument count and then reuses: one 8-byte
slot an argument, and the void*[] kernel_params of the slots' addresses that cuLaunchKernel reads.

A slot holds, little-endian (a kernel parameter reads its first 4 or 8 bytes):
  cupy.ndarray     its data pointer (a view's includes its offset; a subclass's too)
  None             0: a null pointer, for an absent optional operand
  numpy integer    its value in two's complement, kept to 64 bits (an int32 -1 reads as -1 from the low 4)
  numpy.float32    its IEEE-754 bits, taken from its bytes, never through a C float: NaN payloads, -0.0
                   and subnormals arrive unchanged whatever the FPU's flush-to-zero mode
Anything else is a TypeError naming the argument's position, raised before the launch: a Python int or
float has no width the kernel could agree on (CuPy would pass 8 bytes), and a numpy.float64 where a
kernel takes float would be read as garbage.

As CuPy's own launch path does, a host thread's first launch on a device makes the device's primary
context current in that thread (a runtime call, cudaMemGetInfo). Grid and block are 1 to 3 ints,
padded with 1s; a 0 extent launches 1, as in CuPy (the kernels bound-check, so a launch over an empty
problem writes what it should, e.g. a zero sum).
"""
from __future__ import annotations

import ctypes
import threading

import cupy
import numpy
from cupy.cuda import driver, runtime

SLOT_BYTES = 8

# The CUDA calls of a launch, bound once: a module attribute lookup costs on every call.
_get_device = runtime.getDevice
_current_stream = cupy.cuda.get_current_stream
_launch_kernel = driver.launchKernel
_make_context_current = runtime.memGetInfo  # any runtime call that needs a context binds the primary one


def _data_pointer(array) -> int:
    return array.data.ptr


def _null_pointer(_) -> int:
    return 0


def _float_bits(scalar) -> int:
    return int.from_bytes(scalar, "little")  # the scalar's own bytes (buffer protocol), zero-extended


# type(argument) -> what makes its slot value. None: the slot takes the numpy integer as it is (a ctypes
# c_uint64 reads it through __index__ and keeps its low 64 bits, which for a negative value are its two's
# complement), saving a Python call on the commonest argument.
_SLOT_VALUE = {
    cupy.ndarray: _data_pointer,
    type(None): _null_pointer,
    numpy.float32: _float_bits,
    **dict.fromkeys((numpy.int8, numpy.int16, numpy.int32, numpy.int64,
                     numpy.uint8, numpy.uint16, numpy.uint32, numpy.uint64)),
}


class _ThreadState(threading.local):
    """What each host thread keeps: its argument buffers by argument count, each (slots, address of the
    void*[] into them, that array), and the devices whose primary context it has made current."""

    def __init__(self):
        self.buffers = {}
        self.devices = set()

    def new_buffers(self, count: int) -> tuple:
        slots = (ctypes.c_uint64 * count)()
        base = ctypes.addressof(slots)
        params = (ctypes.c_void_p * count)(*(base + SLOT_BYTES * i for i in range(count)))
        self.buffers[count] = slots, ctypes.addressof(params), params
        return self.buffers[count]

    def enter(self, device: int) -> None:
        _make_context_current()
        self.devices.add(device)


_THREAD = _ThreadState()


def pack_arguments(args) -> int:
    """Writes args into this thread's slots for len(args) arguments; returns the address of the void*[]
    kernel_params that cuLaunchKernel takes. An argument of another type raises TypeError naming its
    position (earlier slots may have been written; nothing is launched)."""
    slots, params, _ = _THREAD.buffers.get(len(args)) or _THREAD.new_buffers(len(args))
    for position, arg in enumerate(args):
        try:
            slot_value = _SLOT_VALUE[type(arg)]
        except KeyError:
            slot_value = _slot_value_of_other(position, arg)
        slots[position] = arg if slot_value is None else slot_value(arg)
    return params


def _slot_value_of_other(position: int, arg):
    """A subclass of cupy.ndarray passes its pointer; anything else is a TypeError naming its position."""
    if isinstance(arg, cupy.ndarray):
        return _data_pointer
    kind = type(arg)
    raise TypeError(f"kernel argument {position} is a {kind.__module__}.{kind.__qualname__}; a launch takes "
                    f"cupy.ndarray, None (a null pointer), numpy integer scalars and numpy.float32 (a Python "
                    f"number has no fixed width: wrap it, e.g. numpy.int32(v))")


class DriverKernel:
    """A compiled kernel (a CuPy RawKernel, which compiles and loads it per device) launched through
    cuLaunchKernel; called as the RawKernel is: kernel(grid, block, args, shared_mem=0)."""

    __slots__ = ("raw_kernel", "_functions")

    def __init__(self, raw_kernel):
        self.raw_kernel = raw_kernel
        self._functions = {}  # device id -> CUfunction handle (the RawKernel keeps its module loaded)

    def __call__(self, grid, block, args, shared_mem=0):
        device = _get_device()
        if device not in _THREAD.devices:
            _THREAD.enter(device)
        function = self._functions.get(device) or self._load(device)
        stream = _current_stream(device).ptr
        gx, gy, gz = (*grid, 1, 1)[:3]
        bx, by, bz = (*block, 1, 1)[:3]
        params = pack_arguments(args)  # last: nothing between the slots' writing and the launch
        _launch_kernel(function, gx or 1, gy or 1, gz or 1, bx or 1, by or 1, bz or 1, shared_mem, stream, params, 0)

    def _load(self, device: int) -> int:
        self._functions[device] = self.raw_kernel.kernel.ptr  # compiled and loaded for the current device
        return self._functions[device]

    def __repr__(self):
        return f"DriverKernel({self.raw_kernel.name!r})"
