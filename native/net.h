// A network held by JavaScript: a torchvision network, or fast.ai's body + head (what a Learner trains).
#pragma once
#include "resnet.h"

namespace tl {

// fast.ai's model: the body (torchvision's network cut where fast.ai cuts it), then the head. Layer groups
// (for freezing and discriminative learning rates): the body's (BackboneImpl::numBodyGroups), then the head.
struct ClassifierImpl : torch::nn::Module {
  ClassifierImpl(std::shared_ptr<BackboneImpl> body, const HeadOptions& head);
  torch::Tensor forward(torch::Tensor x) { return headForward(head, body->features(x)); }
  std::shared_ptr<BackboneImpl> body;
  torch::nn::Sequential head{nullptr};
};
TORCH_MODULE(Classifier);

struct ParamInfo {
  std::string name;
  torch::Tensor tensor;
  int group;        // layer group
  bool isNorm;      // a BatchNorm or LayerNorm weight/bias: trains even in frozen groups (fast.ai's train_bn)
  bool noDecay;     // BatchNorm parameters and biases get no weight decay (fast.ai v2)
};

// The native state behind a JavaScript Net object; shared with a Learner.
struct NetState : std::enable_shared_from_this<NetState> {
  std::string arch;
  std::string kind;  // "torchvision" or "fastai"
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const torch::Tensor&)> forward;
  std::function<torch::Tensor(const torch::Tensor&)> features;  // activations of the body's last layer
  std::function<torch::Tensor(const torch::Tensor&)> classify;  // from those activations to logits
  std::function<void(bool)> setFoldBatchNorm;                    // BackboneImpl::setFoldBatchNorm of the body
  std::function<void(TrainBn)> setTrainBatchNorm;                // BackboneImpl::setTrainBatchNorm of the body
  std::function<void()> weightsChanged;                          // BackboneImpl::weightsChanged: after loads and moves
  torch::Device device{torch::kCPU};
  bool channelsLast = false;
  int numGroups = 1;
  int64_t numClasses = 0;
  std::vector<ParamInfo> params;
  std::mutex mutex;  // one native operation at a time on a network
  Worker worker;     // on CUDA, the thread every native operation on this network runs on
  // where the next operation runs: the network's own thread on CUDA, the shared CPU thread otherwise
  Worker& workerFor() { return device.is_cuda() ? worker : cpuWorker(); }
  std::atomic<bool> disposed{false};

  void moveTo(const torch::Device& d);
  void check() const;
  // The network's lock, for calls on the JavaScript thread: taken only if free. A fit holds it for a whole
  // epoch on its worker, and waiting for it here froze the event loop that long; such a call refuses instead.
  std::unique_lock<std::mutex> lockNow(const char* what);
  // Frees the weights on the worker, after whatever runs there now (dispose: the JavaScript thread only marks).
  void releaseLater();
};

// What the addon keeps per JavaScript environment (napi instance data, freed with the environment).
// Per environment (the main thread and each worker_threads Worker load the addon into their own): a
// process-wide static would be overwritten by the last environment to load, and the others' checks would
// then fail (or read a reference of an environment already gone).
struct AddonData {
  Napi::FunctionReference netConstructor;
  Napi::FunctionReference imageStoreConstructor;
};
// This environment's AddonData, made on first use.
AddonData& addonData(Napi::Env env);

class Net : public Napi::ObjectWrap<Net> {
 public:
  static Napi::Function Init(Napi::Env env);
  // whether `v` is a Net of this environment
  static bool isNet(Napi::Env env, const Napi::Value& v);
  explicit Net(const Napi::CallbackInfo& info);
  ~Net() override;
  std::shared_ptr<NetState> state() const { return state_; }

 private:
  Napi::Value NumParams(const Napi::CallbackInfo& info);
  // the layer groups of discriminative learning rates and freezeTo (fast.ai's splitter)
  Napi::Value NumGroups(const Napi::CallbackInfo& info);
  Napi::Value StateDictKeys(const Napi::CallbackInfo& info);
  Napi::Value StateDict(const Napi::CallbackInfo& info);
  Napi::Value LoadStateDict(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value SetTraining(const Napi::CallbackInfo& info);
  Napi::Value IsTraining(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);
  Napi::Value ParamTable(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  std::shared_ptr<NetState> state_;
  ExternalMemory memory_;
};

// Loads named tensors into a module by name. Checks everything before changing anything.
struct LoadReport {
  std::vector<std::string> missing, unexpected, mismatched;
  int64_t loaded = 0;
};
// Copies the named tensors into the module's parameters and buffers by name; with `strict`, any missing,
// unexpected or mismatched key refuses the whole file, naming `source`, with `hint` (what the caller
// suggests) after the list.
LoadReport loadNamed(torch::nn::Module& module, const NamedTensors& tensors, bool strict, const std::vector<std::string>& skip,
                     const std::string& source, const std::string& hint = "");

}  // namespace tl
