// One epoch of training (Learner.trainEpoch). The step loop (stepLoop) is short on purpose: it is where a
// distributed all-reduce or a per-batch hook would go. Around it: the arguments (EpochArgs), the losses read
// back from the device, smoothed and sent to the callbacks (LossLog), profiling (PhaseClock), the trace, resume
// from the middle of an epoch, and the result for JavaScript (epochResultToJs).
#include "learner_core.h"
#include "js.h"
#include "trace.h"

#include <sstream>

namespace tl {

using Core = Learner::Core;

// How often a CUDA epoch reads its losses back (each read waits for the device).
constexpr int64_t kCudaLossReadEvery = 25;

struct EpochArgs {
  Schedule sched;
  int64_t epoch = 0, nEpochs = 1;
  SmoothLoss smooth;  // carried over from the previous epoch
  bool profile = false;
  // trace: a Chrome trace (operators, and CUDA kernels on a GPU) of this part of the epoch, written by
  // LibTorch's profiler to the path given: the format torch.profiler exports, so the bench can put
  // torchlearn's step beside PyTorch's operator by operator.
  std::string trace;
  // Part of an epoch: batches [startBatch, endBatch). A later part (or a resumed one) passes the random
  // state the epoch started with, so the same permutation and augmentations come out.
  int64_t startBatch = 0, endBatch = -1;
  torch::Tensor epochRng;
};

static EpochArgs epochArgsFromJs(const js::Options& o, const Core& c) {
  EpochArgs a;
  a.sched = scheduleFromJs(o.object("schedule"), c.net->numGroups);
  a.nEpochs = o.integer("nEpochs", 1, js::kMaxCount);
  a.epoch = o.integer("epoch", 0, a.nEpochs - 1);
  a.smooth.val = o.number("smoothVal");
  a.smooth.count = o.number("smoothCount", 0, 1e15);
  a.profile = o.flag("profile");
  a.trace = o.optString("trace").value_or("");
  a.startBatch = o.optInteger("startBatch", 0, js::kMaxCount).value_or(0);
  a.endBatch = o.optInteger("endBatch", a.startBatch + 1, js::kMaxCount).value_or(-1);
  if (o.has("epochRng")) {
    a.epochRng = o.typedCopy<uint8_t>("epochRng", torch::kUInt8);
    // the state of LibTorch's CPU generator: its size is fixed (a file could hold any bytes)
    const auto want = c.gen.get_state().numel();
    if (a.epochRng.numel() != want)
      throw UserError("epochRng holds " + std::to_string(a.epochRng.numel()) + " bytes, not a random state (" + std::to_string(want) + ")");
  }
  if (a.startBatch > 0 && !a.epochRng.defined()) throw UserError("trainEpoch: startBatch needs the epoch's random state (epochRng)");
  return a;
}

struct EpochResult {
  // profile mode: seconds per phase (device synchronised between phases) and memory-format checks
  bool profiled = false;
  double tData = 0, tForward = 0, tBackward = 0, tStep = 0;
  bool weightChannelsLast = false, gradChannelsLast = false, inputChannelsLast = false;
  std::string thread;  // the native thread that ran it (the worker: shared on the CPU, the network's own on CUDA)
  bool traced = false;
  std::vector<OpStat> ops;  // with a trace: the operator table
  bool graphUsed = false, graphCaptured = false;  // cudaGraph: steps taken by the graph, and whether it was captured
  int64_t graphSteps = 0;
  std::string graphError;
  std::vector<float> losses;        // raw loss per batch
  std::vector<float> smoothLosses;  // fast.ai's smoothed loss after each batch
  std::vector<double> lrs;          // [batch][group]
  std::vector<double> moms;
  torch::Tensor epochRng;  // the learner's random state at the start of the epoch
  SmoothLoss smooth;
  int64_t nIter = 0, done = 0;
  bool stopped = false;
  double seconds = 0;
};

// The losses of the epoch's batches, kept on the training device and read back in order: each is checked
// (a NaN stops training with a message), smoothed, and the batches read are sent to the progress callback,
// every batch once on every device (on CUDA in groups, since reading a loss waits for the device).
class LossLog {
 public:
  LossLog(EpochResult& r, const EpochArgs& a, int numGroups, const torch::Device& device, std::shared_ptr<ProgressSink> progress)
      : r_(r), a_(a), numGroups_(numGroups), progress_(std::move(progress)), read_(r.done),
        buf_(torch::zeros({r.nIter}, torch::TensorOptions().dtype(torch::kFloat32).device(device))) {}

  void record(int64_t i, const torch::Tensor& loss) { buf_[i].copy_(loss); }

  // Reads the losses of batches [read, upto).
  void readTo(int64_t upto) {
    if (upto <= read_) return;
    auto host = buf_.slice(0, read_, upto).to(torch::kCPU);
    const auto* d = host.data_ptr<float>();
    const size_t first = r_.losses.size();
    for (int64_t k = 0; k < upto - read_; k++) {
      const double l = d[k];
      if (!std::isfinite(l)) diverged(read_ + k, l);
      r_.losses.push_back(static_cast<float>(l));
      r_.smoothLosses.push_back(static_cast<float>(r_.smooth.add(l)));
    }
    std::vector<float> raw(r_.losses.begin() + static_cast<std::ptrdiff_t>(first), r_.losses.end());
    std::vector<float> smooth(r_.smoothLosses.begin() + static_cast<std::ptrdiff_t>(first), r_.smoothLosses.end());
    const int64_t from = read_, n = r_.nIter, epoch = a_.epoch;
    read_ = upto;
    progress_->emit([from, n, epoch, raw = std::move(raw), smooth = std::move(smooth)](Napi::Env env) {
      auto e = Napi::Object::New(env);
      e.Set("epoch", js::count(env, epoch));
      e.Set("from", js::count(env, from));
      e.Set("total", js::count(env, n));
      e.Set("losses", js::typed(env, raw));
      e.Set("smoothLosses", js::typed(env, smooth));
      return e;
    });
  }

 private:
  [[noreturn]] void diverged(int64_t batch, double loss) const {
    const auto lr = r_.lrs[static_cast<size_t>((batch - a_.startBatch) * numGroups_ + numGroups_ - 1)];
    std::ostringstream m;
    m << "training diverged: the loss is " << loss << " at batch " << (batch + 1) << " of epoch " << (a_.epoch + 1) << " (lr " << lr
      << "). Lower the learning rate (run lrFind) or check the inputs for NaN.";
    throw UserError(m.str());
  }
  EpochResult& r_;
  const EpochArgs& a_;
  int numGroups_;
  std::shared_ptr<ProgressSink> progress_;
  int64_t read_;
  torch::Tensor buf_;
};

// Profile mode: wall time per phase, the device synchronised at each mark (slower, but it says where the
// time goes). Otherwise it does nothing.
class PhaseClock {
 public:
  PhaseClock(bool on, bool cuda) : on_(on), cuda_(cuda), last_(nowSeconds()) {}
  void mark(double& acc) {
    if (!on_) return;
    if (cuda_) torch::cuda::synchronize();
    const double now = nowSeconds();
    acc += now - last_;
    last_ = now;
  }

 private:
  bool on_, cuda_;
  double last_;
};

// An ordinary (eager) step. On the CPU the loss is read before the step, so a NaN never reaches the weights,
// and the BatchNorm statistics the diverging forward pass moved are put back. Accumulating gradients, the
// optimizer steps only where `stepNow` says.
static void eagerStep(Core& c, const torch::Tensor& x, const torch::Tensor& y, const std::vector<Hyper>& h, int64_t i, LossLog& log, PhaseClock& clock,
                      EpochResult& r, bool profile, bool stepNow) {
  const bool cuda = c.onCuda();
  std::vector<torch::Tensor> buffersBefore;
  if (!cuda)
    for (auto& b : c.net->module->buffers()) buffersBefore.push_back(b.clone());
  auto loss = c.forwardLoss(x, y);
  armExitHook();
  log.record(i, loss.detach());
  if (!cuda) {
    try {
      log.readTo(i + 1);
    } catch (...) {
      torch::NoGradGuard ng;
      size_t k = 0;
      for (auto& b : c.net->module->buffers()) b.copy_(buffersBefore[k++]);
      throw;
    }
  }
  clock.mark(r.tForward);
  if (c.nAcc > 0) {
    if (stepNow) c.beginSync();
    c.accumulationScaled(loss, x.size(0)).backward();
    clock.mark(r.tBackward);
    if (stepNow) {
      c.syncGrads();
      c.clipGrads();
      c.opt.step(c.net->params, h);
      c.zeroGrad();
    }
    clock.mark(r.tStep);
    return;
  }
  if (profile) {
    c.beginSync();
    loss.backward();
    c.syncGrads();
    c.clipGrads();
    clock.mark(r.tBackward);
    c.opt.step(c.net->params, h);
    clock.mark(r.tStep);
  } else {
    c.backwardAndStep(loss, h);
  }
}

// The step loop: batches [r.done, end) of the permutation, each one data, step, loss recorded.
static void stepLoop(Core& c, const EpochArgs& a, EpochResult& r, const std::vector<torch::Tensor>& batches, int64_t end, bool useGraph, LossLog& log,
                     torch::Tensor& lastInput) {
  const bool cuda = c.onCuda();
  const int64_t readEvery = cuda ? kCudaLossReadEvery : 1;
  // the hyper-parameters of every batch of the epoch (a captured step reads them from a table); accumulating
  // gradients, those of the optimizer step the batch belongs to: the schedule counts steps
  const int64_t acc = c.accBatches();
  const double total = static_cast<double>(a.nEpochs * r.nIter);
  std::vector<std::vector<Hyper>> hs;
  for (int64_t i = 0; i < end; i++) {
    const int64_t global = a.epoch * r.nIter + i;
    hs.push_back(c.hypers(a.sched, static_cast<double>(global / acc * acc) / total));
  }
  PhaseClock clock(a.profile, cuda);
  for (int64_t i = r.done; i < end; i++) {
    if (c.stopRequested || exiting()) {
      r.stopped = true;
      break;
    }
    armExitHook();  // (LibTorch's first batches make objects whose destructors run at exit)
    const auto& h = hs[static_cast<size_t>(i)];
    for (auto& g : h) r.lrs.push_back(g.lr);
    r.moms.push_back(h[0].mom);
    auto [x, y] = c.trainBatch(batches[static_cast<size_t>(i)]);
    clock.mark(r.tData);
    if (a.profile) lastInput = x;
    const bool stepNow = (a.epoch * r.nIter + i + 1) % acc == 0;
    torch::Tensor graphLoss;
    if (useGraph) {
      const bool tail = c.graphTail();
      if (tail) c.holdAcc();
      graphLoss = c.graph.step(
          c.opt, c.net->params, c.graphSignature(x, y), x, y, hs, static_cast<size_t>(i),
          [&c, tail](const torch::Tensor& gx, const torch::Tensor& gy) { return c.forwardBackward(gx, gy, tail); }, [&c]() { c.zeroGrad(); },
          tail ? std::function<void()>([&c, &h, stepNow]() { c.graphTail(h, stepNow); }) : std::function<void()>());
    }
    if (graphLoss.defined()) {
      log.record(i, graphLoss);
      if (!cuda) log.readTo(i + 1);  // (after the step: a captured step has no place to stop before it)
    } else {
      c.releaseAcc();
      eagerStep(c, x, y, h, i, log, clock, r, a.profile, stepNow);  // (also the graph's warm-up steps)
    }
    r.done = i + 1;
    if (cuda && (i + 1) % readEvery == 0) log.readTo(i + 1);
  }
  log.readTo(r.done);
}

static EpochResult runEpoch(Core& c, const EpochArgs& a, std::shared_ptr<ProgressSink> progress) {
  const double t0 = nowSeconds();
  // Profile mode times the phases of ordinary steps; a graph is one launch. SyncBatchNorm on several ranks
  // runs collectives from the host inside the forward, which a graph cannot hold: ordinary steps then.
  const bool useGraph = c.cudaGraph && !a.profile && !(c.syncBatchNorm && dist::active());
  c.syncStart();
  // a fit starts accumulating from nothing; one resumed later on, from the checkpoint's waiting gradients
  if (a.epoch == 0 && a.startBatch == 0) c.zeroGrad();
  StepGraphEpoch graphEpoch(useGraph ? &c.graph : nullptr, c.net->device);
  EpochResult r;
  r.smooth = a.smooth;
  if (a.epochRng.defined()) c.gen.set_state(a.epochRng);
  r.epochRng = c.gen.get_state();
  auto batches = c.trainBatches();
  r.nIter = static_cast<int64_t>(batches.size());
  const int64_t end = a.endBatch < 0 ? r.nIter : std::min(a.endBatch, r.nIter);
  // Resume: draw the augmentations of the batches already trained, so that the random stream is where it was.
  for (int64_t i = 0; i < a.startBatch && i < r.nIter; i++) drawAugParams(batches[static_cast<size_t>(i)].size(0), c.aug, c.gen);
  r.done = std::min(a.startBatch, r.nIter);
  LossLog log(r, a, c.net->numGroups, c.net->device, std::move(progress));
  torch::Tensor lastInput;
  TraceScope traceScope(a.trace, c.onCuda());
  try {
    stepLoop(c, a, r, batches, end, useGraph, log, lastInput);
    c.releaseAcc();  // (the sums waiting for their step go back to the gradients, as between ordinary steps)
  } catch (...) {
    c.releaseAcc();
    if (useGraph) {
      try {
        c.graph.release();  // (an out-of-memory error, say: its memory pool goes too)
      } catch (...) {
      }
    }
    throw;
  }
  if (useGraph) {
    r.graphUsed = true;
    r.graphSteps = c.graph.replays;
    r.graphCaptured = c.graph.captured();
    r.graphError = c.graph.error;
    // the end of the fit (or a stop): the graph's memory pool is not kept for validation and prediction
    if (r.stopped || (a.epoch + 1 == a.nEpochs && r.done == r.nIter)) c.graph.release();
  }
  if (!a.trace.empty()) {
    r.ops = traceScope.finish();
    r.traced = true;
  }
  if (a.profile) {
    r.profiled = true;
    r.thread = std::to_string(threadSerial());
    for (auto& p : c.net->params) {
      if (p.tensor.dim() == 4 && p.tensor.grad().defined()) {
        r.weightChannelsLast = p.tensor.is_contiguous(torch::MemoryFormat::ChannelsLast);
        r.gradChannelsLast = p.tensor.grad().is_contiguous(torch::MemoryFormat::ChannelsLast);
        break;
      }
    }
    if (lastInput.defined()) r.inputChannelsLast = lastInput.is_contiguous(torch::MemoryFormat::ChannelsLast);
  }
  if (!r.stopped) c.syncBuffers();
  // (accumulated gradients still waiting for their step carry over into the next epoch, as in fast.ai)
  if (c.nAcc == 0 || (a.epoch * r.nIter + r.done) % c.accBatches() == 0)
    c.zeroGrad();
  else if (!r.stopped)
    // on several ranks, every rank's waiting sums become their mean: the step averages them all the same,
    // and rank 0's checkpoint then holds what every rank holds
    c.syncGrads();
  r.seconds = nowSeconds() - t0;
  return r;
}

static Napi::Value epochResultToJs(Napi::Env env, EpochResult& r) {
  auto o = Napi::Object::New(env);
  o.Set("losses", js::typed(env, r.losses));
  o.Set("smoothLosses", js::typed(env, r.smoothLosses));
  o.Set("lrs", js::typed(env, r.lrs));
  o.Set("moms", js::typed(env, r.moms));
  o.Set("smoothVal", r.smooth.val);
  o.Set("smoothCount", r.smooth.count);
  o.Set("nIter", js::count(env, r.nIter));
  o.Set("done", js::count(env, r.done));
  o.Set("stopped", r.stopped);
  o.Set("seconds", r.seconds);
  auto rng = Napi::Uint8Array::New(env, static_cast<size_t>(r.epochRng.numel()));
  std::memcpy(rng.Data(), r.epochRng.data_ptr<uint8_t>(), rng.ByteLength());
  o.Set("epochRng", rng);
  if (r.profiled) {
    auto p = Napi::Object::New(env);
    p.Set("data", r.tData);
    p.Set("forward", r.tForward);
    p.Set("backward", r.tBackward);
    p.Set("step", r.tStep);
    p.Set("weightChannelsLast", r.weightChannelsLast);
    p.Set("gradChannelsLast", r.gradChannelsLast);
    p.Set("inputChannelsLast", r.inputChannelsLast);
    p.Set("thread", r.thread);
    o.Set("profile", p);
  }
  if (r.graphUsed) {
    auto g = Napi::Object::New(env);
    g.Set("steps", js::count(env, r.graphSteps));
    g.Set("captured", r.graphCaptured);
    if (!r.graphError.empty()) g.Set("error", r.graphError);
    o.Set("graph", g);
  }
  if (r.traced) o.Set("ops", opsToJs(env, r.ops));
  return o;
}

// trainEpoch({ schedule, epoch, nEpochs, smoothVal, smoothCount, onProgress, profile?, trace?, startBatch?,
// endBatch?, epochRng? }) -> Promise<result>, on the network's worker.
Napi::Value Learner::TrainEpoch(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  js::Options o(info[0], "trainEpoch: options");
  auto args = std::make_shared<const EpochArgs>(epochArgsFromJs(o, *core_));
  auto progress = std::make_shared<ProgressSink>(env, o.value("onProgress"));
  core_->requireOptimizer();
  core_->stopRequested = false;
  return onWorker<EpochResult>(env, core_, [args, progress](Core& c) { return runEpoch(c, *args, progress); }, epochResultToJs);
  TL_CATCH(env)
}

// gradients(indices: Int32Array) -> Promise<Float32Array>: the tests' hook into one step: the training batch
// of the given images, forward, backward and (on several ranks) the gradient all-reduce, without the optimizer
// step; every trainable parameter's gradient, flattened and concatenated in parameter order. The gradients
// are cleared afterwards. The indices are copied here and checked against the training set.
Napi::Value Learner::Gradients(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  auto idx = js::copyTyped<int32_t>(info[0], "gradients: indices", torch::kInt32).to(torch::kInt64);
  if (idx.numel() == 0) throw UserError("gradients: give at least one image index");
  const int64_t n = core_->train.size();
  if (idx.min().item<int64_t>() < 0 || idx.max().item<int64_t>() >= n) throw UserError("gradients: indices must be in [0, " + std::to_string(n) + ")");
  core_->requireOptimizer();
  return onWorker<torch::Tensor>(
      env, core_,
      [idx](Core& c) {
        c.syncStart();
        c.zeroGrad();
        auto [x, y] = c.trainBatch(idx);
        auto loss = c.forwardLoss(x, y);
        c.beginSync();
        loss.backward();
        c.syncGrads();
        std::vector<torch::Tensor> parts;
        for (auto& p : c.net->params)
          if (p.tensor.grad().defined()) parts.push_back(p.tensor.grad().to(torch::kCPU, torch::kFloat32).reshape({-1}));
        c.zeroGrad();
        return parts.empty() ? torch::zeros({0}) : torch::cat(parts);
      },
      [](Napi::Env env, torch::Tensor& t) -> Napi::Value { return js::typed<float>(env, t); });
  TL_CATCH(env)
}

}  // namespace tl
