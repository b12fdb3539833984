// cellsynth: float32 loads and stores of float or half storage, shared by the bias_act and
// upfirdn kernels (each extension compiles its own copy).
#pragma once

#include <cuda_fp16.h>

namespace cellsynth {
namespace {

__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(__half* p, float v) { *p = __float2half_rn(v); }

}  // namespace
}  // namespace cellsynth
