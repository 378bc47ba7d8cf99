// PLACEHOLDER: dropout kernels are being written
#include "common.cuh"
