// PLACEHOLDER: softmax kernels are being written
#include "common.cuh"
