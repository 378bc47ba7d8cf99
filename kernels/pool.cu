// PLACEHOLDER: pool kernels are being written
#include "common.cuh"
