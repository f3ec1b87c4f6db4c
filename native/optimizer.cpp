#include "optimizer.h"

#include <cmath>
#include <map>

namespace tl {

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
    std::vector<torch::Tensor> ps, grads, avgs, sqrs;
    for (auto* p : kv.second) {
      ps.push_back(p->tensor.data());
      grads.push_back(p->tensor.grad());
      avgs.push_back(gradAvg_[p->name]);
      sqrs.push_back(sqrAvg_[p->name]);
    }
    if (decays && h.wd != 0) at::_foreach_mul_(ps, 1.0 - h.lr * h.wd);
    at::_foreach_mul_(avgs, h.mom);
    at::_foreach_add_(avgs, grads, 1.0 - h.mom);
    at::_foreach_mul_(sqrs, sqrMom);
    at::_foreach_addcmul_(sqrs, grads, grads, 1.0 - sqrMom);
    const double debias1 = 1.0 - std::pow(h.mom, static_cast<double>(stepCount));
    const double debias2 = 1.0 - std::pow(sqrMom, static_cast<double>(stepCount));
    auto denom = at::_foreach_sqrt(sqrs);
    at::_foreach_div_(denom, std::sqrt(debias2));
    at::_foreach_add_(denom, eps);
    at::_foreach_addcdiv_(ps, avgs, denom, -h.lr / debias1);
  }
}

void FastAdam::clear() {
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
  clear();
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

static std::vector<double> numbers(const Napi::Value& v, int n, const char* what) {
  std::vector<double> out;
  if (v.IsNumber()) {
    out.assign(static_cast<size_t>(n), v.As<Napi::Number>().DoubleValue());
  } else if (v.IsArray()) {
    auto a = v.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) out.push_back(a.Get(i).As<Napi::Number>().DoubleValue());
  }
  if (static_cast<int>(out.size()) != n)
    throw UserError(std::string(what) + " needs one value per layer group (" + std::to_string(n) + ")");
  for (double x : out)
    if (!(x > 0) || !std::isfinite(x)) throw UserError(std::string(what) + " must be positive and finite, got " + std::to_string(x));
  return out;
}

Schedule scheduleFromJs(const Napi::Object& o, int numGroups) {
  Schedule s;
  s.kind = o.Get("kind").As<Napi::String>();
  s.lrMax = numbers(o.Get("lrMax"), numGroups, "lrMax");
  if (s.kind == "exp") s.lrEnd = numbers(o.Get("lrEnd"), numGroups, "endLr");
  auto need = [&](const char* k, double& dst) {
    if (!o.Get(k).IsNumber()) throw UserError(std::string("schedule '") + s.kind + "' needs " + k);
    dst = o.Get(k).As<Napi::Number>().DoubleValue();
  };
  if (s.kind == "onecycle") need("div", s.div);
  if (s.kind == "onecycle" || s.kind == "flatcos") {
    need("divFinal", s.divFinal);
    need("pctStart", s.pctStart);
    if (!(s.pctStart >= 0 && s.pctStart <= 1)) throw UserError("pctStart must be in [0, 1]");
    if (!(s.divFinal > 0) || (s.kind == "onecycle" && !(s.div > 0))) throw UserError("div and divFinal must be positive");
  }
  if (!o.Get("moms").IsArray() || o.Get("moms").As<Napi::Array>().Length() != 3) throw UserError("a schedule needs moms: [start, middle, end]");
  auto m = o.Get("moms").As<Napi::Array>();
  for (uint32_t i = 0; i < 3; i++) s.moms[i] = m.Get(i).As<Napi::Number>().DoubleValue();
  return s;
}

}  // namespace tl

namespace tl {

// fastAdamSteps({ params: NamedTensors, noDecay: boolean[], steps: [{ grads: NamedTensors, lr, mom, wd }] })
//   -> NamedTensors: runs FastAdam::step exactly as training does, on given tensors (for the tests'
//   comparison with the reference formula).
Napi::Value FastAdamSteps(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  auto o = info[0].As<Napi::Object>();
  auto ps = namedTensorsFromJs(o.Get("params"));
  auto nd = o.Get("noDecay").As<Napi::Array>();
  std::vector<ParamInfo> params;
  for (size_t i = 0; i < ps.size(); i++) {
    auto t = ps[i].second.to(torch::kFloat32).set_requires_grad(true);
    bool noDecay = nd.Get(static_cast<uint32_t>(i)).ToBoolean();
    params.push_back({ps[i].first, t, 0, false, noDecay});
  }
  FastAdam opt;
  opt.sqrMom = o.Get("sqrMom").As<Napi::Number>().DoubleValue();
  opt.eps = o.Get("eps").As<Napi::Number>().DoubleValue();
  auto steps = o.Get("steps").As<Napi::Array>();
  for (uint32_t s = 0; s < steps.Length(); s++) {
    auto st = steps.Get(s).As<Napi::Object>();
    auto grads = namedTensorsFromJs(st.Get("grads"));
    for (size_t i = 0; i < params.size(); i++) params[i].tensor.mutable_grad() = grads.at(i).second.to(torch::kFloat32);
    Hyper h{st.Get("lr").As<Napi::Number>().DoubleValue(), st.Get("mom").As<Napi::Number>().DoubleValue(),
            st.Get("wd").As<Napi::Number>().DoubleValue()};
    opt.step(params, {h});
  }
  NamedTensors out;
  for (auto& p : params) out.emplace_back(p.name, p.tensor.detach());
  return namedTensorsToJs(env, out);
  TL_CATCH(env)
}

// scheduleValues(schedule, numGroups, positions: Float64Array) -> { lrs: Float64Array [n*groups], moms }
Napi::Value ScheduleValues(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  int groups = info[1].As<Napi::Number>().Int32Value();
  auto s = scheduleFromJs(info[0].As<Napi::Object>(), groups);
  auto pos = info[2].As<Napi::Float64Array>();
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
