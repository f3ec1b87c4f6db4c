#include "optimizer.h"
#include "js.h"

#include <cmath>
#include <map>

namespace tl {

// PyTorch's fused AdamW kernel (torch.optim.AdamW(fused=True)) is in LibTorch from 2.1. fast.ai's Adam is
// AdamW with beta1 = mom, beta2 = sqrMom, eps outside the square root and decoupled weight decay: the same
// formula, term for term (optimizer.h). One pass over parameters, gradients and both averages instead of
// the _foreach path's dozen (its kernel time: docs/performance.md). TL_NO_FUSED_ADAM builds without it
// (scripts/gpu-check.sh does so when this file does not compile against the GPU machine's LibTorch).
#if (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)) && !defined(TL_NO_FUSED_ADAM)
#define TL_FUSED_ADAM 1
#endif

bool FastAdam::fusedCudaCompiled() {
#ifdef TL_FUSED_ADAM
  return true;
#else
  return false;
#endif
}

// The one-pass kernels (ours on the CPU, PyTorch's on CUDA) walk each tensor's memory as a flat array, so
// they take float32 tensors whose elements lie in the same order: the usual case; anything else takes the
// _foreach path. Strides along dimensions of size 1 do not count: autograd's layout contract ignores them
// too, and a channels_last 1x1 convolution's weight (the downsamples) gets a gradient that differs there
// (seen on a GPU: some buckets went to the _foreach path while the check compared them).
// PyTorch's fused kernel has compared all strides in some versions (its size-1 exception came with
// pytorch#134546), hence asStrided below.
static bool sameLayout(const torch::Tensor& p, const torch::Tensor& g, const torch::Tensor& m, const torch::Tensor& v) {
  if (p.scalar_type() != torch::kFloat32 || !p.is_non_overlapping_and_dense()) return false;
  for (const auto* t : {&g, &m, &v}) {
    if (t->scalar_type() != torch::kFloat32 || t->device() != p.device() || t->sizes() != p.sizes() || !t->is_non_overlapping_and_dense()) return false;
    for (int64_t d = 0; d < p.dim(); ++d)
      if (p.size(d) != 1 && t->stride(d) != p.stride(d)) return false;
  }
  return true;
}

// t seen with p's strides: the same memory, as sameLayout(p, t, ...) holds
static torch::Tensor asStrided(const torch::Tensor& t, const torch::Tensor& p) {
  return t.strides() == p.strides() ? t : t.as_strided(p.sizes(), p.strides(), t.storage_offset());
}

// On the CPU the _foreach kernels fall back to one operator per tensor and per formula term: nine passes
// over memory and a temporary the size of the parameters. This is the same step in one pass.
static void fusedCpuStep(torch::Tensor& p, const torch::Tensor& g, torch::Tensor& m, torch::Tensor& v, float decay, float mom,
                         float sqrMom, float invSqrtDebias2, float eps, float stepSize) {
  float* pp = p.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  // the same arithmetic, in the same order, as the _foreach path below
  at::parallel_for(0, p.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const float gi = gp[i];
      const float mi = mp[i] * mom + gi * (1 - mom);
      const float vi = vp[i] * sqrMom + gi * gi * (1 - sqrMom);
      mp[i] = mi;
      vp[i] = vi;
      pp[i] = pp[i] * decay + stepSize * mi / (std::sqrt(vi) * invSqrtDebias2 + eps);
    }
  });
}

namespace {
struct AdamLists {
  std::vector<torch::Tensor> ps, grads, avgs, sqrs;
  void add(const torch::Tensor& p, const torch::Tensor& g, const torch::Tensor& m, const torch::Tensor& v) {
    ps.push_back(p);
    grads.push_back(g);
    avgs.push_back(m);
    sqrs.push_back(v);
  }
};
}  // namespace

void FastAdam::step(const std::vector<ParamInfo>& params, const std::vector<Hyper>& groups) {
  torch::NoGradGuard ng;
  // Bucket by (group, decays?, step count): every parameter in a bucket shares its scalars.
  std::map<std::tuple<int, bool, int64_t>, std::vector<const ParamInfo*>> buckets;
  for (auto& p : params) {
    if (!p.tensor.requires_grad() || !p.tensor.grad().defined()) continue;
    auto& st = step_[p.name];
    if (!gradAvg_.count(p.name)) {
      gradAvg_[p.name] = torch::zeros_like(p.tensor, torch::MemoryFormat::Preserve);
      sqrAvg_[p.name] = torch::zeros_like(p.tensor, torch::MemoryFormat::Preserve);
      st = 0;
    }
    st += 1;
    buckets[{p.group, !p.noDecay, st}].push_back(&p);
  }
  for (auto& kv : buckets) {
    auto [g, decays, stepCount] = kv.first;
    const Hyper& h = groups.at(static_cast<size_t>(g));
    const double debias1 = 1.0 - std::pow(h.mom, static_cast<double>(stepCount));
    const double debias2 = 1.0 - std::pow(sqrMom, static_cast<double>(stepCount));
    AdamLists multi, onePass;  // the _foreach path's tensors; the fused CUDA kernel's
    for (auto* p : kv.second) {
      auto data = p->tensor.data();
      auto grad = p->tensor.grad();
      auto& avg = gradAvg_[p->name];
      auto& sqr = sqrAvg_[p->name];
      if (fuseOnCpu && data.device().is_cpu() && sameLayout(data, grad, avg, sqr)) {
        fusedCpuStep(data, grad, avg, sqr, static_cast<float>(decays ? 1.0 - h.lr * h.wd : 1.0), static_cast<float>(h.mom),
                     static_cast<float>(sqrMom), static_cast<float>(1.0 / std::sqrt(debias2)), static_cast<float>(eps),
                     static_cast<float>(-h.lr / debias1));
        continue;
      }
      if (fusedOn(data.device()) && sameLayout(data, grad, avg, sqr))
        onePass.add(data, asStrided(grad, data), asStrided(avg, data), asStrided(sqr, data));
      else
        multi.add(data, grad, avg, sqr);
    }
#ifdef TL_FUSED_ADAM
    if (!onePass.ps.empty()) {
      // the step count the bias corrections use, as a device scalar the kernel reads: one per parameter, here
      // the same tensor for the whole bucket, whose parameters share their count
      auto count = torch::full({}, static_cast<double>(stepCount), onePass.ps[0].options().dtype(torch::kFloat32));
      at::_fused_adamw_(onePass.ps, onePass.grads, onePass.avgs, onePass.sqrs, {}, std::vector<torch::Tensor>(onePass.ps.size(), count),
                        h.lr, h.mom, sqrMom, decays ? h.wd : 0.0, eps, /*amsgrad=*/false, /*maximize=*/false);
    }
#endif
    auto& [ps, grads, avgs, sqrs] = multi;
    if (ps.empty()) continue;
    if (decays && h.wd != 0) at::_foreach_mul_(ps, 1.0 - h.lr * h.wd);
    at::_foreach_mul_(avgs, h.mom);
    at::_foreach_add_(avgs, grads, 1.0 - h.mom);
    at::_foreach_mul_(sqrs, sqrMom);
    at::_foreach_addcmul_(sqrs, grads, grads, 1.0 - sqrMom);
    auto denom = at::_foreach_sqrt(sqrs);
    at::_foreach_div_(denom, std::sqrt(debias2));
    at::_foreach_add_(denom, eps);
    at::_foreach_addcdiv_(ps, avgs, denom, -h.lr / debias1);
  }
}

// x *= s for every tensor, s a 0-dim tensor on their device (a kernel argument read at run time).
static void mulByTensor(std::vector<torch::Tensor>& xs, const torch::Tensor& s) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  at::_foreach_mul_(xs, s);
#else
  for (auto& x : xs) x.mul_(s);
#endif
}

static std::vector<torch::Tensor> timesTensor(const std::vector<torch::Tensor>& xs, const torch::Tensor& s) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  return at::_foreach_mul(xs, s);
#else
  std::vector<torch::Tensor> out;
  for (auto& x : xs) out.push_back(x.mul(s));
  return out;
#endif
}

AdamPlan FastAdam::plan(const std::vector<ParamInfo>& params) const {
  std::map<std::tuple<int, bool, int64_t>, AdamBucket> buckets;
  for (size_t i = 0; i < params.size(); i++) {
    const auto& p = params[i];
    // Every trainable parameter an ordinary step gave state to (one that had a gradient then). Not "has a
    // gradient now": the end of an epoch clears them, so a capture that comes first in an epoch would find
    // none and step nothing. (The state is made by an ordinary step first: creating it inside a capture would
    // zero it at every replay.)
    if (!p.tensor.requires_grad()) continue;
    auto st = step_.find(p.name);
    if (st == step_.end() || !gradAvg_.count(p.name)) continue;
    auto& b = buckets[{p.group, !p.noDecay, st->second}];
    b.group = p.group;
    b.decays = !p.noDecay;
    b.idx.push_back(i);
  }
  AdamPlan out;
  for (auto& kv : buckets) out.push_back(kv.second);
  return out;
}

torch::Tensor FastAdam::scalarTable(const std::vector<ParamInfo>& params, const AdamPlan& plan,
                                    const std::vector<std::vector<Hyper>>& hypers, size_t from) const {
  const int64_t n = static_cast<int64_t>(hypers.size() - std::min(from, hypers.size()));
  auto t = torch::empty({n, static_cast<int64_t>(plan.size()), kNumAdamScalars}, torch::kFloat64);
  auto a = t.accessor<double, 3>();
  for (int64_t j = 0; j < n; j++) {
    for (size_t b = 0; b < plan.size(); b++) {
      const Hyper& h = hypers[from + static_cast<size_t>(j)].at(static_cast<size_t>(plan[b].group));
      // the step about to be taken: the bucket's count so far, plus one per step before it in the table
      const double stepCount = static_cast<double>(step_.at(params[plan[b].idx[0]].name) + 1 + j);
      const double debias1 = 1.0 - std::pow(h.mom, stepCount);
      const double debias2 = 1.0 - std::pow(sqrMom, stepCount);
      auto row = a[j][static_cast<int64_t>(b)];
      row[kDecay] = plan[b].decays ? 1.0 - h.lr * h.wd : 1.0;
      row[kMom] = h.mom;
      row[kOneMinusMom] = 1.0 - h.mom;
      row[kInvSqrtDebias2] = 1.0 / std::sqrt(debias2);
      row[kStepSize] = -h.lr / debias1;
    }
  }
  return t.to(torch::kFloat32);
}

void FastAdam::stepWith(const std::vector<ParamInfo>& params, const AdamPlan& plan, const torch::Tensor& scalars) {
  torch::NoGradGuard ng;
  for (size_t b = 0; b < plan.size(); b++) {
    auto s = scalars[static_cast<int64_t>(b)];
    std::vector<torch::Tensor> ps, grads, avgs, sqrs;
    for (size_t i : plan[b].idx) {
      const auto& p = params[i];
      ps.push_back(p.tensor.data());
      grads.push_back(p.tensor.grad());
      avgs.push_back(gradAvg_.at(p.name));
      sqrs.push_back(sqrAvg_.at(p.name));
    }
    // the formula of step(), with the changing scalars as tensors
    if (plan[b].decays) mulByTensor(ps, s[kDecay]);
    mulByTensor(avgs, s[kMom]);
    at::_foreach_add_(avgs, timesTensor(grads, s[kOneMinusMom]));
    at::_foreach_mul_(sqrs, sqrMom);
    at::_foreach_addcmul_(sqrs, grads, grads, 1.0 - sqrMom);
    auto denom = at::_foreach_sqrt(sqrs);
    mulByTensor(denom, s[kInvSqrtDebias2]);
    at::_foreach_add_(denom, eps);
    auto update = at::_foreach_div(avgs, denom);
    mulByTensor(update, s[kStepSize]);
    at::_foreach_add_(ps, update);
  }
}

void FastAdam::advance(const std::vector<ParamInfo>& params, const AdamPlan& plan) {
  for (auto& b : plan)
    for (size_t i : b.idx) step_[params[i].name] += 1;
}

void FastAdam::clear() {
  generation_++;
  gradAvg_.clear();
  sqrAvg_.clear();
  step_.clear();
}

NamedTensors FastAdam::state(const std::vector<ParamInfo>& params) const {
  NamedTensors out;
  for (auto& p : params) {
    auto it = gradAvg_.find(p.name);
    if (it == gradAvg_.end()) continue;
    out.emplace_back("opt." + p.name + ".grad_avg", it->second.contiguous());
    out.emplace_back("opt." + p.name + ".sqr_avg", sqrAvg_.at(p.name).contiguous());
    out.emplace_back("opt." + p.name + ".step", torch::tensor({step_.at(p.name)}, torch::kInt64));
  }
  return out;
}

void FastAdam::loadState(const std::vector<ParamInfo>& params, const NamedTensors& tensors) {
  std::unordered_map<std::string, const torch::Tensor*> byName;
  for (auto& kv : tensors) byName[kv.first] = &kv.second;
  clear();  // (a new generation: the tensors below are new)
  for (auto& p : params) {
    auto a = byName.find("opt." + p.name + ".grad_avg");
    auto s = byName.find("opt." + p.name + ".sqr_avg");
    auto n = byName.find("opt." + p.name + ".step");
    if (a == byName.end() || s == byName.end() || n == byName.end()) continue;
    if (a->second->sizes() != p.tensor.sizes() || s->second->sizes() != p.tensor.sizes())
      throw UserError("optimizer state for '" + p.name + "' has the wrong shape: the checkpoint is for another network");
    gradAvg_[p.name] = a->second->to(p.tensor.device(), p.tensor.scalar_type()).contiguous(p.tensor.suggest_memory_format());
    sqrAvg_[p.name] = s->second->to(p.tensor.device(), p.tensor.scalar_type()).contiguous(p.tensor.suggest_memory_format());
    step_[p.name] = n->second->to(torch::kInt64).item<int64_t>();
  }
}

double schedCos(double start, double end, double pos) { return start + (1 + std::cos(M_PI * (1 - pos))) * (end - start) / 2; }

double combinedCos(double pct, double start, double middle, double end, double pos) {
  // combine_scheds([pct, 1-pct], [SchedCos(start, middle), SchedCos(middle, end)]): the phase is the
  // last boundary not above pos, and pos is rescaled inside it.
  if (pos < pct) return schedCos(start, middle, pos / pct);
  const double w = 1 - pct;
  return schedCos(middle, end, w > 0 ? (pos - pct) / w : 1.0);
}

double Schedule::lr(size_t g, double pos) const {
  const double top = lrMax.at(g);
  if (kind == "onecycle") return combinedCos(pctStart, top / div, top, top / divFinal, pos);
  if (kind == "constant") return top;
  if (kind == "flatcos") return combinedCos(pctStart, top, top, top / divFinal, pos);
  if (kind == "exp") return top * std::pow(lrEnd.at(g) / top, pos);
  throw UserError("unknown schedule '" + kind + "'");
}

double Schedule::mom(double pos) const {
  if (kind == "onecycle") return combinedCos(pctStart, moms[0], moms[1], moms[2], pos);
  return moms[0];  // constant momentum for the other schedules
}

std::vector<double> lrsPerGroup(const js::Options& o, const char* key, int numGroups) {
  std::vector<double> out;
  if (o.value(key).IsNumber()) {
    out.assign(static_cast<size_t>(numGroups), o.number(key));
  } else if (o.value(key).IsArray()) {
    out = o.numbers(key);
  } else {
    throw UserError(o.name(key) + " must be a number or one number per layer group (" + std::to_string(numGroups) + ")");
  }
  if (static_cast<int>(out.size()) != numGroups)
    throw UserError(o.name(key) + " needs one value per layer group (" + std::to_string(numGroups) + "), got " + std::to_string(out.size()));
  for (double x : out)
    if (!(x > 0)) throw UserError(o.name(key) + " must be positive, got " + js::show(x));
  return out;
}

Schedule scheduleFromJs(const js::Options& o, int numGroups) {
  Schedule s;
  if (!o.has("kind")) throw UserError(o.name("kind") + " must be 'onecycle', 'constant', 'flatcos' or 'exp'");
  s.kind = *o.optChoice<std::string>("kind", {{"onecycle", "onecycle"}, {"constant", "constant"}, {"flatcos", "flatcos"}, {"exp", "exp"}});
  s.lrMax = lrsPerGroup(o, "lrMax", numGroups);
  if (s.kind == "exp") s.lrEnd = lrsPerGroup(o, "lrEnd", numGroups);
  auto need = [&](const char* k, double lo, double hi) {
    if (!o.has(k)) throw UserError("schedule '" + s.kind + "' needs " + k);
    return o.number(k, lo, hi);
  };
  if (s.kind == "onecycle") s.div = need("div", 1e-300, INFINITY);
  if (s.kind == "onecycle" || s.kind == "flatcos") {
    s.divFinal = need("divFinal", 1e-300, INFINITY);
    s.pctStart = need("pctStart", 0, 1);
  }
  if (!o.value("moms").IsArray()) throw UserError("a schedule needs moms: [start, middle, end]");
  const auto m = o.numbers("moms", 3, 0, 1);
  std::copy(m.begin(), m.end(), s.moms.begin());
  return s;
}

}  // namespace tl

namespace tl {

// fastAdamSteps({ params: NamedTensors, noDecay: boolean[], sqrMom, eps, fused?, graph?, device?, steps: [{ grads: NamedTensors, lr, mom, wd }] })
//   -> NamedTensors: runs FastAdam::step exactly as training does, on given tensors on `device` (default the
//   CPU), for the tests' comparison with the reference formula. fused: the one-pass kernel of that device
//   (ours on the CPU, the default; PyTorch's fused AdamW on CUDA).
Napi::Value FastAdamSteps(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  js::Options o(info[0], "fastAdamSteps: options");
  auto ps = namedTensorsFromJs(o.value("params"));
  const auto noDecay = o.value("noDecay");
  if (!noDecay.IsArray() || noDecay.As<Napi::Array>().Length() != ps.size()) throw UserError("noDecay must be an array of one boolean per parameter");
  const torch::Device device = parseDevice(o.optString("device").value_or("cpu"));
  std::vector<ParamInfo> params;
  for (size_t i = 0; i < ps.size(); i++) {
    auto t = ps[i].second.to(device, torch::kFloat32).set_requires_grad(true);
    params.push_back({ps[i].first, t, 0, false, js::boolean(noDecay.As<Napi::Array>().Get(static_cast<uint32_t>(i)), "noDecay[i]")});
  }
  FastAdam opt;
  opt.sqrMom = o.number("sqrMom", 0, 1);
  opt.eps = o.number("eps", 0, 1);
  if (auto fused = o.optBoolean("fused")) opt.fuseOnCpu = opt.fuseOnCuda = *fused;
  if (opt.fuseOnCuda && device.is_cuda() && !FastAdam::fusedCudaCompiled()) throw UserError("fastAdamSteps: this LibTorch has no fused AdamW kernel");
  // graph: after the first step (which makes the state), the steps a CUDA graph replays: plan, scalar
  // table, stepWith, advance
  const bool graph = o.flag("graph");
  const auto stepsV = o.value("steps");
  if (!stepsV.IsArray()) throw UserError("steps must be an array of { grads, lr, mom, wd }");
  auto steps = stepsV.As<Napi::Array>();
  std::vector<std::vector<Hyper>> hypers;
  std::vector<NamedTensors> grads;
  for (uint32_t s = 0; s < steps.Length(); s++) {
    js::Options st(steps.Get(s), "steps[i]", "steps[" + std::to_string(s) + "]");
    hypers.push_back({{st.number("lr", 0, 1e6), st.number("mom", 0, 1), st.number("wd", 0, 1e6)}});
    grads.push_back(namedTensorsFromJs(st.value("grads")));
    if (grads.back().size() != params.size()) throw UserError("steps[" + std::to_string(s) + "].grads needs one gradient per parameter");
    for (size_t i = 0; i < params.size(); i++)
      if (!grads.back()[i].second.sizes().equals(params[i].tensor.sizes())) throw UserError("steps[" + std::to_string(s) + "].grads: a gradient's shape is not its parameter's");
  }
  AdamPlan plan;
  torch::Tensor table;
  for (uint32_t s = 0; s < steps.Length(); s++) {
    for (size_t i = 0; i < params.size(); i++) params[i].tensor.mutable_grad() = grads[s][i].second.to(device, torch::kFloat32);
    if (!graph || s == 0) {
      opt.step(params, hypers[s]);
      continue;
    }
    if (s == 1) {
      plan = opt.plan(params);
      table = opt.scalarTable(params, plan, hypers, 1).to(device);
    }
    opt.stepWith(params, plan, table[s - 1]);
    opt.advance(params, plan);
  }
  NamedTensors out;
  for (auto& p : params) out.emplace_back(p.name, p.tensor.detach().cpu());
  return namedTensorsToJs(env, out);
  TL_CATCH(env)
}

// scheduleValues(schedule, numGroups, positions: Float64Array) -> { lrs: Float64Array [n*groups], moms }
Napi::Value ScheduleValues(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  const int groups = static_cast<int>(js::integer(info[1], "scheduleValues: groups", 1, 64));
  auto s = scheduleFromJs(js::Options(info[0], "schedule", "schedule"), groups);
  auto pos = js::typedArray<double>(info[2], "scheduleValues: positions");
  auto lrs = Napi::Float64Array::New(env, pos.ElementLength() * groups);
  auto moms = Napi::Float64Array::New(env, pos.ElementLength());
  for (size_t i = 0; i < pos.ElementLength(); i++) {
    for (int g = 0; g < groups; g++) lrs[i * groups + g] = s.lr(static_cast<size_t>(g), pos[i]);
    moms[i] = s.mom(pos[i]);
  }
  auto out = Napi::Object::New(env);
  out.Set("lrs", lrs);
  out.Set("moms", moms);
  return out;
  TL_CATCH(env)
}

}  // namespace tl
