// SyncBatchNorm (PyTorch's torch.nn.SyncBatchNorm) for data-parallel training: in training mode each
// BatchNorm normalises with the statistics of the whole global batch (every rank's images), all-reduced in
// forward, and its backward all-reduces the two sums the input gradient needs. The networks call
// batchNorm() where they would call a BatchNorm's forward; inside a SyncBatchNormScope (the learner's
// syncBatchNorm option on several ranks) that is the synchronised one, elsewhere the module's own.
#pragma once
#include "common.h"

namespace tl {

// Turns synchronised BatchNorm on for this thread's forward passes while it lives.
class SyncBatchNormScope {
 public:
  explicit SyncBatchNormScope(bool on);
  ~SyncBatchNormScope();
  SyncBatchNormScope(const SyncBatchNormScope&) = delete;
  SyncBatchNormScope& operator=(const SyncBatchNormScope&) = delete;

 private:
  bool previous_;
};

// A BatchNorm's forward: synchronised in training inside a SyncBatchNormScope, the module's own otherwise.
torch::Tensor batchNorm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x);
torch::Tensor batchNorm(torch::nn::BatchNorm1dImpl& bn, const torch::Tensor& x);
// whether this thread's training-mode BatchNorms are synchronised now
bool syncBatchNormOn();

}  // namespace tl
