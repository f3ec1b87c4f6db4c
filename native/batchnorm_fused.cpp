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
void launched(int err, const char* what) {
  if (err != 0) throw UserError(std::string("fused BatchNorm: ") + what + " did not launch: " + cudaGetErrorString(static_cast<cudaError_t>(err)));
}
const uint16_t* bits(const torch::Tensor& t) { return t.defined() ? reinterpret_cast<const uint16_t*>(t.data_ptr()) : nullptr; }
uint16_t* mutableBits(torch::Tensor& t) { return t.defined() ? reinterpret_cast<uint16_t*>(t.data_ptr()) : nullptr; }
float* f32(const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
#endif

// Inputs: x, weight, bias, residual (x itself when there is none: its gradient slot then stays empty),
// running mean and variance, momentum, eps, relu, whether the residual is real, whether the statistics and
// the backward are ours too (FusedBn::Full) or ATen's.
struct FusedBatchNormFn : torch::autograd::Function<FusedBatchNormFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                               torch::Tensor residual, torch::Tensor runningMean, torch::Tensor runningVar, double momentum, double eps,
                               bool relu, bool add, bool full) {
#ifdef TL_FUSED_BN
    c10::cuda::CUDAGuard guard(x.device());
    x = x.contiguous(torch::MemoryFormat::ChannelsLast);
    if (add) residual = residual.to(x.scalar_type()).contiguous(torch::MemoryFormat::ChannelsLast);
    auto y = torch::empty_like(x, x.options(), torch::MemoryFormat::ChannelsLast);
    const int channels = static_cast<int>(x.size(1));
    const int64_t rows = x.numel() / channels;
    if (!kernels::bnSupported(channels, {x.data_ptr(), add ? residual.data_ptr() : nullptr, y.data_ptr()}))
      throw UserError("fused BatchNorm: " + std::to_string(channels) + " channels (or an unaligned tensor) is not a shape its kernels take");
    auto stream = currentStream(x);
    auto stat = [&] { return torch::empty({channels}, weight.options()); };
    auto scale = stat(), shift = stat();
    torch::Tensor mean, invstd;  // ours (full) or ATen's
    if (full) {
      mean = stat(), invstd = stat();
      auto scratch = torch::empty({kernels::bnScratchFloats(rows, channels)}, weight.options());
      launched(kernels::bnStats(bits(x), rows, channels, f32(weight), f32(bias), f32(runningMean), f32(runningVar), momentum, eps, f32(scratch),
                                f32(mean), f32(invstd), f32(scale), f32(shift), stream, false),
               "bnStats");
    } else {
      // the batch statistics as ATen's own BatchNorm computes them (its channels_last kernel)
      std::tie(mean, invstd) = at::batch_norm_stats(x, eps);
      launched(kernels::bnPrepare(f32(mean), f32(invstd), f32(weight), f32(bias), f32(scale), f32(shift), f32(runningMean), f32(runningVar),
                                  channels, momentum, eps, rows, stream, false),
               "bnPrepare");
    }
    launched(kernels::bnActForward(bits(x), add ? bits(residual) : nullptr, mutableBits(y), f32(scale), f32(shift), rows, channels, relu, stream, false),
             "bnActForward");
    // the ReLU's backward reads the output (which nothing may then change in place), as ATen's relu_ does
    ctx->save_for_backward({x, weight, mean, invstd, relu ? y : torch::Tensor()});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["add"] = add;
    ctx->saved_data["full"] = full;
    return y;
#else
    (void)ctx, (void)x, (void)weight, (void)bias, (void)residual, (void)runningMean, (void)runningVar, (void)momentum, (void)eps, (void)relu, (void)add,
        (void)full;
    throw UserError("fused BatchNorm needs a CUDA build with torchlearn's kernels (nvcc at build time)");
#endif
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    const auto &x = s[0], &weight = s[1], &mean = s[2], &invstd = s[3], &y = s[4];
    const bool add = ctx->saved_data["add"].toBool();
    auto dy = grads[0].to(x.scalar_type()).contiguous(torch::MemoryFormat::ChannelsLast);
    torch::Tensor dx, dz, dWeight, dBias;
#ifdef TL_FUSED_BN
    if (ctx->saved_data["full"].toBool()) {
      c10::cuda::CUDAGuard guard(x.device());
      const int channels = static_cast<int>(x.size(1));
      const int64_t rows = x.numel() / channels;
      dx = torch::empty_like(x, x.options(), torch::MemoryFormat::ChannelsLast);
      if (add) dz = torch::empty_like(x, x.options(), torch::MemoryFormat::ChannelsLast);
      dWeight = torch::empty_like(weight), dBias = torch::empty_like(weight);
      auto scratch = torch::empty({kernels::bnScratchFloats(rows, channels)}, weight.options());
      auto coef = torch::empty({3 * channels}, weight.options());
      if (!kernels::bnSupported(channels, {dy.data_ptr(), dx.data_ptr(), add ? dz.data_ptr() : nullptr}))
        throw UserError("fused BatchNorm: an unaligned gradient");  // (fresh allocations: not expected)
      launched(kernels::bnBackward(bits(dy), bits(y), bits(x), rows, channels, f32(weight), f32(mean), f32(invstd), f32(scratch), f32(coef),
                                   f32(dWeight), f32(dBias), mutableBits(dx), add ? mutableBits(dz) : nullptr, currentStream(x), false),
               "bnBackward");
      return {dx, dWeight, dBias, dz, {}, {}, {}, {}, {}, {}, {}};
    }
#endif
    if (y.defined()) dy = at::threshold_backward(dy, y, 0);  // ATen's ReLU backward
    // ATen's BatchNorm backward, given the statistics the forward used (what native_batch_norm would have saved)
    std::tie(dx, dWeight, dBias) =
        at::native_batch_norm_backward(dy, x, weight, torch::Tensor(), torch::Tensor(), mean, invstd, true, ctx->saved_data["eps"].toDouble(), {true, true, true});
    return {dx, dWeight, dBias, add ? dy : torch::Tensor(), {}, {}, {}, {}, {}, {}, {}};
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
                                  const torch::Tensor& runningVar, double momentum, double eps, bool relu, const torch::Tensor& residual, bool full) {
  if (!fusedBatchNormAvailable()) throw UserError("fused BatchNorm is not available here (it needs a CUDA build with torchlearn's kernels)");
  const bool add = residual.defined();
  return FusedBatchNormFn::apply(x, weight, bias, add ? residual : x, runningMean, runningVar, momentum, eps, relu, add, full);
}

}  // namespace tl
