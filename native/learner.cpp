#include "learner_core.h"
#include "image_store.h"
#include "js.h"
#include "trace.h"

#include <cmath>
#include <cstring>
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
                      InstanceMethod("gradients", &Learner::Gradients),
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
  js::Options o(info[1], "Learner: options");
  auto device = parseDevice(o.string("device"));
  const auto channelsLast = o.optBoolean("channelsLast");
  const auto seed = o.optInteger("seed", 0, int64_t{1} << 53);
  core_ = std::make_shared<Core>();
  core_->net = net;
  auto lock = net->lockNow("new Learner");
  net->check();
  // channels_last: the default on CUDA (tensor-core convolutions want NHWC), an option elsewhere
  net->channelsLast = channelsLast.value_or(device.is_cuda());
  if (device.is_cuda()) at::globalContext().setBenchmarkCuDNN(true);
  net->moveTo(device);
  if (seed) core_->gen.set_current_seed(static_cast<uint64_t>(*seed));
  reportMemory(env);
  TL_CATCH(env)
}

void Learner::reportMemory(Napi::Env env) {
  auto& c = *core_;
  int64_t bytes = 0;
  for (auto* cache : {&c.train, &c.valid})
    if (cache->images.defined()) bytes += static_cast<int64_t>((cache->fromStore ? 0 : cache->images.nbytes()) + cache->labels.nbytes());
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

torch::Tensor imagesArg(Napi::Env env, const Napi::Value& v, int64_t n, int64_t p, const char* who, bool* view) {
  const bool fromJs = !ImageStore::isStore(env, v);
  if (view) *view = fromJs;
  if (fromJs) return uint8ImagesView(v, n, p, "images");
  auto images = ImageStore::images(v);
  if (images.size(0) != n || images.size(1) != p)
    throw UserError(std::string(who) + ": the image store holds " + std::to_string(images.size(0)) + " images of " + std::to_string(images.size(1)) +
                    " px, the call says " + std::to_string(n) + " of " + std::to_string(p));
  ImageStore::seal(v);
  return images;
}

torch::Tensor pinnedCopy(const torch::Tensor& view) { return torch::empty(view.sizes(), view.options().pinned_memory(true)).copy_(view); }

// setData(split, images: ImageStore or Uint8Array [N*P*P*3], labels: Int32Array, presize P)
Napi::Value Learner::SetData(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  std::string split = js::string(info[0], "setData: split");
  core_->cache(split);  // (checks the name)
  const int64_t classes = core_->net->numClasses;
  int64_t n;
  torch::Tensor labels;
  if (core_->multiLabel) {
    // multi-hot rows: one 0 or 1 per image and label
    auto hot = js::copyTyped<uint8_t>(info[2], "setData: labels (multi-label: a Uint8Array of images x labels)", torch::kUInt8);
    if (hot.numel() % classes != 0)
      throw UserError("setData: multi-label labels must hold " + std::to_string(classes) + " values per image, got " + std::to_string(hot.numel()) + " in all");
    n = hot.numel() / classes;
    if (n > 0 && hot.max().item<uint8_t>() > 1) throw UserError("setData: multi-label labels must be 0 or 1");
    labels = hot.view({n, classes}).to(torch::kFloat32);
  } else {
    auto labels32 = js::copyTyped<int32_t>(info[2], "setData: labels", torch::kInt32);
    n = labels32.numel();
    // a label outside [0, classes) would index past the loss's class weights, or be ignored (-100)
    if (n > 0) {
      const auto lo = labels32.min().item<int32_t>(), hi = labels32.max().item<int32_t>();
      if (lo < 0 || hi >= classes)
        throw UserError("setData: labels must be class indices in [0, " + std::to_string(classes) + "), got " + std::to_string(lo < 0 ? lo : hi));
    }
    labels = labels32.to(torch::kInt64);
  }
  int64_t p = js::integer(info[3], "setData: presize", 1, js::kMaxSide);
  // the loaders' own images (a store) are trained from where they are on the CPU, not copied
  bool view = false;
  auto images = imagesArg(env, info[1], n, p, "setData", &view);
  if (view) images = images.clone();
  auto lock = core_->net->lockNow("setData");
  auto& c = core_->cache(split);
  // Resident on the training device: no per-batch host-to-device image traffic.
  c.images = images.to(core_->net->device);
  c.labels = labels.to(core_->net->device);
  c.fromStore = !view && c.images.data_ptr() == images.data_ptr();
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
  js::Options o(info[0], "setOptions: options");
  const auto bs = o.optInteger("bs", 1, js::kMaxCount);
  const auto size = o.optInteger("size", 32, js::kMaxSide);
  std::optional<AugOptions> aug;
  if (o.has("aug")) aug = augOptionsFromJs(o.value("aug"));
  const auto wd = o.optNumber("wd", 0, 1e6);
  const auto trainBn = o.optBoolean("trainBn"), bf16 = o.optBoolean("bf16"), foldBn = o.optBoolean("foldBatchNorm");
  // the kernels of training-mode BatchNorm on bf16 CUDA batches (resnet.h, TrainBn)
  const auto batchNorm = o.optChoice<TrainBn>("batchNorm", kTrainBnNames);
  const auto labelSmoothing = o.optNumber("labelSmoothing", 0, 1);
  const auto multiLabel = o.optBoolean("multiLabel");
  const auto maxGradNorm = o.optNumber("maxGradNorm", 0, 1e12);
  const auto nAcc = o.optInteger("nAcc", 0, js::kMaxCount);
  const auto batchNormEval = o.optBoolean("batchNormEval");
  const auto syncBatchNorm = o.optBoolean("syncBatchNorm");
  std::optional<MixOptions> mix;
  if (o.has("mix")) {
    js::Options m(o.value("mix"), "setOptions: mix", "mix");
    MixOptions v;
    v.kind = m.optChoice<MixKind>("kind", {{"none", MixKind::None}, {"mixup", MixKind::MixUp}, {"cutmix", MixKind::CutMix}}).value_or(MixKind::None);
    v.alpha = m.optNumber("alpha", 1e-3, 1e3).value_or(v.kind == MixKind::CutMix ? 1.0 : 0.4);
    mix = v;
  }
  std::optional<torch::Tensor> classWeights;
  if (o.has("classWeights")) {
    if (o.value("classWeights").IsNull()) {
      classWeights = torch::Tensor();
    } else {
      auto w = o.typedCopy<float>("classWeights", torch::kFloat32, core_->net->numClasses);
      if (!torch::isfinite(w).all().item<bool>() || (w < 0).any().item<bool>()) throw UserError("classWeights must be finite and non-negative");
      classWeights = w;
    }
  }
  std::optional<Normalize> norm;
  if (o.has("mean")) norm = normalizeFromJs(o.value("mean"), o.value("std"));
  const auto seed = o.optInteger("seed", 0, int64_t{1} << 53);
  const auto cudaGraph = o.optBoolean("cudaGraph"), fusedAdam = o.optBoolean("fusedAdam");
  const auto sqrMom = o.optNumber("sqrMom", 0, 1), eps = o.optNumber("eps", 0, 1);

  {
    // binary cross-entropy takes neither (fast.ai's BCEWithLogitsLossFlat has pos_weight instead)
    const bool ml = multiLabel.value_or(core_->multiLabel);
    if (ml && (labelSmoothing.value_or(core_->labelSmoothing) > 0 || (classWeights ? classWeights->defined() : core_->classWeights.defined())))
      throw UserError("labelSmoothing and classWeights are for single-label classification; a multi-label learner takes neither");
    // the cached labels are class indices or multi-hot rows: the task is fixed once data is set
    if (multiLabel && *multiLabel != core_->multiLabel && (core_->train.images.defined() || core_->valid.images.defined()))
      throw UserError("multiLabel cannot change once the learner has data");
  }
  auto lock = core_->net->lockNow("setOptions");
  auto& c = *core_;
  if (multiLabel) c.multiLabel = *multiLabel;
  if (maxGradNorm) c.maxGradNorm = *maxGradNorm;
  if (nAcc) c.nAcc = *nAcc;
  if (batchNormEval) c.batchNormEval = *batchNormEval;
  if (syncBatchNorm) c.syncBatchNorm = *syncBatchNorm;
  if (mix) c.mix = *mix;
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

// getState(withOpt) -> Promise<named tensors>: model.*, opt.* and rng.* (the TypeScript side writes the
// file). On the network's worker, after any epoch in flight: the JavaScript thread never waits for the
// network's lock, and the copies are taken where training cannot change them underneath.
Napi::Value Learner::GetState(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  const bool withOpt = info[0].ToBoolean();
  return onWorker<NamedTensors>(
      env, core_,
      [withOpt](Core& c) {
        NamedTensors out;
        for (auto& kv : c.fullState(withOpt)) out.emplace_back(kv.first, kv.second.detach().to(torch::kCPU, false, true).contiguous());
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
  return onWorker<bool>(
      env, core_,
      [tensors, withOpt](Core& c) {
        c.loadFullState(*tensors, withOpt);
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
