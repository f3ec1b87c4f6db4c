// torchvision's ConvNeXts (convnext_tiny, small, base, large) with its parameter names: 7x7 depthwise
// convolutions, LayerNorm over channels, an inverted MLP, layer scale and stochastic depth.
#include "backbone.h"

namespace tl {
namespace nn = torch::nn;

namespace {

struct NextSpec {
  std::array<int64_t, 4> dims, depths;
  double stochasticDepth;
};

std::optional<NextSpec> nextSpec(const std::string& arch) {
  if (arch == "convnext_tiny") return NextSpec{{96, 192, 384, 768}, {3, 3, 9, 3}, 0.1};
  if (arch == "convnext_small") return NextSpec{{96, 192, 384, 768}, {3, 3, 27, 3}, 0.4};
  if (arch == "convnext_base") return NextSpec{{128, 256, 512, 1024}, {3, 3, 27, 3}, 0.5};
  if (arch == "convnext_large") return NextSpec{{192, 384, 768, 1536}, {3, 3, 27, 3}, 0.5};
  return std::nullopt;
}

constexpr double kEps = 1e-6;
constexpr double kLayerScale = 1e-6;

// torchvision's LayerNorm2d: LayerNorm over the channels of an NCHW tensor
struct LayerNorm2dImpl : nn::LayerNormImpl {
  explicit LayerNorm2dImpl(int64_t c) : nn::LayerNormImpl(nn::LayerNormOptions({c}).eps(kEps)) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return torch::layer_norm(x.permute({0, 2, 3, 1}), options.normalized_shape(), weight, bias, options.eps()).permute({0, 3, 1, 2});
  }
};
TORCH_MODULE(LayerNorm2d);

// x + stochastic_depth(layer_scale * block(x)), block: depthwise 7x7 -> (NHWC) LayerNorm -> Linear(4x) ->
// GELU -> Linear -> (NCHW); the block's children named "0", "2", "3", "5" as torchvision's Sequential
struct CNBlockImpl : nn::Module {
  CNBlockImpl(int64_t dim, double sdProb) : sdProb(sdProb) {
    layer_scale = register_parameter("layer_scale", torch::full({dim, 1, 1}, kLayerScale));
    block = register_module("block", nn::Sequential());
    dw = nn::Conv2d(nn::Conv2dOptions(dim, dim, 7).padding(3).groups(dim).bias(true));
    norm = nn::LayerNorm(nn::LayerNormOptions({dim}).eps(kEps));
    fc1 = nn::Linear(dim, 4 * dim);
    fc2 = nn::Linear(4 * dim, dim);
    block->push_back("0", dw);
    block->push_back("1", nn::Identity());  // Permute
    block->push_back("2", norm);
    block->push_back("3", fc1);
    block->push_back("4", nn::GELU());
    block->push_back("5", fc2);
    block->push_back("6", nn::Identity());  // Permute
    register_module("stochastic_depth", nn::Identity());
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = dw->forward(x).permute({0, 2, 3, 1});
    y = fc2->forward(torch::gelu(fc1->forward(norm->forward(y)))).permute({0, 3, 1, 2});
    y = stochasticDepth(layer_scale * y, sdProb, is_training());
    return y += x;
  }
  torch::Tensor layer_scale;
  nn::Sequential block{nullptr};
  nn::Conv2d dw{nullptr};
  nn::LayerNorm norm{nullptr};
  nn::Linear fc1{nullptr}, fc2{nullptr};
  double sdProb;
};
TORCH_MODULE(CNBlock);

// No fast.ai model_meta entry: its default cut (the body is `features`, which ends with the last stage;
// the LayerNorm after it is torchvision's classifier) and default split (body, head).
struct ConvNeXtImpl : BackboneImpl {
  ConvNeXtImpl(const NextSpec& s, int64_t numClasses, bool withClassifier) : nf(s.dims.back()) {
    features_ = register_module("features", nn::ModuleList());
    stemConv = nn::Conv2d(nn::Conv2dOptions(3, s.dims[0], 4).stride(4).bias(true));
    stemNorm = LayerNorm2d(s.dims[0]);
    features_->push_back(nn::Sequential(stemConv, stemNorm));
    int64_t total = 0;
    for (auto d : s.depths) total += d;
    int64_t id = 0;
    for (size_t i = 0; i < 4; i++) {
      auto stage = nn::Sequential();
      std::vector<CNBlock> bs;
      for (int64_t j = 0; j < s.depths[i]; j++, id++) {
        auto b = CNBlock(s.dims[i], s.stochasticDepth * static_cast<double>(id) / (static_cast<double>(total) - 1.0));
        stage->push_back(b);
        bs.push_back(b);
      }
      features_->push_back(stage);
      stages.push_back(bs);
      if (i < 3) {
        auto n = LayerNorm2d(s.dims[i]);
        auto c = nn::Conv2d(nn::Conv2dOptions(s.dims[i], s.dims[i + 1], 2).stride(2).bias(true));
        features_->push_back(nn::Sequential(n, c));
        downNorm.push_back(n);
        downConv.push_back(c);
      }
    }
    if (withClassifier) {
      register_module("avgpool", nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
      headNorm = LayerNorm2d(nf);
      headFc = nn::Linear(nf, numClasses);
      classifier = register_module("classifier", nn::Sequential(headNorm, nn::Flatten(), headFc));
    }
    // torchvision's initialisation: truncated normal (std 0.02, cut at +-2, i.e. 100 standard deviations)
    torch::NoGradGuard ng;
    for (auto& m : modules(/*include_self=*/false)) {
      torch::Tensor w, b;
      if (auto* c = m->as<nn::Conv2d>()) w = c->weight, b = c->bias;
      else if (auto* l = m->as<nn::Linear>()) w = l->weight, b = l->bias;
      else continue;
      w.normal_(0, 0.02).clamp_(-2, 2);
      if (b.defined()) b.zero_();
    }
  }
  torch::Tensor features(torch::Tensor x) override {
    x = stemNorm->forward(stemConv->forward(x));
    for (size_t i = 0; i < stages.size(); i++) {
      for (auto& b : stages[i]) x = b->forward(x);
      if (i < downConv.size()) x = downConv[i]->forward(downNorm[i]->forward(x));
    }
    return x;
  }
  torch::Tensor classify(torch::Tensor a) override {
    if (!classifier) throw std::logic_error("classify: this ConvNeXt was built without its classifier");
    return headFc->forward(torch::flatten(headNorm->forward(torch::adaptive_avg_pool2d(a, {1, 1})), 1));
  }
  int64_t numFeatures() const override { return nf; }
  std::string classifierPrefix() const override { return "classifier."; }

  int64_t nf;
  nn::ModuleList features_{nullptr};
  nn::Conv2d stemConv{nullptr};
  LayerNorm2d stemNorm{nullptr}, headNorm{nullptr};
  std::vector<std::vector<CNBlock>> stages;
  std::vector<LayerNorm2d> downNorm;
  std::vector<nn::Conv2d> downConv;
  nn::Sequential classifier{nullptr};
  nn::Linear headFc{nullptr};
};

}  // namespace

std::shared_ptr<BackboneImpl> makeConvNeXt(const std::string& arch, int64_t numClasses, bool withClassifier) {
  auto spec = nextSpec(arch);
  if (!spec) return nullptr;
  return std::make_shared<ConvNeXtImpl>(*spec, numClasses, withClassifier);
}

}  // namespace tl
