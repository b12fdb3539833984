// cellsynth: CUDA kernels of the upfirdn2d extension (see upfirdn_kernel.cuh).
#include "upfirdn_kernel.cuh"
