// torchlearn's own CUDA kernels for training-mode BatchNorm of bf16 channels_last batches, fused with what
// follows it in a ResNet block: y = relu(x * scale + shift [+ residual]). Plain CUDA with a C++ interface of
// raw pointers, so that nvcc compiles bn_act.cu without LibTorch's headers (CMakeLists.txt builds it only
// against a CUDA LibTorch with nvcc at hand; native/batchnorm_fused.cpp is the autograd side).
#pragma once
#include <cstdint>

namespace tl::kernels {

// Per channel, from the batch statistics (ATen's batch_norm_stats: mean, 1/sqrt(var + eps)): the affine
// transform's scale = weight * invstd and shift = bias - mean * scale, and, when runningMean is not null, the
// running statistics updated as BatchNorm2d does (momentum, unbiased variance of `count` values per channel).
// All fp32, on the device; one launch on `stream` (a cudaStream_t). Returns the launch's cudaError_t (0: none).
int bnPrepare(const float* mean, const float* invstd, const float* weight, const float* bias, float* scale, float* shift,
               float* runningMean, float* runningVar, int channels, double momentum, double eps, double count, void* stream);

// y = x * scale[c] + shift[c] (+ residual), then max(0, .) when relu; x, residual and y bf16 (raw 16-bit) in
// channels_last order, `rows` = N*H*W rows of `channels` values. Needs channels % 8 == 0 and 2048 % channels
// == 0 (ResNet's 64..2048) and 16-byte aligned pointers: bnActSupported says whether a shape qualifies.
// Returns the launch's cudaError_t (0: none).
bool bnActSupported(int channels, const void* x, const void* residual, const void* y);
int bnActForward(const uint16_t* x, const uint16_t* residual, uint16_t* y, const float* scale, const float* shift, int64_t rows,
                  int channels, bool relu, void* stream);

// The same two computations on host memory, each kernel's threads run one after another on the CPU with the
// grid the launch would have: for checking the kernels on a machine without a GPU.
void bnPrepareEmulated(const float* mean, const float* invstd, const float* weight, const float* bias, float* scale, float* shift,
                       float* runningMean, float* runningVar, int channels, double momentum, double eps, double count);
void bnActForwardEmulated(const uint16_t* x, const uint16_t* residual, uint16_t* y, const float* scale, const float* shift, int64_t rows,
                          int channels, bool relu);

}  // namespace tl::kernels
