#include "backbone.h"

#include "resnet.h"

namespace tl {

std::shared_ptr<BackboneImpl> makeDenseNet(const std::string& arch, int64_t numClasses, bool withClassifier);
std::shared_ptr<BackboneImpl> makeEfficientNet(const std::string& arch, int64_t numClasses, bool withClassifier);
std::shared_ptr<BackboneImpl> makeConvNeXt(const std::string& arch, int64_t numClasses, bool withClassifier);

const std::vector<std::string>& architectures() {
  static const std::vector<std::string> names = {
      "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
      "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
      "densenet121", "densenet161", "densenet169", "densenet201",
      "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
      "convnext_tiny", "convnext_small", "convnext_base", "convnext_large"};
  return names;
}

std::shared_ptr<BackboneImpl> makeBackbone(const std::string& arch, int64_t numClasses, bool withClassifier) {
  if (withClassifier && numClasses < 1) throw UserError("numClasses must be a positive integer, got " + std::to_string(numClasses));
  if (resnetSpec(arch)) return std::make_shared<ResNetImpl>(arch, numClasses, withClassifier);
  for (auto make : {makeDenseNet, makeEfficientNet, makeConvNeXt})
    if (auto m = make(arch, numClasses, withClassifier)) return m;
  std::string all;
  for (auto& a : architectures()) all += (all.empty() ? "" : ", ") + a;
  throw UserError("unknown architecture '" + arch + "': use one of " + all);
}

torch::Tensor stochasticDepth(const torch::Tensor& x, double p, bool training) {
  if (!training || p == 0.0) return x;
  const double survival = 1.0 - p;
  std::vector<int64_t> size(static_cast<size_t>(x.dim()), 1);
  size[0] = x.size(0);
  auto noise = torch::empty(size, x.options()).bernoulli_(survival);
  if (survival > 0.0) noise.div_(survival);
  return x * noise;
}

}  // namespace tl
