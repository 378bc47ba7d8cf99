"""The CUDA backend's mechanics, below the ops (CuPy, NVRTC):

  loader.py         kernels/<family>.cu compiled once per process and define set, kernels handed out by name
  driver_launch.py  a compiled kernel launched through cuLaunchKernel from reused argument buffers
  grid.py           launch shapes from problem sizes; device.py the device's properties they depend on
  variants.py       the one type of a kernel variant, the registry per op, the record of verified variants
  autotune.py       the choice among an op's variants per shape, by timing, remembered on disk
  graph.py          CUDA-graph capture and replay of a step (streams, the graphs' memory pool)
  compile_check.py  NVRTC's per-kernel report (registers, spills) for the compile tests
"""
