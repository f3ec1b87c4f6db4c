// The hook batchNormCheck: one training-mode BatchNorm (+ residual add + ReLU) of a bf16 channels_last CUDA
// batch through the kernels a learner would use (resnet.cpp's trainingBatchNormRelu, the production path),
// forward and backward, against the same computation in float64 from the same bf16 inputs. The CUDA test
// runs it for ATen's kernels and for cuDNN's: cuDNN's are as correct as ATen's when their errors against
// float64 are no larger than ATen's. (Comparing whole learners cannot tell that: two runs of
// a network amplify any different-but-equally-good rounding, and ATen against ATen rounds the same way.)
#include "js.h"
#include "resnet.h"
#include "autocast.h"

namespace tl {

namespace {

struct Errors {
  double rel;  // |a - ref| / |ref|, Euclidean over the tensor
  double max;  // max |a - ref| / max |ref|
};

Errors errors(const torch::Tensor& a, const torch::Tensor& ref) {
  auto d = a.to(torch::kDouble) - ref;
  const double refNorm = ref.norm().item<double>(), refMax = ref.abs().max().item<double>();
  return {d.norm().item<double>() / std::max(refNorm, 1e-300), d.abs().max().item<double>() / std::max(refMax, 1e-300)};
}

struct CheckArgs {
  TrainBn kernels;
  int64_t n, c, h, w;
  bool relu, residual;
  uint64_t seed;
};

std::vector<std::pair<std::string, Errors>> runCheck(const CheckArgs& a, std::string& gradFn) {
  torch::manual_seed(a.seed);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  const double eps = 1e-5, momentum = 0.1;
  auto bn = torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(a.c).eps(eps).momentum(momentum));
  bn->to(torch::kCUDA);
  {
    torch::NoGradGuard ng;
    bn->weight.uniform_(0.5, 1.5);
    bn->bias.normal_(0, 0.2);
    bn->running_mean.normal_(0, 0.1);
    bn->running_var.uniform_(0.5, 1.5);
  }
  const auto rm0 = bn->running_mean.clone(), rv0 = bn->running_var.clone();
  // a convolution's output: per-channel offsets and scales, rounded to bf16, channels_last
  auto x = (torch::randn({a.n, a.c, a.h, a.w}, f32) * torch::rand({1, a.c, 1, 1}, f32).mul(2).add(0.2) + torch::randn({1, a.c, 1, 1}, f32))
               .to(torch::kBFloat16)
               .contiguous(torch::MemoryFormat::ChannelsLast)
               .requires_grad_(true);
  torch::Tensor r;
  if (a.residual) r = torch::randn({a.n, a.c, a.h, a.w}, f32).to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast).requires_grad_(true);
  auto dy = torch::randn({a.n, a.c, a.h, a.w}, f32).to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast);

  FoldState fold;
  fold.trainBn = a.kernels;
  bn->train();
  torch::Tensor y;
  {
    AutocastScope autocast(true);
    // the hook's input is a leaf: the in-place add and ReLU of ATen's path need a tensor of their own
    auto xin = x * 1;
    y = a.relu ? trainingBatchNormRelu(*bn, xin, fold, a.residual ? r * 1 : torch::Tensor()) : trainingBatchNorm(*bn, xin, fold);
  }
  gradFn = y.grad_fn() ? y.grad_fn()->name() : "";
  y.backward(dy);
  torch::cuda::synchronize();

  // float64 from the same bf16 values
  auto xd = x.detach().to(torch::kDouble).requires_grad_(true);
  auto wd = bn->weight.detach().to(torch::kDouble).requires_grad_(true);
  auto bd = bn->bias.detach().to(torch::kDouble).requires_grad_(true);
  torch::Tensor rd;
  if (a.residual) rd = r.detach().to(torch::kDouble).requires_grad_(true);
  auto mean = xd.mean({0, 2, 3}, true);
  auto var = (xd - mean).pow(2).mean({0, 2, 3}, true);
  auto yd = (xd - mean) / torch::sqrt(var + eps) * wd.view({1, -1, 1, 1}) + bd.view({1, -1, 1, 1});
  if (a.residual) yd = yd + rd;
  if (a.relu) yd = torch::relu(yd);
  yd.backward(dy.to(torch::kDouble));
  const double m = static_cast<double>(a.n * a.h * a.w);
  auto rmRef = rm0.to(torch::kDouble) * (1 - momentum) + mean.detach().flatten() * momentum;
  auto rvRef = rv0.to(torch::kDouble) * (1 - momentum) + var.detach().flatten() * (m / (m - 1)) * momentum;

  std::vector<std::pair<std::string, Errors>> out = {
      {"y", errors(y.detach(), yd.detach())},
      {"dx", errors(x.grad(), xd.grad())},
      {"dweight", errors(bn->weight.grad(), wd.grad())},
      {"dbias", errors(bn->bias.grad(), bd.grad())},
      {"runningMean", errors(bn->running_mean, rmRef)},
      {"runningVar", errors(bn->running_var, rvRef)},
  };
  if (a.residual) out.push_back({"dresidual", errors(r.grad(), rd.grad())});
  return out;
}

}  // namespace

// batchNormCheck({ kernels, n, c, h, w, relu, residual, seed }) -> { gradFn, y: { rel, max }, dx, dweight, dbias,
// dresidual?, runningMean, runningVar }: each the relative error against float64 (src/hooks.ts).
Napi::Value BatchNormCheck(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  js::Options o(info[0], "batchNormCheck: options");
  if (!torch::cuda::is_available()) throw UserError("batchNormCheck needs CUDA: the kernels it checks run on bf16 CUDA batches");
  if (!o.has("kernels")) throw UserError("batchNormCheck: options.kernels is required");
  CheckArgs a{*o.optChoice<TrainBn>("kernels", kTrainBnNames), o.integer("n", 2, 4096), o.integer("c", 1, 8192), o.integer("h", 1, 1024), o.integer("w", 1, 1024),
              o.flag("relu", true), o.flag("residual", false), static_cast<uint64_t>(o.integer("seed", 0, int64_t{1} << 53))};
  if (a.residual && !a.relu) throw UserError("batchNormCheck: a residual is added before the ReLU; residual needs relu");
  if (static_cast<double>(a.n) * a.c * a.h * a.w > double(1 << 28)) throw UserError("batchNormCheck: the batch is too large (n * c * h * w at most 2^28)");
  std::string gradFn;
  auto errs = runAndWait<std::vector<std::pair<std::string, Errors>>>(cpuWorker(), [&] { return runCheck(a, gradFn); });
  auto res = Napi::Object::New(env);
  res.Set("gradFn", gradFn);
  for (const auto& [name, e] : errs) {
    auto eo = Napi::Object::New(env);
    eo.Set("rel", e.rel);
    eo.Set("max", e.max);
    res.Set(name, eo);
  }
  return res;
  TL_CATCH(env)
}

}  // namespace tl
