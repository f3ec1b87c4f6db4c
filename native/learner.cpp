#include "learner_core.h"
#include "js.h"
#include "trace.h"

#include <cmath>
#include <cstring>
#include <map>
#include <optional>

namespace tl {

Napi::Function Learner::Init(Napi::Env env) {
  return DefineClass(env, "Learner",
                     {InstanceMethod("setData", &Learner::SetData), InstanceMethod("setOptions", &Learner::SetOptions),
                      InstanceMethod("freezeTo", &Learner::FreezeTo), InstanceMethod("trainEpoch", &Learner::TrainEpoch),
                      InstanceMethod("validate", &Learner::Validate), InstanceMethod("lrFind", &Learner::LrFind),
                      InstanceMethod("predict", &Learner::Predict), InstanceMethod("gradCam", &Learner::GradCam),
                      InstanceMethod("getState", &Learner::GetState),
                      InstanceMethod("setState", &Learner::SetState), InstanceMethod("requestStop", &Learner::RequestStop),
                      InstanceMethod("dispose", &Learner::Dispose)});
}

// new Learner(net, { device, seed })
Learner::Learner(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Learner>(info) {
  auto env = info.Env();
  TL_TRY
  if (!Net::isNet(env, info[0]))
    throw UserError("Learner needs a Net");
  auto net = Napi::ObjectWrap<Net>::Unwrap(info[0].As<Napi::Object>())->state();
  if (net->kind != "fastai") throw UserError("a Learner trains a fast.ai classifier (body + head)");
  auto o = info[1].As<Napi::Object>();
  core_ = std::make_shared<Core>();
  core_->net = net;
  auto device = parseDevice(o.Get("device").As<Napi::String>());
  auto lock = net->lockNow("new Learner");
  net->check();
  // channels_last: the default on CUDA (tensor-core convolutions want NHWC), an option elsewhere
  net->channelsLast = o.Get("channelsLast").IsBoolean() ? o.Get("channelsLast").ToBoolean() : device.is_cuda();
  if (device.is_cuda()) at::globalContext().setBenchmarkCuDNN(true);
  net->moveTo(device);
  if (o.Has("seed") && o.Get("seed").IsNumber()) core_->gen.set_current_seed(o.Get("seed").As<Napi::Number>().Int64Value());
  reportMemory(env);
  TL_CATCH(env)
}

void Learner::reportMemory(Napi::Env env) {
  auto& c = *core_;
  int64_t bytes = 0;
  for (auto* cache : {&c.train, &c.valid})
    if (cache->images.defined()) bytes += static_cast<int64_t>(cache->images.nbytes() + cache->labels.nbytes());
  for (const auto& p : c.net->params) bytes += 2 * static_cast<int64_t>(p.tensor.nbytes());
  memory_.set(env, bytes);
}

// Collected without dispose(): the caches and optimizer state go with it.
Learner::~Learner() { memory_.release(Env()); }

torch::Tensor uint8ImagesView(const Napi::Value& v, int64_t n, int64_t p, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) throw UserError(std::string(what) + " must be a Uint8Array");
  auto a = v.As<Napi::TypedArray>();
  if (n < 0 || p < 1 || p > js::kMaxSide) throw UserError(std::string(what) + ": bad image count or size");
  if (static_cast<int64_t>(a.ByteLength()) != js::imageBytes(n, p))
    throw UserError(std::string(what) + " holds " + std::to_string(a.ByteLength()) + " bytes, expected " + std::to_string(n) + " images of " +
                    std::to_string(p) + "x" + std::to_string(p) + "x3");
  auto* base = static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset();
  return torch::from_blob(base, {n, p, p, 3}, torch::kUInt8);
}

torch::Tensor uint8Images(const Napi::Value& v, int64_t n, int64_t p, const char* what) { return uint8ImagesView(v, n, p, what).clone(); }

torch::Tensor pinnedCopy(const torch::Tensor& view) { return torch::empty(view.sizes(), view.options().pinned_memory(true)).copy_(view); }

// setData(split, images: Uint8Array [N*P*P*3], labels: Int32Array, presize P)
Napi::Value Learner::SetData(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  std::string split = js::string(info[0], "setData: split");
  core_->cache(split);  // (checks the name)
  auto labels32 = js::copyTyped<int32_t>(info[2], "setData: labels", torch::kInt32);
  int64_t n = labels32.numel();
  int64_t p = js::integer(info[3], "setData: presize", 1, js::kMaxSide);
  auto images = uint8Images(info[1], n, p, "images");
  // a label outside [0, classes) would index past the loss's class weights, or be ignored (-100)
  const int64_t classes = core_->net->numClasses;
  if (n > 0) {
    const auto lo = labels32.min().item<int32_t>(), hi = labels32.max().item<int32_t>();
    if (lo < 0 || hi >= classes)
      throw UserError("setData: labels must be class indices in [0, " + std::to_string(classes) + "), got " + std::to_string(lo < 0 ? lo : hi));
  }
  auto labels = labels32.to(torch::kInt64);
  auto lock = core_->net->lockNow("setData");
  auto& c = core_->cache(split);
  // Resident on the training device: no per-batch host-to-device image traffic.
  c.images = images.to(core_->net->device);
  c.labels = labels.to(core_->net->device);
  reportMemory(env);
  return env.Undefined();
  TL_CATCH(env)
}

// setOptions({ bs, size, aug, wd, ... }): every value is read and checked into locals first, then all are
// assigned: a refused call changes nothing.
Napi::Value Learner::SetOptions(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  auto o = js::object(info[0], "setOptions: options");
  using js::has;
  std::optional<int64_t> bs, size;
  std::optional<AugOptions> aug;
  std::optional<double> wd, labelSmoothing, sqrMom, eps;
  std::optional<bool> trainBn, bf16, foldBn, cudaGraph, fusedAdam;
  std::optional<TrainBn> batchNorm;
  std::optional<torch::Tensor> classWeights;
  std::optional<Normalize> norm;
  std::optional<int64_t> seed;
  if (has(o, "bs")) bs = js::integer(o.Get("bs"), "bs", 1, js::kMaxCount);
  if (has(o, "size")) size = js::integer(o.Get("size"), "size", 32, js::kMaxSide);
  if (has(o, "aug")) aug = augOptionsFromJs(o.Get("aug"));
  if (has(o, "wd")) wd = js::number(o.Get("wd"), "wd", 0, 1e6);
  if (has(o, "trainBn")) trainBn = js::boolean(o.Get("trainBn"), "trainBn");
  if (has(o, "bf16")) bf16 = js::boolean(o.Get("bf16"), "bf16");
  if (has(o, "foldBatchNorm")) foldBn = js::boolean(o.Get("foldBatchNorm"), "foldBatchNorm");
  if (has(o, "batchNorm")) {  // the kernels of training-mode BatchNorm on bf16 CUDA batches (resnet.h, TrainBn)
    const auto value = o.Get("batchNorm");
    const std::string v = value.IsString() ? value.As<Napi::String>().Utf8Value() : value.ToString().Utf8Value();
    const std::map<std::string, TrainBn> impls{{"aten", TrainBn::Aten}, {"cudnn", TrainBn::Cudnn}, {"cudnn-fused", TrainBn::CudnnFused}, {"fused", TrainBn::Fused},
                                               {"fused-full", TrainBn::FusedFull}};
    auto it = value.IsString() ? impls.find(v) : impls.end();
    if (it == impls.end()) throw UserError("batchNorm must be 'aten', 'cudnn', 'cudnn-fused', 'fused' or 'fused-full', got " + v);
    batchNorm = it->second;
  }
  if (has(o, "labelSmoothing")) labelSmoothing = js::number(o.Get("labelSmoothing"), "labelSmoothing", 0, 1);
  if (has(o, "classWeights")) {
    auto v = o.Get("classWeights");
    if (v.IsNull()) {
      classWeights = torch::Tensor();
    } else {
      auto w = js::copyTyped<float>(v, "classWeights", torch::kFloat32, core_->net->numClasses);
      if (!torch::isfinite(w).all().item<bool>() || (w < 0).any().item<bool>()) throw UserError("classWeights must be finite and non-negative");
      classWeights = w;
    }
  }
  if (has(o, "mean")) norm = normalizeFromJs(o.Get("mean"), o.Get("std"));
  if (has(o, "seed")) seed = js::integer(o.Get("seed"), "seed", 0, int64_t{1} << 53);
  if (has(o, "cudaGraph")) cudaGraph = js::boolean(o.Get("cudaGraph"), "cudaGraph");
  if (has(o, "fusedAdam")) fusedAdam = js::boolean(o.Get("fusedAdam"), "fusedAdam");
  if (has(o, "sqrMom")) sqrMom = js::number(o.Get("sqrMom"), "sqrMom", 0, 1);
  if (has(o, "eps")) eps = js::number(o.Get("eps"), "eps", 0, 1);

  auto lock = core_->net->lockNow("setOptions");
  auto& c = *core_;
  if (bs) c.bs = *bs;
  if (size) c.size = *size;
  if (aug) c.aug = *aug;
  if (wd) c.wd = *wd;
  if (trainBn) c.trainBn = *trainBn;
  if (bf16) c.bf16 = *bf16;
  if (foldBn) c.net->setFoldBatchNorm(*foldBn);
  if (batchNorm) c.net->setTrainBatchNorm(*batchNorm);
  if (labelSmoothing) c.labelSmoothing = *labelSmoothing;
  // on the device once: a copy per step could not be captured in a CUDA graph
  if (classWeights) c.classWeights = classWeights->defined() ? classWeights->to(c.net->device) : torch::Tensor();
  if (norm) {
    c.norm = *norm;
    c.normMean = torch::Tensor();
    c.normStd = torch::Tensor();
  }
  if (seed) c.gen.set_current_seed(static_cast<uint64_t>(*seed));
  if (cudaGraph && *cudaGraph != c.cudaGraph) {
    c.cudaGraph = *cudaGraph;
    c.graph.reset();
  }
  if (fusedAdam && *fusedAdam != c.opt.fuseOnCuda) {
    c.opt.fuseOnCuda = *fusedAdam;
    c.graph.reset();  // a captured step with (or without) the Adam step inside
  }
  if (sqrMom) c.opt.sqrMom = *sqrMom;
  if (eps) c.opt.eps = *eps;
  return env.Undefined();
  TL_CATCH(env)
}

// freezeTo(n): groups [:n] frozen (BatchNorm still trains when trainBn), [n:] trainable; n < 0 counts
// from the end. Clears the optimizer state, as fast.ai does.
Napi::Value Learner::FreezeTo(const Napi::CallbackInfo& info) {
  TL_TRY
  core_->check();
  const int g = core_->net->numGroups;
  const double v = js::number(info[0], "freezeTo: n");
  if (v != std::floor(v) || v < -g || v > g) throw UserError("freezeTo(" + js::show(v) + "): there are " + std::to_string(g) + " layer groups");
  const int n = static_cast<int>(v);
  auto lock = core_->net->lockNow("freezeTo");
  int idx = n >= 0 ? n : g + n;
  if (idx < 0 || idx > g) throw UserError("freezeTo(" + std::to_string(n) + "): there are " + std::to_string(g) + " layer groups");
  core_->frozenIdx = idx;
  core_->applyFreeze();
  return info.Env().Undefined();
  TL_CATCH(info.Env())
}

// How often a CUDA epoch reads its losses back (each read waits for the device).
constexpr int64_t kCudaLossReadEvery = 25;

struct EpochResult {
  // profile mode: seconds per phase (device synchronised between phases) and memory-format checks
  bool profiled = false;
  double tData = 0, tForward = 0, tBackward = 0, tStep = 0;
  bool weightChannelsLast = false, gradChannelsLast = false, inputChannelsLast = false;
  std::string thread;  // the native thread that ran it (the worker: shared on the CPU, the network's own on CUDA)
  bool traced = false;
  std::vector<OpStat> ops;  // with a trace: the operator table
  bool graphUsed = false, graphCaptured = false;  // cudaGraph: steps taken by the graph, and whether it was captured
  int64_t graphSteps = 0;
  std::string graphError;
  std::vector<float> losses;       // raw loss per batch
  std::vector<float> smoothLosses; // fast.ai's smoothed loss after each batch
  std::vector<double> lrs;         // [batch][group]
  std::vector<double> moms;
  torch::Tensor epochRng;  // the learner's random state at the start of the epoch
  double smoothVal = 0, smoothCount = 0;
  int64_t nIter = 0, done = 0;
  bool stopped = false;
  double seconds = 0;
};

// trainEpoch({ schedule, epoch, nEpochs, smoothVal, smoothCount, onProgress, ... })
Napi::Value Learner::TrainEpoch(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  auto o = js::object(info[0], "trainEpoch: options");
  auto sched = scheduleFromJs(js::object(o.Get("schedule"), "schedule"), core_->net->numGroups);
  const int64_t nEpochs = js::integer(o.Get("nEpochs"), "nEpochs", 1, js::kMaxCount);
  const int64_t epoch = js::integer(o.Get("epoch"), "epoch", 0, nEpochs - 1);
  const double smoothVal = js::number(o.Get("smoothVal"), "smoothVal");
  const double smoothCount = js::number(o.Get("smoothCount"), "smoothCount", 0, 1e15);
  bool profile = o.Get("profile").ToBoolean();
  // trace: a Chrome trace (operators, and CUDA kernels on a GPU) of this part of the epoch, written by
  // LibTorch's profiler to the path given: the same format torch.profiler exports, so the bench can put
  // torchlearn's step beside PyTorch's operator by operator.
  std::string trace = o.Get("trace").IsString() ? o.Get("trace").As<Napi::String>().Utf8Value() : std::string();
  // Part of an epoch: batches [startBatch, endBatch). A later part (or a resumed one) passes the
  // random state the epoch started with, so the same permutation and augmentations come out.
  const int64_t startBatch = js::has(o, "startBatch") ? js::integer(o.Get("startBatch"), "startBatch", 0, js::kMaxCount) : 0;
  const int64_t endBatch = js::has(o, "endBatch") ? js::integer(o.Get("endBatch"), "endBatch", startBatch + 1, js::kMaxCount) : -1;
  torch::Tensor epochRng;
  if (js::has(o, "epochRng")) {
    epochRng = js::copyTyped<uint8_t>(o.Get("epochRng"), "epochRng", torch::kUInt8);
    // the state of LibTorch's CPU generator: its size is fixed (a file could hold any bytes)
    if (epochRng.numel() != core_->gen.get_state().numel())
      throw UserError("epochRng holds " + std::to_string(epochRng.numel()) + " bytes, not a random state (" + std::to_string(core_->gen.get_state().numel()) + ")");
  }
  if (startBatch > 0 && !epochRng.defined()) throw UserError("trainEpoch: startBatch needs the epoch's random state (epochRng)");
  auto progress = std::make_shared<ProgressSink>(env, o.Get("onProgress"));
  auto c = core_;
  c->requireOptimizer();
  c->stopRequested = false;
  return runAsync<EpochResult>(
      env, c->net->workerFor(),
      [c, sched, epoch, nEpochs, smoothVal, smoothCount, progress, profile, startBatch, endBatch, epochRng, trace]() {
        std::lock_guard<std::mutex> lock(c->net->mutex);
        c->check();
        const double t0 = nowSeconds();
        // Profile mode times the phases of ordinary steps; a graph is one launch.
        const bool useGraph = c->cudaGraph && !profile;
        StepGraphEpoch graphEpoch(useGraph ? &c->graph : nullptr, c->net->device);
        EpochResult r;
        r.smoothVal = smoothVal;
        r.smoothCount = smoothCount;
        if (epochRng.defined()) c->gen.set_state(epochRng);
        r.epochRng = c->gen.get_state();
        auto batches = c->trainBatches();
        r.nIter = static_cast<int64_t>(batches.size());
        const int64_t end = endBatch < 0 ? r.nIter : std::min(endBatch, r.nIter);
        // draw the augmentations of the batches already trained, so that the random stream is where it was
        for (int64_t i = 0; i < startBatch && i < r.nIter; i++) drawAugParams(batches[static_cast<size_t>(i)].size(0), c->aug, c->gen);
        r.done = std::min(startBatch, r.nIter);
        const bool cuda = c->onCuda();
        // On CUDA, losses stay on the device and are read every `every` batches (a host sync).
        const int64_t every = cuda ? kCudaLossReadEvery : 1;
        auto lossBuf = torch::zeros({r.nIter}, torch::TensorOptions().dtype(torch::kFloat32).device(c->net->device));
        int64_t synced = r.done;
        auto sync = [&](int64_t upto) {
          if (upto <= synced) return;
          auto host = lossBuf.slice(0, synced, upto).to(torch::kCPU);
          auto* d = host.data_ptr<float>();
          for (int64_t k = 0; k < upto - synced; k++) {
            const double l = d[k];
            if (!std::isfinite(l)) {
              const int64_t b = synced + k;
              std::ostringstream m;
              m << "training diverged: the loss is " << l << " at batch " << (b + 1) << " of epoch " << (epoch + 1)
                << " (lr " << r.lrs[static_cast<size_t>((b - startBatch) * c->net->numGroups + c->net->numGroups - 1)]
                << "). Lower the learning rate (run lrFind) or check the inputs for NaN.";
              throw UserError(m.str());
            }
            // fast.ai AvgSmoothLoss: val = lerp(loss, val, 0.98); value = val / (1 - 0.98^count)
            r.smoothVal = 0.98 * r.smoothVal + 0.02 * l;
            r.smoothCount += 1;
            r.losses.push_back(static_cast<float>(l));
            r.smoothLosses.push_back(static_cast<float>(r.smoothVal / (1 - std::pow(0.98, r.smoothCount))));
          }
          // Every batch since the last read, in order, with its loss: callbacks see each batch on every
          // device (on CUDA a little later, in groups, since reading a loss waits for the device).
          const size_t first = r.losses.size() - static_cast<size_t>(upto - synced);
          std::vector<float> raw(r.losses.begin() + static_cast<std::ptrdiff_t>(first), r.losses.end());
          std::vector<float> smooth(r.smoothLosses.begin() + static_cast<std::ptrdiff_t>(first), r.smoothLosses.end());
          const int64_t from = synced, n = r.nIter;
          synced = upto;
          progress->emit([from, n, epoch, raw = std::move(raw), smooth = std::move(smooth)](Napi::Env env) {
            auto e = Napi::Object::New(env);
            e.Set("epoch", Napi::Number::New(env, static_cast<double>(epoch)));
            e.Set("from", Napi::Number::New(env, static_cast<double>(from)));
            e.Set("total", Napi::Number::New(env, static_cast<double>(n)));
            auto l = Napi::Float32Array::New(env, raw.size());
            std::copy(raw.begin(), raw.end(), l.Data());
            auto sm = Napi::Float32Array::New(env, smooth.size());
            std::copy(smooth.begin(), smooth.end(), sm.Data());
            e.Set("losses", l);
            e.Set("smoothLosses", sm);
            return e;
          });
        };
        // Profile mode synchronises the device between phases: slower, but it says where the time goes.
        double tMark = nowSeconds();
        auto mark = [&](double& acc) {
          if (!profile) return;
          if (cuda) torch::cuda::synchronize();
          const double now = nowSeconds();
          acc += now - tMark;
          tMark = now;
        };
        torch::Tensor lastInput;
        // the hyper-parameters of every batch of the epoch (a captured step reads them from a table)
        std::vector<std::vector<Hyper>> hs;
        for (int64_t i = 0; i < end; i++)
          hs.push_back(c->hypers(sched, static_cast<double>(epoch * r.nIter + i) / static_cast<double>(nEpochs * r.nIter)));
        TraceScope traceScope(trace, cuda);
        try {
          for (int64_t i = r.done; i < end; i++) {
            if (c->stopRequested || exiting()) {
              r.stopped = true;
              break;
            }
            armExitHook();  // (LibTorch's first batches make objects whose destructors run at exit)
            const auto& h = hs[static_cast<size_t>(i)];
            for (auto& g : h) r.lrs.push_back(g.lr);
            r.moms.push_back(h[0].mom);
            auto idx = batches[static_cast<size_t>(i)];
            auto dIdx = toDevice(idx, c->net->device);
            auto params = drawAugParams(idx.size(0), c->aug, c->gen);
            auto x = c->inputs(c->train.images.index_select(0, dIdx), params);
            auto y = c->train.labels.index_select(0, dIdx);
            mark(r.tData);
            if (profile) lastInput = x;
            if (useGraph) {
              auto loss = c->graph.step(
                  c->opt, c->net->params, c->graphSignature(x, y), x, y, hs, static_cast<size_t>(i),
                  [&c](const torch::Tensor& gx, const torch::Tensor& gy) { return c->forwardBackward(gx, gy); }, [&c]() { c->zeroGrad(); });
              if (loss.defined()) {
                lossBuf[i].copy_(loss);
                if (!cuda) sync(i + 1);  // (after the step: a captured step has no place to stop before it)
                r.done = i + 1;
                if (cuda && ((i + 1) % every == 0)) sync(i + 1);
                continue;
              }
            }
            // On the CPU the loss is checked before the step, so a NaN never reaches the weights, and the
            // BatchNorm statistics the diverging forward pass moved are put back.
            std::vector<torch::Tensor> buffersBefore;
            if (!cuda)
              for (auto& b : c->net->module->buffers()) buffersBefore.push_back(b.clone());
            auto loss = c->forwardLoss(x, y);
            armExitHook();
            lossBuf[i].copy_(loss.detach());
            if (!cuda) {
              try {
                sync(i + 1);
              } catch (...) {
                torch::NoGradGuard ng;
                size_t k = 0;
                for (auto& b : c->net->module->buffers()) b.copy_(buffersBefore[k++]);
                throw;
              }
            }
            mark(r.tForward);
            if (profile) {
              loss.backward();
              mark(r.tBackward);
              c->opt.step(c->net->params, h);
              mark(r.tStep);
            } else {
              c->backwardAndStep(loss, h);
            }
            r.done = i + 1;
            if (cuda && ((i + 1) % every == 0)) sync(i + 1);
          }
          sync(r.done);
        } catch (...) {
          if (useGraph) {
            try {
              c->graph.release();  // (an out-of-memory error, say: its memory pool goes too)
            } catch (...) {
            }
          }
          throw;
        }
        if (useGraph) {
          r.graphUsed = true;
          r.graphSteps = c->graph.replays;
          r.graphCaptured = c->graph.captured();
          r.graphError = c->graph.error;
          // the end of the fit (or a stop): the graph's memory pool is not kept for validation and prediction
          if (r.stopped || (epoch + 1 == nEpochs && r.done == r.nIter)) c->graph.release();
        }
        if (!trace.empty()) {
          r.ops = traceScope.finish();
          r.traced = true;
        }
        if (profile) {
          r.profiled = true;
          r.thread = std::to_string(threadSerial());
          for (auto& p : c->net->params) {
            if (p.tensor.dim() == 4 && p.tensor.grad().defined()) {
              r.weightChannelsLast = p.tensor.is_contiguous(torch::MemoryFormat::ChannelsLast);
              r.gradChannelsLast = p.tensor.grad().is_contiguous(torch::MemoryFormat::ChannelsLast);
              break;
            }
          }
          if (lastInput.defined()) r.inputChannelsLast = lastInput.is_contiguous(torch::MemoryFormat::ChannelsLast);
        }
        c->zeroGrad();
        r.seconds = nowSeconds() - t0;
        return r;
      },
      [](Napi::Env env, EpochResult& r) -> Napi::Value {
        auto o = Napi::Object::New(env);
        auto f32 = [&](const std::vector<float>& v) {
          auto a = Napi::Float32Array::New(env, v.size());
          std::copy(v.begin(), v.end(), a.Data());
          return a;
        };
        auto f64 = [&](const std::vector<double>& v) {
          auto a = Napi::Float64Array::New(env, v.size());
          std::copy(v.begin(), v.end(), a.Data());
          return a;
        };
        o.Set("losses", f32(r.losses));
        o.Set("smoothLosses", f32(r.smoothLosses));
        o.Set("lrs", f64(r.lrs));
        o.Set("moms", f64(r.moms));
        o.Set("smoothVal", r.smoothVal);
        o.Set("smoothCount", r.smoothCount);
        o.Set("nIter", Napi::Number::New(env, static_cast<double>(r.nIter)));
        o.Set("done", Napi::Number::New(env, static_cast<double>(r.done)));
        o.Set("stopped", r.stopped);
        o.Set("seconds", r.seconds);
        auto rng = Napi::Uint8Array::New(env, static_cast<size_t>(r.epochRng.numel()));
        std::memcpy(rng.Data(), r.epochRng.data_ptr<uint8_t>(), rng.ByteLength());
        o.Set("epochRng", rng);
        if (r.profiled) {
          auto p = Napi::Object::New(env);
          p.Set("data", r.tData);
          p.Set("forward", r.tForward);
          p.Set("backward", r.tBackward);
          p.Set("step", r.tStep);
          p.Set("weightChannelsLast", r.weightChannelsLast);
          p.Set("gradChannelsLast", r.gradChannelsLast);
          p.Set("inputChannelsLast", r.inputChannelsLast);
          p.Set("thread", r.thread);
          o.Set("profile", p);
        }
        if (r.graphUsed) {
          auto g = Napi::Object::New(env);
          g.Set("steps", Napi::Number::New(env, static_cast<double>(r.graphSteps)));
          g.Set("captured", r.graphCaptured);
          if (!r.graphError.empty()) g.Set("error", r.graphError);
          o.Set("graph", g);
        }
        if (r.traced) o.Set("ops", opsToJs(env, r.ops));
        return o;
      });
  TL_CATCH(env)
}

// getState(withOpt) -> Promise<named tensors>: model.*, opt.* and rng.* (the TypeScript side writes the
// file). On the network's worker, after any epoch in flight: the JavaScript thread never waits for the
// network's lock, and the copies are taken where training cannot change them underneath.
Napi::Value Learner::GetState(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  const bool withOpt = info[0].ToBoolean();
  auto c = core_;
  return runAsync<NamedTensors>(
      env, c->net->workerFor(),
      [c, withOpt]() {
        std::lock_guard<std::mutex> lock(c->net->mutex);
        c->check();
        NamedTensors out;
        for (auto& kv : c->fullState(withOpt)) out.emplace_back(kv.first, kv.second.detach().to(torch::kCPU, false, true).contiguous());
        return out;
      },
      [](Napi::Env env, NamedTensors& t) -> Napi::Value { return namedTensorsToJs(env, t, true); });
  TL_CATCH(env)
}

// setState(tensors, withOpt) -> Promise: the bytes are copied here, on the JavaScript thread; the network
// takes them on its worker.
Napi::Value Learner::SetState(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  auto tensors = std::make_shared<NamedTensors>(namedTensorsFromJs(info[0]));
  const bool withOpt = info[1].ToBoolean();
  auto c = core_;
  return runAsync<bool>(
      env, c->net->workerFor(),
      [c, tensors, withOpt]() {
        std::lock_guard<std::mutex> lock(c->net->mutex);
        c->check();
        c->loadFullState(*tensors, withOpt);
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
  TL_CATCH(env)
}

Napi::Value Learner::RequestStop(const Napi::CallbackInfo& info) {
  core_->stopRequested = true;
  return info.Env().Undefined();
}

// Marks the learner disposed and stops what runs; the caches and optimizer state are freed now if nothing
// runs on the network, else on its worker after the task in flight: the JavaScript thread never waits.
Napi::Value Learner::Dispose(const Napi::CallbackInfo& info) {
  TL_TRY
  auto c = core_;
  c->stopRequested = true;
  if (!c->disposed.exchange(true)) {
    auto release = [](Core& k) {
      k.train = ImageCache{};
      k.valid = ImageCache{};
      k.opt.clear();
      k.staging.buffer = torch::Tensor();
      k.graph.release();
      releaseDeviceCache();
    };
    std::unique_lock<std::mutex> now(c->net->mutex, std::try_to_lock);
    if (now.owns_lock()) {
      release(*c);  // nothing runs: freed before dispose() returns
    } else {
      now = std::unique_lock<std::mutex>();
      c->net->workerFor().post([c, release] {
        std::lock_guard<std::mutex> lock(c->net->mutex);
        release(*c);
      });
    }
  }
  memory_.release(info.Env());
  return info.Env().Undefined();
  TL_CATCH(info.Env())
}

}  // namespace tl
