// See bn_act.h. Both kernels are bound by memory bandwidth: the forward one reads x (and the residual) and
// writes y once, 16 bytes (8 channels) per thread and iteration, where ATen runs its BatchNorm transform, then
// the residual add, then the ReLU, each a full pass over the activation.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "bn_act.h"

namespace tl::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // bf16 values per 16-byte load

__global__ void bnPrepareKernel(const float* __restrict__ mean, const float* __restrict__ invstd, const float* __restrict__ weight,
                                const float* __restrict__ bias, float* __restrict__ scale, float* __restrict__ shift, float* runningMean,
                                float* runningVar, int channels, float momentum, float eps, float unbias) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  const float s = weight[c] * invstd[c];
  scale[c] = s;
  shift[c] = bias[c] - mean[c] * s;
  if (runningMean) {
    // invstd = 1 / sqrt(var + eps), var the biased variance (ATen's batch_norm_stats)
    const float var = 1.0f / (invstd[c] * invstd[c]) - eps;
    runningMean[c] = (1.0f - momentum) * runningMean[c] + momentum * mean[c];
    runningVar[c] = (1.0f - momentum) * runningVar[c] + momentum * var * unbias;
  }
}

// Thread t handles the 8-channel vectors t, t + stride, ... of the [rows, channels] matrix; the stride
// (threads in the grid) is a multiple of channels / 8, so each thread keeps one group of 8 channels, and its
// scale and shift stay in registers.
template <bool kAdd, bool kRelu>
__global__ void __launch_bounds__(kThreads) bnActKernel(const uint4* __restrict__ x, const uint4* __restrict__ residual, uint4* __restrict__ y,
                                                        const float* __restrict__ scale, const float* __restrict__ shift, int64_t vectors,
                                                        int vecPerRow) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int c0 = static_cast<int>(first % vecPerRow) * kVec;
  float a[kVec], b[kVec];
#pragma unroll
  for (int k = 0; k < kVec; k++) {
    a[k] = scale[c0 + k];
    b[k] = shift[c0 + k];
  }
  for (int64_t v = first; v < vectors; v += stride) {
    uint4 xv = x[v];
    uint4 zv;
    if (kAdd) zv = residual[v];
    const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&xv);
    const __nv_bfloat162* zp = reinterpret_cast<const __nv_bfloat162*>(&zv);
    uint4 out;
    __nv_bfloat162* op = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
    for (int k = 0; k < kVec / 2; k++) {
      float2 f = __bfloat1622float2(xp[k]);
      f.x = f.x * a[2 * k] + b[2 * k];
      f.y = f.y * a[2 * k + 1] + b[2 * k + 1];
      if (kAdd) {
        // the residual is added to the rounded BatchNorm output, as ATen's separate add does
        float2 bn = __bfloat1622float2(__float22bfloat162_rn(f));
        const float2 z = __bfloat1622float2(zp[k]);
        f.x = bn.x + z.x;
        f.y = bn.y + z.y;
      }
      if (kRelu) {
        f.x = fmaxf(f.x, 0.0f);
        f.y = fmaxf(f.y, 0.0f);
      }
      op[k] = __float22bfloat162_rn(f);
    }
    y[v] = out;
  }
}

}  // namespace

int bnPrepare(const float* mean, const float* invstd, const float* weight, const float* bias, float* scale, float* shift,
               float* runningMean, float* runningVar, int channels, double momentum, double eps, double count, void* stream) {
  const double unbias = count > 1 ? count / (count - 1) : 1.0;
  bnPrepareKernel<<<(channels + kThreads - 1) / kThreads, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      mean, invstd, weight, bias, scale, shift, runningMean, runningVar, channels, static_cast<float>(momentum), static_cast<float>(eps),
      static_cast<float>(unbias));
  return static_cast<int>(cudaGetLastError());
}

bool bnActSupported(int channels, const void* x, const void* residual, const void* y) {
  auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return channels > 0 && channels % kVec == 0 && (kThreads % (channels / kVec)) == 0 && aligned(x) && aligned(residual) && aligned(y);
}

int bnActForward(const uint16_t* x, const uint16_t* residual, uint16_t* y, const float* scale, const float* shift, int64_t rows,
                  int channels, bool relu, void* stream) {
  const int vecPerRow = channels / kVec;
  const int64_t vectors = rows * vecPerRow;
  // about four vectors per thread; the block count makes the stride a multiple of vecPerRow (kThreads is)
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((vectors + 4 * kThreads - 1) / (4 * kThreads), 1 << 20));
  auto s = static_cast<cudaStream_t>(stream);
  auto xv = reinterpret_cast<const uint4*>(x);
  auto zv = reinterpret_cast<const uint4*>(residual);
  auto yv = reinterpret_cast<uint4*>(y);
  const auto g = static_cast<unsigned>(blocks);
  if (residual && relu)
    bnActKernel<true, true><<<g, kThreads, 0, s>>>(xv, zv, yv, scale, shift, vectors, vecPerRow);
  else if (residual)
    bnActKernel<true, false><<<g, kThreads, 0, s>>>(xv, zv, yv, scale, shift, vectors, vecPerRow);
  else if (relu)
    bnActKernel<false, true><<<g, kThreads, 0, s>>>(xv, nullptr, yv, scale, shift, vectors, vecPerRow);
  else
    bnActKernel<false, false><<<g, kThreads, 0, s>>>(xv, nullptr, yv, scale, shift, vectors, vecPerRow);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace tl::kernels
