// Runs native/cuda/bn_act.cu's kernels emulated on the CPU (every thread of the grid a launch would use,
// one after another, a reducing block's shared memory included) and checks them against the formulas
// computed here in double, element by element: the forward transform (every output written, within one
// bf16 rounding of relu(x * scale + shift [+ residual])), the batch statistics and running statistics, and
// the backward (dx, dz, the parameters' gradients). Built and run by test/cuda-syntax.test.ts with nvcc;
// prints one line per case and exits 1 on the first failure.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/bn_act.h"

using namespace tl::kernels;

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

static int failures = 0;
static void report(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL %s\n", what);
    failures++;
  }
}

int main() {
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.5f, 2.0f);
  int cases = 0;
  for (int channels : {64, 256, 2048}) {
    for (int64_t rows : {7, 3137}) {  // (training BatchNorm needs more than one value per channel, as ATen says)
      for (int flags = 0; flags < 4; flags++) {
        const bool add = flags & 1, relu = flags & 2;
        const int64_t n = rows * channels;
        // a mean far from 0 in some channels: the variance must not be a small difference of large sums
        std::vector<float> center(channels);
        for (auto& c : center) c = normal(gen) * 4;
        std::vector<uint16_t> x(n), z(n), dy(n), y(n, 0xFFFF), dx(n, 0xFFFF), dz(n, 0xFFFF);  // 0xFFFF: NaN, so an unwritten element shows
        for (int64_t i = 0; i < n; i++) x[i] = toBf16(center[i % channels] + normal(gen) * 1.5f);
        for (auto& v : z) v = toBf16(normal(gen));
        for (auto& v : dy) v = toBf16(normal(gen));
        std::vector<float> weight(channels), bias(channels), rm(channels), rv(channels);
        for (int c = 0; c < channels; c++) weight[c] = uniform(gen), bias[c] = normal(gen) * 0.1f, rm[c] = normal(gen) * 0.1f, rv[c] = uniform(gen);
        const std::vector<float> rm0 = rm, rv0 = rv;
        const double momentum = 0.1, eps = 1e-5;
        if (!bnSupported(channels, {x.data(), z.data(), y.data()})) {
          std::printf("FAIL channels %d: bnSupported refused\n", channels);
          return 1;
        }
        // the statistics in double
        std::vector<double> mean(channels), var(channels);
        for (int64_t i = 0; i < n; i++) mean[i % channels] += fromBf16(x[i]);
        for (auto& m : mean) m /= rows;
        for (int64_t i = 0; i < n; i++) var[i % channels] += std::pow(fromBf16(x[i]) - mean[i % channels], 2);
        for (auto& v : var) v /= rows;

        std::vector<float> scratch(bnScratchFloats(rows, channels)), saveMean(channels), saveInvstd(channels), scale(channels), shift(channels);
        bnStats(x.data(), rows, channels, weight.data(), bias.data(), rm.data(), rv.data(), momentum, eps, scratch.data(), saveMean.data(),
                saveInvstd.data(), scale.data(), shift.data(), nullptr, true);
        double statErr = 0;
        for (int c = 0; c < channels; c++) {
          const double invstd = 1 / std::sqrt(var[c] + eps), unbias = rows > 1 ? double(rows) / (rows - 1) : 1.0;
          const double wantM = (1 - momentum) * rm0[c] + momentum * mean[c], wantV = (1 - momentum) * rv0[c] + momentum * var[c] * unbias;
          const double sc = weight[c] * invstd, termsM = (1 - momentum) * std::abs(rm0[c]) + momentum * std::abs(mean[c]);
          statErr = std::max({statErr, std::abs(saveMean[c] - mean[c]) / (std::abs(mean[c]) + std::sqrt(var[c])), std::abs(saveInvstd[c] - invstd) / invstd,
                              std::abs(rm[c] - wantM) / termsM, std::abs(rv[c] - wantV) / wantV, std::abs(scale[c] - sc) / sc,
                              std::abs(shift[c] - (bias[c] - mean[c] * sc)) / (std::abs(bias[c]) + std::abs(mean[c] * sc))});
        }
        // (float sums of x - running mean: far from the mean, as here where the means reach 8 standard deviations
        // and the running mean is near 0, a few 1e-5; ATen's Welford update in float is of the same order)
        report(statErr < 2e-4, "statistics");

        bnActForward(x.data(), add ? z.data() : nullptr, y.data(), scale.data(), shift.data(), rows, channels, relu, nullptr, true);
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
          worst = std::max(worst, std::abs(got - want) / std::max(std::abs(want) * (1.0 / 128), 1e-6));
        }
        report(!unwritten && worst <= 1.0, "forward");

        // the backward, given the kernel's statistics: dy through the ReLU (y > 0), then BatchNorm's formula
        bnBackward(dy.data(), relu ? y.data() : nullptr, x.data(), rows, channels, weight.data(), saveMean.data(), saveInvstd.data(), scratch.data(),
                   std::vector<float>(3 * channels).data(), scale.data(), shift.data(), dx.data(), add ? dz.data() : nullptr, nullptr, true);
        // (scale and shift now hold gradWeight and gradBias)
        std::vector<double> sumDy(channels), sumDyXmu(channels), g(n);
        for (int64_t i = 0; i < n; i++) {
          const int c = static_cast<int>(i % channels);
          g[i] = relu && !(fromBf16(y[i]) > 0) ? 0.0 : fromBf16(dy[i]);
          sumDy[c] += g[i];
          sumDyXmu[c] += g[i] * (fromBf16(x[i]) - saveMean[c]);
        }
        double gradErr = 0, dxErr = 0, dxScale = 1e-12;
        int64_t dxUnwritten = 0, dzWrong = 0;
        std::vector<double> want(n);
        for (int64_t i = 0; i < n; i++) {
          const int c = static_cast<int>(i % channels);
          const double inv = saveInvstd[c];
          want[i] = weight[c] * inv * (g[i] - sumDy[c] / rows - (fromBf16(x[i]) - saveMean[c]) * inv * inv * sumDyXmu[c] / rows);
          dxScale = std::max(dxScale, std::abs(want[i]));
        }
        for (int64_t i = 0; i < n; i++) {
          const float got = fromBf16(dx[i]);
          if (std::isnan(got)) dxUnwritten++;
          else dxErr = std::max(dxErr, std::abs(got - want[i]) / (std::abs(want[i]) / 128 + 1e-3 * dxScale));
          if (add && fromBf16(dz[i]) != static_cast<float>(g[i])) dzWrong++;
        }
        for (int c = 0; c < channels; c++) {
          const double absDy = 1e-6 + std::abs(sumDy[c]), absW = 1e-6 + std::abs(sumDyXmu[c] * saveInvstd[c]);
          gradErr = std::max({gradErr, std::abs(shift[c] - sumDy[c]) / (absDy + std::sqrt(double(rows))),
                              std::abs(scale[c] - sumDyXmu[c] * saveInvstd[c]) / (absW + std::sqrt(double(rows)))});
        }
        report(!dxUnwritten && dxErr <= 1.0 && !dzWrong && gradErr < 1e-4, "backward");
        cases++;
        std::printf("channels %4d rows %5lld add %d relu %d: statistics within %.1e; forward: %lld unwritten, worst %.3f bf16 roundings; "
                    "backward: %lld unwritten, dx worst %.3f of its tolerance, %lld dz wrong, parameter gradients within %.1e\n",
                    channels, static_cast<long long>(rows), add, relu, statErr, static_cast<long long>(unwritten), worst,
                    static_cast<long long>(dxUnwritten), dxErr, static_cast<long long>(dzWrong), gradErr);
        if (failures) return 1;
      }
    }
  }
  std::printf("OK %d cases\n", cases);
  return 0;
}
