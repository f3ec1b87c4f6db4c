#include "net.h"
#include "js.h"

namespace tl {
namespace nn = torch::nn;

ClassifierImpl::ClassifierImpl(std::shared_ptr<BackboneImpl> b, const HeadOptions& h) {
  body = register_module("body", std::move(b));
  HeadOptions ho = h;
  ho.numFeatures = body->numFeatures();
  head = register_module("head", makeHead(ho));
}

std::unique_lock<std::mutex> NetState::lockNow(const char* what) {
  std::unique_lock<std::mutex> lock(mutex, std::try_to_lock);
  if (!lock.owns_lock())
    throw UserError(std::string(what) + ": the network is busy (a fit, prediction or other call on it is running); call it when that ends");
  return lock;
}

void NetState::releaseLater() {
  disposed = true;
  auto release = [](NetState& self) {
    self.params.clear();
    self.forward = nullptr;
    self.features = nullptr;
    self.classify = nullptr;
    // these captured the module too: with them kept, dispose() freed nothing while JavaScript held the object
    self.setFoldBatchNorm = nullptr;
    self.setTrainBatchNorm = nullptr;
    self.weightsChanged = nullptr;
    self.module.reset();
    releaseDeviceCache();
  };
  // Now, when nothing runs on the network (the usual case: the memory is back when dispose() returns);
  // otherwise on its worker, after the task in flight (the task keeps the state alive until it ran).
  std::unique_lock<std::mutex> now(mutex, std::try_to_lock);
  if (now.owns_lock()) {
    release(*this);
    return;
  }
  workerFor().post([self = shared_from_this(), release] {
    std::lock_guard<std::mutex> lock(self->mutex);
    release(*self);
  });
}

void NetState::check() const {
  if (disposed) throw UserError("this network was disposed: create a new one (dispose() frees it for good)");
}

void NetState::moveTo(const torch::Device& d) {
  module->to(d);
  if (channelsLast) {
    torch::NoGradGuard ng;
    for (auto& p : module->parameters())
      if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
  device = d;
  weightsChanged();
}

static bool startsWith(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

LoadReport loadNamed(nn::Module& module, const NamedTensors& tensors, bool strict, const std::vector<std::string>& skip,
                     const std::string& source, const std::string& hint) {
  auto skipped = [&](const std::string& k) {
    for (auto& p : skip)
      if (startsWith(k, p)) return true;
    return false;
  };
  auto own = stateDict(module);
  std::unordered_map<std::string, const torch::Tensor*> given;
  for (auto& kv : tensors) given[kv.first] = &kv.second;
  LoadReport r;
  std::unordered_map<std::string, bool> known;
  std::vector<std::pair<torch::Tensor, const torch::Tensor*>> plan;
  for (auto& kv : own) {
    known[kv.first] = true;
    if (skipped(kv.first)) continue;
    auto it = given.find(kv.first);
    if (it == given.end()) {
      r.missing.push_back(kv.first);
      continue;
    }
    const auto& src = *it->second;
    if (src.sizes() != kv.second.sizes()) {
      std::ostringstream m;
      m << kv.first << " (file " << src.sizes() << ", model " << kv.second.sizes() << ")";
      r.mismatched.push_back(m.str());
      continue;
    }
    if (src.is_floating_point() != kv.second.is_floating_point()) {
      r.mismatched.push_back(kv.first + " (file dtype " + std::string(c10::toString(src.scalar_type())) + ", model dtype " +
                             std::string(c10::toString(kv.second.scalar_type())) + ")");
      continue;
    }
    plan.emplace_back(kv.second, &src);
  }
  for (auto& kv : tensors)
    if (!known.count(kv.first) && !skipped(kv.first)) r.unexpected.push_back(kv.first);
  bool problems = !r.missing.empty() || !r.unexpected.empty() || !r.mismatched.empty();
  if (problems && strict) {
    std::ostringstream m;
    m << source << " does not match this network";
    // at most kListed names of each kind: a file of another architecture has hundreds
    constexpr size_t kListed = 10;
    auto list = [&](const char* what, const std::vector<std::string>& v) {
      if (v.empty()) return;
      m << "\n  " << what << " (" << v.size() << "): ";
      for (size_t i = 0; i < v.size() && i < kListed; i++) m << (i ? ", " : "") << v[i];
      if (v.size() > kListed) m << ", ... and " << (v.size() - kListed) << " more";
    };
    list("missing keys", r.missing);
    list("unexpected keys", r.unexpected);
    list("shape or dtype mismatches", r.mismatched);
    if (!hint.empty()) m << "\n" << hint;
    throw UserError(m.str());
  }
  torch::NoGradGuard ng;
  for (auto& pr : plan) {
    pr.first.copy_(pr.second->to(pr.first.device(), pr.first.scalar_type()));
    r.loaded++;
  }
  return r;
}


bool Net::isNet(Napi::Env env, const Napi::Value& v) {
  auto* data = env.GetInstanceData<AddonData>();
  return data != nullptr && v.IsObject() && v.As<Napi::Object>().InstanceOf(data->netConstructor.Value());
}

Napi::Function Net::Init(Napi::Env env) {
  auto fn = DefineClass(env, "Net",
                        {InstanceMethod("numParams", &Net::NumParams), InstanceMethod("numGroups", &Net::NumGroups), InstanceMethod("stateDictKeys", &Net::StateDictKeys),
                         InstanceMethod("stateDict", &Net::StateDict), InstanceMethod("loadStateDict", &Net::LoadStateDict),
                         InstanceMethod("forward", &Net::Forward), InstanceMethod("to", &Net::To),
                         InstanceMethod("setTraining", &Net::SetTraining), InstanceMethod("isTraining", &Net::IsTraining),
                         InstanceMethod("device", &Net::Device), InstanceMethod("paramTable", &Net::ParamTable),
                         InstanceMethod("dispose", &Net::Dispose)});
  addonData(env).netConstructor = Napi::Persistent(fn);
  return fn;
}

AddonData& addonData(Napi::Env env) {
  auto* data = env.GetInstanceData<AddonData>();
  if (data == nullptr) {
    data = new AddonData();
    env.SetInstanceData<AddonData>(data);
  }
  return *data;
}

// new Net({ arch, kind: 'torchvision' | 'fastai', numClasses, head?: { hidden, ps, concatPool, linearBias },
//           torchscript?: Uint8Array, source?: string, groupStarts?: string[] }) (a TorchScript body: arch 'torchscript')
Net::Net(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Net>(info) {
  auto env = info.Env();
  TL_TRY
  js::Options o(info[0], "Net: options");
  auto s = std::make_shared<NetState>();
  s->arch = o.string("arch");
  s->kind = o.string("kind");
  // (an upper bound, so that a typo cannot ask for terabytes of classifier)
  const int64_t numClasses = o.integer("numClasses", 1, 1 << 20);
  s->numClasses = numClasses;
  // fast.ai's norm_types (BatchNorm, LayerNorm): trained even in frozen groups (train_bn), never decayed
  auto isNorm = [](const nn::Module& m) { return m.as<nn::BatchNorm2d>() || m.as<nn::BatchNorm1d>() || m.as<nn::LayerNorm>() || isScriptNorm(m); };
  if (s->kind == "torchvision") {
    auto m = makeBackbone(s->arch, numClasses, true);
    s->module = m;
    s->forward = [m](const torch::Tensor& x) { return m->forward(x); };
    s->features = [m](const torch::Tensor& x) { return m->features(x); };
    s->classify = [m](const torch::Tensor& a) { return m->classify(a); };
    s->setFoldBatchNorm = [m](bool on) { m->setFoldBatchNorm(on); };
    s->setTrainBatchNorm = [m](TrainBn impl) { m->setTrainBatchNorm(impl); };
    s->weightsChanged = [m]() { m->weightsChanged(); };
    s->numGroups = 1;
    for (auto& sub : m->named_modules()) {
      const bool norm = isNorm(*sub.value());
      for (auto& p : sub.value()->named_parameters(false)) {
        std::string full = sub.key().empty() ? p.key() : sub.key() + "." + p.key();
        s->params.push_back({full, p.value(), 0, norm, norm || p.key() == "bias"});
      }
    }
  } else if (s->kind == "fastai") {
    HeadOptions ho{0, numClasses};
    if (auto h = o.optObject("head")) {
      ho.hidden = h->optInteger("hidden", 1, 1 << 16).value_or(ho.hidden);
      ho.ps = h->optNumber("ps", 0, 1).value_or(ho.ps);
      ho.concatPool = h->optBoolean("concatPool").value_or(ho.concatPool);
      ho.linearBias = h->optBoolean("linearBias").value_or(ho.linearBias);
    }
    std::shared_ptr<BackboneImpl> body;
    if (o.has("torchscript")) {
      // a TorchScript body: the module's bytes, the file's name for messages, where its layer groups start
      if (s->arch != "torchscript") throw UserError("Net: a TorchScript body goes with arch 'torchscript'");
      auto bytes = o.typedCopy<uint8_t>("torchscript", torch::kUInt8);
      body = makeTorchScriptBody(std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), static_cast<size_t>(bytes.numel())),
                                 o.optString("source").value_or("the TorchScript body"), o.has("groupStarts") ? o.strings("groupStarts", 64) : std::vector<std::string>{});
    } else {
      body = makeBackbone(s->arch, 0, /*withClassifier=*/false);
    }
    auto m = Classifier(body, ho);
    s->module = m.ptr();
    s->forward = [m](const torch::Tensor& x) mutable { return m->forward(x); };
    s->features = [m](const torch::Tensor& x) mutable { return m->body->features(x); };
    s->classify = [m](const torch::Tensor& a) mutable { return headForward(m->head, a); };
    s->setFoldBatchNorm = [m](bool on) mutable { m->body->setFoldBatchNorm(on); };
    s->setTrainBatchNorm = [m](TrainBn impl) mutable { m->body->setTrainBatchNorm(impl); };
    s->weightsChanged = [m]() mutable { m->body->weightsChanged(); };
    const int bodyGroups = m->body->numBodyGroups();
    s->numGroups = bodyGroups + 1;
    // the body's groups as fast.ai's split for the family (BackboneImpl::bodyGroup), then the head
    for (auto& sub : m->named_modules()) {
      const auto& name = sub.key();
      const bool norm = isNorm(*sub.value());
      for (auto& p : sub.value()->named_parameters(false)) {
        std::string full = name.empty() ? p.key() : name + "." + p.key();
        int g = bodyGroups;
        if (full.rfind("body.", 0) == 0) g = m->body->bodyGroup(full.substr(5));
        s->params.push_back({full, p.value(), g, norm, norm || p.key() == "bias"});
      }
    }
  } else {
    throw UserError("Net kind must be 'torchvision' or 'fastai'");
  }
  s->module->eval();
  state_ = s;
  memory_.set(env, moduleBytes(*s->module));
  TL_CATCH(env)
}

Napi::Value Net::NumParams(const Napi::CallbackInfo& info) {
  TL_TRY
  state_->check();
  int64_t n = 0;
  for (auto& p : state_->module->parameters()) n += p.numel();
  return Napi::Number::New(info.Env(), static_cast<double>(n));
  TL_CATCH(info.Env())
}

Napi::Value Net::NumGroups(const Napi::CallbackInfo& info) {
  TL_TRY
  state_->check();
  return Napi::Number::New(info.Env(), state_->numGroups);
  TL_CATCH(info.Env())
}

Napi::Value Net::StateDictKeys(const Napi::CallbackInfo& info) {
  TL_TRY
  state_->check();
  auto sd = stateDict(*state_->module);
  auto arr = Napi::Array::New(info.Env(), sd.size());
  for (size_t i = 0; i < sd.size(); i++) arr.Set(static_cast<uint32_t>(i), sd[i].first);
  return arr;
  TL_CATCH(info.Env())
}

Napi::Value Net::StateDict(const Napi::CallbackInfo& info) {
  TL_TRY
  state_->check();
  auto lock = state_->lockNow("stateDict");
  auto sd = stateDict(*state_->module);
  for (auto& kv : sd) kv.second = kv.second.contiguous();  // channels_last weights are saved in NCHW order
  return namedTensorsToJs(info.Env(), sd);
  TL_CATCH(info.Env())
}

// loadStateDict(tensors, { strict, skipPrefixes: string[], source, hint })
Napi::Value Net::LoadStateDict(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  state_->check();
  auto tensors = namedTensorsFromJs(info[0]);
  js::Options o(info[1], "loadStateDict: options");
  const bool strict = o.flag("strict");
  const auto skip = o.strings("skipPrefixes", 1024);
  const std::string source = o.optString("source").value_or("the weights");
  const std::string hint = o.optString("hint").value_or("");
  auto lock = state_->lockNow("loadStateDict");
  auto r = loadNamed(*state_->module, tensors, strict, skip, source, hint);
  state_->weightsChanged();
  auto out = Napi::Object::New(env);
  out.Set("missing", js::array(env, r.missing));
  out.Set("unexpected", js::array(env, r.unexpected));
  out.Set("mismatched", js::array(env, r.mismatched));
  out.Set("loaded", js::count(env, r.loaded));
  return out;
  TL_CATCH(env)
}

struct ForwardResult {
  torch::Tensor out;
};

// forward(data: Float32Array, shape: number[]) -> Promise<{ data, shape }>, eval mode, no grad.
Napi::Value Net::Forward(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  state_->check();
  auto shape = toShape(info[1], "shape");
  if (shape.size() != 4 || shape[1] != 3)
    throw UserError("forward: input shape must be [batch, 3, height, width], got " + std::to_string(shape.size()) + " dimensions" +
                    (shape.size() >= 2 ? " with " + std::to_string(shape[1]) + " channels" : ""));
  if (shape[2] < 32 || shape[3] < 32) throw UserError("forward: images must be at least 32x32 (every network here downsamples by 32)");
  auto input = float32ArrayToTensor(info[0], shape, "forward: input");
  auto s = state_;
  return runAsync<ForwardResult>(
      env, s->workerFor(),
      [s, input]() {
        std::lock_guard<std::mutex> lock(s->mutex);
        s->check();
        torch::NoGradGuard ng;
        auto bad = torch::logical_not(torch::isfinite(input)).flatten().nonzero();
        if (bad.numel() > 0) {
          const int64_t at = bad[0][0].item<int64_t>();
          throw UserError("forward: input holds " + std::to_string(input.flatten()[at].item<float>()) + " at index " + std::to_string(at) +
                          "; replace NaN/Inf values before calling the model");
        }
        bool wasTraining = s->module->is_training();
        s->module->eval();
        auto x = input.to(s->device);
        if (s->channelsLast) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
        auto y = s->forward(x).to(torch::kCPU, torch::kFloat32).contiguous();
        if (wasTraining) s->module->train();
        return ForwardResult{y};
      },
      [](Napi::Env env, ForwardResult& r) -> Napi::Value {
        auto o = Napi::Object::New(env);
        o.Set("data", tensorToFloat32Array(env, r.out));
        o.Set("shape", shapeToJs(env, r.out));
        return o;
      });
  TL_CATCH(env)
}

Napi::Value Net::To(const Napi::CallbackInfo& info) {
  TL_TRY
  state_->check();
  auto d = parseDevice(js::string(info[0], "to: device"));
  auto lock = state_->lockNow("to");
  state_->moveTo(d);
  return info.This();
  TL_CATCH(info.Env())
}

Napi::Value Net::SetTraining(const Napi::CallbackInfo& info) {
  TL_TRY
  state_->check();
  auto lock = state_->lockNow("setTraining");
  state_->module->train(js::boolean(info[0], "setTraining: on"));
  return info.This();
  TL_CATCH(info.Env())
}

Napi::Value Net::IsTraining(const Napi::CallbackInfo& info) {
  TL_TRY
  state_->check();
  return Napi::Boolean::New(info.Env(), state_->module->is_training());
  TL_CATCH(info.Env())
}

Napi::Value Net::Device(const Napi::CallbackInfo& info) {
  TL_TRY
  return Napi::String::New(info.Env(), deviceString(state_->device));
  TL_CATCH(info.Env())
}

// [{ name, group, isNorm, noDecay, requiresGrad, numel }] in parameter order.
Napi::Value Net::ParamTable(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  state_->check();
  auto arr = Napi::Array::New(env, state_->params.size());
  for (size_t i = 0; i < state_->params.size(); i++) {
    auto& p = state_->params[i];
    auto o = Napi::Object::New(env);
    o.Set("name", p.name);
    o.Set("group", p.group);
    o.Set("isNorm", p.isNorm);
    o.Set("noDecay", p.noDecay);
    o.Set("requiresGrad", p.tensor.requires_grad());
    o.Set("numel", Napi::Number::New(env, static_cast<double>(p.tensor.numel())));
    arr.Set(static_cast<uint32_t>(i), o);
  }
  return arr;
  TL_CATCH(env)
}

Napi::Value Net::Dispose(const Napi::CallbackInfo& info) {
  TL_TRY
  if (!state_->disposed) state_->releaseLater();
  memory_.release(info.Env());
  return info.Env().Undefined();
  TL_CATCH(info.Env())
}

// Collected without dispose(): the weights go with the last holder (this object or a Learner).
Net::~Net() { memory_.release(Env()); }

}  // namespace tl

namespace tl {

// What the two test hooks below share: the Net argument, a checked [batch, 3, height, width] batch on the
// network's device, and a forward run without gradients in the given mode under the network's lock, the
// mode put back however it ends.
static std::shared_ptr<NetState> hookNet(const Napi::CallbackInfo& info, const std::string& what) {
  if (!Net::isNet(info.Env(), info[0])) throw UserError(what + ": the first argument must be a Net");
  auto s = Napi::ObjectWrap<Net>::Unwrap(info[0].As<Napi::Object>())->state();
  s->check();
  return s;
}

static torch::Tensor hookBatch(const js::Options& o, const NetState& s, const std::string& what) {
  auto shape = toShape(o.value("shape"), (what + ": shape").c_str());
  if (shape.size() != 4 || shape[1] != 3 || shape[0] < 1 || shape[2] < 32 || shape[3] < 32 || shape[0] * shape[2] * shape[3] > (1 << 22))
    throw UserError(what + ": shape must be [batch, 3, height, width], at least 32x32 and at most 4M pixels");
  return float32ArrayToTensor(o.value("data"), shape, (what + ": data").c_str()).to(s.device);
}

static torch::Tensor hookForward(NetState& s, const char* what, bool training, const std::function<torch::Tensor()>& run) {
  auto lock = s.lockNow(what);
  torch::NoGradGuard ng;
  const bool was = s.module->is_training();
  s.module->train(training);
  torch::Tensor y;
  try {
    y = run().to(torch::kCPU, torch::kFloat32).contiguous();
  } catch (...) {
    s.module->train(was);
    throw;
  }
  s.module->train(was);
  return y;
}

// The hook bodyFeatures(net, { data, shape }) -> { data, shape }: the body's eval-mode output (what fast.ai's
// head takes), on the calling thread: the tests compare a TorchScript body with PyTorch.
Napi::Value BodyFeatures(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  auto s = hookNet(info, "bodyFeatures");
  js::Options o(info[1], "bodyFeatures: options");
  auto x = hookBatch(o, *s, "bodyFeatures");
  auto y = hookForward(*s, "bodyFeatures", false, [&] { return s->features(x); });
  auto r = Napi::Object::New(env);
  r.Set("data", tensorToFloat32Array(env, y));
  r.Set("shape", shapeToJs(env, y));
  return r;
  TL_CATCH(env)
}

// The hook trainForward(net, { data, shape, seed }) -> Float32Array: one training-mode forward (BatchNorm on
// batch statistics, updating the running ones; dropout and stochastic depth drawn after manual_seed(seed)),
// on the calling thread: the tests compare it with torchvision's train mode.
Napi::Value TrainForward(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  auto s = hookNet(info, "trainForward");
  js::Options o(info[1], "trainForward: options");
  auto x = hookBatch(o, *s, "trainForward");
  const auto seed = static_cast<uint64_t>(o.integer("seed", 0, int64_t{1} << 53));
  auto y = hookForward(*s, "trainForward", true, [&] {
    torch::manual_seed(seed);
    return s->forward(x);
  });
  s->weightsChanged();
  return tensorToFloat32Array(env, y);
  TL_CATCH(env)
}

}  // namespace tl
