// cuDNN's BatchNorm for bf16 channels_last training batches, called through cuDNN's own C API, alone or
// with the ReLU (and the residual add) that follow it in a ResNet fused into the same call.
//
// Why: under bf16 autocast ATen never hands a BatchNorm to cuDNN (its cudnn_batch_norm wants weights of the
// input's type; only fp16 inputs may have fp32 weights), so PyTorch and torchlearn both run ATen's
// channels_last kernels, a large share of a ResNet50 step's kernel time, and cuDNN's BatchNorm does the same
// shapes faster (figures: docs/performance.md; scripts/bench/batchnorm_kernels.py and
// cudnn_batchnorm_bf16.py measure them on the GPU machine).
//
// The entry points are looked up in the cuDNN library LibTorch loaded (dlopen of its soname, dlsym), so no
// cuDNN header or link flag is needed and the CPU build compiles the same file. The default for bf16 CUDA
// training (resnet.h, TrainBn): per layer, forward and backward, it is at least as near float64 as ATen's
// kernels (the hook batchNormCheck, in the CUDA test); speed in docs/performance.md.
#pragma once
#include "common.h"

namespace tl {

// Whether this process can use it: a CUDA build whose loaded cuDNN has the entry points.
bool cudnnBatchNormAvailable();

// What follows the BatchNorm inside the same cuDNN call: nothing, a ReLU, or the residual added and then
// a ReLU (cuDNN's BN_ACTIVATION and BN_ADD_ACTIVATION ops: the two passes of ResNet's ReLU, and its
// residual add, folded into the BatchNorm's, forward and backward).
enum class BnFused { None = 0, Relu = 1, AddRelu = 2 };

// Training-mode BatchNorm of x (bf16, channels_last, on CUDA) with fp32 weight, bias and running statistics,
// then what `fused` says (residual: bf16, x's shape, for AddRelu): the running statistics are updated in
// place (momentum as PyTorch's), and the result is differentiable in x, weight, bias and the residual
// (cuDNN's backward). Throws UserError with cuDNN's status when cuDNN refuses. The caller (resnet.cpp's
// trainBatchNorm) has checked the types and shapes.
torch::Tensor cudnnBatchNormTrain(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                  const torch::Tensor& runningMean, const torch::Tensor& runningVar, double momentum, double eps,
                                  BnFused fused = BnFused::None, const torch::Tensor& residual = torch::Tensor());

}  // namespace tl
