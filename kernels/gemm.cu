// PLACEHOLDER: gemm kernels are being written
#include "common.cuh"
