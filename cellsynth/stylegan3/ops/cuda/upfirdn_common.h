// cellsynth: parameters shared by the upfirdn2d / filtered_lrelu kernels and their host code.
// Plain C++ (no torch headers) so that the .cu files compile quickly.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace cellsynth {

// Element types the kernels read and write (the accumulator is always float).
enum DType : int { kFloat32 = 0, kFloat16 = 1 };

// What the kernel does with each accumulated output value.
enum Epilogue : int {
  kPlain = 0,      // y = acc * scale
  kLreluSigns = 1, // y = clamp(lrelu(acc * scale) * gain); store 2 sign bits per element
  kSignsGrad = 2,  // y = acc * scale * (clamped ? 0 : negative ? slope * gain : gain)
};

// One upfirdn pass over a contiguous [NC, H, W] input giving a contiguous [NC, Ho, Wo] output.
// Output (oy, ox) = sum over input (iy, ix) of x[iy, ix] * g[iy * upy + py0 - oy * downy]
//                                                         [ix * upx + px0 - ox * downx]
// where g holds the correlation taps: g = f when flip, g = f reversed otherwise.
struct UpfirdnParams {
  int64_t nc;  // batch * channels
  int channels;  // C (bias index = plane % C)
  int in_h, in_w, out_h, out_w;
  int upx, upy, downx, downy;
  int px0, py0;  // leading padding (negative crops)
  int fw, fh;    // filter size (a 1-D pass uses fh == 1 or fw == 1)
  int flip;      // 1: f is already the correlation (flip_filter=True)
  float scale;   // multiplies the accumulated sum
  int epilogue;  // Epilogue
  float gain, slope, clamp;  // epilogue constants (clamp < 0: none)
};

// Launch one pass. x: in_dtype [nc, in_h, in_w]; f: float32 [fh, fw]; bias: float32 [channels]
// added to every input sample read (nullptr: none); y: out_dtype [nc, out_h, out_w];
// signs: uint32 [2 * ceil(nc*out_h*out_w / 32)] written (kLreluSigns) or read (kSignsGrad).
// Returns the CUDA error of the launch.
cudaError_t upfirdn_launch(const UpfirdnParams& p, int in_dtype, int out_dtype, const void* x,
                           const float* f, const float* bias, void* y, uint32_t* signs,
                           cudaStream_t stream);

// Largest filter (fh * fw taps) a pass accepts (taps live in shared memory).
constexpr int kMaxFilterTaps = 8192;

}  // namespace cellsynth
