#include "learner_core.h"
#include "trace.h"

#include <cmath>
#include <cstring>

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
  if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(Net::constructor.Value()))
    throw UserError("Learner needs a Net");
  auto net = Napi::ObjectWrap<Net>::Unwrap(info[0].As<Napi::Object>())->state();
  if (net->kind != "fastai") throw UserError("a Learner trains a fast.ai classifier (body + head)");
  auto o = info[1].As<Napi::Object>();
  core_ = std::make_shared<Core>();
  core_->net = net;
  auto device = parseDevice(o.Get("device").As<Napi::String>());
  std::lock_guard<std::mutex> lock(net->mutex);
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
  if (static_cast<int64_t>(a.ByteLength()) != n * p * p * 3)
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
  std::string split = info[0].As<Napi::String>();
  auto labelsArr = info[2].As<Napi::Int32Array>();
  int64_t n = static_cast<int64_t>(labelsArr.ElementLength());
  int64_t p = info[3].As<Napi::Number>().Int64Value();
  auto images = uint8Images(info[1], n, p, "images");
  auto labels = torch::from_blob(labelsArr.Data(), {n}, torch::kInt32).to(torch::kInt64);
  std::lock_guard<std::mutex> lock(core_->net->mutex);
  auto& c = core_->cache(split);
  // Resident on the training device: no per-batch host-to-device image traffic.
  c.images = images.to(core_->net->device);
  c.labels = labels.to(core_->net->device);
  reportMemory(env);
  return env.Undefined();
  TL_CATCH(env)
}

Napi::Value Learner::SetOptions(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  auto o = info[0].As<Napi::Object>();
  std::lock_guard<std::mutex> lock(core_->net->mutex);
  auto& c = *core_;
  if (o.Has("bs")) c.bs = o.Get("bs").As<Napi::Number>().Int64Value();
  if (o.Has("size")) c.size = o.Get("size").As<Napi::Number>().Int64Value();
  if (o.Has("aug")) c.aug = augOptionsFromJs(o.Get("aug"));
  if (o.Has("wd")) c.wd = o.Get("wd").As<Napi::Number>().DoubleValue();
  if (o.Has("trainBn")) c.trainBn = o.Get("trainBn").ToBoolean();
  if (o.Has("bf16")) c.bf16 = o.Get("bf16").ToBoolean();
  if (o.Has("foldBatchNorm")) c.net->setFoldBatchNorm(o.Get("foldBatchNorm").ToBoolean());
  if (o.Has("batchNorm")) {  // the kernels of training-mode BatchNorm on bf16 CUDA batches (resnet.h, TrainBn)
    const auto value = o.Get("batchNorm");
    const std::string v = value.IsString() ? value.As<Napi::String>().Utf8Value() : value.ToString().Utf8Value();
    const std::map<std::string, TrainBn> impls{{"aten", TrainBn::Aten}, {"cudnn", TrainBn::Cudnn}, {"cudnn-fused", TrainBn::CudnnFused}, {"fused", TrainBn::Fused},
                                               {"fused-full", TrainBn::FusedFull}};
    auto it = value.IsString() ? impls.find(v) : impls.end();
    if (it == impls.end()) throw UserError("batchNorm must be 'aten', 'cudnn', 'cudnn-fused', 'fused' or 'fused-full', got " + v);
    c.net->setTrainBatchNorm(it->second);
  }
  if (o.Has("labelSmoothing")) c.labelSmoothing = o.Get("labelSmoothing").As<Napi::Number>().DoubleValue();
  if (o.Has("classWeights")) {
    auto v = o.Get("classWeights");
    if (v.IsTypedArray()) {
      auto w = v.As<Napi::Float32Array>();
      // on the device once: a copy per step could not be captured in a CUDA graph
      c.classWeights = torch::from_blob(w.Data(), {static_cast<int64_t>(w.ElementLength())}, torch::kFloat32).clone().to(c.net->device);
    } else {
      c.classWeights = torch::Tensor();
    }
  }
  if (o.Has("mean")) {
    c.norm = normalizeFromJs(o.Get("mean"), o.Get("std"));
    c.normMean = torch::Tensor();
    c.normStd = torch::Tensor();
  }
  if (o.Has("seed") && o.Get("seed").IsNumber()) c.gen.set_current_seed(o.Get("seed").As<Napi::Number>().Int64Value());
  if (o.Has("cudaGraph") && o.Get("cudaGraph").ToBoolean() != c.cudaGraph) {
    c.cudaGraph = o.Get("cudaGraph").ToBoolean();
    c.graph.reset();
  }
  if (o.Has("fusedAdam") && o.Get("fusedAdam").ToBoolean() != c.opt.fuseOnCuda) {
    c.opt.fuseOnCuda = o.Get("fusedAdam").ToBoolean();
    c.graph.reset();  // a captured step with (or without) the Adam step inside
  }
  if (o.Has("sqrMom")) c.opt.sqrMom = o.Get("sqrMom").As<Napi::Number>().DoubleValue();
  if (o.Has("eps")) c.opt.eps = o.Get("eps").As<Napi::Number>().DoubleValue();
  if (c.bs < 1) throw UserError("bs must be at least 1");
  if (c.size < 32) throw UserError("size must be at least 32 pixels for a ResNet");
  return env.Undefined();
  TL_CATCH(env)
}

// freezeTo(n): groups [:n] frozen (BatchNorm still trains when trainBn), [n:] trainable; n < 0 counts
// from the end. Clears the optimizer state, as fast.ai does.
Napi::Value Learner::FreezeTo(const Napi::CallbackInfo& info) {
  TL_TRY
  core_->check();
  int n = info[0].As<Napi::Number>().Int32Value();
  std::lock_guard<std::mutex> lock(core_->net->mutex);
  const int g = core_->net->numGroups;
  int idx = n >= 0 ? n : g + n;
  if (idx < 0 || idx > g) throw UserError("freezeTo(" + std::to_string(n) + "): there are " + std::to_string(g) + " layer groups");
  core_->frozenIdx = idx;
  core_->applyFreeze();
  return info.Env().Undefined();
  TL_CATCH(info.Env())
}

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

// trainEpoch({ schedule, epoch, nEpochs, smoothVal, smoothCount, reportEvery, onProgress })
Napi::Value Learner::TrainEpoch(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  auto o = info[0].As<Napi::Object>();
  auto sched = scheduleFromJs(o.Get("schedule").As<Napi::Object>(), core_->net->numGroups);
  int64_t epoch = o.Get("epoch").As<Napi::Number>().Int64Value();
  int64_t nEpochs = o.Get("nEpochs").As<Napi::Number>().Int64Value();
  double smoothVal = o.Get("smoothVal").As<Napi::Number>().DoubleValue();
  double smoothCount = o.Get("smoothCount").As<Napi::Number>().DoubleValue();
  int64_t reportEvery = o.Has("reportEvery") ? o.Get("reportEvery").As<Napi::Number>().Int64Value() : 0;
  bool profile = o.Get("profile").ToBoolean();
  // trace: a Chrome trace (operators, and CUDA kernels on a GPU) of this part of the epoch, written by
  // LibTorch's profiler to the path given: the same format torch.profiler exports, so the bench can put
  // torchlearn's step beside PyTorch's operator by operator.
  std::string trace = o.Get("trace").IsString() ? o.Get("trace").As<Napi::String>().Utf8Value() : std::string();
  // Part of an epoch: batches [startBatch, endBatch). A later part (or a resumed one) passes the
  // random state the epoch started with, so the same permutation and augmentations come out.
  int64_t startBatch = o.Get("startBatch").IsNumber() ? o.Get("startBatch").As<Napi::Number>().Int64Value() : 0;
  int64_t endBatch = o.Get("endBatch").IsNumber() ? o.Get("endBatch").As<Napi::Number>().Int64Value() : -1;
  torch::Tensor epochRng;
  if (o.Get("epochRng").IsTypedArray()) {
    auto a = o.Get("epochRng").As<Napi::Uint8Array>();
    epochRng = torch::from_blob(a.Data(), {static_cast<int64_t>(a.ElementLength())}, torch::kUInt8).clone();
  }
  if (startBatch > 0 && !epochRng.defined()) throw UserError("trainEpoch: startBatch needs the epoch's random state (epochRng)");
  auto progress = std::make_shared<ProgressSink>(env, o.Get("onProgress"));
  auto c = core_;
  c->stopRequested = false;
  return runAsync<EpochResult>(
      env, c->net->workerFor(),
      [c, sched, epoch, nEpochs, smoothVal, smoothCount, reportEvery, progress, profile, startBatch, endBatch, epochRng, trace]() {
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
        const int64_t every = reportEvery > 0 ? reportEvery : (cuda ? 25 : 1);
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
          synced = upto;
          const float sm = r.smoothLosses.back();
          const int64_t it = upto, n = r.nIter;
          progress->emit([it, n, sm, epoch](Napi::Env env) {
            auto e = Napi::Object::New(env);
            e.Set("epoch", Napi::Number::New(env, static_cast<double>(epoch)));
            e.Set("iter", Napi::Number::New(env, static_cast<double>(it)));
            e.Set("total", Napi::Number::New(env, static_cast<double>(n)));
            e.Set("smoothLoss", Napi::Number::New(env, sm));
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
            if (c->stopRequested) {
              r.stopped = true;
              break;
            }
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

// getState(withOpt) -> named tensors: model.*, opt.* and rng.* (the TypeScript side writes the file).
Napi::Value Learner::GetState(const Napi::CallbackInfo& info) {
  TL_TRY
  core_->check();
  std::lock_guard<std::mutex> lock(core_->net->mutex);
  return namedTensorsToJs(info.Env(), core_->fullState(info[0].ToBoolean()));
  TL_CATCH(info.Env())
}

Napi::Value Learner::SetState(const Napi::CallbackInfo& info) {
  TL_TRY
  core_->check();
  auto tensors = namedTensorsFromJs(info[0]);
  std::lock_guard<std::mutex> lock(core_->net->mutex);
  core_->loadFullState(tensors, info[1].ToBoolean());
  return info.Env().Undefined();
  TL_CATCH(info.Env())
}

Napi::Value Learner::RequestStop(const Napi::CallbackInfo& info) {
  core_->stopRequested = true;
  return info.Env().Undefined();
}

Napi::Value Learner::Dispose(const Napi::CallbackInfo& info) {
  TL_TRY
  core_->stopRequested = true;
  std::lock_guard<std::mutex> lock(core_->net->mutex);
  core_->disposed = true;
  core_->train = ImageCache{};
  core_->valid = ImageCache{};
  core_->opt.clear();
  core_->graph.release();
  releaseDeviceCache();
  memory_.release(info.Env());
  return info.Env().Undefined();
  TL_CATCH(info.Env())
}

}  // namespace tl
