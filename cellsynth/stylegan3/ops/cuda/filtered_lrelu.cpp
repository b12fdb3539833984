// cellsynth: Python binding of the filtered_lrelu CUDA extension.
// Forward: pass(es) 1 = bias + upsample + FIR fu + leaky ReLU + gain + clamp, writing 2 bits per
// upsampled sample (negative, clamped) into ``signs``; pass(es) 2 = FIR fd + downsample.
// Backward: the adjoint of pass 2 with the sign factors applied in its epilogue, then the
// adjoint of pass 1. Only the sign bits are kept between forward and backward.
#include "upfirdn_host.h"

#include <vector>

namespace {

using cellsynth::EpilogueArgs;

int taps_h(const at::Tensor& f) { return (int)f.size(0); }
int taps_w(const at::Tensor& f) { return (int)f.size(f.dim() - 1); }

std::vector<at::Tensor> forward(const at::Tensor& x, const at::Tensor& fu, const at::Tensor& fd,
                                const c10::optional<at::Tensor>& b, int64_t up, int64_t down,
                                int64_t px0, int64_t px1, int64_t py0, int64_t py1, double gain,
                                double slope, double clamp, bool flip) {
  at::Tensor signs;
  EpilogueArgs ep;
  ep.kind = cellsynth::kLreluSigns;
  ep.gain = (float)gain;
  ep.slope = (float)slope;
  ep.clamp = (float)clamp;
  ep.signs = &signs;
  const at::Tensor* bias = b.has_value() && b->defined() ? &b.value() : nullptr;
  at::Tensor t = cellsynth::upfirdn2d_any(x, fu, (int)up, (int)up, 1, 1, (int)px0, (int)px1,
                                          (int)py0, (int)py1, flip, (float)(up * up), at::kFloat,
                                          bias, ep);
  at::Tensor y = cellsynth::upfirdn2d_any(t, fd, 1, 1, (int)down, (int)down, 0, 0, 0, 0, flip,
                                          1.f, x.scalar_type(), nullptr, EpilogueArgs());
  return {y, signs};
}

at::Tensor backward(const at::Tensor& dy, const at::Tensor& fu, const at::Tensor& fd,
                    const at::Tensor& signs, int64_t in_h, int64_t in_w, int64_t up, int64_t down,
                    int64_t px0, int64_t px1, int64_t py0, int64_t py1, double gain, double slope,
                    bool flip) {
  const int64_t mid_h = in_h * up + py0 + py1 - taps_h(fu) + 1;
  const int64_t mid_w = in_w * up + px0 + px1 - taps_w(fu) + 1;
  const int64_t out_h = dy.size(2), out_w = dy.size(3);
  TORCH_CHECK(out_h == (mid_h - taps_h(fd)) / down + 1 && out_w == (mid_w - taps_w(fd)) / down + 1,
              "filtered_lrelu backward: gradient has the wrong size");
  // Adjoint of pass 2 (up = down, padding (k - 1, mid - out * down)) with the sign factors.
  EpilogueArgs ep;
  ep.kind = cellsynth::kSignsGrad;
  ep.gain = (float)gain;
  ep.slope = (float)slope;
  ep.signs = const_cast<at::Tensor*>(&signs);
  at::Tensor g = cellsynth::upfirdn2d_any(
      dy, fd, (int)down, (int)down, 1, 1, taps_w(fd) - 1, (int)(mid_w - out_w * down),
      taps_h(fd) - 1, (int)(mid_h - out_h * down), !flip, 1.f, at::kFloat, nullptr, ep);
  // Adjoint of pass 1 (down = up, padding (k - 1 - p0, in * up - mid + p0 - up + 1)).
  at::Tensor dx = cellsynth::upfirdn2d_any(
      g, fu, 1, 1, (int)up, (int)up, taps_w(fu) - 1 - (int)px0,
      (int)(in_w * up - mid_w + px0 - up + 1), taps_h(fu) - 1 - (int)py0,
      (int)(in_h * up - mid_h + py0 - up + 1), !flip, (float)(up * up), dy.scalar_type(), nullptr,
      EpilogueArgs());
  TORCH_CHECK(dx.size(2) == in_h && dx.size(3) == in_w,
              "filtered_lrelu backward: internal size mismatch");
  return dx;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward,
        "forward(x, fu, fd, b, up, down, px0, px1, py0, py1, gain, slope, clamp, flip)"
        " -> [y, signs]");
  m.def("backward", &backward,
        "backward(dy, fu, fd, signs, in_h, in_w, up, down, px0, px1, py0, py1, gain, slope,"
        " flip) -> dx");
}
