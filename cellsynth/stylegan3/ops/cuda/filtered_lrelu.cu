// cellsynth: CUDA kernels of the filtered_lrelu extension: the upfirdn pass of
// upfirdn_kernel.cuh with its bias input and leaky-ReLU / sign-bit epilogues.
#include "upfirdn_kernel.cuh"
