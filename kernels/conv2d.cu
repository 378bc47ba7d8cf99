// PLACEHOLDER: conv2d kernels are being written
#include "common.cuh"
