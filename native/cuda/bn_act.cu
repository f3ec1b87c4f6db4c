// See bn_act.h. Both kernels are bound by memory bandwidth: the forward one reads x (and the residual) and
// writes y once, 16 bytes (8 channels) per thread and iteration, where ATen runs its BatchNorm transform, then
// the residual add, then the ReLU, each a full pass over the activation.
//
// Each kernel's body is a __host__ __device__ function of the thread's position, so that the *Emulated
// entry points can run the same code, with the same grid, on the CPU: a machine without a GPU checks the
// indexing and the arithmetic (test/cuda-syntax.test.ts), which nvcc's compiling alone cannot.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "bn_act.h"

namespace tl::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // bf16 values per 16-byte load

__host__ __device__ inline void bnPrepareChannel(int c, const float* mean, const float* invstd, const float* weight, const float* bias,
                                                 float* scale, float* shift, float* runningMean, float* runningVar, float momentum,
                                                 float eps, float unbias) {
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

__global__ void bnPrepareKernel(const float* __restrict__ mean, const float* __restrict__ invstd, const float* __restrict__ weight,
                                const float* __restrict__ bias, float* __restrict__ scale, float* __restrict__ shift, float* runningMean,
                                float* runningVar, int channels, float momentum, float eps, float unbias) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c < channels) bnPrepareChannel(c, mean, invstd, weight, bias, scale, shift, runningMean, runningVar, momentum, eps, unbias);
}

// Thread `first` handles the 8-channel vectors first, first + stride, ... of the [rows, channels] matrix; the
// stride (threads in the grid) is a multiple of channels / 8, so each thread keeps one group of 8 channels,
// and its scale and shift stay in registers.
template <bool kAdd, bool kRelu>
__host__ __device__ inline void bnActThread(int64_t first, int64_t stride, const uint4* x, const uint4* residual, uint4* y, const float* scale,
                                            const float* shift, int64_t vectors, int vecPerRow) {
  const int c0 = static_cast<int>(first % vecPerRow) * kVec;
  float a[kVec], b[kVec];
#pragma unroll
  for (int k = 0; k < kVec; k++) {
    a[k] = scale[c0 + k];
    b[k] = shift[c0 + k];
  }
  for (int64_t v = first; v < vectors; v += stride) {
    // 16-byte loads and store, taken apart by memcpy (registers moves once compiled): reading the uint4
    // through a __nv_bfloat162 pointer breaks C++'s aliasing rules, and the host compiler at -O2 then
    // dropped x from the result (the emulation test caught it)
    const uint4 xv = x[v];
    __nv_bfloat162 xp[kVec / 2], zp[kVec / 2], op[kVec / 2];
    memcpy(xp, &xv, sizeof xv);
    if (kAdd) {
      const uint4 zv = residual[v];
      memcpy(zp, &zv, sizeof zv);
    }
#pragma unroll
    for (int k = 0; k < kVec / 2; k++) {
      float2 f = __bfloat1622float2(xp[k]);
      f.x = f.x * a[2 * k] + b[2 * k];
      f.y = f.y * a[2 * k + 1] + b[2 * k + 1];
      if (kAdd) {
        // the residual is added to the rounded BatchNorm output, as ATen's separate add does
        const float2 bn = __bfloat1622float2(__float22bfloat162_rn(f));
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
    uint4 out;
    memcpy(&out, op, sizeof out);
    y[v] = out;
  }
}

template <bool kAdd, bool kRelu>
__global__ void __launch_bounds__(kThreads) bnActKernel(const uint4* __restrict__ x, const uint4* __restrict__ residual, uint4* __restrict__ y,
                                                        const float* __restrict__ scale, const float* __restrict__ shift, int64_t vectors,
                                                        int vecPerRow) {
  bnActThread<kAdd, kRelu>(static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x, static_cast<int64_t>(gridDim.x) * kThreads, x, residual, y,
                           scale, shift, vectors, vecPerRow);
}

// About four vectors per thread; any block count makes the stride a multiple of vecPerRow (kThreads is).
int64_t blocksFor(int64_t vectors) { return std::max<int64_t>(1, std::min<int64_t>((vectors + 4 * kThreads - 1) / (4 * kThreads), 1 << 20)); }

struct BnActArgs {
  const uint4 *x, *residual;
  uint4* y;
  const float *scale, *shift;
  int64_t vectors;
  int vecPerRow;
  BnActArgs(const uint16_t* x16, const uint16_t* z16, uint16_t* y16, const float* a, const float* b, int64_t rows, int channels)
      : x(reinterpret_cast<const uint4*>(x16)), residual(reinterpret_cast<const uint4*>(z16)), y(reinterpret_cast<uint4*>(y16)), scale(a), shift(b),
        vectors(rows * (channels / kVec)), vecPerRow(channels / kVec) {}
};

// One launch of the forward kernel with these flags, or, emulated, its threads one after another on the CPU.
template <bool kAdd, bool kRelu>
void runBnAct(const BnActArgs& a, cudaStream_t stream, bool emulate) {
  const int64_t blocks = blocksFor(a.vectors);
  if (emulate) {
    for (int64_t t = 0; t < blocks * kThreads; t++)
      bnActThread<kAdd, kRelu>(t, blocks * kThreads, a.x, a.residual, a.y, a.scale, a.shift, a.vectors, a.vecPerRow);
    return;
  }
  bnActKernel<kAdd, kRelu><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a.x, a.residual, a.y, a.scale, a.shift, a.vectors, a.vecPerRow);
}
using BnActRunner = void (*)(const BnActArgs&, cudaStream_t, bool);
constexpr BnActRunner kBnAct[2][2] = {{runBnAct<false, false>, runBnAct<false, true>}, {runBnAct<true, false>, runBnAct<true, true>}};  // [add][relu]

}  // namespace

int bnPrepare(const float* mean, const float* invstd, const float* weight, const float* bias, float* scale, float* shift,
              float* runningMean, float* runningVar, int channels, double momentum, double eps, double count, void* stream) {
  const double unbias = count > 1 ? count / (count - 1) : 1.0;
  bnPrepareKernel<<<(channels + kThreads - 1) / kThreads, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      mean, invstd, weight, bias, scale, shift, runningMean, runningVar, channels, static_cast<float>(momentum), static_cast<float>(eps),
      static_cast<float>(unbias));
  return static_cast<int>(cudaGetLastError());
}

void bnPrepareEmulated(const float* mean, const float* invstd, const float* weight, const float* bias, float* scale, float* shift,
                       float* runningMean, float* runningVar, int channels, double momentum, double eps, double count) {
  const double unbias = count > 1 ? count / (count - 1) : 1.0;
  for (int c = 0; c < channels; c++)
    bnPrepareChannel(c, mean, invstd, weight, bias, scale, shift, runningMean, runningVar, static_cast<float>(momentum), static_cast<float>(eps),
                     static_cast<float>(unbias));
}

bool bnActSupported(int channels, const void* x, const void* residual, const void* y) {
  auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return channels > 0 && channels % kVec == 0 && (kThreads % (channels / kVec)) == 0 && aligned(x) && aligned(residual) && aligned(y);
}

int bnActForward(const uint16_t* x, const uint16_t* residual, uint16_t* y, const float* scale, const float* shift, int64_t rows,
                 int channels, bool relu, void* stream) {
  kBnAct[residual != nullptr][relu](BnActArgs(x, residual, y, scale, shift, rows, channels), static_cast<cudaStream_t>(stream), false);
  return static_cast<int>(cudaGetLastError());
}

void bnActForwardEmulated(const uint16_t* x, const uint16_t* residual, uint16_t* y, const float* scale, const float* shift, int64_t rows,
                          int channels, bool relu) {
  kBnAct[residual != nullptr][relu](BnActArgs(x, residual, y, scale, shift, rows, channels), nullptr, true);
}

}  // namespace tl::kernels
