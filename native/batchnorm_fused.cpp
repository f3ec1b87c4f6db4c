#include "batchnorm_fused.h"

// The kernels (CMakeLists.txt compiles native/cuda/bn_act.cu and defines TL_BN_KERNELS only against a CUDA
// LibTorch with nvcc) and the current CUDA stream, which needs CUDA's headers.
#if defined(TL_BN_KERNELS) && __has_include(<c10/cuda/CUDAStream.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/bn_act.h"
#define TL_FUSED_BN 1
#endif

namespace tl {
namespace {

#ifdef TL_FUSED_BN
void* currentStream(const torch::Tensor& x) { return c10::cuda::getCurrentCUDAStream(x.device().index()).stream(); }
void launched(int err, const char* kernel) {
  if (err != 0) throw UserError(std::string("fused BatchNorm: ") + kernel + " did not launch: " + cudaGetErrorString(static_cast<cudaError_t>(err)));
}
#endif

// Inputs: x, weight, bias, residual (x itself when there is none: its gradient slot then stays empty),
// running mean and variance, momentum, eps, relu, whether the residual is real.
struct FusedBatchNormFn : torch::autograd::Function<FusedBatchNormFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                               torch::Tensor residual, torch::Tensor runningMean, torch::Tensor runningVar, double momentum, double eps,
                               bool relu, bool add) {
#ifdef TL_FUSED_BN
    c10::cuda::CUDAGuard guard(x.device());
    x = x.contiguous(torch::MemoryFormat::ChannelsLast);
    if (add) residual = residual.to(x.scalar_type()).contiguous(torch::MemoryFormat::ChannelsLast);
    auto y = torch::empty_like(x, x.options(), torch::MemoryFormat::ChannelsLast);
    const int channels = static_cast<int>(x.size(1));
    if (!kernels::bnActSupported(channels, x.data_ptr(), add ? residual.data_ptr() : nullptr, y.data_ptr()))
      throw UserError("fused BatchNorm: " + std::to_string(channels) + " channels (or an unaligned tensor) is not a shape its kernel takes");
    // the batch statistics as ATen's own BatchNorm computes them (its channels_last kernel)
    auto [mean, invstd] = at::batch_norm_stats(x, eps);
    auto scale = torch::empty_like(mean), shift = torch::empty_like(mean);
    const int64_t rows = x.numel() / channels;
    const float* scaleP = scale.data_ptr<float>();
    const float* shiftP = shift.data_ptr<float>();
    launched(kernels::bnPrepare(mean.data_ptr<float>(), invstd.data_ptr<float>(), weight.data_ptr<float>(), bias.data_ptr<float>(),
                                scale.data_ptr<float>(), shift.data_ptr<float>(), runningMean.data_ptr<float>(), runningVar.data_ptr<float>(),
                                channels, momentum, eps, static_cast<double>(rows), currentStream(x)),
             "bnPrepare");
    launched(kernels::bnActForward(reinterpret_cast<const uint16_t*>(x.data_ptr()),
                                   add ? reinterpret_cast<const uint16_t*>(residual.data_ptr()) : nullptr,
                                   reinterpret_cast<uint16_t*>(y.data_ptr()), scaleP, shiftP, rows, channels, relu, currentStream(x)),
             "bnActForward");
    // the ReLU's backward reads the output (which nothing may then change in place), as ATen's relu_ does
    ctx->save_for_backward({x, weight, mean, invstd, relu ? y : torch::Tensor()});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["add"] = add;
    return y;
#else
    (void)ctx, (void)x, (void)weight, (void)bias, (void)residual, (void)runningMean, (void)runningVar, (void)momentum, (void)eps, (void)relu, (void)add;
    throw UserError("fused BatchNorm needs a CUDA build with torchlearn's kernels (nvcc at build time)");
#endif
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    const auto &x = s[0], &weight = s[1], &mean = s[2], &invstd = s[3], &y = s[4];
    auto dy = grads[0].to(x.scalar_type()).contiguous(torch::MemoryFormat::ChannelsLast);
    if (ctx->saved_data["relu"].toBool()) dy = at::threshold_backward(dy, y, 0);  // ATen's ReLU backward
    // ATen's BatchNorm backward, given the statistics the forward used (what native_batch_norm would have saved)
    auto r = at::native_batch_norm_backward(dy, x, weight, torch::Tensor(), torch::Tensor(), mean, invstd, true, ctx->saved_data["eps"].toDouble(),
                                            {true, true, true});
    const bool add = ctx->saved_data["add"].toBool();
    return {std::get<0>(r), std::get<1>(r), std::get<2>(r), add ? dy : torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

bool fusedBatchNormAvailable() {
#ifdef TL_FUSED_BN
  static const bool available = torch::cuda::is_available();
  return available;
#else
  return false;
#endif
}

torch::Tensor fusedBatchNormTrain(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& runningMean,
                                  const torch::Tensor& runningVar, double momentum, double eps, bool relu, const torch::Tensor& residual) {
  if (!fusedBatchNormAvailable()) throw UserError("fused BatchNorm is not available here (it needs a CUDA build with torchlearn's kernels)");
  TORCH_CHECK(x.dim() == 4 && x.is_cuda() && x.scalar_type() == torch::kBFloat16, "fusedBatchNormTrain: x must be a 4-d bf16 CUDA tensor");
  TORCH_CHECK(weight.scalar_type() == torch::kFloat32 && bias.scalar_type() == torch::kFloat32 && runningMean.scalar_type() == torch::kFloat32 &&
                  runningVar.scalar_type() == torch::kFloat32,
              "fusedBatchNormTrain: weight, bias and running statistics must be fp32");
  const bool add = residual.defined();
  TORCH_CHECK(!add || residual.sizes() == x.sizes(), "fusedBatchNormTrain: the residual must have x's shape");
  return FusedBatchNormFn::apply(x, weight, bias, add ? residual : x, runningMean, runningVar, momentum, eps, relu, add);
}

}  // namespace tl
