#include "image_store.h"

#include <cstring>

#include "js.h"
#include "net.h"

namespace tl {

Napi::Function ImageStore::Init(Napi::Env env) {
  auto fn = DefineClass(env, "ImageStore",
                        {InstanceMethod("set", &ImageStore::Set), InstanceMethod("read", &ImageStore::Read),
                         InstanceAccessor("n", &ImageStore::Count, nullptr), InstanceAccessor("presize", &ImageStore::Presize, nullptr),
                         InstanceAccessor("sealed", &ImageStore::Sealed, nullptr)});
  addonData(env).imageStoreConstructor = Napi::Persistent(fn);
  return fn;
}

bool ImageStore::isStore(Napi::Env env, const Napi::Value& v) {
  auto* data = env.GetInstanceData<AddonData>();
  return data != nullptr && !data->imageStoreConstructor.IsEmpty() && v.IsObject() && v.As<Napi::Object>().InstanceOf(data->imageStoreConstructor.Value());
}

torch::Tensor ImageStore::images(const Napi::Value& v) { return Napi::ObjectWrap<ImageStore>::Unwrap(v.As<Napi::Object>())->images_; }
void ImageStore::seal(const Napi::Value& v) { Napi::ObjectWrap<ImageStore>::Unwrap(v.As<Napi::Object>())->sealed_ = true; }

// new ImageStore(n, presize): n images of presize x presize x 3, zeros until set
ImageStore::ImageStore(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ImageStore>(info) {
  auto env = info.Env();
  TL_TRY
  const int64_t n = js::integer(info[0], "ImageStore: n", 0, js::kMaxCount);
  const int64_t p = js::integer(info[1], "ImageStore: presize", 1, js::kMaxSide);
  const int64_t bytes = js::imageBytes(n, p);
  images_ = torch::zeros({n, p, p, 3}, torch::kUInt8);
  memory_.set(env, bytes);
  TL_CATCH(env)
}

ImageStore::~ImageStore() { memory_.release(Env()); }

// set(i, pixels: Uint8Array of presize*presize*channels bytes, channels: 1 (grey, repeated) or 3)
Napi::Value ImageStore::Set(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  if (sealed_) throw UserError("ImageStore.set: these images are in use by a learner and no longer take writes (make a new store)");
  const int64_t n = images_.size(0), p = images_.size(1);
  if (n == 0) throw UserError("ImageStore.set: the store holds no images");
  const int64_t i = js::integer(info[0], "ImageStore.set: index", 0, n - 1);
  const int64_t channels = js::integer(info[2], "ImageStore.set: channels", 1, 3);
  if (channels == 2) throw UserError("ImageStore.set: channels must be 1 or 3, got 2");
  auto a = js::typedArray<uint8_t>(info[1], "ImageStore.set: pixels", p * p * channels);
  auto dst = images_[i];
  if (channels == 3) std::memcpy(dst.data_ptr(), a.Data(), static_cast<size_t>(p * p * 3));
  else dst.copy_(torch::from_blob(a.Data(), {p, p, 1}, torch::kUInt8).expand({p, p, 3}));
  return env.Undefined();
  TL_CATCH(env)
}

// read(start, count) -> a Buffer holding a copy of images [start, start + count)
Napi::Value ImageStore::Read(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  const int64_t n = images_.size(0), p = images_.size(1);
  const int64_t start = js::integer(info[0], "ImageStore.read: start", 0, n);
  const int64_t count = js::integer(info[1], "ImageStore.read: count", 0, n - start);
  const auto per = p * p * 3;
  return Napi::Buffer<uint8_t>::Copy(env, images_.data_ptr<uint8_t>() + start * per, static_cast<size_t>(count * per));
  TL_CATCH(env)
}

Napi::Value ImageStore::Count(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(images_.size(0))); }
Napi::Value ImageStore::Presize(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(images_.size(1))); }
Napi::Value ImageStore::Sealed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), sealed_); }

}  // namespace tl
