// A data set's decoded images, held once, in native memory: the DataLoaders fill it image by image as the
// files are decoded, and every learner built on those loaders trains from the same tensor (on the CPU; a CUDA
// learner copies it to its device). Before it, the loaders kept a JavaScript copy and each learner a native
// one. JavaScript never sees this memory: it writes through set() and reads through read(), both copies.
#pragma once

#include "common.h"

namespace tl {

class ImageStore : public Napi::ObjectWrap<ImageStore> {
 public:
  static Napi::Function Init(Napi::Env env);
  // whether `v` is an ImageStore of this environment
  static bool isStore(Napi::Env env, const Napi::Value& v);
  // the images of a store `v` (isStore checked by the caller): [n, p, p, 3] uint8 on the CPU
  static torch::Tensor images(const Napi::Value& v);
  // no more writes to the store: a learner trains from its images on its own thread
  static void seal(const Napi::Value& v);

  explicit ImageStore(const Napi::CallbackInfo& info);
  ~ImageStore() override;

 private:
  Napi::Value Set(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Count(const Napi::CallbackInfo& info);
  Napi::Value Presize(const Napi::CallbackInfo& info);
  Napi::Value Sealed(const Napi::CallbackInfo& info);

  torch::Tensor images_;  // [n, p, p, 3] uint8, CPU
  bool sealed_ = false;
  ExternalMemory memory_;
};

}  // namespace tl
