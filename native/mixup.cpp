#include "mixup.h"

#include <algorithm>
#include <cmath>

namespace tl {

// Beta(a, a) from two Gamma(a) draws of the generator
static torch::Tensor betaDraws(int64_t n, double alpha, torch::Generator& gen) {
  auto a = torch::full({2, n}, alpha, torch::kFloat64);
  auto g = at::_standard_gamma(a, gen);
  return g[0] / (g[0] + g[1]);
}

MixDraw drawMix(int64_t n, int64_t h, int64_t w, const MixOptions& o, torch::Generator& gen) {
  MixDraw d;
  if (o.kind == MixKind::MixUp) {
    auto l = betaDraws(n, o.alpha, gen);
    d.lam = torch::maximum(l, 1 - l);
    d.perm = torch::randperm(n, gen, torch::kInt64);
    return d;
  }
  // CutMix, fast.ai's order: lam, the permutation, then the box's centre
  d.lamDrawn = betaDraws(1, o.alpha, gen).item<double>();
  d.perm = torch::randperm(n, gen, torch::kInt64);
  const double cutRat = std::sqrt(1.0 - d.lamDrawn);
  const auto cutW = static_cast<int64_t>(std::nearbyint(static_cast<double>(w) * cutRat));
  const auto cutH = static_cast<int64_t>(std::nearbyint(static_cast<double>(h) * cutRat));
  d.cx = torch::randint(0, w, {1}, gen, torch::kInt64).item<int64_t>();
  d.cy = torch::randint(0, h, {1}, gen, torch::kInt64).item<int64_t>();
  d.x1 = std::clamp<int64_t>(d.cx - cutW / 2, 0, w);
  d.y1 = std::clamp<int64_t>(d.cy - cutH / 2, 0, h);
  d.x2 = std::clamp<int64_t>(d.cx + cutW / 2, 0, w);
  d.y2 = std::clamp<int64_t>(d.cy + cutH / 2, 0, h);
  const double lam = 1.0 - static_cast<double>((d.x2 - d.x1) * (d.y2 - d.y1)) / static_cast<double>(w * h);
  d.lam = torch::full({n}, lam, torch::kFloat64);
  return d;
}

std::pair<torch::Tensor, torch::Tensor> applyMix(torch::Tensor x, const torch::Tensor& y, const MixDraw& d, MixKind kind, int64_t classes) {
  using torch::indexing::Slice;
  const auto dev = x.device();
  const auto perm = d.perm.to(dev);
  // the targets as rows of probabilities (one-hot, or the multi-hot rows as they are)
  auto t = y.dim() == 1 ? torch::one_hot(y, classes).to(torch::kFloat32) : y.to(torch::kFloat32);
  auto lam = d.lam.to(torch::kFloat32).to(dev);
  auto soft = t.index_select(0, perm).lerp(t, lam.view({-1, 1}));  // lerp(partner, own, lam), as fast.ai
  if (kind == MixKind::MixUp) {
    auto partner = x.index_select(0, perm);
    auto mixed = partner.lerp(x, lam.to(x.scalar_type()).view({-1, 1, 1, 1}));
    if (x.is_contiguous(torch::MemoryFormat::ChannelsLast) && !x.is_contiguous()) mixed = mixed.contiguous(torch::MemoryFormat::ChannelsLast);
    return {mixed, soft};
  }
  if (d.x2 > d.x1 && d.y2 > d.y1) {
    auto box = x.index_select(0, perm).index({Slice(), Slice(), Slice(d.y1, d.y2), Slice(d.x1, d.x2)});
    x.index_put_({Slice(), Slice(), Slice(d.y1, d.y2), Slice(d.x1, d.x2)}, box);
  }
  return {x, soft};
}

}  // namespace tl

#include <ATen/CPUGeneratorImpl.h>

#include "js.h"

namespace tl {

// mixBatch({ x: Float32Array [n*c*h*w], n, c, h, w, y: Int32Array [n] or Float32Array [n*classes] (multi-hot),
// classes, kind: 'mixup' | 'cutmix', alpha, seed }) -> { x, y: Float32Array [n*classes], lam: Float64Array [n],
// perm: Int32Array [n], box: [x1, y1, x2, y2, cx, cy], lamDrawn }: the training pipeline's MixUp / CutMix on a
// given batch, for the tests' comparison with fast.ai's formulas (src/hooks.ts).
Napi::Value MixBatch(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  js::Options o(info[0], "mixBatch: options");
  const int64_t n = o.integer("n", 1, 1 << 16), c = o.integer("c", 1, 64), h = o.integer("h", 1, 4096), w = o.integer("w", 1, 4096);
  const int64_t classes = o.integer("classes", 1, 1 << 16);
  if (static_cast<double>(n) * c * h * w > double(1 << 28)) throw UserError("mixBatch: the batch is too large");
  auto x = o.typedCopy<float>("x", torch::kFloat32, n * c * h * w).view({n, c, h, w});
  torch::Tensor y;
  const auto yv = o.value("y");
  if (yv.IsTypedArray() && yv.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array) {
    y = o.typedCopy<float>("y", torch::kFloat32, n * classes).view({n, classes});
  } else {
    y = o.typedCopy<int32_t>("y", torch::kInt32, n).to(torch::kInt64);
    if (n > 0 && (y.min().item<int64_t>() < 0 || y.max().item<int64_t>() >= classes)) throw UserError("mixBatch: y must hold class indices in [0, classes)");
  }
  MixOptions m;
  if (!o.has("kind")) throw UserError("mixBatch: options.kind is required ('mixup' or 'cutmix')");
  m.kind = *o.optChoice<MixKind>("kind", {{"mixup", MixKind::MixUp}, {"cutmix", MixKind::CutMix}});
  m.alpha = o.number("alpha", 1e-3, 1e3);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(o.integer("seed", 0, int64_t{1} << 53)));
  auto d = drawMix(n, h, w, m, gen);
  auto [mx, my] = applyMix(x.clone(), y, d, m.kind, classes);
  auto r = Napi::Object::New(env);
  r.Set("x", js::typed<float>(env, mx.contiguous().view({-1})));
  r.Set("y", js::typed<float>(env, my.contiguous().view({-1})));
  r.Set("lam", js::typed<double>(env, d.lam));
  r.Set("perm", js::typed<int32_t>(env, d.perm.to(torch::kInt32)));
  r.Set("box", js::typed<double>(env, std::vector<double>{double(d.x1), double(d.y1), double(d.x2), double(d.y2), double(d.cx), double(d.cy)}));
  r.Set("lamDrawn", d.lamDrawn);
  return r;
  TL_CATCH(env)
}

}  // namespace tl
