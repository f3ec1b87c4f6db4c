// Data-parallel training on LibTorch's own c10d: one process per device, a TCPStore rendezvous at
// MASTER_ADDR:MASTER_PORT (hosted by rank 0), and a Gloo process group (CPU tensors, or CUDA tensors through
// the host) or an NCCL one (CUDA, where LibTorch has it). One group per process, as torch.distributed has.
//
// The training loop calls the collectives below; without a group (or with a world of one) they do nothing,
// so a single-process run takes no other path. A collective that fails (a rank died, hung past the timeout)
// throws a UserError that names the rank, found through the heartbeats every rank writes to the store.
#pragma once
#include "common.h"

#include <chrono>
#include <string>
#include <vector>

namespace tl::dist {

struct Config {
  int rank = 0, world = 1;
  std::string masterAddr = "127.0.0.1";
  int masterPort = 29500;
  // every wait: the rendezvous, and each collective (a hung rank is reported after it)
  std::chrono::milliseconds timeout{300000};
  std::string backend = "gloo";  // 'gloo' or 'nccl'
  // Under torchrun's elastic agent (TORCHELASTIC_USE_AGENT_STORE=True) the agent hosts the store and every
  // rank is a client, its keys under this prefix ("/worker/attempt_<restart count>"), as PyTorch's env://
  // rendezvous does; empty: rank 0 hosts the store.
  std::string agentStorePrefix;
};

// built with c10d and Gloo's headers (CMakeLists.txt); otherwise init says how to get them
bool compiled();
// built with NCCL (a CUDA LibTorch that has it)
bool ncclCompiled();

// Joins the group: blocks until every rank has joined or the timeout passes. Once per process.
void init(const Config& config);
// a group exists (of one rank too, when joined explicitly: its collectives then run and change nothing,
// which is how the overhead of the distributed step is measured)
bool active();
int rank();
int world();
std::string backend();
// Leaves the group (the heartbeat stops, connections close); the process's exit does it too.
void shutdown();

// The gradients averaged over the ranks while backward still runs, as DDP's reducer does: each trainable
// parameter's gradient accumulator gets a hook; once every gradient of a bucket (about 25 MiB; the first
// 1 MiB, so that communication starts early) has been accumulated, that bucket's all-reduce starts,
// buckets starting in one fixed order on every rank. One per learner.
class GradReducer {
 public:
  GradReducer();
  // Before a backward whose gradients the optimizer will step with: buckets the trainable parameters (in
  // the order backward produces their gradients: last layers first) when they changed, and arms the buckets.
  void prepare(const std::vector<torch::Tensor>& trainable);
  // After that backward: starts the buckets not started yet, waits for them all and writes the averages
  // into the gradients (an undefined gradient counts as zeros, so every rank reduces the same sizes).
  // Without prepare, all of it happens here, after backward.
  void finish(const std::vector<torch::Tensor>& trainable);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Rank 0's values into every rank's tensors, in place (parameters and buffers at the start of training,
// BatchNorm's running statistics after each epoch).
void broadcastFromRank0(const std::vector<torch::Tensor>& tensors);
// The element-wise sum (or maximum) over the ranks of a small CPU tensor.
torch::Tensor allreduce(const torch::Tensor& t, bool max = false);
// Every rank's `rows` ([k, ...], k <= maxRows, the same trailing shape on every rank), padded to maxRows and
// gathered: [world, maxRows, ...] on every rank.
torch::Tensor allgatherRows(const torch::Tensor& rows, int64_t maxRows);

// Seconds spent waiting for gradient all-reduces after backward, and how many steps' there were, since the
// group began.
// Of the gradient buckets, how many started during backward (from the accumulators' hooks) and how many
// in all.
struct Stats {
  double gradSeconds = 0;
  int64_t gradReduces = 0;
  int64_t bucketsDuringBackward = 0, buckets = 0;
};
Stats stats();

}  // namespace tl::dist
