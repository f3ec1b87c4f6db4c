// torchlearn's own CUDA kernels for training-mode BatchNorm of bf16 channels_last batches, fused with what
// follows it in a ResNet block: y = relu(BatchNorm(x) [+ residual]), forward and backward. Plain CUDA with a
// C++ interface of raw pointers, so that nvcc compiles bn_act.cu without LibTorch's headers (CMakeLists.txt
// builds it only against a CUDA LibTorch with nvcc at hand; native/batchnorm_fused.cpp is the autograd side).
//
// x, y, residual and the gradients are bf16 (raw 16-bit values) in channels_last order: `rows` = N*H*W rows
// of `channels` values; weight, bias, statistics fp32; all on the device. Each function launches its kernels
// on `stream` (a cudaStream_t) and returns the first launch's cudaError_t (0: none); with `emulate`, it runs
// the same kernels' threads one after another on the CPU instead, with the grid a launch would use, on host
// memory (the tests' check of a machine without a GPU). bnSupported says whether a shape and the pointers
// qualify: channels % 8 == 0 and 2048 % channels == 0 (ResNet's 64..2048), 16-byte aligned tensors.
#pragma once
#include <cstdint>

namespace tl::kernels {

bool bnSupported(int channels, std::initializer_list<const void*> tensors);

// --- Forward transform from given statistics (the 'fused' mode: ATen's batch_norm_stats before it) ---
// Per channel, from mean and invstd = 1/sqrt(var + eps): scale = weight * invstd, shift = bias - mean * scale
// and, when runningMean is not null, the running statistics updated as BatchNorm2d does (momentum, unbiased
// variance of `rows` values per channel).
int bnPrepare(const float* mean, const float* invstd, const float* weight, const float* bias, float* scale, float* shift,
              float* runningMean, float* runningVar, int channels, double momentum, double eps, int64_t rows, void* stream, bool emulate);
// y = x * scale[c] + shift[c] (+ residual, added to the bf16-rounded BatchNorm output as ATen's add is), then
// max(0, .) when relu.
int bnActForward(const uint16_t* x, const uint16_t* residual, uint16_t* y, const float* scale, const float* shift, int64_t rows, int channels,
                 bool relu, void* stream, bool emulate);

// --- The whole BatchNorm (the 'fused-full' mode): statistics, forward and backward ---
// Floats of scratch memory a reduction over this shape needs (per-block partial sums).
int64_t bnScratchFloats(int64_t rows, int channels);
// Batch statistics of x (saveMean, saveInvstd: what the backward needs), the running statistics updated,
// scale and shift for bnActForward. Two launches (partial sums per block, then per channel).
int bnStats(const uint16_t* x, int64_t rows, int channels, const float* weight, const float* bias, float* runningMean, float* runningVar,
            double momentum, double eps, float* scratch, float* saveMean, float* saveInvstd, float* scale, float* shift, void* stream, bool emulate);
// Gradients of y = relu(BatchNorm(x) [+ z]) (relu: y given, the mask y > 0; else y null): dx, dz (the residual's,
// when dz is not null: the masked dy), gradWeight, gradBias; coef: 3 * channels floats of scratch. Three
// launches (partial sums, per channel, elementwise).
int bnBackward(const uint16_t* dy, const uint16_t* y, const uint16_t* x, int64_t rows, int channels, const float* weight, const float* saveMean,
               const float* saveInvstd, float* scratch, float* coef, float* gradWeight, float* gradBias, uint16_t* dx, uint16_t* dz, void* stream,
               bool emulate);

}  // namespace tl::kernels
