// The state behind a native Learner, shared by the files that implement its methods: learner.cpp
// (data, options, state), train_epoch.cpp (the training loop), predict.cpp (validation and prediction), lrfind.cpp and
// gradcam.cpp.
#pragma once
#include "autocast.h"
#include "distributed.h"
#include "learner.h"
#include "mixup.h"
#include "sync_batchnorm.h"
#include "step_graph.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>

namespace tl {
namespace F = torch::nn::functional;

struct Learner::Core {
  std::shared_ptr<NetState> net;
  FastAdam opt;
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  ImageCache train, valid;
  int64_t bs = 64, size = 224;  // (the TypeScript side always sets them: DATA_DEFAULTS in src/data/transforms.ts)
  AugOptions aug;
  Normalize norm;
  double wd = 0.01;
  bool trainBn = true;
  bool bf16 = false;
  torch::Tensor classWeights;
  double labelSmoothing = 0;
  // multi-label classification: each image has a set of labels (a multi-hot row of floats), the loss is
  // binary cross-entropy on each logit and the probabilities are sigmoids (fast.ai's BCEWithLogitsLossFlat)
  bool multiLabel = false;
  // gradient clipping by global norm before each optimizer step (fast.ai's GradientClip; 0: off)
  double maxGradNorm = 0;
  // MixUp or CutMix of every training batch (mixup.h), soft targets into the same loss
  MixOptions mix;
  // gradient accumulation (fast.ai's GradientAccumulation; 0: off): each batch's gradient scaled by
  // bs / nAcc and added up, the optimizer stepping once nAcc samples have been seen (every accBatches()
  // batches, counted across epochs as fast.ai counts them); the schedule advances per optimizer step
  int64_t nAcc = 0;
  int64_t accBatches() const { return nAcc > 0 ? std::max<int64_t>(1, (nAcc + bs - 1) / bs) : 1; }
  // BatchNorm layers run in eval mode during training (running statistics, none updated): the tests'
  // hook for comparing accumulated gradients with one big batch's, as fast.ai's BnFreeze does for frozen layers
  bool batchNormEval = false;
  // on several ranks, training-mode BatchNorms normalise with the whole global batch's statistics
  // (PyTorch's SyncBatchNorm; sync_batchnorm.h)
  bool syncBatchNorm = false;
  int frozenIdx = 0;
  bool cudaGraph = false;  // train with the step captured as a CUDA graph (step_graph.h)
  StepGraph graph;
  std::atomic<bool> stopRequested{false};
  // Where predict() copies the caller's images on the CPU (one prediction at a time; others copy afresh).
  struct Staging {
    torch::Tensor buffer;
    std::shared_ptr<std::atomic<bool>> busy = std::make_shared<std::atomic<bool>>(false);
  } staging;
  std::atomic<bool> disposed{false};

  void check() const {
    if (disposed) throw UserError("this learner was disposed: create a new one");
    net->check();
  }
  bool onCuda() const { return net->device.is_cuda(); }
  // Adam's constants have no native default (fast.ai's live in the TypeScript DEFAULTS): training without
  // them would compute NaN, so it refuses.
  void requireOptimizer() const {
    if (!std::isfinite(opt.sqrMom) || !std::isfinite(opt.eps)) throw UserError("set the optimizer's sqrMom and eps first (setOptions({ sqrMom, eps }))");
  }

  ImageCache& cache(const std::string& split) {
    if (split == "train") return train;
    if (split == "valid") return valid;
    throw UserError("split must be 'train' or 'valid', got '" + split + "'");
  }

  torch::Tensor normMean, normStd;  // on the device, refreshed when the statistics change

  // Float, normalised, channels_last batch on the device from cached uint8 images.
  torch::Tensor inputs(const torch::Tensor& images, const torch::Tensor& params) {
    auto x = augmentImages(images, params, size);
    if (!normMean.defined() || normMean.device() != x.device()) {
      normMean = toDevice(torch::tensor({norm.mean[0], norm.mean[1], norm.mean[2]}, torch::kFloat32).view({1, 3, 1, 1}), x.device());
      normStd = toDevice(torch::tensor({norm.std[0], norm.std[1], norm.std[2]}, torch::kFloat32).view({1, 3, 1, 1}), x.device());
    }
    return normalizeBatch(x, normMean, normStd);
  }

  // A training batch: the cached images at `idx` (CPU indices), augmented with draws from the learner's
  // generator, and their labels. The one data path of training and lrFind.
  std::pair<torch::Tensor, torch::Tensor> trainBatch(const torch::Tensor& idx) {
    auto dIdx = toDevice(idx, net->device);
    auto params = drawAugParams(idx.size(0), aug, gen);
    auto x = inputs(train.images.index_select(0, dIdx), params);
    auto y = train.labels.index_select(0, dIdx);
    if (mix.kind == MixKind::None) return {x, y};
    // after normalisation, as fast.ai's callback runs after the batch transforms
    return applyMix(x, y, drawMix(x.size(0), x.size(2), x.size(3), mix, gen), mix.kind, net->numClasses);
  }

  // the loss of a batch (the mean), or of each item; multi-label: the mean over the item's labels. `y`: class
  // indices, or (MixUp, CutMix) float rows of class probabilities, which cross-entropy takes as they are
  torch::Tensor lossFn(const torch::Tensor& logits, const torch::Tensor& y, bool perItem) {
    if (multiLabel) {
      auto l = F::binary_cross_entropy_with_logits(logits.to(torch::kFloat32), y, F::BinaryCrossEntropyWithLogitsFuncOptions().reduction(torch::kNone));
      return perItem ? l.mean(1) : l.mean();
    }
    auto o = F::CrossEntropyFuncOptions().label_smoothing(labelSmoothing);
    if (classWeights.defined()) o = o.weight(classWeights.to(logits.device()));
    if (perItem) o = o.reduction(torch::kNone);
    return F::cross_entropy(logits.to(torch::kFloat32), y, o);
  }

  // logits to probabilities: softmax over the classes, or each label's sigmoid
  torch::Tensor activation(const torch::Tensor& logits) const { return multiLabel ? torch::sigmoid(logits) : torch::softmax(logits, 1); }

  std::vector<Hyper> hypers(const Schedule& s, double pos) const {
    std::vector<Hyper> h;
    for (int g = 0; g < net->numGroups; g++) h.push_back({s.lr(static_cast<size_t>(g), pos), s.mom(pos), wd});
    return h;
  }

  void zeroGrad() {
    for (auto& p : net->params)
      if (p.tensor.grad().defined()) p.tensor.mutable_grad() = torch::Tensor();
  }

  // Forward + loss in training mode; the caller checks the loss, then calls backwardAndStep. The gradients
  // start from zero, except while accumulating.
  torch::Tensor forwardLoss(const torch::Tensor& x, const torch::Tensor& y) {
    trainMode();
    if (nAcc == 0) zeroGrad();
    AutocastScope ac(bf16 && onCuda());
    SyncBatchNormScope sync(syncBatchNorm && dist::active());
    return lossFn(net->forward(x), y, false);
  }

  // The network in training mode (BatchNorms held in eval under the tests' batchNormEval hook).
  void trainMode() {
    net->module->train();
    if (batchNormEval)
      for (auto& m : net->module->modules(/*include_self=*/false))
        if (m->as<torch::nn::BatchNorm2d>() || m->as<torch::nn::BatchNorm1d>()) m->eval();
  }

  // Accumulating, a batch's loss as its gradient enters the sums: fast.ai's after_loss, divided by
  // nAcc / (the batch's size); the logged loss stays the batch's own.
  torch::Tensor accumulationScaled(const torch::Tensor& loss, int64_t batchSize) const {
    return nAcc > 0 ? loss * (static_cast<double>(batchSize) / static_cast<double>(nAcc)) : loss;
  }

  void backwardAndStep(torch::Tensor& loss, const std::vector<Hyper>& h) {
    beginSync();
    loss.backward();
    syncGrads();
    clipGrads();
    opt.step(net->params, h);
  }

  // Data-parallel training (distributed.h): the gradients averaged over the ranks before each optimizer
  // step. beginSync() before the backward of such a step lets the all-reduces start while backward runs;
  // syncGrads() after it finishes them (or does all of it, when beginSync was not called). Nothing
  // without a group.
  dist::GradReducer reducer;
  // the trainable parameters, last layers first (the order backward produces their gradients)
  std::vector<torch::Tensor> trainableLastFirst() const {
    std::vector<torch::Tensor> out;
    for (auto it = net->params.rbegin(); it != net->params.rend(); ++it)
      if (it->tensor.requires_grad()) out.push_back(it->tensor);
    return out;
  }
  void beginSync() {
    if (dist::active()) reducer.prepare(trainableLastFirst());
  }
  void syncGrads() {
    if (dist::active()) reducer.finish(trainableLastFirst());
  }

  // Before training on several ranks: every rank must hold the same data, and starts from rank 0's weights
  // and buffers (as DDP's constructor broadcasts them), whatever each loaded.
  void syncStart() {
    if (!dist::active()) return;
    auto sizes = torch::tensor({train.size(), -train.size(), valid.size(), -valid.size()}, torch::kFloat64);
    auto m = dist::allreduce(sizes, /*max=*/true);
    auto v = m.accessor<double, 1>();
    if (v[0] != -v[1] || v[2] != -v[3]) {
      std::ostringstream o;
      o << "distributed: the ranks hold different data (training sets of " << -v[1] << " to " << v[0] << " images, validation sets of " << -v[3] << " to " << v[2]
        << "): every rank must load the same files with the same split and seed";
      throw UserError(o.str());
    }
    std::vector<torch::Tensor> all;
    for (auto& p : net->module->parameters()) all.push_back(p);
    for (auto& b : net->module->buffers()) all.push_back(b);
    dist::broadcastFromRank0(all);
    net->weightsChanged();
  }

  // After an epoch on several ranks: BatchNorm's running statistics are rank 0's everywhere (each rank's
  // moved with its own batches), so that validation and the saved model are the same on every rank.
  void syncBuffers() {
    if (!dist::active()) return;
    std::vector<torch::Tensor> bufs;
    for (auto& b : net->module->buffers()) bufs.push_back(b);
    dist::broadcastFromRank0(bufs);
    net->weightsChanged();
  }

  // PyTorch's clip_grad_norm_(params, maxGradNorm): the 2-norm of all gradients together, and every gradient
  // scaled by min(1, max / (norm + 1e-6)). On the device, with no read back, so that a CUDA graph captures it.
  void clipGrads() {
    if (maxGradNorm <= 0) return;
    std::vector<torch::Tensor> grads, norms;
    for (auto& p : net->params)
      if (p.tensor.grad().defined()) {
        grads.push_back(p.tensor.grad());
        norms.push_back(p.tensor.grad().norm().to(torch::kFloat32));
      }
    if (grads.empty()) return;
    auto coef = ((torch::stack(norms).norm() + 1e-6).reciprocal() * maxGradNorm).clamp_max(1.0);
    for (auto& g : grads) g.mul_(coef.to(g.scalar_type()));
  }

  // The step a CUDA graph captures: forwardLoss and backward, without the gradient reset (StepGraph
  // decides when gradients start from None). With a tail (graphTail), the graph ends at backward, the loss
  // scaled as eagerStep scales it when accumulating; otherwise clipping is captured too.
  torch::Tensor forwardBackward(const torch::Tensor& x, const torch::Tensor& y, bool tail) {
    trainMode();
    torch::Tensor loss;
    {
      AutocastScope ac(bf16 && onCuda());
      loss = lossFn(net->forward(x), y, false);
    }
    accumulationScaled(loss, x.size(0)).backward();
    if (!tail) clipGrads();
    return loss;
  }

  // Whether a graph step needs a tail after each replay (StepGraph::step): PyTorch's fused Adam takes a
  // host scalar; accumulating, the optimizer steps only every few batches; on several ranks the gradients
  // are all-reduced from the host. (SyncBatchNorm's collectives run inside the forward: runEpoch takes
  // ordinary steps then.)
  bool graphTail() const { return nAcc > 0 || dist::active() || opt.fusedOn(net->device); }

  // Accumulating with the graph: the graph writes each batch's gradients into its own memory, so the sums
  // live in accGrads (one per parameter) while graph steps run; ordinary steps keep them in the parameters'
  // gradients, as autograd accumulates them. holdAcc moves them into accGrads before a graph step,
  // releaseAcc back before an ordinary step and at the end of an epoch.
  std::vector<torch::Tensor> accGrads;
  bool accHeld = false;
  void holdAcc() {
    if (nAcc == 0 || accHeld) return;
    accGrads.assign(net->params.size(), torch::Tensor());
    for (size_t i = 0; i < net->params.size(); i++) {
      accGrads[i] = net->params[i].tensor.grad();
      net->params[i].tensor.mutable_grad() = torch::Tensor();
    }
    accHeld = true;
  }
  void releaseAcc() {
    if (!accHeld) return;
    for (size_t i = 0; i < net->params.size(); i++) net->params[i].tensor.mutable_grad() = accGrads[i];
    accGrads.clear();
    accHeld = false;
  }

  // After a graph step's forward and backward (the parameters' gradients are this batch's): what an
  // ordinary step does next. Accumulating, the batch's gradients are added to the sums and the optimizer
  // steps with those where `stepNow` says; then the all-reduce, clipping and the optimizer step.
  void graphTail(const std::vector<Hyper>& h, bool stepNow) {
    if (nAcc > 0) {
      torch::NoGradGuard ng;
      std::vector<torch::Tensor> sums, adds;  // (one multi-tensor add per batch, not one kernel per parameter)
      for (size_t i = 0; i < net->params.size(); i++) {
        const auto g = net->params[i].tensor.grad();
        if (!g.defined()) continue;
        if (accGrads[i].defined()) {
          sums.push_back(accGrads[i]);
          adds.push_back(g);
        } else {
          accGrads[i] = g.clone();  // (g may be the graph's memory, which the next replay rewrites)
        }
      }
      if (!sums.empty()) at::_foreach_add_(sums, adds);
      if (!stepNow) return;
      for (size_t i = 0; i < net->params.size(); i++) {
        net->params[i].tensor.mutable_grad() = accGrads[i];
        accGrads[i] = torch::Tensor();
      }
    }
    syncGrads();
    clipGrads();
    opt.step(net->params, h);
    if (nAcc > 0) zeroGrad();
  }

  // Everything a captured step depends on besides the values of the tensors: when it changes, the graph
  // is captured again.
  std::vector<int64_t> graphSignature(const torch::Tensor& x, const torch::Tensor& y) const {
    std::vector<int64_t> s;
    auto bits = [](double d) {
      int64_t v;
      std::memcpy(&v, &d, sizeof v);
      return v;
    };
    auto address = [](const torch::Tensor& t) { return t.defined() ? static_cast<int64_t>(reinterpret_cast<intptr_t>(t.data_ptr())) : 0; };
    s.insert(s.end(), x.sizes().begin(), x.sizes().end());
    s.insert(s.end(), x.strides().begin(), x.strides().end());
    s.insert(s.end(), y.sizes().begin(), y.sizes().end());
    s.insert(s.end(), {static_cast<int64_t>(x.scalar_type()), x.device().index(), bf16, bits(labelSmoothing), address(classWeights), multiLabel, bits(maxGradNorm),
                       opt.generation(), bits(opt.sqrMom), bits(opt.eps), graphTail(), nAcc, batchNormEval});
    for (auto& p : net->params) s.insert(s.end(), {address(p.tensor), p.tensor.requires_grad()});
    for (auto& b : net->module->buffers()) s.push_back(address(b));
    return s;
  }

  void applyFreeze() {
    for (auto& p : net->params) p.tensor.requires_grad_(p.group >= frozenIdx || (trainBn && p.isNorm));
    opt.clear();
    graph.reset();  // (its memory goes now rather than at the next step)
  }

  // Training batches for one pass: a fresh permutation, drop_last (fast.ai's train loader), except
  // that a set smaller than one batch still gives one batch. On several ranks, this rank's shard of the
  // permutation as PyTorch's DistributedSampler takes it: padded with its first indices to a multiple of the
  // world size, then every world-th index from the rank's own (the permutation is the same on every rank:
  // the learners' generators start from one seed and draw alike).
  std::vector<torch::Tensor> trainBatches() {
    int64_t n = train.size();
    if (n == 0) throw UserError("no training data: call setData first");
    auto perm = torch::randperm(n, gen, torch::kInt64);
    if (dist::active()) {
      const int64_t w = dist::world(), per = (n + w - 1) / w;
      while (perm.size(0) < per * w) perm = torch::cat({perm, perm.narrow(0, 0, std::min(perm.size(0), per * w - perm.size(0)))});
      perm = perm.slice(0, dist::rank(), per * w, w);
      n = per;
    }
    std::vector<torch::Tensor> out;
    const int64_t nb = std::max<int64_t>(1, n / bs);
    for (int64_t i = 0; i < nb; i++) out.push_back(perm.slice(0, i * bs, std::min(n, (i + 1) * bs)));
    return out;
  }

  NamedTensors fullState(bool withOpt) {
    NamedTensors out;
    for (auto& kv : stateDict(*net->module)) out.emplace_back("model." + kv.first, kv.second.contiguous());
    if (withOpt) {
      for (auto& kv : opt.state(net->params)) out.push_back(kv);
      // gradients accumulated for a step still to come (gradient accumulation between epochs or parts of
      // one): a run resumed from here takes that step with them (outside accumulation there are none)
      for (auto& p : net->params)
        if (p.tensor.grad().defined()) out.emplace_back("grad." + p.name, p.tensor.grad().contiguous());
      out.emplace_back("rng.learner", gen.get_state());
      // LibTorch's global CPU generator draws the dropout masks of CPU training
      out.emplace_back("rng.torch", at::detail::getDefaultCPUGenerator().get_state());
    }
    return out;
  }

  void loadFullState(const NamedTensors& tensors, bool withOpt) {
    NamedTensors model;
    torch::Tensor rng, rngTorch;
    std::unordered_map<std::string, torch::Tensor> grads;
    for (auto& kv : tensors) {
      if (kv.first.rfind("model.", 0) == 0) model.emplace_back(kv.first.substr(6), kv.second);
      if (kv.first.rfind("grad.", 0) == 0) grads[kv.first.substr(5)] = kv.second;
      if (kv.first == "rng.learner") rng = kv.second;
      if (kv.first == "rng.torch") rngTorch = kv.second;
    }
    // the waiting gradients, checked before anything changes: one per parameter of this network, its shape,
    // floating point and finite (a file could hold anything)
    std::vector<torch::Tensor> gradOf(net->params.size());
    if (withOpt) {
      for (size_t i = 0; i < net->params.size(); i++) {
        auto it = grads.find(net->params[i].name);
        if (it == grads.end()) continue;
        const auto& p = net->params[i].tensor;
        const auto& g = it->second;
        if (g.sizes() != p.sizes() || !g.is_floating_point() || !torch::isfinite(g).all().item<bool>())
          throw UserError("the checkpoint's waiting gradient of '" + net->params[i].name + "' is not a finite float tensor of the parameter's shape: the checkpoint is for another network, or damaged");
        gradOf[i] = g.to(p.device(), p.scalar_type()).contiguous(p.suggest_memory_format());
        grads.erase(it);
      }
      if (!grads.empty()) throw UserError("the checkpoint holds a gradient of '" + grads.begin()->first + "', which this network does not have: it is for another network");
    }
    loadNamed(*net->module, model, true, {}, "the checkpoint");
    net->weightsChanged();
    if (withOpt) {
      for (size_t i = 0; i < net->params.size(); i++) net->params[i].tensor.mutable_grad() = gradOf[i];
      opt.loadState(net->params, tensors);
      if (rng.defined()) gen.set_state(rng);
      if (rngTorch.defined()) {
        at::Generator global = at::detail::getDefaultCPUGenerator();  // a handle to the same generator
        global.set_state(rngTorch);
      }
    }
  }
};


// Runs work(core) on the network's worker, holding the network's lock, once the learner is known to be
// alive there (dispose may have come first); the Promise settles with toJs(result) on the JavaScript thread.
// The one shape of every long Learner call.
template <typename R, typename Work>
Napi::Promise onWorker(Napi::Env env, std::shared_ptr<Learner::Core> c, Work work, std::function<Napi::Value(Napi::Env, R&)> toJs) {
  auto& worker = c->net->workerFor();
  return runAsync<R>(
      env, worker,
      [c, work = std::move(work)]() mutable -> R {
        std::lock_guard<std::mutex> lock(c->net->mutex);
        c->check();
        return work(*c);
      },
      std::move(toJs));
}

// fast.ai's AvgSmoothLoss: val = lerp(loss, val, beta), shown as val / (1 - beta^count). The one place its
// constant lives: the training table, the callbacks and lrFind's stopping rule all read it from here.
struct SmoothLoss {
  static constexpr double kBeta = 0.98;
  double val = 0, count = 0;
  double add(double loss) {
    val = kBeta * val + (1 - kBeta) * loss;
    count += 1;
    return value();
  }
  double value() const { return val / (1 - std::pow(kBeta, count)); }
};

inline double nowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace tl
