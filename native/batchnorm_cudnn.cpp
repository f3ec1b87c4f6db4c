#include "batchnorm_cudnn.h"

#include <ATen/detail/CUDAHooksInterface.h>
#include <dlfcn.h>

#include <map>

// The stream and device guard need CUDA's headers, which only a CUDA build of LibTorch brings
// (TL_NO_CUDNN_BN leaves them out: scripts/gpu-check.sh builds so if this file does not compile there).
#if __has_include(<c10/cuda/CUDAStream.h>) && __has_include(<cuda_runtime_api.h>) && !defined(TL_NO_CUDNN_BN)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define TL_CUDNN_BN 1
#endif

namespace tl {
namespace {

// cuDNN's C API as this file uses it: handles and descriptors are pointers, enums are ints, statuses ints
// (0 = success). Values from cudnn_graph.h / cudnn_ops.h, the same in cuDNN 8 and 9.
constexpr int kNHWC = 1, kBFloat16 = 9, kSpatialPersistent = 2, kReluMode = 1, kNotPropagateNan = 0;
using P = void*;
using CP = const void*;

struct Api {
  int (*create)(P*);
  int (*setStream)(P, P);
  const char* (*errorString)(int);
  int (*createTensorDesc)(P*);
  int (*destroyTensorDesc)(P);
  int (*setTensor4d)(P, int format, int dtype, int n, int c, int h, int w);
  int (*deriveBN)(P derived, P x, int mode);
  int (*createActivation)(P*);
  int (*setActivation)(P, int mode, int nanOpt, double coef);
  int (*destroyActivation)(P);
  int (*fwdWorkspace)(P h, int mode, int ops, P x, P z, P y, P param, P act, size_t* bytes);
  int (*reserveSpace)(P h, int mode, int ops, P act, P x, size_t* bytes);
  int (*bwdWorkspace)(P h, int mode, int ops, P x, P y, P dy, P dz, P dx, P dparam, P act, size_t* bytes);
  int (*forward)(P h, int mode, int ops, CP alpha, CP beta, P xD, CP x, P zD, CP z, P yD, P y, P pD, CP scale, CP bias,
                 double factor, P runningMean, P runningVar, double eps, P saveMean, P saveInvVar, P act, P ws, size_t wsBytes,
                 P reserve, size_t reserveBytes);
  int (*backward)(P h, int mode, int ops, CP alphaData, CP betaData, CP alphaParam, CP betaParam, P xD, CP x, P yD, CP y,
                  P dyD, CP dy, P dzD, P dz, P dxD, P dx, P dpD, CP scale, CP bias, P dScale, P dBias, double eps,
                  CP saveMean, CP saveInvVar, P act, P ws, size_t wsBytes, P reserve, size_t reserveBytes);
};

// The cuDNN LibTorch loaded (found by its soname among the loaded libraries), or null.
const Api* api() {
  static const Api* a = []() -> const Api* {
    if (!at::detail::getCUDAHooks().hasCuDNN()) return nullptr;
    at::detail::getCUDAHooks().versionCuDNN();  // LibTorch's cuDNN is resident from here on
    void* lib = nullptr;
    for (const char* name : {"libcudnn.so.9", "libcudnn.so.8", "libcudnn.so"})
      if ((lib = dlopen(name, RTLD_NOW | RTLD_NOLOAD))) break;
    if (!lib) return nullptr;  // not loading a second copy: its handles would not be LibTorch's
    auto* r = new Api();
    bool ok = true;
    auto get = [&](auto& f, const char* name) {
      f = reinterpret_cast<std::remove_reference_t<decltype(f)>>(dlsym(lib, name));
      ok = ok && f != nullptr;
    };
    get(r->create, "cudnnCreate");
    get(r->setStream, "cudnnSetStream");
    get(r->errorString, "cudnnGetErrorString");
    get(r->createTensorDesc, "cudnnCreateTensorDescriptor");
    get(r->destroyTensorDesc, "cudnnDestroyTensorDescriptor");
    get(r->setTensor4d, "cudnnSetTensor4dDescriptor");
    get(r->deriveBN, "cudnnDeriveBNTensorDescriptor");
    get(r->createActivation, "cudnnCreateActivationDescriptor");
    get(r->setActivation, "cudnnSetActivationDescriptor");
    get(r->destroyActivation, "cudnnDestroyActivationDescriptor");
    get(r->fwdWorkspace, "cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize");
    get(r->reserveSpace, "cudnnGetBatchNormalizationTrainingExReserveSpaceSize");
    get(r->bwdWorkspace, "cudnnGetBatchNormalizationBackwardExWorkspaceSize");
    get(r->forward, "cudnnBatchNormalizationForwardTrainingEx");
    get(r->backward, "cudnnBatchNormalizationBackwardEx");
    return ok ? r : nullptr;
  }();
  return a;
}

void check(int status, const char* what) {
  if (status != 0) throw UserError(std::string("cuDNN BatchNorm: ") + what + " failed: " + api()->errorString(status));
}

// A tensor descriptor of x's shape (NHWC, bf16), the BatchNorm parameter descriptor cuDNN derives from
// it, and for the fused ops a ReLU descriptor; `ops` is cuDNN's cudnnBatchNormOps_t (0 BN, 1 BN + activation,
// 2 BN + add + activation), which BnFused's values are.
struct Descs {
  P x = nullptr, param = nullptr, act = nullptr;
  int ops = 0;
  Descs(const torch::Tensor& t, BnFused fused) : ops(static_cast<int>(fused)) {
    check(api()->createTensorDesc(&x), "cudnnCreateTensorDescriptor");
    check(api()->createTensorDesc(&param), "cudnnCreateTensorDescriptor");
    check(api()->setTensor4d(x, kNHWC, kBFloat16, static_cast<int>(t.size(0)), static_cast<int>(t.size(1)), static_cast<int>(t.size(2)), static_cast<int>(t.size(3))),
          "cudnnSetTensor4dDescriptor (bf16, NHWC)");
    check(api()->deriveBN(param, x, kSpatialPersistent), "cudnnDeriveBNTensorDescriptor");
    if (fused != BnFused::None) {
      check(api()->createActivation(&act), "cudnnCreateActivationDescriptor");
      check(api()->setActivation(act, kReluMode, kNotPropagateNan, 0.0), "cudnnSetActivationDescriptor (ReLU)");
    }
  }
  P z() const { return ops == static_cast<int>(BnFused::AddRelu) ? x : nullptr; }  // the residual's (and its gradient's) descriptor
  ~Descs() {
    if (x) api()->destroyTensorDesc(x);
    if (param) api()->destroyTensorDesc(param);
    if (act) api()->destroyActivation(act);
  }
  Descs(const Descs&) = delete;
  Descs& operator=(const Descs&) = delete;
};

torch::Tensor bytes(size_t n, const torch::Tensor& like) {
  return torch::empty({static_cast<int64_t>(std::max<size_t>(n, 1))}, like.options().dtype(torch::kUInt8));
}

// A cuDNN handle for this thread and x's device, set to the current stream (a CUDA graph's capture
// stream during a capture).
P handleFor(const torch::Tensor& x) {
#ifdef TL_CUDNN_BN
  thread_local std::map<int, P> handles;  // one per device, for the life of the thread
  c10::cuda::CUDAGuard guard(x.device());
  auto& h = handles[x.device().index()];
  if (!h) check(api()->create(&h), "cudnnCreate");
  check(api()->setStream(h, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()), "cudnnSetStream");
  return h;
#else
  (void)x;
  throw UserError("cuDNN BatchNorm needs a CUDA build of LibTorch");
#endif
}

// Inputs: x, weight, bias, residual (x itself when there is none: a Function takes tensors, and its
// gradient slot then stays empty), running mean and variance, momentum, eps, BnFused as an integer.
struct CudnnBatchNormFn : torch::autograd::Function<CudnnBatchNormFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                               torch::Tensor residual, torch::Tensor runningMean, torch::Tensor runningVar, double momentum, double eps,
                               int64_t fusedCode) {
    const auto fused = static_cast<BnFused>(fusedCode);
    x = x.contiguous(torch::MemoryFormat::ChannelsLast);
    if (fused == BnFused::AddRelu) residual = residual.to(x.scalar_type()).contiguous(torch::MemoryFormat::ChannelsLast);
    P h = handleFor(x);
    Descs d(x, fused);
    size_t ws = 0, rs = 0;
    check(api()->fwdWorkspace(h, kSpatialPersistent, d.ops, d.x, d.z(), d.x, d.param, d.act, &ws), "forward workspace size");
    check(api()->reserveSpace(h, kSpatialPersistent, d.ops, d.act, d.x, &rs), "reserve space size");
    auto workspace = bytes(ws, x), reserve = bytes(rs, x);
    auto y = torch::empty_like(x, x.options(), torch::MemoryFormat::ChannelsLast);
    auto saveMean = torch::empty({x.size(1)}, weight.options()), saveInvVar = torch::empty({x.size(1)}, weight.options());
    const float one = 1, zero = 0;
    check(api()->forward(h, kSpatialPersistent, d.ops, &one, &zero, d.x, x.data_ptr(), d.z(), d.z() ? residual.data_ptr() : nullptr, d.x,
                         y.data_ptr(), d.param, weight.data_ptr(), bias.data_ptr(), momentum, runningMean.data_ptr(), runningVar.data_ptr(),
                         eps, saveMean.data_ptr(), saveInvVar.data_ptr(), d.act, workspace.data_ptr(), ws, reserve.data_ptr(), rs),
          "cudnnBatchNormalizationForwardTrainingEx");
    // the fused ReLU's backward reads the output (which nothing may then change in place); BN alone does not
    std::vector<torch::Tensor> saved{x, weight, bias, saveMean, saveInvVar, reserve};
    if (fused != BnFused::None) saved.push_back(y);
    ctx->save_for_backward(saved);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["fused"] = fusedCode;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    const auto &x = s[0], &weight = s[1], &bias = s[2], &saveMean = s[3], &saveInvVar = s[4], &reserve = s[5];
    const auto fused = static_cast<BnFused>(ctx->saved_data["fused"].toInt());
    const torch::Tensor y = fused != BnFused::None ? s[6] : torch::Tensor();
    auto dy = grads[0].to(x.scalar_type()).contiguous(torch::MemoryFormat::ChannelsLast);
    P h = handleFor(x);
    Descs d(x, fused);
    size_t ws = 0;
    check(api()->bwdWorkspace(h, kSpatialPersistent, d.ops, d.x, d.x, d.x, d.z(), d.x, d.param, d.act, &ws), "backward workspace size");
    auto workspace = bytes(ws, x);
    auto dx = torch::empty_like(x, x.options(), torch::MemoryFormat::ChannelsLast);
    auto dResidual = d.z() ? torch::empty_like(x, x.options(), torch::MemoryFormat::ChannelsLast) : torch::Tensor();
    auto dWeight = torch::empty_like(weight), dBias = torch::empty_like(bias);
    const float one = 1, zero = 0;
    // y (its descriptor too) only for the fused ReLU's backward; BatchNorm alone passes none, as ATen's cudnn_batch_norm does
    check(api()->backward(h, kSpatialPersistent, d.ops, &one, &zero, &one, &zero, d.x, x.data_ptr(), y.defined() ? d.x : nullptr,
                          y.defined() ? y.data_ptr() : nullptr,
                          d.x, dy.data_ptr(), d.z(), dResidual.defined() ? dResidual.data_ptr() : nullptr, d.x, dx.data_ptr(), d.param,
                          weight.data_ptr(), bias.data_ptr(), dWeight.data_ptr(), dBias.data_ptr(), ctx->saved_data["eps"].toDouble(),
                          saveMean.data_ptr(), saveInvVar.data_ptr(), d.act, workspace.data_ptr(), ws, reserve.data_ptr(),
                          static_cast<size_t>(reserve.numel())),
          "cudnnBatchNormalizationBackwardEx");
    return {dx, dWeight, dBias, dResidual, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

bool cudnnBatchNormAvailable() {
#ifdef TL_CUDNN_BN
  static const bool available = torch::cuda::is_available() && api() != nullptr;  // asked per BatchNorm call: once is enough
  return available;
#else
  return false;
#endif
}

torch::Tensor cudnnBatchNormTrain(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                  const torch::Tensor& runningMean, const torch::Tensor& runningVar, double momentum, double eps,
                                  BnFused fused, const torch::Tensor& residual) {
  if (!cudnnBatchNormAvailable()) throw UserError("cuDNN BatchNorm is not available here (a CUDA build of LibTorch with cuDNN is needed)");
  return CudnnBatchNormFn::apply(x, weight, bias, fused == BnFused::AddRelu ? residual : x, runningMean, runningVar, momentum, eps,
                                 static_cast<int64_t>(fused));
}

}  // namespace tl
