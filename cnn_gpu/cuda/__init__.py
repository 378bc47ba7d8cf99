"""Loading the CUDA kernels in kernels/ and computing their launch shapes (CuPy, NVRTC)."""
