// Synchronised BatchNorm (sync_batchnorm.h): PyTorch's SyncBatchNorm formulas, the sums all-reduced through
// the process group of distributed.h.
#include "sync_batchnorm.h"
#include "distributed.h"

namespace tl {

namespace {
thread_local bool tOn = false;

// every dimension but the channels' (1): [N, C] for BatchNorm1d, [N, C, H, W] for BatchNorm2d
std::vector<int64_t> reduceDims(const torch::Tensor& x) {
  std::vector<int64_t> d;
  for (int64_t i = 0; i < x.dim(); i++)
    if (i != 1) d.push_back(i);
  return d;
}
std::vector<int64_t> channelShape(const torch::Tensor& x) {
  std::vector<int64_t> s(static_cast<size_t>(x.dim()), 1);
  s[1] = x.size(1);
  return s;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// forward: per channel, the sum and the sum of squares of this rank's batch and its element count,
// all-reduced: the global mean and biased variance normalise, the unbiased variance updates the running
// one. backward: the local sums of dy and dy * (x - mean), all-reduced; the weight's and bias's gradients
// stay local (the gradient all-reduce averages them with the rest), as PyTorch's.
struct SyncBatchNormFn : torch::autograd::Function<SyncBatchNormFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, torch::Tensor runningMean,
                               torch::Tensor runningVar, double momentum, double eps) {
    const auto dims = reduceDims(x);
    const auto shape = channelShape(x);
    const int64_t c = x.size(1);
    auto xf = x.to(torch::kFloat32);
    const double local = static_cast<double>(x.numel() / c);
    // the local mean first and the sums of squares about it (in float64), then the ranks' parts combined
    // (Chan's formula, through the all-reduced sums): no cancellation of a large mean's square
    auto xd = x.to(torch::kFloat64);
    auto localMean = xd.mean(dims);
    auto m2 = (xd - localMean.view(shape)).square().sum(dims);
    auto packed = torch::cat({localMean * local, m2 + localMean.square() * local, torch::full({1}, local, xd.options())});
    packed = dist::allreduce(packed).to(xf.device());
    const double total = packed[2 * c].item<double>();
    auto meanD = packed.narrow(0, 0, c) / total;
    auto varD = (packed.narrow(0, c, c) / total - meanD.square()).clamp_min(0);
    auto mean = meanD.to(torch::kFloat32);
    auto var = varD.to(torch::kFloat32);
    auto invstd = (varD + eps).rsqrt().to(torch::kFloat32);
    {
      torch::NoGradGuard ng;
      if (runningMean.defined()) runningMean.mul_(1 - momentum).add_(mean.to(runningMean.scalar_type()) * momentum);
      if (runningVar.defined()) runningVar.mul_(1 - momentum).add_(var.to(runningVar.scalar_type()) * (total / std::max(1.0, total - 1)) * momentum);
    }
    auto xhat = (xf - mean.view(shape)) * invstd.view(shape);
    auto y = weight.defined() ? xhat * weight.to(torch::kFloat32).view(shape) + bias.to(torch::kFloat32).view(shape) : xhat;
    ctx->save_for_backward({xhat, invstd, weight});
    ctx->saved_data["total"] = total;
    ctx->saved_data["dtype"] = static_cast<int64_t>(x.scalar_type());
    return y.to(x.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto xhat = saved[0], invstd = saved[1], weight = saved[2];
    const double total = ctx->saved_data["total"].toDouble();
    const auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt());
    auto dy = grads[0].to(torch::kFloat32);
    const auto dims = reduceDims(dy);
    const auto shape = channelShape(dy);
    const int64_t c = dy.size(1);
    auto sumDy = dy.sum(dims, false, torch::kFloat64);
    auto sumDyXhat = (dy.to(torch::kFloat64) * xhat.to(torch::kFloat64)).sum(dims);
    torch::Tensor gradWeight, gradBias;
    if (weight.defined()) {
      gradWeight = sumDyXhat.to(weight.scalar_type());
      gradBias = sumDy.to(weight.scalar_type());
    }
    auto packed = dist::allreduce(torch::cat({sumDy, sumDyXhat})).to(dy.device());
    auto meanDy = (packed.narrow(0, 0, c) / total).to(torch::kFloat32);
    auto meanDyXhat = (packed.narrow(0, c, c) / total).to(torch::kFloat32);
    auto scale = weight.defined() ? invstd * weight.to(torch::kFloat32) : invstd;
    auto dx = (dy - meanDy.view(shape) - xhat * meanDyXhat.view(shape)) * scale.view(shape);
    return {dx.to(dtype), gradWeight, gradBias, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

template <typename Impl>
torch::Tensor sync(Impl& bn, const torch::Tensor& x) {
  const auto& o = bn.options;
  if (bn.num_batches_tracked.defined()) {
    torch::NoGradGuard ng;
    bn.num_batches_tracked += 1;
  }
  // (momentum None, PyTorch's cumulative average, is not something fast.ai's models use)
  const double momentum = o.momentum().value_or(0.1);
  return SyncBatchNormFn::apply(x, o.affine() ? bn.weight : torch::Tensor(), o.affine() ? bn.bias : torch::Tensor(),
                                o.track_running_stats() ? bn.running_mean : torch::Tensor(), o.track_running_stats() ? bn.running_var : torch::Tensor(), momentum, o.eps());
}
}  // namespace

SyncBatchNormScope::SyncBatchNormScope(bool on) : previous_(tOn) { tOn = on; }
SyncBatchNormScope::~SyncBatchNormScope() { tOn = previous_; }
bool syncBatchNormOn() { return tOn; }

torch::Tensor batchNorm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x) { return tOn && bn.is_training() ? sync(bn, x) : bn.forward(x); }
torch::Tensor batchNorm(torch::nn::BatchNorm1dImpl& bn, const torch::Tensor& x) { return tOn && bn.is_training() ? sync(bn, x) : bn.forward(x); }

}  // namespace tl
