#include "step_graph.h"

#include <ATen/autocast_mode.h>

// CUDA graphs need CUDA's headers, which only a CUDA build of LibTorch brings (the GPU machine's); the
// CPU build (Debian's LibTorch) compiles the eager half only.
#if __has_include(<ATen/cuda/CUDAGraph.h>) && __has_include(<cuda_runtime_api.h>) && !defined(TL_NO_CUDA_GRAPH)
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define TL_CUDA_GRAPH 1
#endif

#include <map>
#include <mutex>
#include <optional>
#include <vector>

namespace tl {

#ifdef TL_CUDA_GRAPH
// Capture streams, lent to one learner at a time and given back when it goes. A learner needs a stream of
// its own while it trains (a capture records whatever reaches its stream, from any thread), but a new
// stream per learner costs memory for the life of the process: cuBLAS keeps a workspace per stream (a GPU
// run found tens of megabytes more allocated after a graph learner's first fit than after ordinary steps).
// Learners that come one after another reuse the same stream; only learners alive together take more.
class CaptureStreams {
 public:
  static c10::cuda::CUDAStream lend(c10::DeviceIndex device) {
    std::lock_guard<std::mutex> lock(mutex());
    auto& f = free()[device];
    if (f.empty()) return c10::cuda::getStreamFromPool(false, device);
    auto s = f.back();
    f.pop_back();
    return s;
  }
  static void giveBack(const c10::cuda::CUDAStream& s) {
    std::lock_guard<std::mutex> lock(mutex());
    free()[s.device_index()].push_back(s);
  }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::map<c10::DeviceIndex, std::vector<c10::cuda::CUDAStream>>& free() {
    static auto* f = new std::map<c10::DeviceIndex, std::vector<c10::cuda::CUDAStream>>();  // outlives every learner
    return *f;
  }
};

struct StepGraphCuda {
  explicit StepGraphCuda(c10::DeviceIndex device) : stream(CaptureStreams::lend(device)) {}
  ~StepGraphCuda() {
    onStream.reset();
    graph.reset();
    CaptureStreams::giveBack(stream);  // (StepGraph::release synchronised the device first)
  }
  c10::cuda::CUDAStream stream;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  std::optional<c10::cuda::CUDAStreamGuard> onStream;
};
#else
struct StepGraphCuda {};
#endif

StepGraph::StepGraph() = default;
StepGraph::~StepGraph() {
  try {
    release();
  } catch (...) {
  }
}

void StepGraph::beginEpoch(const torch::Device& device) {
  table_ = torch::Tensor();  // the hyper-parameters are the new epoch's
  replays = 0;
#ifdef TL_CUDA_GRAPH
  if (!device.is_cuda() || !error.empty()) return;
  if (!cuda_) cuda_ = std::make_unique<StepGraphCuda>(device.index() < 0 ? 0 : device.index());
  torch::cuda::synchronize();  // what the default stream did (data upload, validation) is done
  cuda_->onStream.emplace(cuda_->stream);
#else
  (void)device;
#endif
}

void StepGraph::endEpoch() {
#ifdef TL_CUDA_GRAPH
  if (cuda_ && cuda_->onStream) {
    try {
      torch::cuda::synchronize();  // the default stream may use the results at once
    } catch (...) {
    }
    cuda_->onStream.reset();
  }
#endif
}

void StepGraph::reset() {
#ifdef TL_CUDA_GRAPH
  if (cuda_ && cuda_->graph) {
    torch::cuda::synchronize();
    cuda_->graph.reset();
  }
#endif
  signature_.clear();
  warm_ = 0;
  ready_ = captured_ = tail_ = false;
  plan_.clear();
  x_ = y_ = scalars_ = loss_ = table_ = torch::Tensor();
  grads_.clear();
  gradOf_.clear();
}

void StepGraph::release() {
  reset();
#ifdef TL_CUDA_GRAPH
  if (cuda_) {
    try {
      torch::cuda::synchronize();  // the stream's work is done before anyone else may use the stream
    } catch (...) {
    }
    cuda_.reset();
  }
#endif
}

void StepGraph::keepGrads(const std::vector<ParamInfo>& params) {
  for (size_t i = 0; i < params.size(); i++)
    if (params[i].tensor.grad().defined()) {
      grads_.push_back(params[i].tensor.grad());
      gradOf_.push_back(i);
    }
}

torch::Tensor StepGraph::run(FastAdam& opt, const std::vector<ParamInfo>& params, const ForwardBackward& fb) {
  auto loss = fb(x_, y_);
  if (!tail_) opt.stepWith(params, plan_, scalars_);
  return loss.detach();
}

torch::Tensor StepGraph::step(FastAdam& opt, const std::vector<ParamInfo>& params, const std::vector<int64_t>& signature,
                              const torch::Tensor& x, const torch::Tensor& y, const std::vector<std::vector<Hyper>>& hypers,
                              size_t batch, const ForwardBackward& forwardBackward, const std::function<void()>& zeroGrad,
                              const std::function<void()>& tail) {
  if (!error.empty()) return {};
  if (signature != signature_) {
    reset();
    signature_ = signature;
  }
  if (warm_ < kWarmup) {
    warm_++;
    return {};
  }
  // after a step of the graph, the tail, or the host's count of the steps the graph's Adam took
  auto after = [&]() {
    if (tail_)
      tail();
    else
      opt.advance(params, plan_);
  };
  if (!ready_) {
    tail_ = static_cast<bool>(tail);
    if (!tail_) {
      plan_ = opt.plan(params);  // the buckets and state the warm-up steps made
      scalars_ = torch::empty({static_cast<int64_t>(plan_.size()), kNumAdamScalars}, x.options().dtype(torch::kFloat32));
    }
    x_ = torch::empty_like(x);
    y_ = torch::empty_like(y);
  }
  if (!tail_ && (!table_.defined() || batch < tableFrom_ || batch >= hypers.size())) {
    table_ = opt.scalarTable(params, plan_, hypers, batch).to(x.device());  // once per epoch: one copy
    tableFrom_ = batch;
  }
  {
    torch::NoGradGuard ng;
    x_.copy_(x);
    y_.copy_(y);
    if (!tail_) scalars_.copy_(table_[static_cast<int64_t>(batch - tableFrom_)]);
  }
#ifdef TL_CUDA_GRAPH
  if (cuda_ && cuda_->onStream) {
    if (!ready_) {
      zeroGrad();  // backward writes the gradients into the graph's memory instead of adding to old ones
      torch::cuda::synchronize();
      cuda_->graph = std::make_unique<at::cuda::CUDAGraph>();
      const bool cacheWas = at::autocast::is_autocast_cache_enabled();
      at::autocast::set_autocast_cache_enabled(false);  // as torch.cuda.graphs asks of autocast
      try {
        cuda_->graph->capture_begin();
        try {
          loss_ = run(opt, params, forwardBackward);
        } catch (...) {
          try {
            cuda_->graph->capture_end();  // ends the stream's capture; fails, as the capture is broken
          } catch (...) {
          }
          throw;
        }
        cuda_->graph->capture_end();
      } catch (const std::exception& e) {
        at::autocast::set_autocast_cache_enabled(cacheWas);
        (void)cudaGetLastError();  // a broken capture leaves an error that the next kernel launch would report
        error = e.what();
        cuda_->graph.reset();
        cuda_->onStream.reset();  // the ordinary steps go back to the default stream
        ready_ = false;
        x_ = y_ = scalars_ = loss_ = table_ = torch::Tensor();
        zeroGrad();
        return {};
      }
      at::autocast::set_autocast_cache_enabled(cacheWas);
      keepGrads(params);
      ready_ = captured_ = true;
    }
    cuda_->graph->replay();  // (the capture only recorded: the batch it saw runs now)
    if (tail_) {
      // the tail sees the gradients this replay wrote (it may have pointed the parameters elsewhere)
      zeroGrad();
      for (size_t k = 0; k < grads_.size(); k++) params[gradOf_[k]].tensor.mutable_grad() = grads_[k];
    }
    after();
    replays++;
    return loss_;
  }
#endif
  // No capture: the same step, eagerly. Gradients start from None each time, as in the captured step. With
  // a tail, they are then copied into the gradients of this graph's first step and the parameters pointed at
  // those, as after a replay: the tail meets the graph's memory, the same tensors rewritten every step (a
  // tail that kept a reference to them instead of their values fails the CPU tests too).
  ready_ = true;
  zeroGrad();
  loss_ = run(opt, params, forwardBackward);
  if (tail_ && grads_.empty()) {
    keepGrads(params);
  } else if (tail_) {
    torch::NoGradGuard ng;
    for (size_t k = 0; k < grads_.size(); k++) {
      auto& p = params[gradOf_[k]].tensor;
      if (p.grad().defined())
        grads_[k].copy_(p.grad());
      else
        grads_[k].zero_();
      p.mutable_grad() = grads_[k];
    }
  }
  after();
  replays++;
  return loss_;
}

}  // namespace tl
