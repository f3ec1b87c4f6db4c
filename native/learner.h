// The native half of a Learner: the image caches, the training loop (batch assembly, forward,
// loss, backward, fast.ai Adam, schedule), validation, the LR finder and Grad-CAM. The TypeScript
// Learner drives it epoch by epoch; nothing per batch crosses into JavaScript except progress.
// Its methods live in learner.cpp (data, options, state), train_epoch.cpp (the training loop),
// predict.cpp, lrfind.cpp and gradcam.cpp, around the state in learner_core.h.
#pragma once
#include "augment.h"
#include "net.h"
#include "optimizer.h"

namespace tl {

struct ImageCache {
  torch::Tensor images;  // uint8 [N, P, P, 3] on the training device
  torch::Tensor labels;  // on the training device: int64 [N] class indices, or float [N, C] multi-hot (multi-label)
  bool fromStore = false;  // `images` is an ImageStore's own tensor (a CPU learner): the store reports its memory
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

// n uint8 images [P, P, 3] in a JavaScript Uint8Array, checked for kind and size: a view of the JS bytes,
// to be copied before the call returns (the caller may change, transfer or drop the array after it).
torch::Tensor uint8ImagesView(const Napi::Value& v, int64_t n, int64_t p, const char* what);
// The same copied into a tensor the worker owns.
torch::Tensor uint8Images(const Napi::Value& v, int64_t n, int64_t p, const char* what);
// The images of setData and predict: an ImageStore's tensor (the store sealed: a native thread reads it
// next), or a view of a Uint8Array's memory (`*view` set, where given: the caller copies it before returning).
torch::Tensor imagesArg(Napi::Env env, const Napi::Value& v, int64_t n, int64_t p, const char* who, bool* view = nullptr);
// A page-locked copy (images bound for the GPU: the copy there reads it directly).
torch::Tensor pinnedCopy(const torch::Tensor& view);

class Learner : public Napi::ObjectWrap<Learner> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit Learner(const Napi::CallbackInfo& info);
  ~Learner() override;
  // The state the methods share (learner_core.h); the training loop (train_epoch.cpp) works on it.
  struct Core;

 private:
  Napi::Value SetData(const Napi::CallbackInfo& info);
  Napi::Value SetOptions(const Napi::CallbackInfo& info);
  Napi::Value FreezeTo(const Napi::CallbackInfo& info);
  Napi::Value TrainEpoch(const Napi::CallbackInfo& info);
  Napi::Value Gradients(const Napi::CallbackInfo& info);  // (the tests' hook: train_epoch.cpp)
  Napi::Value Validate(const Napi::CallbackInfo& info);
  Napi::Value LrFind(const Napi::CallbackInfo& info);
  Napi::Value Predict(const Napi::CallbackInfo& info);
  Napi::Value GradCam(const Napi::CallbackInfo& info);
  Napi::Value GetState(const Napi::CallbackInfo& info);
  Napi::Value SetState(const Napi::CallbackInfo& info);
  Napi::Value RequestStop(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  std::shared_ptr<Core> core_;
  // the image caches and (at most) the optimizer's two averages per parameter
  ExternalMemory memory_;
  void reportMemory(Napi::Env env);
};

}  // namespace tl
