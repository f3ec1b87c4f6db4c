// Training-mode BatchNorm of bf16 channels_last CUDA batches with the ReLU, and a ResNet block's residual
// add, in the same pass: the batch statistics and the whole backward are ATen's (the kernels PyTorch runs),
// the forward transform is torchlearn's own kernel (native/cuda/bn_act.cu), which writes relu(BN(x) [+ z])
// in one pass where ATen makes three (transform, add, ReLU), each reading and writing the activation.
//
// Why: on the H100 at batch 256 (docs/bench/h100-run5-kernels.txt) BatchNorm, ReLU and the adds are 43 of
// the 68 ms of kernels of a ResNet50 step, all bound by memory bandwidth; the forward ReLU and add passes
// are about 5 ms of that. The kernels are built only against a CUDA LibTorch with nvcc at hand
// (CMakeLists.txt: TL_BN_KERNELS). NOT YET RUN ON A GPU: off by default (visionLearner's batchNorm: 'fused').
#pragma once
#include "common.h"

namespace tl {

// Whether this build has the kernels and this process has CUDA.
bool fusedBatchNormAvailable();

// relu(BatchNorm(x) [+ residual]) (relu optional without a residual), x bf16 channels_last on CUDA, fp32
// weight, bias and running statistics (updated in place, momentum as PyTorch's); differentiable in x,
// weight, bias and the residual. Throws UserError where the build or the shape does not allow it.
torch::Tensor fusedBatchNormTrain(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& runningMean,
                                  const torch::Tensor& runningVar, double momentum, double eps, bool relu, const torch::Tensor& residual);

}  // namespace tl
