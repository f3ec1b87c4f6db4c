// Training-mode BatchNorm of bf16 channels_last CUDA batches with the ReLU, and a ResNet block's residual
// add, in the same passes, on torchlearn's own kernels (native/cuda/bn_act.cu). Two depths:
// - the forward transform alone ('fused'): ATen's batch statistics and backward (the kernels PyTorch runs),
//   and one kernel writing relu(BN(x) [+ z]) where ATen makes three passes (transform, add, ReLU);
// - everything ('fused-full'): also the statistics (float sums per thread and block, double per channel)
//   and the backward, which reads the ReLU's mask from its output in the same passes as dy and x, instead
//   of ATen's ReLU backward as a pass of its own.
//
// Why: BatchNorm, ReLU and the residual adds are most of a ResNet50 step's kernel time on a GPU, all bound by
// memory bandwidth, and ATen's BatchNorm kernels use about half the card's bandwidth; every pass saved is
// time saved (the kernel tables: docs/performance.md). The kernels are built only against a CUDA LibTorch with
// nvcc at hand (CMakeLists.txt: TL_BN_KERNELS); here they are checked emulated on the CPU
// (test/cuda-syntax.test.ts). 'fused' is the default on CUDA: it matched ATen's losses and running statistics
// on the GPU and was the fastest checked variant; the others are bench and test settings (src/hooks.ts).
#pragma once
#include "common.h"

namespace tl {

// Whether this build has the kernels and this process has CUDA.
bool fusedBatchNormAvailable();

// relu(BatchNorm(x) [+ residual]) (relu optional without a residual), x bf16 channels_last on CUDA, fp32
// weight, bias and running statistics (updated in place, momentum as PyTorch's); differentiable in x,
// weight, bias and the residual; `full`: our statistics and backward too. Throws UserError where the build or
// the channel count does not allow it. The caller (resnet.cpp's trainBatchNorm) has checked types and shapes.
torch::Tensor fusedBatchNormTrain(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& runningMean,
                                  const torch::Tensor& runningVar, double momentum, double eps, bool relu, const torch::Tensor& residual, bool full);

}  // namespace tl
