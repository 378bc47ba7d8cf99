// PLACEHOLDER: batchnorm kernels are being written
#include "common.cuh"
