// cellsynth: CUDA kernel of the bias_act extension (bias, activation, gain, clamp and the first
// and second derivatives that the double backward of R1 needs).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "bias_act.h"
#include "device_io.cuh"

namespace cellsynth {
namespace {

__device__ __forceinline__ float sigmoid_f(float z) { return 1.f / (1.f + expf(-z)); }

// Value a, first derivative d1 and second derivative d2 of activation ``act`` at z.
// Derivatives at kinks follow PyTorch's autograd (relu/lrelu: the left side at z == 0).
__device__ __forceinline__ void activation(int act, float z, float alpha, float& a, float& d1,
                                           float& d2) {
  const float selu_scale = 1.0507009873554804934193349852946f;
  const float selu_alpha = 1.6732632423543772848170429916717f;
  switch (act) {
    case kRelu:
      a = z > 0.f ? z : 0.f;
      d1 = z > 0.f ? 1.f : 0.f;
      d2 = 0.f;
      break;
    case kLrelu:
      a = z > 0.f ? z : z * alpha;
      d1 = z > 0.f ? 1.f : alpha;
      d2 = 0.f;
      break;
    case kTanh: {
      const float t = tanhf(z);
      a = t;
      d1 = 1.f - t * t;
      d2 = -2.f * t * d1;
      break;
    }
    case kSigmoid: {
      const float s = sigmoid_f(z);
      a = s;
      d1 = s * (1.f - s);
      d2 = d1 * (1.f - 2.f * s);
      break;
    }
    case kElu: {
      const float ez = expf(fminf(z, 0.f));
      a = z > 0.f ? z : expm1f(z);
      d1 = z > 0.f ? 1.f : ez;
      d2 = z > 0.f ? 0.f : ez;
      break;
    }
    case kSelu: {
      const float ez = selu_scale * selu_alpha * expf(fminf(z, 0.f));
      a = z > 0.f ? selu_scale * z : selu_scale * selu_alpha * expm1f(z);
      d1 = z > 0.f ? selu_scale : ez;
      d2 = z > 0.f ? 0.f : ez;
      break;
    }
    case kSoftplus: {
      // PyTorch's softplus (beta 1, threshold 20): linear above the threshold.
      const float s = sigmoid_f(z);
      a = z > 20.f ? z : log1pf(expf(z));
      d1 = z > 20.f ? 1.f : s;
      d2 = z > 20.f ? 0.f : s * (1.f - s);
      break;
    }
    case kSwish: {
      const float s = sigmoid_f(z);
      a = z * s;
      d1 = s * (1.f + z * (1.f - s));
      d2 = s * (1.f - s) * (2.f + z * (1.f - 2.f * s));
      break;
    }
    default:  // kLinear
      a = z;
      d1 = 1.f;
      d2 = 0.f;
      break;
  }
}

template <typename T>
__global__ void bias_act_kernel(BiasActParams p, const T* __restrict__ x,
                                const T* __restrict__ g, const float* __restrict__ bias,
                                T* __restrict__ y) {
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += step) {
    float z = load_f(x + i);
    if (bias != nullptr) z += bias[(i / p.stride) % p.size];
    float a, d1, d2;
    activation(p.act, z, p.alpha, a, d1, d2);
    a *= p.gain;
    float out;
    if (p.mode == 0) {
      out = p.clamp >= 0.f ? fminf(fmaxf(a, -p.clamp), p.clamp) : a;
    } else {
      const bool pass = !(p.clamp >= 0.f) || (a >= -p.clamp && a <= p.clamp);
      out = pass ? load_f(g + i) * (p.mode == 1 ? d1 : d2) * p.gain : 0.f;
    }
    store_f(y + i, out);
  }
}

template <typename T>
cudaError_t launch_typed(const BiasActParams& p, const void* x, const void* g, const float* bias,
                         void* y, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((p.n + threads - 1) / threads, 1 << 16);
  bias_act_kernel<T><<<(unsigned)blocks, threads, 0, stream>>>(
      p, static_cast<const T*>(x), static_cast<const T*>(g), bias, static_cast<T*>(y));
  return cudaGetLastError();
}

}  // namespace

cudaError_t bias_act_launch(const BiasActParams& p, int dtype, const void* x, const void* g,
                            const float* bias, void* y, cudaStream_t stream) {
  if (p.act < 0 || p.act >= kNumActs || p.mode < 0 || p.mode > 2) return cudaErrorInvalidValue;
  if (p.mode != 0 && g == nullptr) return cudaErrorInvalidValue;
  if (dtype == 0) return launch_typed<float>(p, x, g, bias, y, stream);
  if (dtype == 1) return launch_typed<__half>(p, x, g, bias, y, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cellsynth
