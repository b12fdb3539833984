// cellsynth: host side of the upfirdn passes (tensor checks, output sizes, separable passes).
// Header-only; included by upfirdn2d.cpp and filtered_lrelu.cpp.
#pragma once

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cstdint>

#include "upfirdn_common.h"

namespace cellsynth {

inline int dtype_code(at::ScalarType t) {
  if (t == at::kFloat) return kFloat32;
  if (t == at::kHalf) return kFloat16;
  TORCH_CHECK(false, "cellsynth CUDA ops support float32 and float16 tensors, got ", t);
  return -1;
}

inline void check_cuda_tensor(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), what, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), what, " must be contiguous");
}

// Epilogue settings for a pass (kPlain by default).
struct EpilogueArgs {
  int kind = kPlain;
  float gain = 1.f, slope = 0.f, clamp = -1.f;
  at::Tensor* signs = nullptr;  // written for kLreluSigns (allocated here), read for kSignsGrad
};

// One 2-D pass: x [N, C, H, W] (float32/float16), f float32 contiguous holding fh * fw taps.
inline at::Tensor upfirdn_pass(const at::Tensor& x, const at::Tensor& f, int fh, int fw, int upx,
                               int upy, int downx, int downy, int px0, int px1, int py0, int py1,
                               bool flip, float scale, at::ScalarType out_type,
                               const at::Tensor* bias, const EpilogueArgs& ep) {
  TORCH_CHECK(x.dim() == 4, "x must be [N, C, H, W]");
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "up/down must be >= 1");
  TORCH_CHECK(fh * fw <= kMaxFilterTaps, "filter has ", fh * fw, " taps; at most ",
              kMaxFilterTaps, " are supported");
  const int64_t n = x.size(0), c = x.size(1);
  const int h = (int)x.size(2), w = (int)x.size(3);
  const int64_t num_h = (int64_t)h * upy + py0 + py1 - fh;
  const int64_t num_w = (int64_t)w * upx + px0 + px1 - fw;
  TORCH_CHECK(num_h >= 0 && num_w >= 0, "upfirdn2d output would be empty");
  const int out_h = (int)(num_h / downy + 1);
  const int out_w = (int)(num_w / downx + 1);
  at::Tensor y = at::empty({n, c, out_h, out_w}, x.options().dtype(out_type));

  UpfirdnParams p;
  p.nc = n * c;
  p.channels = (int)c;
  p.in_h = h;
  p.in_w = w;
  p.out_h = out_h;
  p.out_w = out_w;
  p.upx = upx;
  p.upy = upy;
  p.downx = downx;
  p.downy = downy;
  p.px0 = px0;
  p.py0 = py0;
  p.fw = fw;
  p.fh = fh;
  p.flip = flip ? 1 : 0;
  p.scale = scale;
  p.epilogue = ep.kind;
  p.gain = ep.gain;
  p.slope = ep.slope;
  p.clamp = ep.clamp;

  const int64_t total = p.nc * out_h * out_w;
  uint32_t* signs = nullptr;
  if (ep.kind == kLreluSigns) {
    *ep.signs = at::empty({2 * ((total + 31) / 32)}, x.options().dtype(at::kInt));
    signs = reinterpret_cast<uint32_t*>(ep.signs->data_ptr<int32_t>());
  } else if (ep.kind == kSignsGrad) {
    TORCH_CHECK(ep.signs->scalar_type() == at::kInt && ep.signs->is_contiguous() &&
                    ep.signs->numel() == 2 * ((total + 31) / 32),
                "sign tensor does not match the upsampled size");
    signs = reinterpret_cast<uint32_t*>(ep.signs->data_ptr<int32_t>());
  }
  const float* bptr = nullptr;
  if (bias != nullptr) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == c, "bias must be float32 [C]");
    bptr = bias->data_ptr<float>();
  }
  cudaError_t err = upfirdn_launch(p, dtype_code(x.scalar_type()), dtype_code(out_type),
                                   x.data_ptr(), f.data_ptr<float>(), bptr, y.data_ptr(), signs,
                                   c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "upfirdn kernel launch failed: ", cudaGetErrorString(err));
  return y;
}

// Full upfirdn2d: f is 2-D [fh, fw] (one pass) or 1-D [k] (separable: a pass along x into a
// float32 temporary, then a pass along y). The bias goes into the first pass, the epilogue into
// the last; ``gain`` scales the result once.
inline at::Tensor upfirdn2d_any(const at::Tensor& x, const at::Tensor& f, int upx, int upy,
                                int downx, int downy, int px0, int px1, int py0, int py1,
                                bool flip, float gain, at::ScalarType out_type,
                                const at::Tensor* bias, const EpilogueArgs& ep) {
  check_cuda_tensor(x, "x");
  check_cuda_tensor(f, "filter");
  TORCH_CHECK(f.scalar_type() == at::kFloat, "filter must be float32");
  TORCH_CHECK(f.device() == x.device(), "filter must be on the device of x");
  TORCH_CHECK(f.dim() == 1 || f.dim() == 2, "filter must be 1-D or 2-D");
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  if (f.dim() == 2) {
    return upfirdn_pass(x, f, (int)f.size(0), (int)f.size(1), upx, upy, downx, downy, px0, px1,
                        py0, py1, flip, gain, out_type, bias, ep);
  }
  const int k = (int)f.size(0);
  at::Tensor t = upfirdn_pass(x, f, 1, k, upx, 1, downx, 1, px0, px1, 0, 0, flip, 1.f, at::kFloat,
                              bias, EpilogueArgs());
  return upfirdn_pass(t, f, k, 1, 1, upy, 1, downy, 0, 0, py0, py1, flip, gain, out_type, nullptr,
                      ep);
}

}  // namespace cellsynth
