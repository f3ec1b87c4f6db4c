// The addon's entry point: registers the native classes and the few free functions.
#include <ATen/CPUGeneratorImpl.h>
#include <caffe2/serialize/versions.h>
#include "js.h"

#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "augment.h"
#include "common.h"
#include "image_store.h"
#include "host_malloc.h"
#include "learner.h"
#include "mixup.h"
#include "net.h"
#include "optimizer.h"

#if __has_include(<ATen/cuda/CUDAContext.h>) && __has_include(<cuda_runtime_api.h>)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#define TL_CUDA_PROPS 1
#define TL_HAS_CUDA_HEADERS 1
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
  o.Set("threads", configuredThreads());
  o.Set("hostMalloc", hostMallocState());
  o.Set("fusedAdam", FastAdam::fusedCudaCompiled());
  // the newest TorchScript file format this LibTorch loads (a TorchScript body from a newer PyTorch is refused
  // before loading, with both versions)
  o.Set("torchscriptFormat", Napi::Number::New(env, static_cast<double>(caffe2::serialize::kMaxSupportedFileFormatVersion)));
  return o;
  TL_CATCH(env)
}

static Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  TL_TRY
  // Bounded: thousands of threads made a forward pass take tens of seconds (and a hundred thousand never
  // returned). More threads than cores never helps LibTorch's CPU kernels; a few times the cores is allowed.
  const int64_t cores = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  const int64_t most = std::max<int64_t>(64, 4 * cores);
  const auto v = info[0];
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= 1 && d <= static_cast<double>(most)) || d != std::floor(d))
    throw UserError("threads must be an integer from 1 to " + std::to_string(most) + " (this machine has " + std::to_string(cores) +
                    " cores), got " + (v.IsNumber() ? js::show(d) : std::string("a ") + (v.IsString() ? "string" : "non-number")));
  setThreads(static_cast<int>(d));
  return info.Env().Undefined();
  TL_CATCH(info.Env())
}

static Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  TL_TRY
  torch::manual_seed(static_cast<uint64_t>(js::integer(info[0], "seed", 0, int64_t{1} << 53)));
  return info.Env().Undefined();
  TL_CATCH(info.Env())
}

// augmentImages(images: Uint8Array [N*P*P*3], n, presize, size, { params?: Float64Array [N*9], aug?, seed? })
//   -> Uint8Array [N*size*size*3]: the batch transform before normalisation, for showBatch and tests.
static Napi::Value AugmentImagesJs(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  const int64_t n = js::integer(info[1], "augmentImages: n", 1, js::kMaxCount);
  const int64_t p = js::integer(info[2], "augmentImages: presize", 1, js::kMaxSide);
  const int64_t size = js::integer(info[3], "augmentImages: size", 1, js::kMaxSide);
  js::Options o(info[4], "augmentImages: options");
  auto images = uint8Images(info[0], n, p, "augmentImages: images");
  torch::Tensor params;
  if (o.has("params")) {
    params = js::copyTyped<double>(o.value("params"), "augmentImages: params (15 per image)", torch::kFloat64, n * kAugParams).view({n, kAugParams});
  } else if (o.value("aug").IsObject()) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(o.optInteger("seed", 0, int64_t{1} << 53).value_or(0)));
    params = drawAugParams(n, augOptionsFromJs(o.value("aug")), gen);
  } else {
    params = identityAugParams(n);
  }
  torch::NoGradGuard ng;
  auto x = augmentImages(images, params, size);
  return js::typed<uint8_t>(env, x.mul(255).round_().clamp_(0, 255).to(torch::kUInt8).permute({0, 2, 3, 1}));
  TL_CATCH(env)
}

// drawAugParams(n, aug, seed) -> Float64Array [n * kAugParams]: the per-image draws training makes, for the
// tests' checks of their distributions.
static Napi::Value DrawAugParamsJs(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  const int64_t n = js::integer(info[0], "drawAugParams: n", 1, 1 << 20);
  const auto aug = augOptionsFromJs(js::object(info[1], "drawAugParams: aug"));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(js::integer(info[2], "drawAugParams: seed", 0, int64_t{1} << 53)));
  return js::typed<double>(env, drawAugParams(n, aug, gen));
  TL_CATCH(env)
}

// cudaMemory(reset?) -> { allocated, reserved, peakAllocated } in bytes for device 0 (zeros without CUDA).
static Napi::Value CudaMemory(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  auto o = Napi::Object::New(env);
  double allocated = 0, reserved = 0, peak = 0;
#ifdef TL_HAS_CUDA_HEADERS
  if (torch::cuda::is_available()) {
    using namespace c10::cuda::CUDACachingAllocator;
    // LibTorch 2.x's allocator has no per-device state (getDeviceStats throws "Invalid device argument")
    // until CUDA is first used; a process whose first CUDA call is this one (a bench run) initialises it
    static std::once_flag init;
    std::call_once(init, [] { (void)torch::empty({1}, torch::kCUDA); });
    auto stats = getDeviceStats(0);
    const size_t agg = 0;  // StatType::AGGREGATE (its namespace moved between LibTorch 1.13 and 2.x)
    allocated = static_cast<double>(stats.allocated_bytes[agg].current);
    reserved = static_cast<double>(stats.reserved_bytes[agg].current);
    peak = static_cast<double>(stats.allocated_bytes[agg].peak);
    if (!info[0].IsUndefined() && js::boolean(info[0], "cudaMemory: resetPeak")) resetPeakStats(0);
  }
#endif
  o.Set("allocated", allocated);
  o.Set("reserved", reserved);
  o.Set("peakAllocated", peak);
  return o;
  TL_CATCH(env)
}

// benchAugment({ device, n, presize, size, bs, iters, aug, mean, std, mix }) -> seconds per batch of the batch
// pipeline (index the uint8 cache, draw, affine + warp + lighting, normalise; with mix 'mixup' or 'cutmix',
// fast.ai's default alpha, the mixing too), synchronised at the end.
static double benchAugmentOn(const torch::Device& dev, int64_t n, int64_t p, int64_t size, int64_t bs, int64_t iters, const AugOptions& aug,
                             const Normalize& norm, const MixOptions& mix) {
  torch::NoGradGuard ng;
  auto cache = torch::randint(0, 256, {n, p, p, 3}, torch::TensorOptions().dtype(torch::kUInt8)).to(dev);
  auto labels = torch::randint(0, 2, {n}, torch::kInt64).to(dev);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  auto once = [&]() {
    auto idx = toDevice(torch::randint(0, n, {bs}, gen, torch::kInt64), dev);
    auto x = normalizeBatch(augmentImages(cache.index_select(0, idx), drawAugParams(bs, aug, gen), size), norm);
    if (mix.kind == MixKind::None) return x;
    return applyMix(x, labels.index_select(0, idx), drawMix(bs, size, size, mix, gen), mix.kind, 2).first;
  };
  once().sum().item<double>();  // warm-up
  auto t0 = std::chrono::steady_clock::now();
  torch::Tensor last;
  for (int64_t i = 0; i < iters; i++) last = once();
  last.sum().item<double>();  // synchronise
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s / static_cast<double>(iters);
}

static Napi::Value BenchAugment(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  js::Options o(info[0], "benchAugment: options");
  const auto dev = parseDevice(o.string("device"));
  const int64_t n = o.integer("n", 1, 1 << 16), p = o.integer("presize", 1, 1024), size = o.integer("size", 1, 1024);
  const int64_t bs = o.integer("bs", 1, n), iters = o.integer("iters", 1, 1 << 16);
  const auto aug = augOptionsFromJs(o.value("aug"));
  const auto norm = normalizeFromJs(o.value("mean"), o.value("std"));
  MixOptions mix;
  mix.kind = o.optChoice<MixKind>("mix", {{"none", MixKind::None}, {"mixup", MixKind::MixUp}, {"cutmix", MixKind::CutMix}}).value_or(MixKind::None);
  mix.alpha = mix.kind == MixKind::CutMix ? 1.0 : 0.4;
  // on the thread training uses (the JavaScript thread's LibTorch calls are kept to one CPU thread), waited for here
  return Napi::Number::New(env, runAndWait<double>(cpuWorker(), [=] { return benchAugmentOn(dev, n, p, size, bs, iters, aug, norm, mix); }));
  TL_CATCH(env)
}

Napi::Value BatchNormCheck(const Napi::CallbackInfo& info);  // batchnorm_check.cpp
Napi::Value MixBatch(const Napi::CallbackInfo& info);        // mixup.cpp
Napi::Value TrainForward(const Napi::CallbackInfo& info);    // net.cpp
Napi::Value BodyFeatures(const Napi::CallbackInfo& info);    // net.cpp
Napi::Value DistInit(const Napi::CallbackInfo& info);        // distributed.cpp
Napi::Value DistInfo(const Napi::CallbackInfo& info);        // distributed.cpp
Napi::Value DistAllreduce(const Napi::CallbackInfo& info);   // distributed.cpp
Napi::Value DistShutdown(const Napi::CallbackInfo& info);    // distributed.cpp

// threadInfo() -> { js, cpuWorker } (diagnostics: waits for the CPU worker): LibTorch's CPU thread count on the JavaScript thread (kept at one) and on
// the thread CPU work runs on (the configured count): the single-OpenMP-team design, checked by the tests.
static Napi::Value ThreadInfo(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  auto o = Napi::Object::New(env);
  o.Set("js", at::get_num_threads());
  o.Set("cpuWorker", runAndWait<int>(cpuWorker(), [] { return at::get_num_threads(); }));
  return o;
  TL_CATCH(env)
}

// tuneHostMalloc('tuned' | 'system') -> what is in force (native/host_malloc.h); the binding calls it once,
// from TORCHLEARN_MALLOC.
static Napi::Value TuneHostMalloc(const Napi::CallbackInfo& info) {
  TL_TRY
  const auto v = info[0];
  const std::string mode = v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
  if (mode != "tuned" && mode != "system")
    throw UserError("the host allocator's mode must be 'tuned' or 'system', got " + (v.IsString() ? "'" + mode + "'" : std::string("a non-string")));
  return Napi::String::New(info.Env(), tuneHostMalloc(mode));
  TL_CATCH(info.Env())
}

// releaseHostMemory() -> Promise<void>: gives the memory the allocator keeps back to the system, on the CPU
// worker (a fit calls it as it starts, so that what earlier work freed does not add to the fit's peak).
static Napi::Value ReleaseHostMemory(const Napi::CallbackInfo& info) {
  TL_TRY
  return runAsync<bool>(info.Env(), cpuWorker(), [] { releaseHostMemory(); return true; }, [](Napi::Env env, bool&) { return env.Undefined(); });
  TL_CATCH(info.Env())
}

// hooks.hostMallocSettings() -> { MALLOC_MMAP_THRESHOLD_: bytes, ... }: the bench's PyTorch row under the same settings
static Napi::Value HostMallocSettings(const Napi::CallbackInfo& info) {
  auto o = Napi::Object::New(info.Env());
  for (const auto& [name, value] : tunedMallocSettings()) o.Set(name, Napi::Number::New(info.Env(), value));
  return o;
}

// prepareExit(): the process is exiting (the main thread's 'exit' event, src/binding.ts): stop every loop
// and wait, bounded, for the native workers to go idle.
static Napi::Value PrepareExit(const Napi::CallbackInfo& info) {
  prepareExit();
  return info.Env().Undefined();
}

// The architecture names makeBackbone builds (backbone.cpp), for the TypeScript side's check of its list.
static Napi::Value Architectures(const Napi::CallbackInfo& info) {
  TL_TRY
  return js::array(info.Env(), architectures());
  TL_CATCH(info.Env())
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // LibTorch's OpenMP pool defaults to one thread on some builds: use every core for CPU work unless the
  // user says otherwise (torchlearn's setNumThreads / TORCHLEARN_THREADS, read by the TypeScript side).
  setThreads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  // A tiny forward and backward of each kind of layer, here on the JavaScript thread (one CPU thread, see
  // setThreads): oneDNN and LibTorch make their process-wide objects (primitive caches, kernel registries)
  // on first use and register their destructors then. Made now, before the exit hook is armed (below), the
  // hook runs before those destructors (common.h, armExitHook), also for a script that exits in its first
  // batch.
  try {
    // (the global generator's state is put back: loading the addon draws no random numbers)
    at::Generator global = at::detail::getDefaultCPUGenerator();
    const auto state = global.get_state();
    auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3).padding(1).bias(false));
    auto bn = torch::nn::BatchNorm2d(4);
    auto fc = torch::nn::Linear(4, 2);
    auto x = torch::rand({2, 3, 8, 8});
    auto y = fc->forward(torch::adaptive_avg_pool2d(torch::relu(bn->forward(conv->forward(x))), {1, 1}).flatten(1));
    torch::nn::functional::cross_entropy(y, torch::zeros({2}, torch::kLong)).backward();
    global.set_state(state);
  } catch (...) {
    // a warm-up only: whatever fails here fails again, with its message, where it is used
  }
  // As the process exits, the loops stop and the workers finish what they run in LibTorch before its static
  // objects go (common.h, armExitHook).
  armExitHook();
  using Entry = std::pair<const char*, Napi::Value (*)(const Napi::CallbackInfo&)>;
  auto define = [&](Napi::Object o, std::initializer_list<Entry> fns) {
    for (const auto& [name, fn] : fns) o.Set(name, Napi::Function::New(env, fn));
  };
  exports.Set("abiVersion", Napi::Number::New(env, TORCHLEARN_ABI_VERSION));
  define(exports, {{"torchInfo", TorchInfo}, {"setNumThreads", SetNumThreads}, {"prepareExit", PrepareExit}, {"manualSeed", ManualSeed}, {"augmentImages", AugmentImagesJs}, {"architectures", Architectures}, {"tuneHostMalloc", TuneHostMalloc}, {"releaseHostMemory", ReleaseHostMemory},
                    {"distInit", DistInit}, {"distInfo", DistInfo}, {"distAllreduce", DistAllreduce}, {"distShutdown", DistShutdown}});
  // For the tests and the bench (src/hooks.ts), not the library: internals run on given inputs, and
  // measurements.
  auto hooks = Napi::Object::New(env);
  define(hooks, {{"threadInfo", ThreadInfo}, {"fastAdamSteps", FastAdamSteps}, {"scheduleValues", ScheduleValues}, {"cudaMemory", CudaMemory}, {"benchAugment", BenchAugment}, {"drawAugParams", DrawAugParamsJs}, {"batchNormCheck", BatchNormCheck}, {"mixBatch", MixBatch}, {"trainForward", TrainForward}, {"bodyFeatures", BodyFeatures}, {"hostMallocSettings", HostMallocSettings}});
  exports.Set("hooks", hooks);
  exports.Set("Net", Net::Init(env));
  exports.Set("Learner", Learner::Init(env));
  exports.Set("ImageStore", ImageStore::Init(env));
  return exports;
}

}  // namespace tl

static Napi::Object InitTorchlearn(Napi::Env env, Napi::Object exports) { return tl::Init(env, exports); }
NODE_API_MODULE(torchlearn, InitTorchlearn)
