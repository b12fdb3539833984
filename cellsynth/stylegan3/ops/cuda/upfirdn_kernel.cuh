// cellsynth: one upfirdn pass (zero insertion, padding, FIR, decimation) as a CUDA kernel, with
// optional bias on the input and a leaky-ReLU / sign-bit epilogue for filtered_lrelu.
// Included by upfirdn2d.cu and filtered_lrelu.cu (each extension gets its own copy).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "device_io.cuh"
#include "upfirdn_common.h"

namespace cellsynth {
namespace {

// floor(a / b) and ceil(a / b) for b > 0 and any sign of a.
__device__ __forceinline__ int floor_div(int a, int b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}
__device__ __forceinline__ int ceil_div(int a, int b) { return -floor_div(-a, b); }

// Each thread computes output elements e = base + threadIdx.x for a block-uniform base, so
// every warp walks the same 32 consecutive elements together (needed by the sign ballots).
template <typename Tin, typename Tout>
__global__ void upfirdn_kernel(UpfirdnParams p, const Tin* __restrict__ x,
                               const float* __restrict__ f, const float* __restrict__ bias,
                               Tout* __restrict__ y, uint32_t* __restrict__ signs,
                               int64_t total) {
  extern __shared__ float taps[];  // correlation taps g[ky * fw + kx]
  const int ntaps = p.fh * p.fw;
  for (int i = threadIdx.x; i < ntaps; i += blockDim.x) {
    const int ky = i / p.fw;
    const int kx = i - ky * p.fw;
    taps[i] = p.flip ? f[i] : f[(p.fh - 1 - ky) * p.fw + (p.fw - 1 - kx)];
  }
  __syncthreads();

  const int64_t in_plane = (int64_t)p.in_h * p.in_w;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t base = (int64_t)blockIdx.x * blockDim.x; base < total; base += step) {
    const int64_t e = base + threadIdx.x;
    const bool valid = e < total;
    float v = 0.f;
    if (valid) {
      const int ox = (int)(e % p.out_w);
      const int64_t t = e / p.out_w;
      const int oy = (int)(t % p.out_h);
      const int64_t plane = t / p.out_h;
      // Input samples that meet a tap: k = i * up - (o * down - p0) in [0, taps).
      const int bx = ox * p.downx - p.px0;
      const int by = oy * p.downy - p.py0;
      const int ix0 = max(ceil_div(bx, p.upx), 0);
      const int ix1 = min(floor_div(bx + p.fw - 1, p.upx), p.in_w - 1);
      const int iy0 = max(ceil_div(by, p.upy), 0);
      const int iy1 = min(floor_div(by + p.fh - 1, p.upy), p.in_h - 1);
      const Tin* xp = x + plane * in_plane;
      const float b = bias != nullptr ? bias[plane % p.channels] : 0.f;
      float acc = 0.f;
      for (int iy = iy0; iy <= iy1; ++iy) {
        const float* trow = taps + (iy * p.upy - by) * p.fw;
        const Tin* xrow = xp + (int64_t)iy * p.in_w;
        for (int ix = ix0; ix <= ix1; ++ix) {
          acc += (load_f(xrow + ix) + b) * trow[ix * p.upx - bx];
        }
      }
      v = acc * p.scale;
    }
    if (p.epilogue == kLreluSigns) {
      bool neg = false;
      bool clamped = false;
      if (valid) {
        neg = !(v > 0.f);
        v = (neg ? v * p.slope : v) * p.gain;
        if (p.clamp >= 0.f && (v > p.clamp || v < -p.clamp)) {
          clamped = true;
          v = v > p.clamp ? p.clamp : -p.clamp;
        }
      }
      const unsigned nbits = __ballot_sync(0xffffffffu, neg);
      const unsigned cbits = __ballot_sync(0xffffffffu, clamped);
      if ((threadIdx.x & 31) == 0 && valid) {
        const int64_t w = e >> 5;
        signs[2 * w] = nbits;
        signs[2 * w + 1] = cbits;
      }
    } else if (p.epilogue == kSignsGrad && valid) {
      const int64_t w = e >> 5;
      const int bit = (int)(e & 31);
      const uint32_t nbits = signs[2 * w];
      const uint32_t cbits = signs[2 * w + 1];
      const float factor = ((cbits >> bit) & 1u) ? 0.f
                           : ((nbits >> bit) & 1u) ? p.slope * p.gain
                                                   : p.gain;
      v *= factor;
    }
    if (valid) store_f(y + e, v);
  }
}

template <typename Tin, typename Tout>
cudaError_t launch_typed(const UpfirdnParams& p, const void* x, const float* f,
                         const float* bias, void* y, uint32_t* signs, cudaStream_t stream) {
  const int64_t total = p.nc * p.out_h * p.out_w;
  if (total == 0) return cudaSuccess;
  const int threads = 256;  // a multiple of 32 (sign ballots)
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 1 << 16);
  const size_t smem = sizeof(float) * p.fh * p.fw;
  upfirdn_kernel<Tin, Tout><<<(unsigned)blocks, threads, smem, stream>>>(
      p, static_cast<const Tin*>(x), f, bias, static_cast<Tout*>(y), signs, total);
  return cudaGetLastError();
}

}  // namespace

cudaError_t upfirdn_launch(const UpfirdnParams& p, int in_dtype, int out_dtype, const void* x,
                           const float* f, const float* bias, void* y, uint32_t* signs,
                           cudaStream_t stream) {
  if (p.fh * p.fw > kMaxFilterTaps) return cudaErrorInvalidValue;
  if (in_dtype == kFloat32 && out_dtype == kFloat32)
    return launch_typed<float, float>(p, x, f, bias, y, signs, stream);
  if (in_dtype == kFloat16 && out_dtype == kFloat16)
    return launch_typed<__half, __half>(p, x, f, bias, y, signs, stream);
  if (in_dtype == kFloat16 && out_dtype == kFloat32)
    return launch_typed<__half, float>(p, x, f, bias, y, signs, stream);
  if (in_dtype == kFloat32 && out_dtype == kFloat16)
    return launch_typed<float, __half>(p, x, f, bias, y, signs, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cellsynth
