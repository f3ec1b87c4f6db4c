#include "trace.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <map>

namespace tl {

// An event's duration: LibTorch 1.13 has durationUs(), later versions durationNs() (the switch came around
// 2.0/2.1), so the one that exists is picked at compile time.
template <typename E>
static auto durationUs(const E& e, int) -> decltype(e.durationNs(), double()) {
  return static_cast<double>(e.durationNs()) / 1000.0;
}
template <typename E>
static double durationUs(const E& e, long) {
  return static_cast<double>(e.durationUs());
}

TraceScope::TraceScope(const std::string& chromePath, bool cuda) : chromePath_(chromePath) {
  if (chromePath_.empty()) return;
  namespace prof = torch::profiler::impl;
  prof::ProfilerConfig config(prof::ProfilerState::KINETO, /*report_input_shapes=*/false);
  std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
  if (cuda) activities.insert(prof::ActivityType::CUDA);
  torch::autograd::profiler::prepareProfiler(config, activities);
  torch::autograd::profiler::enableProfiler(config, activities);
  active_ = true;
}

std::vector<OpStat> TraceScope::finish() {
  std::vector<OpStat> out;
  if (!active_) return out;
  active_ = false;
  auto result = torch::autograd::profiler::disableProfiler();
  if (!result) return out;
  std::map<std::pair<std::string, bool>, OpStat> byName;
  for (const auto& e : result->events()) {
    const bool cuda = e.deviceType() == c10::DeviceType::CUDA;
    auto& s = byName[{e.name(), cuda}];
    s.name = e.name();
    s.cuda = cuda;
    s.count += 1;
    s.totalUs += durationUs(e, 0);
  }
  for (auto& kv : byName) out.push_back(kv.second);
  try {
    result->save(chromePath_);
  } catch (const std::exception&) {  // no Kineto in this LibTorch: the table is all there is
  }
  return out;
}

Napi::Array opsToJs(Napi::Env env, const std::vector<OpStat>& ops) {
  auto a = Napi::Array::New(env, ops.size());
  for (size_t k = 0; k < ops.size(); k++) {
    auto e = Napi::Object::New(env);
    e.Set("name", ops[k].name);
    e.Set("device", ops[k].cuda ? "cuda" : "cpu");
    e.Set("count", Napi::Number::New(env, static_cast<double>(ops[k].count)));
    e.Set("totalUs", ops[k].totalUs);
    a.Set(static_cast<uint32_t>(k), e);
  }
  return a;
}

TraceScope::~TraceScope() {
  try {
    if (active_) torch::autograd::profiler::disableProfiler();
  } catch (...) {  // an error is already on its way out; the trace is dropped
  }
}

}  // namespace tl
