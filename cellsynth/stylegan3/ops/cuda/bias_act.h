// cellsynth: parameters of the bias_act kernel (plain C++, no torch headers).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace cellsynth {

// Activation codes, in the order of bias_act.ACTIVATIONS on the Python side.
enum Act : int {
  kLinear = 0, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish, kNumActs
};

// mode 0: y = clamp(act(x + b) * gain)
// mode 1: y = g * act'(x + b) * gain * [|act(x + b) * gain| <= clamp]
// mode 2: y = g * act''(x + b) * gain * [|act(x + b) * gain| <= clamp]
struct BiasActParams {
  int64_t n;       // number of elements
  int64_t stride;  // bias index = (i / stride) % size
  int64_t size;
  int act, mode;
  float alpha, gain, clamp;  // clamp < 0: none
};

// x, g, y: contiguous, dtype code 0 = float32, 1 = float16 (g may be nullptr in mode 0);
// bias: float32 [size] or nullptr.
cudaError_t bias_act_launch(const BiasActParams& p, int dtype, const void* x, const void* g,
                            const float* bias, void* y, cudaStream_t stream);

}  // namespace cellsynth
