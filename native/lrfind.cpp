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
  js::Options o(info[0], "lrFind: options");
  const int groups = core_->net->numGroups;
  Schedule sched;
  sched.kind = "exp";
  sched.lrMax = lrsPerGroup(o, "startLr", groups);
  sched.lrEnd = lrsPerGroup(o, "endLr", groups);
  const double mom = o.number("mom", 0, 1);
  sched.moms = {mom, mom, mom};
  // (at least 6: fast.ai's minimum)
  const int64_t numIt = o.integer("numIt", 6, 1 << 24);
  const bool stopDiv = o.flag("stopDiv");
  auto progress = std::make_shared<ProgressSink>(env, o.value("onProgress"));
  core_->requireOptimizer();
  core_->stopRequested = false;
  return onWorker<LrFindResult>(
      env, core_,
      [sched, numIt, stopDiv, progress](Core& core) {
        auto* c = &core;
        // Snapshot: every parameter and buffer, the optimizer state and the random state.
        c->syncStart();
        NamedTensors snapshot;
        for (auto& kv : c->fullState(true)) snapshot.emplace_back(kv.first, kv.second.clone());
        LrFindResult r;
        SmoothLoss smoothLoss;
        double best = INFINITY;
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
              auto [x, y] = c->trainBatch(idx);
              auto loss = c->forwardLoss(x, y);
              // on several ranks, the mean of the ranks' losses: every rank sees the same curve and stops together
              const double l = dist::active() ? dist::allreduce(loss.detach().to(torch::kCPU, torch::kFloat64).reshape({1})).item<double>() / dist::world()
                                              : loss.item<double>();
              it++;
              const double smooth = smoothLoss.add(l);
              r.lrs.push_back(h.back().lr);
              r.losses.push_back(smooth);
              if (std::isfinite(l)) c->backwardAndStep(loss, h);
              best = std::min(best, smooth);
              const double lr = h.back().lr;
              progress->emit([it, numIt, smooth, lr](Napi::Env env) {
                auto e = Napi::Object::New(env);
                e.Set("iter", js::count(env, it));
                e.Set("total", js::count(env, numIt));
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
        o.Set("lrs", js::typed(env, r.lrs));
        o.Set("losses", js::typed(env, r.losses));
        return o;
      });
  TL_CATCH(env)
}

}  // namespace tl
