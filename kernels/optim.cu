// PLACEHOLDER: optim kernels are being written
#include "common.cuh"
