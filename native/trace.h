// Operator traces of native work (fit(..., { trace })): LibTorch's own profiler, tallied per operator,
// so that torchlearn's training step can be put beside PyTorch's (src/learner/trace.ts).
#pragma once
#include "common.h"

namespace tl {

// One row of a trace's operator table: an operator (CPU) or kernel (CUDA), how often it ran and its total
// time (an operator's time includes the operators it calls).
struct OpStat {
  std::string name;
  bool cuda = false;
  int64_t count = 0;
  double totalUs = 0;
};

// LibTorch's profiler for the scope of a native task. finish() tallies every operator and kernel, and, where
// LibTorch has Kineto (PyTorch's builds do; Debian's 1.13 does not), writes the Chrome trace too. The
// autograd engine carries the profiler state to its own threads, so backward is in it. An empty path
// traces nothing.
class TraceScope {
 public:
  TraceScope(const std::string& chromePath, bool cuda);
  ~TraceScope();
  std::vector<OpStat> finish();

 private:
  std::string chromePath_;
  bool active_ = false;
};

// The table as JavaScript objects { name, device: 'cpu' | 'cuda', count, totalUs } (src/learner/trace.ts's TraceOp).
Napi::Array opsToJs(Napi::Env env, const std::vector<OpStat>& ops);

}  // namespace tl
