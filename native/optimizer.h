// fast.ai's Adam (v2 optimizer.py) and its schedules, in one place.
#pragma once
#include "net.h"

#include <cmath>

namespace tl {
namespace js {
class Options;
}

// Hyper-parameters of one layer group for one step.
struct Hyper {
  double lr;
  double mom;  // beta1, cycled by fitOneCycle
  double wd;
};

// fast.ai v2 Adam: decoupled weight decay p *= 1 - lr*wd (not on BatchNorm parameters or biases),
// grad_avg = mom*grad_avg + (1-mom)*g, sqr_avg = sqr_mom*sqr_avg + (1-sqr_mom)*g^2,
// p -= lr/(1-mom^step) * grad_avg / (sqrt(sqr_avg/(1-sqr_mom^step)) + eps), debiased with the
// *current* mom. Applied with multi-tensor (_foreach) kernels, one call per bucket of parameters.
// One bucket of a captured step: parameters (indices into the network's list) sharing their scalars.
struct AdamBucket {
  int group;
  bool decays;
  std::vector<size_t> idx;
};
using AdamPlan = std::vector<AdamBucket>;

// Per step and bucket, the five scalars of fast.ai's Adam that change from step to step.
enum AdamScalar { kDecay, kMom, kOneMinusMom, kInvSqrtDebias2, kStepSize, kNumAdamScalars };

class FastAdam {
 public:
  // Set from JavaScript (DEFAULTS in src/learner/learner.ts holds fast.ai's values).
  double sqrMom = NAN;
  double eps = NAN;
  bool fuseOnCpu = true;  // the one-pass CPU loop where layouts allow; false: always the _foreach kernels
  // On CUDA, PyTorch's fused AdamW kernel where this LibTorch has it (fusedCudaCompiled) and layouts allow:
  // one pass instead of about a dozen. The learner option fusedAdam.
  bool fuseOnCuda = false;
  static bool fusedCudaCompiled();
  // Whether step() runs the fused kernel for parameters on `device`: a CUDA graph then captures the forward
  // and backward only, and step() runs after each replay (the kernel takes beta1, which fitOneCycle changes
  // every step, as a host scalar, so it cannot be replayed from a graph).
  bool fusedOn(const torch::Device& device) const { return fuseOnCuda && device.is_cuda() && fusedCudaCompiled(); }
  void step(const std::vector<ParamInfo>& params, const std::vector<Hyper>& groups);
  void clear();  // fast.ai clears the state on every freeze/unfreeze
  NamedTensors state(const std::vector<ParamInfo>& params) const;
  void loadState(const std::vector<ParamInfo>& params, const NamedTensors& tensors);
  // Bumped whenever the state tensors are replaced (clear, loadState): a captured step holds their addresses.
  int64_t generation() const { return generation_; }

  // The same step for a CUDA graph: the buckets are fixed once (plan, after a step made the state), the
  // scalars are read from a device tensor [buckets, kNumAdamScalars] instead of being baked into kernel
  // arguments, and the host only counts steps (advance). scalarTable computes those scalars for the steps
  // hypers[from..] in advance, so that a step needs no host-to-device copy.
  AdamPlan plan(const std::vector<ParamInfo>& params) const;
  torch::Tensor scalarTable(const std::vector<ParamInfo>& params, const AdamPlan& plan,
                            const std::vector<std::vector<Hyper>>& hypers, size_t from) const;
  void stepWith(const std::vector<ParamInfo>& params, const AdamPlan& plan, const torch::Tensor& scalars);
  void advance(const std::vector<ParamInfo>& params, const AdamPlan& plan);

 private:
  int64_t generation_ = 0;
  std::unordered_map<std::string, torch::Tensor> gradAvg_, sqrAvg_;
  std::unordered_map<std::string, int64_t> step_;
};

// A schedule of the learning rate (per layer group) and momentum over a fit, pos in [0, 1).
struct Schedule {
  std::string kind = "onecycle";  // onecycle | constant | flatcos | exp
  std::vector<double> lrMax;      // per group (exp: the start lr per group)
  std::vector<double> lrEnd;      // exp only: the end lr per group
  // Every field comes from JavaScript (fast.ai's defaults live in src/learner/learner.ts).
  double div = NAN;
  double divFinal = NAN;
  double pctStart = NAN;
  std::array<double, 3> moms{NAN, NAN, NAN};
  double lr(size_t group, double pos) const;
  double mom(double pos) const;
};
// A per-group learning-rate list: one number for every group, or one per group, positive and finite.
std::vector<double> lrsPerGroup(const js::Options& o, const char* key, int numGroups);
Schedule scheduleFromJs(const js::Options& o, int numGroups);

// For the tests: FastAdam on given tensors, and a schedule evaluated at given positions.
Napi::Value FastAdamSteps(const Napi::CallbackInfo& info);
Napi::Value ScheduleValues(const Napi::CallbackInfo& info);

// fast.ai's sched_cos and combined_cos (schedule.py).
double schedCos(double start, double end, double pos);
double combinedCos(double pct, double start, double middle, double end, double pos);

}  // namespace tl
