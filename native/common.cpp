#include "common.h"
#include "distributed.h"
#include "host_malloc.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if __has_include(<c10/cuda/CUDACachingAllocator.h>) && __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define TL_HAS_CUDA_HEADERS 1
#endif

namespace tl {

void releaseDeviceCache() {
#ifdef TL_HAS_CUDA_HEADERS
  if (torch::cuda::is_available()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

int64_t threadSerial() {
  static std::atomic<int64_t> next{1};
  thread_local const int64_t mine = next++;
  return mine;
}

namespace {
// Every worker's queue, for waitAllIdle (weak: a queue goes with its thread).
std::mutex& queuesMutex() {
  static auto* m = new std::mutex();  // never destroyed: used as the process exits
  return *m;
}
std::vector<std::weak_ptr<void>>& queues() {
  static auto* v = new std::vector<std::weak_ptr<void>>();
  return *v;
}
}  // namespace

namespace {
std::atomic<bool> g_exiting{false};
std::atomic<int> g_hooks{0};
// At most this many registrations: enough to follow the lazy set-up of the first tasks of each kind.
constexpr int kMaxHooks = 24;
// How long the hook waits for a batch in flight to end (a large network's CPU batch takes seconds).
constexpr auto kExitWait = std::chrono::seconds(30);
// How long a worker waits, idle after work, before it gives kept memory back (host_malloc.h): longer than the
// pause between two epochs of a fit or two requests of a busy server, short enough that memory comes back
// soon after a fit ends.
constexpr auto kReleaseAfterIdle = std::chrono::seconds(1);

void onExit() {
  if (g_exiting.exchange(true)) return;  // the first of the registrations to run does the work
  Worker::waitAllIdle(std::chrono::duration_cast<std::chrono::milliseconds>(kExitWait));
  // the heartbeat thread and the process group's connections go before LibTorch's static objects
  dist::shutdown();
}
}  // namespace

bool exiting() { return g_exiting.load(std::memory_order_relaxed); }

void prepareExit() { onExit(); }

void armExitHook() {
  if (g_hooks.load() >= kMaxHooks || g_exiting.load()) return;
  if (g_hooks.fetch_add(1) < kMaxHooks) std::atexit(onExit);
}

Worker::Worker() {
  std::lock_guard<std::mutex> lock(queuesMutex());
  auto& all = queues();
  all.erase(std::remove_if(all.begin(), all.end(), [](const std::weak_ptr<void>& w) { return w.expired(); }), all.end());
  all.push_back(queue_);
}

void Worker::waitAllIdle(std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  std::vector<std::shared_ptr<void>> live;
  {
    std::lock_guard<std::mutex> lock(queuesMutex());
    for (auto& w : queues())
      if (auto q = w.lock()) live.push_back(q);
  }
  for (auto& p : live) {
    auto* q = static_cast<Queue*>(p.get());
    std::unique_lock<std::mutex> lock(q->m);
    q->idleCv.wait_until(lock, deadline, [&] { return !q->running && q->tasks.empty(); });
  }
}

void Worker::post(std::function<void()> task) {
  std::call_once(started_, [this] {
    std::thread([q = queue_]() {
      bool worked = false;  // since the last releaseHostMemory
      for (;;) {
        std::function<void()> task;
        {
          std::unique_lock<std::mutex> lock(q->m);
          q->running = false;
          q->idleCv.notify_all();
          const auto ready = [&] { return q->stop || !q->tasks.empty(); };
          // Idle for a while after work: the memory the allocator keeps for the next step goes back to the
          // system (host_malloc.h). Marked running meanwhile, so that waitAllIdle waits for it.
          if (worked && !q->cv.wait_for(lock, kReleaseAfterIdle, ready)) {
            q->running = true;
            lock.unlock();
            releaseHostMemory();
            lock.lock();
            q->running = false;
            q->idleCv.notify_all();
          }
          worked = false;
          q->cv.wait(lock, ready);
          if (q->tasks.empty()) return;  // stopped and drained
          task = std::move(q->tasks.front());
          q->tasks.pop_front();
          q->running = true;
        }
        task();  // runAsync's tasks catch everything they throw
        worked = true;
        armExitHook();  // (after the task: LibTorch's lazily made objects now have their destructors registered)
      }
    }).detach();
  });
  {
    std::lock_guard<std::mutex> lock(queue_->m);
    queue_->tasks.push_back(std::move(task));
  }
  queue_->cv.notify_one();
}

Worker& cpuWorker() {
  static Worker* worker = new Worker();  // never destroyed: its thread may outlive static destruction
  return *worker;
}

#if AT_PARALLEL_OPENMP
extern "C" void omp_set_num_threads(int) __attribute__((weak));
#endif

static std::atomic<int> threads{1};

void setThreads(int n) {
  at::set_num_threads(n);  // the count new threads take (and this thread's, undone below)
  threads = n;
#if AT_PARALLEL_OPENMP
  at::get_num_threads();  // LibTorch's lazy per-thread set-up, done now so that it cannot undo the next line later
  if (omp_set_num_threads) omp_set_num_threads(1);
#endif
  cpuWorker().post([n] { at::set_num_threads(n); });  // the CPU worker's own count (per thread in OpenMP)
}

int configuredThreads() { return threads; }

Worker::~Worker() {
  {
    std::lock_guard<std::mutex> lock(queue_->m);
    queue_->stop = true;
  }
  queue_->cv.notify_all();
}

int64_t moduleBytes(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& t : m.parameters()) n += static_cast<int64_t>(t.nbytes());
  for (const auto& t : m.buffers()) n += static_cast<int64_t>(t.nbytes());
  return n;
}

std::string describeException(const std::exception& e) {
  std::string msg;
  if (auto* c10err = dynamic_cast<const c10::Error*>(&e)) {
    msg = c10err->what_without_backtrace();
  } else {
    msg = e.what();
  }
  // LibTorch appends "Exception raised from ..." lines; users need the first part only.
  auto cut = msg.find("\nException raised from");
  if (cut != std::string::npos) msg = msg.substr(0, cut);
  if (msg.find("CUDA out of memory") != std::string::npos || msg.find("out of memory") != std::string::npos) {
    releaseDeviceCache();
    msg = "CUDA out of memory: " + msg +
          "\nTry a smaller batch size (bs) or image size; the device memory cache was released and the learner can go on.";
  }
  return msg;
}

ProgressSink::ProgressSink(Napi::Env env, Napi::Value callback) {
  if (!callback.IsFunction()) return;
  tsfn_ = Napi::ThreadSafeFunction::New(env, callback.As<Napi::Function>(), "torchlearn-progress", 0, 1);
  active_ = true;
}

ProgressSink::~ProgressSink() {
  if (active_) tsfn_.Release();
}

void ProgressSink::emit(std::function<Napi::Value(Napi::Env)> fill) {
  if (!active_) return;
  auto* payload = new std::function<Napi::Value(Napi::Env)>(std::move(fill));
  auto status = tsfn_.NonBlockingCall(payload, [](Napi::Env env, Napi::Function cb, std::function<Napi::Value(Napi::Env)>* p) {
    std::unique_ptr<std::function<Napi::Value(Napi::Env)>> owned(p);
    if (env == nullptr || cb.IsEmpty()) return;
    Napi::HandleScope scope(env);
    try {
      cb.Call({(*owned)(env)});
    } catch (...) {
      // A throwing progress callback must not take training down; the error surfaces in JS.
    }
  });
  if (status != napi_ok) delete payload;
}

std::vector<int64_t> toShape(const Napi::Value& v, const char* what) {
  if (!v.IsArray()) throw UserError(std::string(what) + " must be an array of positive integers");
  auto arr = v.As<Napi::Array>();
  if (arr.Length() > 8) throw UserError(std::string(what) + " has " + std::to_string(arr.Length()) + " dimensions; at most 8 are taken");
  std::vector<int64_t> shape;
  double numel = 1;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value d = arr.Get(i);
    if (!d.IsNumber()) throw UserError(std::string(what) + " must be an array of positive integers");
    double x = d.As<Napi::Number>().DoubleValue();
    if (!(x >= 0 && x <= 4294967296.0) || x != std::floor(x))
      throw UserError(std::string(what) + " must be an array of non-negative integers, got " + std::to_string(x));
    numel *= x;
    shape.push_back(static_cast<int64_t>(x));
  }
  // no tensor the addon takes from JavaScript is near this (16 G elements): a product past it is a damaged file
  if (numel > 17179869184.0) throw UserError(std::string(what) + " has " + std::to_string(numel) + " elements: too many");
  return shape;
}

torch::Tensor float32ArrayToTensor(const Napi::Value& data, const std::vector<int64_t>& shape, const char* what) {
  if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw UserError(std::string(what) + " must be a Float32Array");
  auto arr = data.As<Napi::Float32Array>();
  int64_t numel = 1;
  for (auto d : shape) numel *= d;
  if (static_cast<int64_t>(arr.ElementLength()) != numel) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? "," : "") + std::to_string(shape[i]);
    s += "]";
    throw UserError(std::string(what) + " has " + std::to_string(arr.ElementLength()) + " values but shape " + s +
                    " needs " + std::to_string(numel));
  }
  // Copied on the JavaScript thread: the worker thread must not touch V8-owned memory.
  return torch::from_blob(arr.Data(), shape, torch::kFloat32).clone();
}

Napi::Float32Array tensorToFloat32Array(Napi::Env env, const torch::Tensor& t) {
  auto c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  auto out = Napi::Float32Array::New(env, c.numel());
  if (c.numel() > 0) std::memcpy(out.Data(), c.data_ptr<float>(), c.numel() * sizeof(float));
  return out;
}

Napi::Array shapeToJs(Napi::Env env, const torch::Tensor& t) {
  auto arr = Napi::Array::New(env, t.dim());
  for (int64_t i = 0; i < t.dim(); i++) arr.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(t.size(i))));
  return arr;
}

torch::Device parseDevice(const std::string& spec) {
  if (spec == "cpu") return torch::Device(torch::kCPU);
  if (spec == "cuda" || spec.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available()) {
      throw UserError("device '" + spec +
                      "' was asked for, but this LibTorch has no usable CUDA (torch::cuda::is_available() is false). "
                      "Use device 'cpu', or rebuild against a CUDA LibTorch: LIBTORCH=/path/to/libtorch npm run build:native");
    }
    int index = 0;
    if (spec.size() > 5) {
      try {
        index = std::stoi(spec.substr(5));
      } catch (...) {
        throw UserError("device '" + spec + "' is not valid: use 'cpu', 'cuda' or 'cuda:N'");
      }
    }
    auto count = static_cast<int>(torch::cuda::device_count());
    if (index < 0 || index >= count)
      throw UserError("device '" + spec + "' does not exist: this machine has " + std::to_string(count) + " CUDA device(s)");
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw UserError("device '" + spec + "' is not valid: use 'cpu', 'cuda' or 'cuda:N'");
}

std::string deviceString(const torch::Device& d) {
  if (d.is_cpu()) return "cpu";
  return "cuda:" + std::to_string(d.has_index() ? d.index() : 0);
}

std::string dtypeName(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "F32";
    case torch::kFloat64: return "F64";
    case torch::kFloat16: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kInt64: return "I64";
    case torch::kInt32: return "I32";
    case torch::kInt16: return "I16";
    case torch::kInt8: return "I8";
    case torch::kUInt8: return "U8";
    case torch::kBool: return "BOOL";
    default: throw UserError(std::string("unsupported tensor dtype ") + c10::toString(t));
  }
}

torch::ScalarType dtypeFromName(const std::string& n) {
  if (n == "F32") return torch::kFloat32;
  if (n == "F64") return torch::kFloat64;
  if (n == "F16") return torch::kFloat16;
  if (n == "BF16") return torch::kBFloat16;
  if (n == "I64") return torch::kInt64;
  if (n == "I32") return torch::kInt32;
  if (n == "I16") return torch::kInt16;
  if (n == "I8") return torch::kInt8;
  if (n == "U8") return torch::kUInt8;
  if (n == "BOOL") return torch::kBool;
  throw UserError("unsupported tensor dtype '" + n + "'");
}

int64_t dtypeSize(torch::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

NamedTensors namedTensorsFromJs(const Napi::Value& v) {
  if (!v.IsArray()) throw UserError("expected an array of named tensors");
  auto arr = v.As<Napi::Array>();
  NamedTensors out;
  out.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value item = arr.Get(i);
    if (!item.IsObject()) throw UserError("named tensor " + std::to_string(i) + " must be an object { name, dtype, shape, data }");
    auto o = item.As<Napi::Object>();
    if (!o.Get("name").IsString() || !o.Get("dtype").IsString()) throw UserError("named tensor " + std::to_string(i) + " needs a string name and dtype");
    std::string name = o.Get("name").As<Napi::String>();
    auto dtype = dtypeFromName(o.Get("dtype").As<Napi::String>());
    auto shape = toShape(o.Get("shape"), ("shape of tensor '" + name + "'").c_str());
    Napi::Value dataV = o.Get("data");
    if (!dataV.IsTypedArray()) throw UserError("tensor '" + name + "' has no data");
    auto data = dataV.As<Napi::TypedArray>();
    int64_t numel = 1;
    for (auto d : shape) numel *= d;
    if (static_cast<int64_t>(data.ByteLength()) != numel * dtypeSize(dtype))
      throw UserError("tensor '" + name + "' holds " + std::to_string(data.ByteLength()) + " bytes but its dtype and shape need " +
                      std::to_string(numel * dtypeSize(dtype)));
    auto* base = static_cast<uint8_t*>(data.ArrayBuffer().Data()) + data.ByteOffset();
    torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
    // memcpy, not from_blob: the bytes may be unaligned inside a file buffer.
    if (numel > 0) std::memcpy(t.data_ptr(), base, static_cast<size_t>(numel * dtypeSize(dtype)));
    out.emplace_back(std::move(name), std::move(t));
  }
  return out;
}

Napi::Array namedTensorsToJs(Napi::Env env, const NamedTensors& tensors, bool owned) {
  auto arr = Napi::Array::New(env, tensors.size());
  for (size_t i = 0; i < tensors.size(); i++) {
    auto c = tensors[i].second.detach().to(torch::kCPU).contiguous();
    auto o = Napi::Object::New(env);
    o.Set("name", tensors[i].first);
    o.Set("dtype", dtypeName(c.scalar_type()));
    o.Set("shape", shapeToJs(env, c));
    const auto nbytes = static_cast<size_t>(c.numel() * dtypeSize(c.scalar_type()));
    if (owned && nbytes > 0 && c.data_ptr() == tensors[i].second.data_ptr()) {
      // The tensor's own memory becomes the ArrayBuffer's, freed with it: no copy on the JavaScript thread
      // (a checkpoint's hundreds of MB took that thread hundreds of ms to allocate and copy).
      auto* keep = new torch::Tensor(c);
      auto buf = Napi::ArrayBuffer::New(env, c.data_ptr(), nbytes, [](Napi::Env, void*, torch::Tensor* t) { delete t; }, keep);
      o.Set("data", Napi::Uint8Array::New(env, nbytes, buf, 0));
    } else {
      auto bytes = Napi::Uint8Array::New(env, nbytes);
      if (nbytes > 0) std::memcpy(bytes.Data(), c.data_ptr(), nbytes);
      o.Set("data", bytes);
    }
    arr.Set(static_cast<uint32_t>(i), o);
  }
  return arr;
}

}  // namespace tl
