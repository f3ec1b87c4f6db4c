// Runs native/cuda/bn_act.cu's kernels emulated on the CPU (every thread of the grid the launch would use,
// one after another) and checks them against the formula computed here element by element: every output
// written, each within one bf16 rounding of relu(x * scale + shift [+ residual]), the running statistics as
// BatchNorm2d updates them. Built and run by test/cuda-syntax.test.ts with nvcc; prints one line per case and
// exits 1 on the first failure.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/bn_act.h"

using tl::kernels::bnActForwardEmulated;
using tl::kernels::bnActSupported;
using tl::kernels::bnPrepareEmulated;

static uint16_t toBf16(float f) {
  __nv_bfloat16 b = __float2bfloat16_rn(f);
  uint16_t u;
  std::memcpy(&u, &b, 2);
  return u;
}
static float fromBf16(uint16_t u) {
  __nv_bfloat16 b;
  std::memcpy(&b, &u, 2);
  return __bfloat162float(b);
}
static float roundBf16(float f) { return fromBf16(toBf16(f)); }

int main() {
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.5f, 2.0f);
  int cases = 0;
  for (int channels : {64, 256, 2048}) {
    for (int64_t rows : {1, 7, 3137}) {
      for (int flags = 0; flags < 4; flags++) {
        const bool add = flags & 1, relu = flags & 2;
        const int64_t n = rows * channels;
        std::vector<uint16_t> x(n), z(n), y(n, 0xFFFF);  // 0xFFFF: a NaN, so an element never written shows
        for (auto& v : x) v = toBf16(normal(gen) * 3 + 1);
        for (auto& v : z) v = toBf16(normal(gen));
        std::vector<float> mean(channels), invstd(channels), weight(channels), bias(channels), scale(channels), shift(channels);
        std::vector<float> rm(channels), rv(channels);
        for (int c = 0; c < channels; c++) {
          mean[c] = normal(gen), invstd[c] = uniform(gen), weight[c] = uniform(gen), bias[c] = normal(gen) * 0.1f;
          rm[c] = normal(gen) * 0.1f, rv[c] = uniform(gen);
        }
        const std::vector<float> rm0 = rm, rv0 = rv;
        const double momentum = 0.1, eps = 1e-5, count = static_cast<double>(rows) * 4;
        bnPrepareEmulated(mean.data(), invstd.data(), weight.data(), bias.data(), scale.data(), shift.data(), rm.data(), rv.data(), channels,
                          momentum, eps, count);
        double statErr = 0;
        for (int c = 0; c < channels; c++) {
          const double var = 1.0 / (double(invstd[c]) * invstd[c]) - eps;
          const double unbias = count > 1 ? count / (count - 1) : 1.0;
          const double wantM = (1 - momentum) * rm0[c] + momentum * mean[c];
          const double wantV = (1 - momentum) * rv0[c] + momentum * var * unbias;
          const double wantS = double(weight[c]) * invstd[c];
          // each error relative to the size of the terms it is made of (float rounding of those, not of a small difference)
          const double termsM = (1 - momentum) * std::abs(rm0[c]) + momentum * std::abs(mean[c]);
          const double termsShift = std::abs(bias[c]) + std::abs(wantS * mean[c]);
          statErr = std::max({statErr, std::abs(rm[c] - wantM) / termsM, std::abs(rv[c] - wantV) / wantV, std::abs(scale[c] - wantS) / wantS,
                              std::abs(shift[c] - (bias[c] - mean[c] * wantS)) / termsShift});
        }
        if (!bnActSupported(channels, x.data(), add ? z.data() : nullptr, y.data())) {
          // std::vector's storage is 16-byte aligned by glibc's malloc for these sizes; a refusal is a failure here
          std::printf("FAIL channels %d: bnActSupported refused\n", channels);
          return 1;
        }
        bnActForwardEmulated(x.data(), add ? z.data() : nullptr, y.data(), scale.data(), shift.data(), rows, channels, relu);
        double worst = 0;
        int64_t unwritten = 0;
        for (int64_t i = 0; i < n; i++) {
          const int c = static_cast<int>(i % channels);
          float want = fromBf16(x[i]) * scale[c] + shift[c];
          if (add) want = roundBf16(want) + fromBf16(z[i]);
          if (relu) want = std::max(want, 0.0f);
          const float got = fromBf16(y[i]);
          if (std::isnan(got)) {
            unwritten++;
            continue;
          }
          // within one bf16 rounding (8 significant bits) of the float result, or 1e-6 near zero
          const double err = std::abs(got - want) / std::max(std::abs(want) * (1.0 / 128), 1e-6);
          if (err > 1.0 && worst <= 1.0) std::printf("  element %lld (channel %d): %g, want %g from x %g scale %g shift %g\n", static_cast<long long>(i), c, got, want, fromBf16(x[i]), scale[c], shift[c]);
          worst = std::max(worst, err);
        }
        cases++;
        std::printf("channels %4d rows %5lld add %d relu %d: %lld unwritten, worst %.3f bf16 roundings, running statistics within %.1e\n", channels,
                    static_cast<long long>(rows), add, relu, static_cast<long long>(unwritten), worst, statErr);
        if (unwritten || worst > 1.0 || statErr > 1e-5) {
          std::printf("FAIL\n");
          return 1;
        }
      }
    }
  }
  std::printf("OK %d cases\n", cases);
  return 0;
}
