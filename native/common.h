// Shared by every native entry point: error conversion, async execution, tensor <-> JS conversion.
#pragma once
#include <torch/torch.h>
#include <napi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if TORCH_VERSION_MAJOR >= 2
#define TL_TORCH2 1
#else
#define TL_TORCH2 0
#endif

namespace tl {

// An error caused by the caller's input: its message is shown to the user as it is.
struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One place that turns any C++ exception into a message for a JavaScript Error: strips LibTorch's
// C++ backtraces and explains CUDA out-of-memory.
std::string describeException(const std::exception& e);

// Frees cached, unused CUDA memory (after an out-of-memory error, so that the process stays usable).
void releaseDeviceCache();

// Every entry point called from JavaScript is wrapped in TL_TRY / TL_CATCH so that no C++ exception
// can cross into Node (it would abort the process).
#define TL_TRY try {
#define TL_CATCH(env)                                                                     \
  }                                                                                       \
  catch (const Napi::Error&) {                                                            \
    throw;                                                                                \
  }                                                                                       \
  catch (const std::exception& e) {                                                       \
    throw Napi::Error::New(env, ::tl::describeException(e));                              \
  }                                                                                       \
  catch (...) {                                                                           \
    throw Napi::Error::New(env, "torchlearn: unknown native error");                     \
  }

// A persistent native thread that runs tasks one after another, in order. Each CUDA network owns one
// (CPU networks share cpuWorker, below), and every native call on a network (training, validation,
// prediction, the LR finder, Grad-CAM) runs there:
// LibTorch keeps per-thread state that must survive from call to call. cuDNN's execution plans and its
// benchmark results are cached per thread (thread_local in PyTorch 2.x); on a fresh thread per call,
// every epoch and every validation pass autotuned every convolution again. Not libuv's shared pool,
// which sharp also uses. The thread starts with the first task and ends when its owner is gone and
// the queue is empty (never joined, so an owner may be released on the thread itself).
class Worker {
 public:
  Worker();
  ~Worker();
  void post(std::function<void()> task);
  // Waits (up to `limit`) until no worker runs or has a task: called as the process exits (addon.cpp), as
  // LibTorch's static objects (its thread pool, its operator registry) are destroyed after that, and a
  // worker thread still in LibTorch then crashed the process (seen: a script that loaded the addon and
  // exited at once, while the CPU worker was still applying the thread count, 1 run in 10).
  static void waitAllIdle(std::chrono::milliseconds limit);

 private:
  struct Queue {
    std::mutex m;
    std::condition_variable cv;      // a task, or stop
    std::condition_variable idleCv;  // a task finished
    std::deque<std::function<void()>> tasks;
    bool stop = false;
    bool running = false;
  };
  std::shared_ptr<Queue> queue_ = std::make_shared<Queue>();
  std::once_flag started_;
};

// The process is exiting (process.exit, or the end of the script): set by the exit hook, read by every
// native loop at each batch, which then stops as a stop request would.
bool exiting();
// Registers the exit hook (again). atexit handlers run in the reverse order of registration, and LibTorch,
// oneDNN and OpenMP register the destructors of their lazily made objects (primitive caches, thread pools)
// the first time they are used, after the addon loaded. A hook registered only at load time runs after
// those destructors: a worker still in a convolution then faulted. So the hook is registered again after
// the first native tasks ran (a handful of times in all: it is idempotent), so that it runs first: it stops
// the loops and waits, bounded, until every worker is idle.
void armExitHook();
// What the exit hook does, callable first: JavaScript's process 'exit' event calls it (before any atexit
// handler, whatever their order), so that no loop is inside LibTorch while its objects are destroyed.
void prepareExit();

// A number for the calling thread, never reused by another (unlike thread ids, which the system
// recycles): says which threads ran what.
int64_t threadSerial();

// CPU threads. LibTorch's CPU parallelism is an OpenMP team, owned by the thread that starts it, and
// libgomp hands work to its threads quickly (spinning) only while the threads it manages do not
// outnumber the cores; past that it puts them to sleep between parallel regions, and each of the
// hundreds of regions of a forward pass pays a wake-up: a second team alive makes a single prediction
// about a third slower (docs/performance.md). So there is one team:
// every network on the CPU runs on one native thread (cpuWorker), and the JavaScript thread keeps its
// own LibTorch calls (construction, copies) to one thread. CUDA networks keep a thread each (their CPU
// work is small; cuDNN's caches are per thread).
Worker& cpuWorker();
// LibTorch's thread count for CPU work (from the next call on the CPU worker); the JavaScript thread stays at one.
void setThreads(int n);
int configuredThreads();

// Runs `work` on `worker` and settles the returned Promise on the JavaScript thread with
// `toJs(result)`, or rejects it with the exception's message. The thread-safe function keeps the event
// loop alive meanwhile. `keepAlive` (a JS value whose memory `work` reads, such as a Uint8Array) is
// referenced until the Promise settles, and let go on the JavaScript thread.
template <typename R>
Napi::Promise runAsync(Napi::Env env, Worker& worker, std::function<R()> work,
                       std::function<Napi::Value(Napi::Env, R&)> toJs, Napi::Value keepAlive = Napi::Value()) {
  struct State {
    Napi::Promise::Deferred deferred;
    std::function<Napi::Value(Napi::Env, R&)> toJs;
    std::unique_ptr<R> result;
    std::string error;
    Napi::Reference<Napi::Value> keep;
  };
  auto state = std::make_shared<State>(State{Napi::Promise::Deferred::New(env), std::move(toJs), nullptr, "", {}});
  if (!keepAlive.IsEmpty()) state->keep = Napi::Persistent(keepAlive);
  auto noop = Napi::Function::New(env, [](const Napi::CallbackInfo&) {});
  auto tsfn = Napi::ThreadSafeFunction::New(env, noop, "torchlearn-async", 0, 1);
  worker.post([tsfn, state, work = std::move(work)]() mutable {
    try {
      state->result = std::make_unique<R>(work());
    } catch (const std::exception& e) {
      state->error = describeException(e);
    } catch (...) {
      state->error = "torchlearn: unknown native error";
    }
    const napi_status queued = tsfn.BlockingCall([state](Napi::Env env, Napi::Function) {
      Napi::HandleScope scope(env);
      state->keep.Reset();
      if (!state->error.empty()) {
        state->deferred.Reject(Napi::Error::New(env, state->error).Value());
        return;
      }
      try {
        state->deferred.Resolve(state->toJs(env, *state->result));
      } catch (const Napi::Error& e) {
        state->deferred.Reject(e.Value());
      } catch (const std::exception& e) {
        state->deferred.Reject(Napi::Error::New(env, describeException(e)).Value());
      }
    });
    // Node is shutting down: the reference cannot be deleted from this thread, and need not be
    if (queued != napi_ok) state->keep.SuppressDestruct();
    tsfn.Release();
  });
  return state->deferred.Promise();
}

// Runs `work` on `worker` and waits for its result on the calling thread (for the few synchronous calls
// that must run where training runs: the bench's augmentation timing, the thread diagnostics).
template <typename R>
R runAndWait(Worker& worker, std::function<R()> work) {
  auto result = std::make_shared<std::promise<R>>();  // shared: the worker may still be in set_value when get returns
  auto future = result->get_future();
  worker.post([result, work = std::move(work)]() {
    try {
      result->set_value(work());
    } catch (...) {
      result->set_exception(std::current_exception());
    }
  });
  return future.get();
}

// Tells V8 how much native memory a JavaScript object keeps alive (weights, image caches, optimizer
// state), so that objects dropped without dispose() are collected under memory pressure instead of piling
// up: V8 cannot see LibTorch's allocations otherwise. set() reports the new total; release() reports zero.
// Called on the main thread only (constructors, methods, the completion of native tasks, finalizers).
class ExternalMemory {
 public:
  void set(Napi::Env env, int64_t bytes) {
    if (bytes != reported_) Napi::MemoryManagement::AdjustExternalMemory(env, bytes - reported_);
    reported_ = bytes;
  }
  void release(Napi::Env env) { set(env, 0); }

 private:
  int64_t reported_ = 0;
};

// Bytes held by a module's parameters and buffers.
int64_t moduleBytes(const torch::nn::Module& m);

// Progress events from a native thread to a JavaScript callback. Calls are non-blocking: a slow
// JavaScript side never stalls training (events queue up).
class ProgressSink {
 public:
  ProgressSink() = default;
  ProgressSink(Napi::Env env, Napi::Value callback);
  ~ProgressSink();
  ProgressSink(const ProgressSink&) = delete;
  ProgressSink& operator=(const ProgressSink&) = delete;
  // `fill` runs on the JavaScript thread and builds the event object.
  void emit(std::function<Napi::Value(Napi::Env)> fill);

 private:
  bool active_ = false;
  Napi::ThreadSafeFunction tsfn_;
};

// --- conversions --------------------------------------------------------------------------------
std::vector<int64_t> toShape(const Napi::Value& v, const char* what);
torch::Tensor float32ArrayToTensor(const Napi::Value& data, const std::vector<int64_t>& shape, const char* what);
Napi::Float32Array tensorToFloat32Array(Napi::Env env, const torch::Tensor& t);
Napi::Array shapeToJs(Napi::Env env, const torch::Tensor& t);
torch::Device parseDevice(const std::string& spec);
std::string deviceString(const torch::Device& d);
std::string dtypeName(torch::ScalarType t);
torch::ScalarType dtypeFromName(const std::string& name);
int64_t dtypeSize(torch::ScalarType t);

// Named tensors (a state dict) crossing the boundary: [{ name, dtype, shape, data: Uint8Array }].
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;
NamedTensors namedTensorsFromJs(const Napi::Value& v);
// `owned`: the tensors are private CPU copies made for this call; their memory is handed to JavaScript
// as it is. Otherwise (tensors that alias a network's weights) the bytes are copied.
Napi::Array namedTensorsToJs(Napi::Env env, const NamedTensors& tensors, bool owned = false);

}  // namespace tl
