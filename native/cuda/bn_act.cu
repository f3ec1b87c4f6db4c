// See bn_act.h. Every kernel is bound by memory bandwidth and reads or writes 16 bytes (8 channels) per thread
// and iteration. Where ATen runs its BatchNorm transform, then the residual add, then the ReLU (three passes
// over the activation), the forward here makes one; the backward reads dy, the ReLU's output (its mask) and x
// twice (partial sums, then dx) where ATen makes the ReLU's backward a pass of its own.
//
// Threads: a grid-stride loop over the 8-channel vectors of the [rows, channels] matrix, the stride a
// multiple of channels / 8, so that each thread keeps one group of 8 channels (its per-channel constants
// stay in registers). Reductions: each thread sums its rows, a block adds up its threads of each group in
// shared memory and writes one partial sum per channel, and a per-channel kernel adds up the blocks' partials
// in double. Each kernel's body is a __host__ __device__ function of the thread's position, which the
// emulated path runs on the CPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <vector>

#include "bf16_vec.cuh"
#include "bn_act.h"

namespace tl::kernels {
namespace {

// --- launch shapes ---
// elementwise: about four vectors per thread
int64_t elementwiseBlocks(int64_t vectors) { return std::max<int64_t>(1, std::min<int64_t>((vectors + 4 * kThreads - 1) / (4 * kThreads), 1 << 20)); }
// reductions: at least 16 vectors a thread, at most 1024 blocks, and at most rows / 32 blocks, so that the
// partial sums (8 bytes a channel and block) stay an eighth of the input at most (layer4's 2048 channels
// and 12,544 rows at batch 256: 392 blocks)
int64_t reduceBlocks(int64_t rows, int64_t vectors) {
  return std::max<int64_t>(1, std::min<int64_t>({vectors / (16 * kThreads), rows / 32, 1024}));
}
int channelBlocks(int channels) { return (channels + kThreads - 1) / kThreads; }

struct Shape {
  int64_t rows, vectors;
  int channels, vecPerRow;
  Shape(int64_t r, int c) : rows(r), vectors(r * (c / kVec)), channels(c), vecPerRow(c / kVec) {}
};

// The one kernel every launch below instantiates: body(blockIdx, threadIdx), a __device__ lambda that calls
// the __host__ __device__ bodies the emulated paths call on the CPU.
template <typename Body>
__global__ void __launch_bounds__(kThreads) kernel(Body body) {
  body(blockIdx.x, threadIdx.x);
}

// --- forward from given statistics ---
__host__ __device__ inline void prepareChannel(int c, const float* mean, const float* invstd, const float* weight, const float* bias, float* scale,
                                               float* shift, float* runningMean, float* runningVar, float momentum, float eps, float unbias) {
  const float s = weight[c] * invstd[c];
  scale[c] = s;
  shift[c] = bias[c] - mean[c] * s;
  if (runningMean) {
    const float var = 1.0f / (invstd[c] * invstd[c]) - eps;  // invstd = 1 / sqrt(var + eps), var biased
    runningMean[c] = (1.0f - momentum) * runningMean[c] + momentum * mean[c];
    runningVar[c] = (1.0f - momentum) * runningVar[c] + momentum * var * unbias;
  }
}

template <bool kAdd, bool kRelu>
__host__ __device__ inline void actThread(int64_t first, int64_t stride, const uint4* x, const uint4* residual, uint4* y, const float* scale,
                                          const float* shift, const Shape& s) {
  const int c0 = static_cast<int>(first % s.vecPerRow) * kVec;
  float a[kVec], b[kVec];
  for (int k = 0; k < kVec; k++) a[k] = scale[c0 + k], b[k] = shift[c0 + k];
  for (int64_t v = first; v < s.vectors; v += stride) {
    float xf[kVec], zf[kVec], o[kVec];
    unpack8(x[v], xf);
    if (kAdd) unpack8(residual[v], zf);
#pragma unroll
    for (int k = 0; k < kVec; k++) {
      float f = xf[k] * a[k] + b[k];
      if (kAdd) f = roundBf16(f) + zf[k];  // the residual is added to the rounded BatchNorm output, as ATen's add is
      if (kRelu) f = fmaxf(f, 0.0f);
      o[k] = f;
    }
    y[v] = pack8(o);
  }
}

// --- reductions ---
// One thread's sums over its vectors of two quantities per channel: f(v, c, s1, s2) adds vector v's, given
// its channel group's values of the per-channel constant `c` (null: zeros), loaded once into registers.
template <typename F>
__host__ __device__ inline void threadSums(int64_t first, int64_t stride, const Shape& s, const float* constant, F f, float s1[kVec],
                                           float s2[kVec]) {
  const int c0 = static_cast<int>(first % s.vecPerRow) * kVec;
  float c[kVec];
  for (int k = 0; k < kVec; k++) s1[k] = s2[k] = 0.0f, c[k] = constant ? constant[c0 + k] : 0.0f;
  for (int64_t v = first; v < s.vectors; v += stride) f(v, c, s1, s2);
}

// A block's partial sums: thread lt < vecPerRow adds up the block's threads of its channel group (lt,
// lt + vecPerRow, ...) from shared memory and writes them to partial[block][channel] (sums 1, then sums 2
// after blocks * channels floats).
__host__ __device__ inline void blockPartial(int64_t block, int lt, const float (*sh1)[kVec], const float (*sh2)[kVec], const Shape& s, int64_t blocks,
                                             float* partial) {
  if (lt >= s.vecPerRow) return;
  float t1[kVec] = {}, t2[kVec] = {};
  for (int j = lt; j < kThreads; j += s.vecPerRow)
    for (int k = 0; k < kVec; k++) t1[k] += sh1[j][k], t2[k] += sh2[j][k];
  for (int k = 0; k < kVec; k++) {
    partial[block * s.channels + lt * kVec + k] = t1[k];
    partial[(blocks + block) * s.channels + lt * kVec + k] = t2[k];
  }
}

// One lane's share of the two sums of channel c over all blocks (blocks lane, lane + lanes, ...), in double.
__host__ __device__ inline void laneTotals(int c, int lane, int lanes, const float* partial, int64_t blocks, int channels, double& t1, double& t2) {
  t1 = t2 = 0;
  for (int64_t b = lane; b < blocks; b += lanes) t1 += partial[b * channels + c], t2 += partial[(blocks + b) * channels + c];
}

// Runs a reduction: every thread's sums (f), then each block's partials, on the device or emulated.
template <typename F>
void reduce(const Shape& s, const float* constant, F f, float* partial, cudaStream_t stream, bool emulate) {
  const int64_t blocks = reduceBlocks(s.rows, s.vectors);
  const int64_t stride = blocks * kThreads;
  if (emulate) {
    std::vector<float> sh1(kThreads * kVec), sh2(kThreads * kVec);
    auto* a = reinterpret_cast<float(*)[kVec]>(sh1.data());
    auto* b = reinterpret_cast<float(*)[kVec]>(sh2.data());
    for (int64_t block = 0; block < blocks; block++) {
      for (int lt = 0; lt < kThreads; lt++) threadSums(block * kThreads + lt, stride, s, constant, f, a[lt], b[lt]);
      for (int lt = 0; lt < kThreads; lt++) blockPartial(block, lt, a, b, s, blocks, partial);
    }
    return;
  }
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>([=] __device__(unsigned block, unsigned lt) {
    __shared__ float sh1[kThreads][kVec], sh2[kThreads][kVec];
    float a[kVec], b[kVec];  // (in registers while the thread sums; to shared memory once)
    threadSums(static_cast<int64_t>(block) * kThreads + lt, stride, s, constant, f, a, b);
    for (int k = 0; k < kVec; k++) sh1[lt][k] = a[k], sh2[lt][k] = b[k];
    __syncthreads();
    blockPartial(block, static_cast<int>(lt), sh1, sh2, s, blocks, partial);
  });
}

// Runs body(thread, stride) for every thread of an elementwise grid, or body(c) per channel.
template <typename F>
void elementwise(const Shape& s, F body, cudaStream_t stream, bool emulate) {
  const int64_t blocks = elementwiseBlocks(s.vectors);
  const int64_t stride = blocks * kThreads;
  if (emulate) {
    for (int64_t t = 0; t < stride; t++) body(t, stride);
    return;
  }
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      [=] __device__(unsigned block, unsigned lt) { body(static_cast<int64_t>(block) * kThreads + lt, stride); });
}
template <typename F>
void perChannel(int channels, F body, cudaStream_t stream, bool emulate) {
  if (emulate) {
    for (int c = 0; c < channels; c++) body(c);
    return;
  }
  kernel<<<channelBlocks(channels), kThreads, 0, stream>>>([=] __device__(unsigned block, unsigned lt) {
    const int c = static_cast<int>(block * kThreads + lt);
    if (c < channels) body(c);
  });
}

// Runs body(c, t1, t2) per channel with the channel's two sums over the blocks' partials: a warp per channel
// on the device (each lane a share of the blocks, then the warp's shuffles); emulated, the lanes one by one.
template <typename F>
void perChannelTotals(int channels, const float* partial, int64_t blocks, F body, cudaStream_t stream, bool emulate) {
  constexpr int kWarp = 32;
  if (emulate) {
    for (int c = 0; c < channels; c++) {
      double t1 = 0, t2 = 0;
      for (int lane = 0; lane < kWarp; lane++) {  // the lanes' shares, added as the shuffles do
        double l1, l2;
        laneTotals(c, lane, kWarp, partial, blocks, channels, l1, l2);
        t1 += l1, t2 += l2;
      }
      body(c, t1, t2);
    }
    return;
  }
  const int gridBlocks = (channels * kWarp + kThreads - 1) / kThreads;
  kernel<<<gridBlocks, kThreads, 0, stream>>>([=] __device__(unsigned block, unsigned lt) {
    const int64_t t = static_cast<int64_t>(block) * kThreads + lt;
    const int c = static_cast<int>(t / kWarp), lane = static_cast<int>(t % kWarp);
    double t1 = 0, t2 = 0;
    if (c < channels) laneTotals(c, lane, kWarp, partial, blocks, channels, t1, t2);
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {  // (every lane of the warp takes part, channel or not)
      t1 += __shfl_down_sync(0xffffffffu, t1, offset);
      t2 += __shfl_down_sync(0xffffffffu, t2, offset);
    }
    if (c < channels && lane == 0) body(c, t1, t2);
  });
}

int launched(bool emulate) { return emulate ? 0 : static_cast<int>(cudaGetLastError()); }

}  // namespace

bool bnSupported(int channels, std::initializer_list<const void*> tensors) {
  for (const void* p : tensors)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return channelsSupported(channels);
}

int bnPrepare(const float* mean, const float* invstd, const float* weight, const float* bias, float* scale, float* shift, float* runningMean,
              float* runningVar, int channels, double momentum, double eps, int64_t rows, void* stream, bool emulate) {
  const float m = static_cast<float>(momentum), e = static_cast<float>(eps);
  const float unbias = rows > 1 ? static_cast<float>(static_cast<double>(rows) / static_cast<double>(rows - 1)) : 1.0f;
  perChannel(
      channels, [=] __host__ __device__(int c) { prepareChannel(c, mean, invstd, weight, bias, scale, shift, runningMean, runningVar, m, e, unbias); },
      static_cast<cudaStream_t>(stream), emulate);
  return launched(emulate);
}

int bnActForward(const uint16_t* x, const uint16_t* residual, uint16_t* y, const float* scale, const float* shift, int64_t rows, int channels,
                 bool relu, void* stream, bool emulate) {
  const Shape s(rows, channels);
  auto xv = reinterpret_cast<const uint4*>(x);
  auto zv = reinterpret_cast<const uint4*>(residual);
  auto yv = reinterpret_cast<uint4*>(y);
  auto st = static_cast<cudaStream_t>(stream);
  if (residual && relu)
    elementwise(s, [=] __host__ __device__(int64_t t, int64_t n) { actThread<true, true>(t, n, xv, zv, yv, scale, shift, s); }, st, emulate);
  else if (residual)
    elementwise(s, [=] __host__ __device__(int64_t t, int64_t n) { actThread<true, false>(t, n, xv, zv, yv, scale, shift, s); }, st, emulate);
  else if (relu)
    elementwise(s, [=] __host__ __device__(int64_t t, int64_t n) { actThread<false, true>(t, n, xv, zv, yv, scale, shift, s); }, st, emulate);
  else
    elementwise(s, [=] __host__ __device__(int64_t t, int64_t n) { actThread<false, false>(t, n, xv, zv, yv, scale, shift, s); }, st, emulate);
  return launched(emulate);
}

int64_t bnScratchFloats(int64_t rows, int channels) { return 2 * reduceBlocks(rows, Shape(rows, channels).vectors) * channels; }

int bnStats(const uint16_t* x, int64_t rows, int channels, const float* weight, const float* bias, float* runningMean, float* runningVar,
            double momentum, double eps, float* scratch, float* saveMean, float* saveInvstd, float* scale, float* shift, void* stream, bool emulate) {
  const Shape s(rows, channels);
  auto xv = reinterpret_cast<const uint4*>(x);
  auto st = static_cast<cudaStream_t>(stream);
  // sums of x - p and (x - p)^2, p the running mean (an estimate of the mean, so that the variance is not a
  // small difference of large sums; ATen uses Welford's update instead)
  reduce(
      s, runningMean,
      [=] __host__ __device__(int64_t v, const float p[kVec], float s1[kVec], float s2[kVec]) {
        float xf[kVec];
        unpack8(xv[v], xf);
        for (int k = 0; k < kVec; k++) {
          const float d = xf[k] - p[k];
          s1[k] += d, s2[k] += d * d;
        }
      },
      scratch, st, emulate);
  const int first = launched(emulate);
  const int64_t blocks = reduceBlocks(s.rows, s.vectors);
  const float m = static_cast<float>(momentum), e = static_cast<float>(eps);
  perChannelTotals(
      channels, scratch, blocks,
      [=] __host__ __device__(int c, double sum, double sq) {
        const double n = static_cast<double>(rows);
        const double shifted = sum / n, var = fmax(sq / n - shifted * shifted, 0.0);
        const double mean = (runningMean ? runningMean[c] : 0.0) + shifted;  // (read before the update below)
        saveMean[c] = static_cast<float>(mean);
        saveInvstd[c] = static_cast<float>(1.0 / sqrt(var + e));
        const float unbias = rows > 1 ? static_cast<float>(n / (n - 1)) : 1.0f;
        prepareChannel(c, saveMean, saveInvstd, weight, bias, scale, shift, nullptr, nullptr, m, e, unbias);
        if (runningMean) {
          // from the double statistics rather than back from invstd, as ATen's update does
          runningMean[c] = (1.0f - m) * runningMean[c] + m * static_cast<float>(mean);
          runningVar[c] = (1.0f - m) * runningVar[c] + m * static_cast<float>(var) * unbias;
        }
      },
      st, emulate);
  return first ? first : launched(emulate);
}

int bnBackward(const uint16_t* dy, const uint16_t* y, const uint16_t* x, int64_t rows, int channels, const float* weight, const float* saveMean,
               const float* saveInvstd, float* scratch, float* coef, float* gradWeight, float* gradBias, uint16_t* dx, uint16_t* dz, void* stream,
               bool emulate) {
  const Shape s(rows, channels);
  auto dyv = reinterpret_cast<const uint4*>(dy);
  auto yv = reinterpret_cast<const uint4*>(y);
  auto xv = reinterpret_cast<const uint4*>(x);
  auto dxv = reinterpret_cast<uint4*>(dx);
  auto dzv = reinterpret_cast<uint4*>(dz);
  auto st = static_cast<cudaStream_t>(stream);
  // dy through the ReLU: dy where y > 0 (ATen's threshold_backward), else dy itself
  auto masked = [=] __host__ __device__(int64_t v, float g[kVec]) {
    unpack8(dyv[v], g);
    if (yv) {
      float yf[kVec];
      unpack8(yv[v], yf);
      for (int k = 0; k < kVec; k++) g[k] = yf[k] > 0.0f ? g[k] : 0.0f;
    }
  };
  // per thread: sum of dy and of dy * (x - mean), its channel group's means in registers
  reduce(
      s, saveMean,
      [=] __host__ __device__(int64_t v, const float mu[kVec], float s1[kVec], float s2[kVec]) {
        float g[kVec], xf[kVec];
        masked(v, g);
        unpack8(xv[v], xf);
        for (int k = 0; k < kVec; k++) s1[k] += g[k], s2[k] += g[k] * (xf[k] - mu[k]);
      },
      scratch, st, emulate);
  const int first = launched(emulate);
  const int64_t blocks = reduceBlocks(s.rows, s.vectors);
  // per channel: the parameters' gradients, and dx = k1 * (dy - k2 - (x - mean) * k3)
  perChannelTotals(
      channels, scratch, blocks,
      [=] __host__ __device__(int c, double sumDy, double sumDyXmu) {
        const double invstd = saveInvstd[c], n = static_cast<double>(rows);
        gradBias[c] = static_cast<float>(sumDy);
        gradWeight[c] = static_cast<float>(sumDyXmu * invstd);
        coef[c] = static_cast<float>(weight[c] * invstd);
        coef[channels + c] = static_cast<float>(sumDy / n);
        coef[2 * channels + c] = static_cast<float>(invstd * invstd * sumDyXmu / n);
      },
      st, emulate);
  elementwise(
      s,
      [=] __host__ __device__(int64_t t, int64_t stride) {
        const int c0 = static_cast<int>(t % s.vecPerRow) * kVec;
        float k1[kVec], k2[kVec], k3[kVec], mu[kVec];
        for (int k = 0; k < kVec; k++)
          k1[k] = coef[c0 + k], k2[k] = coef[channels + c0 + k], k3[k] = coef[2 * channels + c0 + k], mu[k] = saveMean[c0 + k];
        for (int64_t v = t; v < s.vectors; v += stride) {
          float g[kVec], xf[kVec], o[kVec];
          masked(v, g);
          unpack8(xv[v], xf);
          for (int k = 0; k < kVec; k++) o[k] = k1[k] * (g[k] - k2[k] - (xf[k] - mu[k]) * k3[k]);
          dxv[v] = pack8(o);
          if (dzv) dzv[v] = pack8(g);
        }
      },
      st, emulate);
  return first ? first : launched(emulate);
}

}  // namespace tl::kernels
