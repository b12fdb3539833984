// cellsynth: Python binding of the bias_act CUDA extension.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "bias_act.h"

namespace {

// y = bias_act kernel (see bias_act.h) for x and, in modes 1 and 2, the incoming gradient g.
at::Tensor bias_act(const at::Tensor& x, const c10::optional<at::Tensor>& g,
                    const c10::optional<at::Tensor>& b, int64_t stride, int64_t size, int64_t act,
                    int64_t mode, double alpha, double gain, double clamp) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous(), "x must be a contiguous CUDA tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf,
              "bias_act CUDA supports float32 and float16, got ", x.scalar_type());
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const void* gptr = nullptr;
  if (mode != 0) {
    TORCH_CHECK(g.has_value() && g->defined(), "modes 1 and 2 need the gradient g");
    TORCH_CHECK(g->sizes() == x.sizes() && g->scalar_type() == x.scalar_type() &&
                    g->is_contiguous() && g->device() == x.device(),
                "g must match x (shape, dtype, device) and be contiguous");
    gptr = g->data_ptr();
  }
  const float* bptr = nullptr;
  if (b.has_value() && b->defined()) {
    TORCH_CHECK(b->scalar_type() == at::kFloat && b->is_contiguous() && b->numel() == size &&
                    b->device() == x.device(),
                "bias must be a contiguous float32 tensor with ", size, " entries on x's device");
    bptr = b->data_ptr<float>();
  }
  TORCH_CHECK(stride >= 1 && size >= 1, "bad bias stride/size");
  at::Tensor y = at::empty_like(x);
  cellsynth::BiasActParams p;
  p.n = x.numel();
  p.stride = stride;
  p.size = size;
  p.act = (int)act;
  p.mode = (int)mode;
  p.alpha = (float)alpha;
  p.gain = (float)gain;
  p.clamp = (float)clamp;
  const int dtype = x.scalar_type() == at::kFloat ? 0 : 1;
  cudaError_t err = cellsynth::bias_act_launch(p, dtype, x.data_ptr(), gptr, bptr, y.data_ptr(),
                                               c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "bias_act kernel launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_act", &bias_act,
        "bias_act(x, g, b, stride, size, act, mode, alpha, gain, clamp) -> y");
}
