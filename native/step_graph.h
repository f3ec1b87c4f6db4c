// The training step as one CUDA graph (the learner option cudaGraph): forward, loss, backward and
// fast.ai's Adam captured once, then replayed for every batch of the same shape, so that the host launches
// one graph per batch instead of about two thousand kernels. Where the step cannot be replayed whole, the
// graph holds the forward and backward only and a tail runs eagerly after each replay: the fusedAdam
// option (PyTorch's fused kernel takes the momentum as a host scalar), gradient accumulation (the
// optimizer steps every few batches) and several ranks (the all-reduce, from the host, between backward
// and the step).
//
// PyTorch's recipe for whole-network capture (torch.cuda.graphs, "whole network capture"): a few eager
// warm-up steps on the capture stream (cuDNN's autotuning, lazy workspaces and the optimizer state all
// happen there), gradients set to None before the capture so that backward writes them instead of
// accumulating, inputs copied into tensors that keep their addresses, and the optimizer's changing
// scalars (learning rate, momentum, bias corrections) read from a device tensor. A graph is tied to the
// addresses of everything it touches, so it is captured again whenever the signature (shapes, options,
// and the addresses of the weights, buffers and optimizer state) changes.
//
// Without CUDA (or with a LibTorch whose CUDA headers are not there) the same step runs eagerly: the
// tests check on the CPU that it computes what the ordinary step computes.
#pragma once
#include "optimizer.h"

#include <functional>

namespace tl {

struct StepGraphCuda;  // the CUDA objects, in step_graph.cpp only

class StepGraph {
 public:
  // Eager steps before the capture (PyTorch's examples use 3).
  static constexpr int kWarmup = 3;

  StepGraph();
  ~StepGraph();

  // forward + loss + backward on the given input and target; returns the loss (a 0-dim tensor).
  using ForwardBackward = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& y)>;

  // Training step `batch` of an epoch whose hyper-parameters are `hypers` (one entry per batch).
  // Returns the loss, or an undefined tensor when the caller is to run the ordinary step instead (the
  // warm-up, or after a capture failed: `error` then says why). With a `tail`, the graph is forward and
  // backward only; after each replay the parameters' gradients are the ones it wrote, and the tail runs
  // (whatever comes between backward and the next batch: the all-reduce, accumulation, the optimizer
  // step). Whether there is a tail belongs in the signature.
  torch::Tensor step(FastAdam& opt, const std::vector<ParamInfo>& params, const std::vector<int64_t>& signature,
                     const torch::Tensor& x, const torch::Tensor& y, const std::vector<std::vector<Hyper>>& hypers,
                     size_t batch, const ForwardBackward& forwardBackward, const std::function<void()>& zeroGrad,
                     const std::function<void()>& tail = {});

  // An epoch's stretch of steps: on CUDA they run on the graph's own stream (a capture cannot use the
  // default stream), with the device synchronised at both ends.
  void beginEpoch(const torch::Device& device);
  void endEpoch();
  // Drops the graph and its memory pool.
  void reset();
  // reset(), and gives the capture stream back for the next learner (the end of a fit, an error, dispose).
  void release();

  bool captured() const { return captured_; }
  int64_t replays = 0;  // graph steps (replays, or eager runs of the same step) since the last beginEpoch
  std::string error;    // why the capture failed; the learner then trains with ordinary steps

 private:
  std::unique_ptr<StepGraphCuda> cuda_;
  std::vector<int64_t> signature_;
  int warm_ = 0;
  bool ready_ = false, captured_ = false;
  // The graph is the forward and backward only, a tail following each replay (see step).
  bool tail_ = false;
  AdamPlan plan_;
  torch::Tensor x_, y_, scalars_, loss_;
  torch::Tensor table_;       // scalars for the steps [tableFrom_, hypers.size()) of this epoch
  size_t tableFrom_ = 0;
  std::vector<torch::Tensor> grads_;  // the gradients the graph writes (its memory)
  std::vector<size_t> gradOf_;        // grads_[k] is the gradient of params[gradOf_[k]]
  torch::Tensor run(FastAdam& opt, const std::vector<ParamInfo>& params, const ForwardBackward& fb);
  // grads_ and gradOf_: the parameters' gradients as they are now (after the capture, or the first step without one)
  void keepGrads(const std::vector<ParamInfo>& params);
};

// RAII for beginEpoch/endEpoch.
struct StepGraphEpoch {
  StepGraph* g;
  StepGraphEpoch(StepGraph* graph, const torch::Device& device) : g(graph) {
    if (g) g->beginEpoch(device);
  }
  ~StepGraphEpoch() {
    if (g) g->endEpoch();
  }
};

}  // namespace tl
