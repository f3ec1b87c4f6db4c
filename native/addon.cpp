// The addon's entry point: registers the native classes and the few free functions.
#include <thread>

#include "common.h"
#include "learner.h"
#include "net.h"

#if __has_include(<ATen/cuda/CUDAContext.h>) && __has_include(<cuda_runtime_api.h>)
#include <ATen/cuda/CUDAContext.h>
#define TL_CUDA_PROPS 1
#endif

namespace tl {

static Napi::Value TorchInfo(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  auto o = Napi::Object::New(env);
  o.Set("torchVersion", std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                            std::to_string(TORCH_VERSION_PATCH));
  o.Set("torchSource", TORCHLEARN_TORCH_SOURCE);
  bool cuda = torch::cuda::is_available();
  o.Set("cuda", cuda);
  o.Set("cudnn", cuda && torch::cuda::cudnn_is_available());
  o.Set("deviceCount", Napi::Number::New(env, cuda ? static_cast<double>(torch::cuda::device_count()) : 0));
#ifdef TL_CUDA_PROPS
  if (cuda) o.Set("deviceName", at::cuda::getDeviceProperties(0)->name);
#endif
  o.Set("threads", at::get_num_threads());
  return o;
  TL_CATCH(env)
}

static Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  TL_TRY
  int n = info[0].As<Napi::Number>().Int32Value();
  if (n < 1) throw UserError("threads must be a positive integer, got " + std::to_string(n));
  at::set_num_threads(n);
  return info.Env().Undefined();
  TL_CATCH(info.Env())
}

static Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  TL_TRY
  torch::manual_seed(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
  return info.Env().Undefined();
  TL_CATCH(info.Env())
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // LibTorch's OpenMP pool defaults to one thread on some builds: use every core unless the user
  // says otherwise (torchlearn's setNumThreads / TORCHLEARN_THREADS, read by the TypeScript side).
  at::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  exports.Set("abiVersion", Napi::Number::New(env, TORCHLEARN_ABI_VERSION));
  exports.Set("torchInfo", Napi::Function::New(env, TorchInfo));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads));
  exports.Set("manualSeed", Napi::Function::New(env, ManualSeed));
  exports.Set("Net", Net::Init(env));
  exports.Set("Learner", Learner::Init(env));
  return exports;
}

}  // namespace tl

static Napi::Object InitTorchlearn(Napi::Env env, Napi::Object exports) { return tl::Init(env, exports); }
NODE_API_MODULE(torchlearn, InitTorchlearn)
