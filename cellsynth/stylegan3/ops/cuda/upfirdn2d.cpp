// cellsynth: Python binding of the upfirdn2d CUDA extension.
#include "upfirdn_host.h"

namespace {

at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy,
                     int64_t downx, int64_t downy, int64_t px0, int64_t px1, int64_t py0,
                     int64_t py1, bool flip, double gain) {
  return cellsynth::upfirdn2d_any(x, f, (int)upx, (int)upy, (int)downx, (int)downy, (int)px0,
                                  (int)px1, (int)py0, (int)py1, flip, (float)gain,
                                  x.scalar_type(), nullptr, cellsynth::EpilogueArgs());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d,
        "upfirdn2d(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain) -> y");
}
