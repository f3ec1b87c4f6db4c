// torchvision's DenseNets (densenet121/161/169/201) with its parameter names, and fast.ai's split of them.
#include "backbone.h"
#include "sync_batchnorm.h"

namespace tl {
namespace nn = torch::nn;

namespace {

struct DenseSpec {
  int64_t growth;
  std::array<int64_t, 4> blocks;
  int64_t initFeatures;
};

std::optional<DenseSpec> denseSpec(const std::string& arch) {
  if (arch == "densenet121") return DenseSpec{32, {6, 12, 24, 16}, 64};
  if (arch == "densenet161") return DenseSpec{48, {6, 12, 36, 24}, 96};
  if (arch == "densenet169") return DenseSpec{32, {6, 12, 32, 32}, 64};
  if (arch == "densenet201") return DenseSpec{32, {6, 12, 48, 32}, 64};
  return std::nullopt;
}

constexpr int64_t kBnSize = 4;  // torchvision's bn_size: the bottleneck is 4 x growth channels

// norm1 -> relu1 -> conv1 (1x1) -> norm2 -> relu2 -> conv2 (3x3) on the concatenation of every earlier
// output of the block; the ReLU modules are registered as torchvision's (they hold nothing)
struct DenseLayerImpl : nn::Module {
  DenseLayerImpl(int64_t in, int64_t growth) {
    norm1 = register_module("norm1", nn::BatchNorm2d(in));
    register_module("relu1", nn::ReLU(nn::ReLUOptions(true)));
    conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(in, kBnSize * growth, 1).bias(false)));
    norm2 = register_module("norm2", nn::BatchNorm2d(kBnSize * growth));
    register_module("relu2", nn::ReLU(nn::ReLUOptions(true)));
    conv2 = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(kBnSize * growth, growth, 3).padding(1).bias(false)));
  }
  torch::Tensor forward(const std::vector<torch::Tensor>& inputs) {
    auto x = conv1->forward(batchNorm(*norm1, torch::cat(inputs, 1)).relu_());
    return conv2->forward(batchNorm(*norm2, x).relu_());
  }
  nn::BatchNorm2d norm1{nullptr}, norm2{nullptr};
  nn::Conv2d conv1{nullptr}, conv2{nullptr};
};
TORCH_MODULE(DenseLayer);

struct DenseBlockImpl : nn::Module {
  DenseBlockImpl(int64_t layers, int64_t in, int64_t growth) {
    for (int64_t i = 0; i < layers; i++) this->layers.push_back(register_module("denselayer" + std::to_string(i + 1), DenseLayer(in + i * growth, growth)));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    std::vector<torch::Tensor> features{x};
    features.reserve(layers.size() + 1);
    for (auto& l : layers) features.push_back(l->forward(features));
    return torch::cat(features, 1);
  }
  std::vector<DenseLayer> layers;
};
TORCH_MODULE(DenseBlock);

// norm -> relu -> conv (1x1, halving the channels) -> 2x2 average pool
struct TransitionImpl : nn::Module {
  TransitionImpl(int64_t in, int64_t out) {
    norm = register_module("norm", nn::BatchNorm2d(in));
    register_module("relu", nn::ReLU(nn::ReLUOptions(true)));
    conv = register_module("conv", nn::Conv2d(nn::Conv2dOptions(in, out, 1).bias(false)));
    register_module("pool", nn::AvgPool2d(nn::AvgPool2dOptions(2).stride(2)));
  }
  torch::Tensor forward(const torch::Tensor& x) { return torch::avg_pool2d(conv->forward(batchNorm(*norm, x).relu_()), {2, 2}, {2, 2}); }
  nn::BatchNorm2d norm{nullptr};
  nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Transition);

// torchvision's `features`: conv0, norm0, relu0, pool0, then the dense blocks and transitions, then norm5
// (no ReLU after it: torchvision applies that in forward, outside `features`, which is where fast.ai cuts).
struct DenseFeaturesImpl : nn::Module {
  explicit DenseFeaturesImpl(const DenseSpec& spec) {
    conv0 = register_module("conv0", nn::Conv2d(nn::Conv2dOptions(3, spec.initFeatures, 7).stride(2).padding(3).bias(false)));
    norm0 = register_module("norm0", nn::BatchNorm2d(spec.initFeatures));
    register_module("relu0", nn::ReLU(nn::ReLUOptions(true)));
    register_module("pool0", nn::MaxPool2d(nn::MaxPool2dOptions(3).stride(2).padding(1)));
    int64_t n = spec.initFeatures;
    for (size_t i = 0; i < spec.blocks.size(); i++) {
      blocks.push_back(register_module("denseblock" + std::to_string(i + 1), DenseBlock(spec.blocks[i], n, spec.growth)));
      n += spec.blocks[i] * spec.growth;
      if (i + 1 < spec.blocks.size()) {
        transitions.push_back(register_module("transition" + std::to_string(i + 1), Transition(n, n / 2)));
        n /= 2;
      }
    }
    norm5 = register_module("norm5", nn::BatchNorm2d(n));
    numFeatures = n;
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(batchNorm(*norm0, conv0->forward(x)).relu_(), {3, 3}, {2, 2}, {1, 1});
    for (size_t i = 0; i < blocks.size(); i++) {
      x = blocks[i]->forward(x);
      if (i < transitions.size()) x = transitions[i]->forward(x);
    }
    return batchNorm(*norm5, x);
  }
  nn::Conv2d conv0{nullptr};
  nn::BatchNorm2d norm0{nullptr}, norm5{nullptr};
  std::vector<DenseBlock> blocks;
  std::vector<Transition> transitions;
  int64_t numFeatures = 0;
};
TORCH_MODULE(DenseFeatures);

// fast.ai's _densenet_split: features[:7] (conv0 ... denseblock2) and features[7:] (transition2 ... norm5).
struct DenseNetImpl : BackboneImpl {
  DenseNetImpl(const DenseSpec& spec, int64_t numClasses, bool withClassifier) {
    features_ = register_module("features", DenseFeatures(spec));
    if (withClassifier) classifier = register_module("classifier", nn::Linear(features_->numFeatures, numClasses));
    // torchvision's initialisation
    torch::NoGradGuard ng;
    for (auto& m : modules(/*include_self=*/false)) {
      if (auto* c = m->as<nn::Conv2d>()) {
        nn::init::kaiming_normal_(c->weight);
      } else if (auto* b = m->as<nn::BatchNorm2d>()) {
        nn::init::ones_(b->weight);
        nn::init::zeros_(b->bias);
      } else if (auto* l = m->as<nn::Linear>()) {
        nn::init::zeros_(l->bias);
      }
    }
  }
  torch::Tensor features(torch::Tensor x) override { return features_->forward(x); }
  torch::Tensor classify(torch::Tensor a) override {
    if (!classifier) throw std::logic_error("classify: this DenseNet was built without its classifier");
    // torchvision's ReLU here is in place; not in place, so that features() stays usable (Grad-CAM)
    return classifier->forward(torch::flatten(torch::adaptive_avg_pool2d(torch::relu(a), {1, 1}), 1));
  }
  int64_t numFeatures() const override { return features_->numFeatures; }
  int numBodyGroups() const override { return 2; }
  int bodyGroup(const std::string& name) const override {
    for (const char* late : {"features.transition2.", "features.denseblock3.", "features.transition3.", "features.denseblock4.", "features.norm5."})
      if (name.rfind(late, 0) == 0) return 1;
    return 0;
  }
  std::string classifierPrefix() const override { return "classifier."; }

  DenseFeatures features_{nullptr};
  nn::Linear classifier{nullptr};
};

}  // namespace

std::shared_ptr<BackboneImpl> makeDenseNet(const std::string& arch, int64_t numClasses, bool withClassifier) {
  auto spec = denseSpec(arch);
  if (!spec) return nullptr;
  return std::make_shared<DenseNetImpl>(*spec, numClasses, withClassifier);
}

}  // namespace tl
