// fast.ai's LR finder in native code: an exponential ramp of learning rates over training batches.
#include "learner_core.h"
#include "js.h"

#include <cmath>

namespace tl {

struct LrFindResult {
  std::vector<double> lrs, losses;
};

// lrFind({ startLr: number[], endLr: number[], numIt, stopDiv, mom, onProgress }): exponential ramp,
// smoothed loss, stop at 4x the best; the weights, optimizer state and random state are restored.
Napi::Value Learner::LrFind(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  auto o = js::object(info[0], "lrFind: options");
  Schedule sched;
  sched.kind = "exp";
  auto sObj = Napi::Object::New(env);
  sObj.Set("kind", "exp");
  sObj.Set("lrMax", o.Get("startLr"));
  sObj.Set("lrEnd", o.Get("endLr"));
  const double mom = js::number(o.Get("mom"), "mom", 0, 1);
  auto momArr = Napi::Array::New(env, 3);
  for (uint32_t i = 0; i < 3; i++) momArr.Set(i, mom);
  sObj.Set("moms", momArr);
  sched = scheduleFromJs(sObj, core_->net->numGroups);
  // (at least 6: fast.ai's minimum)
  const int64_t numIt = js::integer(o.Get("numIt"), "lrFind: numIt", 6, 1 << 24);
  bool stopDiv = o.Get("stopDiv").ToBoolean();
  auto progress = std::make_shared<ProgressSink>(env, o.Get("onProgress"));
  auto c = core_;
  c->requireOptimizer();
  c->stopRequested = false;
  return runAsync<LrFindResult>(
      env, c->net->workerFor(),
      [c, sched, numIt, stopDiv, progress]() {
        std::lock_guard<std::mutex> lock(c->net->mutex);
        c->check();
        // Snapshot: every parameter and buffer, the optimizer state and the random state.
        NamedTensors snapshot;
        for (auto& kv : c->fullState(true)) snapshot.emplace_back(kv.first, kv.second.clone());
        LrFindResult r;
        double val = 0, best = INFINITY;
        int64_t it = 0;
        try {
          while (it < numIt) {
            auto batches = c->trainBatches();
            bool stop = false;
            for (auto& idx : batches) {
              if (it >= numIt || c->stopRequested || exiting()) {
                stop = true;
                break;
              }
              const double pos = static_cast<double>(it) / static_cast<double>(numIt);
              auto h = c->hypers(sched, pos);
              auto dIdx = toDevice(idx, c->net->device);
              auto params = drawAugParams(idx.size(0), c->aug, c->gen);
              auto x = c->inputs(c->train.images.index_select(0, dIdx), params);
              auto y = c->train.labels.index_select(0, dIdx);
              auto loss = c->forwardLoss(x, y);
              const double l = loss.item<double>();
              it++;
              val = 0.98 * val + 0.02 * l;
              const double smooth = val / (1 - std::pow(0.98, static_cast<double>(it)));
              r.lrs.push_back(h.back().lr);
              r.losses.push_back(smooth);
              if (std::isfinite(l)) c->backwardAndStep(loss, h);
              best = std::min(best, smooth);
              const double lr = h.back().lr;
              progress->emit([it, numIt, smooth, lr](Napi::Env env) {
                auto e = Napi::Object::New(env);
                e.Set("iter", Napi::Number::New(env, static_cast<double>(it)));
                e.Set("total", Napi::Number::New(env, static_cast<double>(numIt)));
                e.Set("smoothLoss", smooth);
                e.Set("lr", lr);
                return e;
              });
              if (!std::isfinite(smooth) || (stopDiv && smooth > 4 * best)) {
                stop = true;
                break;
              }
            }
            if (stop) break;
          }
        } catch (...) {
          c->loadFullState(snapshot, true);
          throw;
        }
        c->zeroGrad();
        c->loadFullState(snapshot, true);
        return r;
      },
      [](Napi::Env env, LrFindResult& r) -> Napi::Value {
        auto o = Napi::Object::New(env);
        auto lrs = Napi::Float64Array::New(env, r.lrs.size());
        auto losses = Napi::Float64Array::New(env, r.losses.size());
        std::copy(r.lrs.begin(), r.lrs.end(), lrs.Data());
        std::copy(r.losses.begin(), r.losses.end(), losses.Data());
        o.Set("lrs", lrs);
        o.Set("losses", losses);
        return o;
      });
  TL_CATCH(env)
}

}  // namespace tl
