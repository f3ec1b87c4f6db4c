// torchvision's EfficientNets (efficientnet_b0 ... b7) with its parameter names: MBConv blocks with
// squeeze-and-excitation and stochastic depth.
#include "backbone.h"
#include "sync_batchnorm.h"

namespace tl {
namespace nn = torch::nn;

namespace {

struct EffSpec {
  double width, depth;
  double dropout;
  double bnEps = 1e-5, bnMomentum = 0.1;  // b5-b7 were trained with eps 1e-3, momentum 0.01
};

std::optional<EffSpec> effSpec(const std::string& arch) {
  if (arch == "efficientnet_b0") return EffSpec{1.0, 1.0, 0.2};
  if (arch == "efficientnet_b1") return EffSpec{1.0, 1.1, 0.2};
  if (arch == "efficientnet_b2") return EffSpec{1.1, 1.2, 0.3};
  if (arch == "efficientnet_b3") return EffSpec{1.2, 1.4, 0.3};
  if (arch == "efficientnet_b4") return EffSpec{1.4, 1.8, 0.4};
  if (arch == "efficientnet_b5") return EffSpec{1.6, 2.2, 0.4, 1e-3, 0.01};
  if (arch == "efficientnet_b6") return EffSpec{1.8, 2.6, 0.5, 1e-3, 0.01};
  if (arch == "efficientnet_b7") return EffSpec{2.0, 3.1, 0.5, 1e-3, 0.01};
  return std::nullopt;
}

// torchvision's _make_divisible(v, 8): the nearest multiple of 8, never below 90% of v
int64_t makeDivisible(double v) {
  int64_t n = std::max<int64_t>(8, static_cast<int64_t>(v + 4.0) / 8 * 8);
  if (static_cast<double>(n) < 0.9 * v) n += 8;
  return n;
}

enum class Act { None, SiLU };

// torchvision's Conv2dNormActivation: "0" the convolution (no bias), "1" the BatchNorm, then the activation
struct ConvNormActImpl : nn::Module {
  ConvNormActImpl(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t groups, Act act, const EffSpec& s) : act(act) {
    conv = register_module("0", nn::Conv2d(nn::Conv2dOptions(in, out, k).stride(stride).padding((k - 1) / 2).groups(groups).bias(false)));
    bn = register_module("1", nn::BatchNorm2d(nn::BatchNorm2dOptions(out).eps(s.bnEps).momentum(s.bnMomentum)));
    if (act == Act::SiLU) register_module("2", nn::SiLU());
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = batchNorm(*bn, conv->forward(x));
    return act == Act::SiLU ? torch::silu_(y) : y;
  }
  nn::Conv2d conv{nullptr};
  nn::BatchNorm2d bn{nullptr};
  Act act;
};
TORCH_MODULE(ConvNormAct);

// torchvision's SqueezeExcitation with SiLU: x * sigmoid(fc2(silu(fc1(avgpool(x)))))
struct SqueezeExcitationImpl : nn::Module {
  SqueezeExcitationImpl(int64_t channels, int64_t squeeze) {
    register_module("avgpool", nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
    fc1 = register_module("fc1", nn::Conv2d(nn::Conv2dOptions(channels, squeeze, 1)));
    fc2 = register_module("fc2", nn::Conv2d(nn::Conv2dOptions(squeeze, channels, 1)));
    register_module("activation", nn::SiLU());
    register_module("scale_activation", nn::Sigmoid());
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto s = fc2->forward(torch::silu(fc1->forward(torch::adaptive_avg_pool2d(x, {1, 1}))));
    return torch::sigmoid(s) * x;
  }
  nn::Conv2d fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(SqueezeExcitation);

// expand (1x1, when the ratio is not 1) -> depthwise k x k -> squeeze-excitation -> project (1x1, no
// activation); the input added back, through stochastic depth, when the shapes allow
struct MBConvImpl : nn::Module {
  MBConvImpl(double expandRatio, int64_t k, int64_t stride, int64_t in, int64_t out, double sdProb, const EffSpec& s)
      : residual(stride == 1 && in == out), sdProb(sdProb) {
    const int64_t expanded = makeDivisible(static_cast<double>(in) * expandRatio);
    block = register_module("block", nn::ModuleList());
    if (expanded != in) {
      expand = ConvNormAct(in, expanded, 1, 1, 1, Act::SiLU, s);
      block->push_back(expand);
    }
    depthwise = ConvNormAct(expanded, expanded, k, stride, expanded, Act::SiLU, s);
    block->push_back(depthwise);
    se = SqueezeExcitation(expanded, std::max<int64_t>(1, in / 4));
    block->push_back(se);
    project = ConvNormAct(expanded, out, 1, 1, 1, Act::None, s);
    block->push_back(project);
    register_module("stochastic_depth", nn::Identity());  // (holds nothing; registered as torchvision's)
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = expand ? expand->forward(x) : x;
    y = project->forward(se->forward(depthwise->forward(y)));
    if (!residual) return y;
    y = stochasticDepth(y, sdProb, is_training());
    return y += x;
  }
  nn::ModuleList block{nullptr};
  ConvNormAct expand{nullptr}, depthwise{nullptr}, project{nullptr};
  SqueezeExcitation se{nullptr};
  bool residual;
  double sdProb;
};
TORCH_MODULE(MBConv);

// torchvision's stage table for B0 (expand ratio, kernel, stride, in, out, layers), scaled per variant
struct Stage {
  double expand;
  int64_t k, stride, in, out, layers;
};
constexpr std::array<Stage, 7> kStages{{{1, 3, 1, 32, 16, 1}, {6, 3, 2, 16, 24, 2}, {6, 5, 2, 24, 40, 2}, {6, 3, 2, 40, 80, 3},
                                        {6, 5, 1, 80, 112, 3}, {6, 5, 2, 112, 192, 4}, {6, 3, 1, 192, 320, 1}}};
constexpr double kStochasticDepth = 0.2;

// No fast.ai model_meta entry: its default cut (the last child holding a pool, so the body is `features`)
// and its default split (the body one group, the head another).
struct EfficientNetImpl : BackboneImpl {
  EfficientNetImpl(const EffSpec& s, int64_t numClasses, bool withClassifier) {
    features_ = register_module("features", nn::ModuleList());
    auto channels = [&](int64_t c) { return makeDivisible(static_cast<double>(c) * s.width); };
    auto depth = [&](int64_t n) { return static_cast<int64_t>(std::ceil(static_cast<double>(n) * s.depth)); };
    stem = ConvNormAct(3, channels(kStages[0].in), 3, 2, 1, Act::SiLU, s);
    features_->push_back(stem);
    int64_t total = 0;
    for (auto& st : kStages) total += depth(st.layers);
    int64_t id = 0;
    for (auto& st : kStages) {
      auto stage = nn::ModuleList();
      for (int64_t i = 0; i < depth(st.layers); i++, id++) {
        const double sd = kStochasticDepth * static_cast<double>(id) / static_cast<double>(total);
        auto b = MBConv(st.expand, st.k, i == 0 ? st.stride : 1, i == 0 ? channels(st.in) : channels(st.out), channels(st.out), sd, s);
        stage->push_back(b);
        blocks.push_back(b);
      }
      features_->push_back(stage);
    }
    nf = 4 * channels(kStages.back().out);
    head = ConvNormAct(channels(kStages.back().out), nf, 1, 1, 1, Act::SiLU, s);
    features_->push_back(head);
    if (withClassifier) {
      register_module("avgpool", nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
      classifier = register_module("classifier", nn::Sequential(nn::Dropout(s.dropout), nn::Linear(nf, numClasses)));
    }
    // torchvision's initialisation
    torch::NoGradGuard ng;
    for (auto& m : modules(/*include_self=*/false)) {
      if (auto* c = m->as<nn::Conv2d>()) {
        nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut);
        if (c->bias.defined()) nn::init::zeros_(c->bias);
      } else if (auto* b = m->as<nn::BatchNorm2d>()) {
        nn::init::ones_(b->weight);
        nn::init::zeros_(b->bias);
      } else if (auto* l = m->as<nn::Linear>()) {
        const double r = 1.0 / std::sqrt(static_cast<double>(l->options.out_features()));
        nn::init::uniform_(l->weight, -r, r);
        nn::init::zeros_(l->bias);
      }
    }
  }
  torch::Tensor features(torch::Tensor x) override {
    x = stem->forward(x);
    for (auto& b : blocks) x = b->forward(x);
    return head->forward(x);
  }
  torch::Tensor classify(torch::Tensor a) override {
    if (!classifier) throw std::logic_error("classify: this EfficientNet was built without its classifier");
    return classifier->forward(torch::flatten(torch::adaptive_avg_pool2d(a, {1, 1}), 1));
  }
  int64_t numFeatures() const override { return nf; }
  std::string classifierPrefix() const override { return "classifier."; }

  nn::ModuleList features_{nullptr};
  ConvNormAct stem{nullptr}, head{nullptr};
  std::vector<MBConv> blocks;
  nn::Sequential classifier{nullptr};
  int64_t nf = 0;
};

}  // namespace

std::shared_ptr<BackboneImpl> makeEfficientNet(const std::string& arch, int64_t numClasses, bool withClassifier) {
  auto spec = effSpec(arch);
  if (!spec) return nullptr;
  return std::make_shared<EfficientNetImpl>(*spec, numClasses, withClassifier);
}

}  // namespace tl
