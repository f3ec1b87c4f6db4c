// The inference half of the native Learner: validation passes (probabilities, targets, losses) and
// predictions on decoded images.
#include "learner_core.h"
#include "js.h"
#include "trace.h"

#include <cstring>

namespace tl {

struct PredsResult {
  torch::Tensor probs, targets, losses;
  double seconds = 0;
  bool traced = false;
  std::vector<OpStat> ops;  // with a trace: the operator table
};

static Napi::Value predsToJs(Napi::Env env, PredsResult& r) {
  auto o = Napi::Object::New(env);
  o.Set("probs", tensorToFloat32Array(env, r.probs));
  o.Set("numClasses", Napi::Number::New(env, static_cast<double>(r.probs.size(1))));
  if (r.targets.defined()) {
    auto t = r.targets.to(torch::kInt32).contiguous();
    auto a = Napi::Int32Array::New(env, static_cast<size_t>(t.numel()));
    std::memcpy(a.Data(), t.data_ptr<int32_t>(), static_cast<size_t>(t.numel()) * 4);
    o.Set("targets", a);
    o.Set("losses", tensorToFloat32Array(env, r.losses));
  }
  o.Set("seconds", r.seconds);
  if (r.traced) o.Set("ops", opsToJs(env, r.ops));
  return o;
}

// validate({ split: 'valid' | 'train', augment: bool, onProgress }) -> { probs, targets, losses }
Napi::Value Learner::Validate(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  js::Options o(info[0], "validate: options");
  const std::string split = o.string("split");
  const bool augment = o.flag("augment");
  auto progress = std::make_shared<ProgressSink>(env, o.value("onProgress"));
  core_->cache(split);  // (checks the name)
  return onWorker<PredsResult>(
      env, core_,
      [split, augment, progress](Core& core) {
        auto* c = &core;
        const double t0 = nowSeconds();
        auto& data = c->cache(split);
        const int64_t n = data.size();
        if (n == 0) throw UserError("no " + split + " data to validate on");
        torch::NoGradGuard ng;
        c->net->module->eval();
        AutocastScope ac(c->bf16 && c->onCuda());
        std::vector<torch::Tensor> logits;
        // On several ranks each validates every world-th image from its own rank, and the logits are gathered:
        // every rank scores the whole set. (Test-time augmentation draws from the generators, which must stay
        // alike on every rank: there each rank does the whole set.)
        const bool shard = dist::active() && !augment;
        const int64_t w = shard ? dist::world() : 1, per = (n + w - 1) / w;
        auto mine = shard ? torch::arange(dist::rank(), n, w, torch::kInt64) : torch::arange(n, torch::kInt64);
        const int64_t m = mine.size(0);
        const int64_t nb = std::max<int64_t>(1, (m + c->bs - 1) / c->bs);
        for (int64_t b = 0; b < nb && b * c->bs < m; b++) {
          if (exiting()) throw UserError("the process is exiting");
          auto idx = mine.slice(0, b * c->bs, std::min(m, (b + 1) * c->bs));
          auto params = augment ? drawAugParams(idx.size(0), c->aug, c->gen) : identityAugParams(idx.size(0));
          auto x = c->inputs(data.images.index_select(0, toDevice(idx, c->net->device)), params);
          logits.push_back(c->net->forward(x).to(torch::kFloat32));
          const int64_t it = b + 1;
          progress->emit([it, nb](Napi::Env env) {
            auto e = Napi::Object::New(env);
            e.Set("iter", js::count(env, it));
            e.Set("total", js::count(env, nb));
            return e;
          });
        }
        auto all = logits.empty() ? torch::zeros({0, c->net->numClasses}) : torch::cat(logits, 0);
        // (rank r's k-th row is image k * world + r: stacking the ranks then interleaving restores the order)
        if (shard) all = dist::allgatherRows(all.to(torch::kFloat32), per).transpose(0, 1).reshape({per * w, -1}).narrow(0, 0, n).to(c->net->device);
        PredsResult r;
        r.losses = c->lossFn(all, data.labels, true).to(torch::kCPU);
        r.probs = c->activation(all).to(torch::kCPU);
        r.targets = data.labels.to(torch::kCPU);
        r.seconds = nowSeconds() - t0;
        return r;
      },
      predsToJs);
  TL_CATCH(env)
}

// predict(images: ImageStore or Uint8Array [N*P*P*3], n, presize, { augment, trace }) -> { probs, ops? }
// trace: a Chrome trace path; the call's operators (its copy into page-locked memory included) are tallied
// and returned as ops, as trainEpoch does for training steps.
Napi::Value Learner::Predict(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  const int64_t n = js::integer(info[1], "predict: n", 1, js::kMaxCount);
  const int64_t p = js::integer(info[2], "predict: presize", 1, js::kMaxSide);
  bool augment = false;
  std::string trace;
  if (!info[3].IsUndefined()) {
    js::Options o(info[3], "predict: options");
    augment = o.flag("augment");
    trace = o.optString("trace").value_or("");
  }
  // Copied here, on the JavaScript thread: the caller's array may be changed, transferred (detached) or
  // collected as soon as this call returns, and a worker thread reading it then read freed memory. On CUDA
  // the copy goes straight into page-locked memory, the copy the device reads anyway.
  auto src = imagesArg(env, info[0], n, p, "predict");  // (a store's images are copied below too)
  // On the CPU into the learner's staging buffer when no other prediction holds it: memory already
  // touched, so the copy is a memcpy rather than a page fault per 4 KiB of a fresh allocation (which made
  // the copy of 256 images take a fifth of a second).
  std::shared_ptr<std::atomic<bool>> staged;
  torch::Tensor view;
  if (core_->onCuda()) {
    view = pinnedCopy(src);
  } else {
    auto& st = core_->staging;
    if (!st.busy->exchange(true)) {
      if (!st.buffer.defined() || st.buffer.numel() < src.numel()) st.buffer = torch::empty({src.numel()}, torch::kUInt8);
      view = st.buffer.narrow(0, 0, src.numel()).view(src.sizes()).copy_(src);
      staged = st.busy;
    } else {
      view = src.clone();
    }
  }
  auto c = core_;
  return runAsync<PredsResult>(
      env, c->net->workerFor(),
      [c, view, augment, trace, staged]() {
        // the staging buffer is free again once this prediction is done with it, however it ends
        struct Release {
          std::shared_ptr<std::atomic<bool>> f;
          ~Release() {
            if (f) *f = false;
          }
        } release{staged};
        std::lock_guard<std::mutex> lock(c->net->mutex);
        c->check();
        const double t0 = nowSeconds();
        TraceScope traceScope(trace, c->onCuda());
        const auto& images = view;
        torch::NoGradGuard ng;
        c->net->module->eval();
        AutocastScope ac(c->bf16 && c->onCuda());
        std::vector<torch::Tensor> probs;
        const int64_t n = images.size(0);
        for (int64_t s = 0; s < n; s += c->bs) {
          if (exiting()) throw UserError("the process is exiting");
          auto chunk = toDevice(images.slice(0, s, std::min(n, s + c->bs)), c->net->device);
          auto params = augment ? drawAugParams(chunk.size(0), c->aug, c->gen) : identityAugParams(chunk.size(0));
          // stays on the device: one copy back at the end, so no chunk waits for the one before it
          probs.push_back(c->activation(c->net->forward(c->inputs(chunk, params)).to(torch::kFloat32)));
        }
        PredsResult r;
        r.probs = torch::cat(probs, 0).to(torch::kCPU);
        if (!trace.empty()) {
          r.ops = traceScope.finish();
          r.traced = true;
        }
        r.seconds = nowSeconds() - t0;
        return r;
      },
      predsToJs);
  TL_CATCH(env)
}

}  // namespace tl
