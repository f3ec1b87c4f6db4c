#include "resnet.h"
#include "sync_batchnorm.h"

#include "batchnorm_cudnn.h"

namespace tl {
namespace nn = torch::nn;

static nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false));
}
static nn::Conv2d conv1x1(int64_t in, int64_t out, int64_t stride) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false));
}

// Training-mode BatchNorm of a bf16 CUDA batch through cuDNN (batchnorm_cudnn.h) when the state chooses it,
// with BatchNorm2d's semantics: running statistics updated with the module's momentum, num_batches_tracked
// counted. `relu`: the ReLU (after the residual add, with a residual) is part of the call. Where cuDNN is
// missing or refuses: an undefined result, and a message once per process; the caller then runs ATen's
// kernels.
static torch::Tensor trainBatchNorm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& y, const FoldState& fold, bool relu,
                                    const torch::Tensor& residual) {
  static std::atomic<bool> refused{false};
  const auto& o = bn.options;
  // what cuDNN's call takes: a bf16 CUDA batch, fp32 weight, bias and running statistics (autocast keeps the
  // parameters fp32), a residual of the batch's shape
  if (fold.trainBn == TrainBn::Aten || refused || syncBatchNormOn() || !bn.is_training() || !y.is_cuda() || y.scalar_type() != torch::kBFloat16 || !o.affine() ||
      !o.track_running_stats() || !o.momentum().has_value() || bn.weight.scalar_type() != torch::kFloat32 ||
      bn.running_mean.scalar_type() != torch::kFloat32 || (residual.defined() && residual.sizes() != y.sizes()))
    return {};
  torch::Tensor out;
  try {
    out = cudnnBatchNormTrain(y, bn.weight, bn.bias, bn.running_mean, bn.running_var, *o.momentum(), o.eps(),
                              !relu ? BnFused::None : residual.defined() ? BnFused::AddRelu : BnFused::Relu, residual);
  } catch (const std::exception& e) {
    if (!refused.exchange(true)) std::fprintf(stderr, "torchlearn: cuDNN's BatchNorm not used (%s); ATen's kernels instead\n", e.what());
    return {};
  }
  torch::NoGradGuard ng;
  bn.num_batches_tracked += 1;
  return out;
}

torch::Tensor trainingBatchNorm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& y, const FoldState& fold) {
  auto out = trainBatchNorm(bn, y, fold, false, torch::Tensor());
  return out.defined() ? out : batchNorm(bn, y);
}

torch::Tensor trainingBatchNormRelu(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& y, const FoldState& fold, const torch::Tensor& residual) {
  auto out = trainBatchNorm(bn, y, fold, true, residual);
  if (out.defined()) return out;
  out = batchNorm(bn, y);
  if (residual.defined()) out += residual;  // in place, as torchvision: no fresh activation-sized tensor per block
  return torch::relu_(out);
}

torch::Tensor ConvBn::forwardRelu(const torch::Tensor& x, const FoldState& fold, const torch::Tensor& residual) {
  if (bn->is_training()) {
    if (w_.defined()) w_ = b_ = torch::Tensor();  // (as forward: training will change the weights)
    return trainingBatchNormRelu(*bn, conv->forward(x), fold, residual);
  }
  auto out = forward(x, fold);
  if (residual.defined()) out += residual;
  return torch::relu_(out);
}

torch::Tensor ConvBn::forward(const torch::Tensor& x, const FoldState& fold) {
  // Folding computes the fused weights without gradients: only where none is wanted (an eval-mode BatchNorm
  // whose convolution and affine parameters are frozen, or no autograd at all). A BatchNorm held in eval
  // while its layer trains takes the plain path, so that its parameters still get their gradients.
  const bool wantsGrad = torch::GradMode::is_enabled() && (conv->weight.requires_grad() || (bn->weight.defined() && bn->weight.requires_grad()));
  if (!fold.on || bn->is_training() || wantsGrad) {
    if (w_.defined()) w_ = b_ = torch::Tensor();  // training (the weights will change) or folding off: no stale copies kept
    auto y = conv->forward(x);
    return bn->is_training() ? trainingBatchNorm(*bn, y, fold) : bn->forward(y);
  }
  if (generation_ != fold.generation || !w_.defined()) {
    torch::NoGradGuard ng;
    auto s = bn->weight / torch::sqrt(bn->running_var + bn->options.eps());
    w_ = conv->weight * s.view({-1, 1, 1, 1});  // keeps the weight's memory format (channels_last or not)
    b_ = bn->bias - bn->running_mean * s;
    generation_ = fold.generation;
  }
  const auto& o = conv->options;
  // every ResNet convolution pads by half its kernel (7 -> 3, 3 -> 1, 1 -> 0); read from the kernel size
  // because the options' padding is a variant whose accessor differs between LibTorch 1.13 and 2.x
  const auto k = *o.kernel_size();
  return torch::conv2d(x, w_, b_, o.stride(), {k[0] / 2, k[1] / 2}, o.dilation(), o.groups());
}

BasicBlockImpl::BasicBlockImpl(int64_t inplanes, int64_t planes, int64_t stride, nn::Sequential ds) {
  // Registration order is torchvision's, so that state_dict keys come out in its order.
  conv1 = register_module("conv1", conv3x3(inplanes, planes, stride));
  bn1 = register_module("bn1", nn::BatchNorm2d(planes));
  relu = register_module("relu", nn::ReLU(nn::ReLUOptions(true)));
  conv2 = register_module("conv2", conv3x3(planes, planes, 1));
  bn2 = register_module("bn2", nn::BatchNorm2d(planes));
  if (ds) downsample = register_module("downsample", ds);
  cb1 = {conv1.ptr(), bn1.ptr()};
  cb2 = {conv2.ptr(), bn2.ptr()};
  if (ds) dsCb = {std::dynamic_pointer_cast<nn::Conv2dImpl>(ds->ptr(0)), std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(ds->ptr(1))};
}

torch::Tensor BasicBlockImpl::forward(torch::Tensor x) {
  auto identity = downsample ? dsCb.forward(x, *fold) : x;
  auto out = cb1.forwardRelu(x, *fold);
  return cb2.forwardRelu(out, *fold, identity);
}

BottleneckImpl::BottleneckImpl(int64_t inplanes, int64_t planes, int64_t stride, nn::Sequential ds, int64_t groups, int64_t baseWidth) {
  const int64_t width = static_cast<int64_t>(static_cast<double>(planes) * (static_cast<double>(baseWidth) / 64.0)) * groups;
  conv1 = register_module("conv1", conv1x1(inplanes, width, 1));
  bn1 = register_module("bn1", nn::BatchNorm2d(width));
  // v1.5: stride here
  conv2 = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(width, width, 3).stride(stride).padding(1).groups(groups).bias(false)));
  bn2 = register_module("bn2", nn::BatchNorm2d(width));
  conv3 = register_module("conv3", conv1x1(width, planes * expansion, 1));
  bn3 = register_module("bn3", nn::BatchNorm2d(planes * expansion));
  relu = register_module("relu", nn::ReLU(nn::ReLUOptions(true)));
  if (ds) downsample = register_module("downsample", ds);
  cb1 = {conv1.ptr(), bn1.ptr()};
  cb2 = {conv2.ptr(), bn2.ptr()};
  cb3 = {conv3.ptr(), bn3.ptr()};
  if (ds) dsCb = {std::dynamic_pointer_cast<nn::Conv2dImpl>(ds->ptr(0)), std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(ds->ptr(1))};
}

torch::Tensor BottleneckImpl::forward(torch::Tensor x) {
  auto identity = downsample ? dsCb.forward(x, *fold) : x;
  auto out = cb1.forwardRelu(x, *fold);
  out = cb2.forwardRelu(out, *fold);
  return cb3.forwardRelu(out, *fold, identity);
}

std::optional<ArchSpec> resnetSpec(const std::string& arch) {
  if (arch == "resnet18") return ArchSpec{false, {2, 2, 2, 2}};
  if (arch == "resnet34") return ArchSpec{false, {3, 4, 6, 3}};
  if (arch == "resnet50") return ArchSpec{true, {3, 4, 6, 3}};
  if (arch == "resnet101") return ArchSpec{true, {3, 4, 23, 3}};
  if (arch == "resnet152") return ArchSpec{true, {3, 8, 36, 3}};
  if (arch == "resnext50_32x4d") return ArchSpec{true, {3, 4, 6, 3}, 32, 4};
  if (arch == "resnext101_32x8d") return ArchSpec{true, {3, 4, 23, 3}, 32, 8};
  if (arch == "resnext101_64x4d") return ArchSpec{true, {3, 4, 23, 3}, 64, 4};
  if (arch == "wide_resnet50_2") return ArchSpec{true, {3, 4, 6, 3}, 1, 128};
  if (arch == "wide_resnet101_2") return ArchSpec{true, {3, 4, 23, 3}, 1, 128};
  return std::nullopt;
}

nn::Sequential ResNetImpl::makeLayer(const ArchSpec& spec, int64_t& inplanes, int64_t planes, int64_t blocks, int64_t stride) {
  const bool bottleneck = spec.bottleneck;
  const int64_t expansion = bottleneck ? BottleneckImpl::expansion : BasicBlockImpl::expansion;
  nn::Sequential ds{nullptr};
  if (stride != 1 || inplanes != planes * expansion) {
    ds = nn::Sequential(conv1x1(inplanes, planes * expansion, stride), nn::BatchNorm2d(planes * expansion));
  }
  nn::Sequential layer;
  for (int64_t i = 0; i < blocks; i++) {
    auto s = i == 0 ? stride : 1;
    auto d = i == 0 ? ds : nn::Sequential{nullptr};
    if (bottleneck)
      layer->push_back(Bottleneck(inplanes, planes, s, d, spec.groups, spec.widthPerGroup));
    else
      layer->push_back(BasicBlock(inplanes, planes, s, d));
    inplanes = planes * expansion;
  }
  return layer;
}

ResNetImpl::ResNetImpl(const std::string& arch, int64_t numClasses, bool withClassifier) : withClassifier_(withClassifier) {
  const auto found = resnetSpec(arch);
  if (!found) throw UserError("unknown ResNet '" + arch + "'");
  const auto& spec = *found;
  splitTwo_ = spec.groups == 1 && spec.widthPerGroup == 64;
  if (withClassifier && numClasses < 1) throw UserError("numClasses must be a positive integer, got " + std::to_string(numClasses));
  int64_t inplanes = 64;
  conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(3, 64, 7).stride(2).padding(3).bias(false)));
  bn1 = register_module("bn1", nn::BatchNorm2d(64));
  relu = register_module("relu", nn::ReLU(nn::ReLUOptions(true)));
  maxpool = register_module("maxpool", nn::MaxPool2d(nn::MaxPool2dOptions(3).stride(2).padding(1)));
  layer1 = register_module("layer1", makeLayer(spec, inplanes, 64, spec.layers[0], 1));
  layer2 = register_module("layer2", makeLayer(spec, inplanes, 128, spec.layers[1], 2));
  layer3 = register_module("layer3", makeLayer(spec, inplanes, 256, spec.layers[2], 2));
  layer4 = register_module("layer4", makeLayer(spec, inplanes, 512, spec.layers[3], 2));
  numFeatures_ = inplanes;
  stem_ = {conv1.ptr(), bn1.ptr()};
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* b = m->as<BottleneckImpl>()) b->fold = fold_;
    if (auto* b = m->as<BasicBlockImpl>()) b->fold = fold_;
  }
  if (withClassifier) {
    avgpool = register_module("avgpool", nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
    fc = register_module("fc", nn::Linear(inplanes, numClasses));
  }
  // torchvision's initialisation.
  torch::NoGradGuard ng;
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* c = m->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut, torch::kReLU);
    } else if (auto* b = m->as<nn::BatchNorm2d>()) {
      nn::init::ones_(b->weight);
      nn::init::zeros_(b->bias);
    }
  }
}

void ResNetImpl::setFoldBatchNorm(bool on) {
  fold_->on = on;
  fold_->generation++;
}

torch::Tensor ResNetImpl::features(torch::Tensor x) {
  x = maxpool(stem_.forwardRelu(x, *fold_));
  return layer4->forward(layer3->forward(layer2->forward(layer1->forward(x))));
}

torch::Tensor ResNetImpl::classify(torch::Tensor a) {
  if (!withClassifier_) throw std::logic_error("classify: this ResNet was built without its classifier");
  return fc(torch::flatten(avgpool(a), 1));
}

int ResNetImpl::bodyGroup(const std::string& name) const {
  if (!splitTwo_) return 0;
  return name.rfind("layer3", 0) == 0 || name.rfind("layer4", 0) == 0 ? 1 : 0;
}

torch::Tensor AdaptiveConcatPool2dImpl::forward(const torch::Tensor& x) {
  // max first, then avg: fast.ai's order (weights trained by fast.ai depend on it)
  return torch::cat({std::get<0>(torch::adaptive_max_pool2d(x, {1, 1})), torch::adaptive_avg_pool2d(x, {1, 1})}, 1);
}

nn::Sequential makeHead(const HeadOptions& o) {
  const int64_t nf = o.concatPool ? o.numFeatures * 2 : o.numFeatures;
  nn::Sequential head;
  if (o.concatPool)
    head->push_back(AdaptiveConcatPool2d());
  else
    head->push_back(nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
  head->push_back(nn::Flatten());
  head->push_back(nn::BatchNorm1d(nf));
  head->push_back(nn::Dropout(o.ps / 2));
  head->push_back(nn::Linear(nn::LinearOptions(nf, o.hidden).bias(o.linearBias)));
  head->push_back(nn::ReLU(nn::ReLUOptions(true)));
  head->push_back(nn::BatchNorm1d(o.hidden));
  head->push_back(nn::Dropout(o.ps));
  head->push_back(nn::Linear(nn::LinearOptions(o.hidden, o.numClasses).bias(o.linearBias)));
  // fast.ai: kaiming_normal_ on the linears (bias 0), BatchNorm weight 1 and bias 1e-3.
  torch::NoGradGuard ng;
  for (auto& m : head->modules(false)) {
    if (auto* l = m->as<nn::Linear>()) {
      nn::init::kaiming_normal_(l->weight);
      if (l->bias.defined()) nn::init::zeros_(l->bias);
    } else if (auto* b = m->as<nn::BatchNorm1d>()) {
      nn::init::ones_(b->weight);
      nn::init::constant_(b->bias, 1e-3);
    }
  }
  return head;
}

torch::Tensor headForward(nn::Sequential& head, torch::Tensor x) {
  for (auto& layer : *head) {
    if (auto* bn = layer.ptr()->as<nn::BatchNorm1d>()) x = batchNorm(*bn, x);
    else x = layer.forward(x);
  }
  return x;
}

static void collect(const nn::Module& m, const std::string& prefix, NamedTensors& out) {
  for (const auto& p : m.named_parameters(/*recurse=*/false)) out.emplace_back(prefix + p.key(), p.value());
  for (const auto& b : m.named_buffers(/*recurse=*/false)) out.emplace_back(prefix + b.key(), b.value());
  for (const auto& c : m.named_children()) collect(*c.value(), prefix + c.key() + ".", out);
}

NamedTensors stateDict(const nn::Module& m, const std::string& prefix) {
  NamedTensors out;
  collect(m, prefix, out);
  return out;
}

}  // namespace tl
