// torchvision-compatible ResNets (v1.5: the stride sits on the 3x3 conv of the bottleneck) with
// exactly torchvision's parameter and buffer names, and fast.ai's classification head.
#pragma once
#include "backbone.h"

namespace tl {

// How the body's BatchNorms run, shared by every block of one ResNet. Eval mode: whether forwards fold
// BatchNorm into the convolutions, and a generation bumped when the weights are replaced or moved (a load,
// a move), which makes the folded copies stale. Training mode: the kernels (TrainBn).
struct FoldState {
  bool on = false;
  int64_t generation = 0;
  TrainBn trainBn = TrainBn::CudnnFused;
};

// A training-mode BatchNorm on the kernels the state chooses (falling back to ATen's where they refuse),
// and relu(BatchNorm(y) [+ residual]) likewise: the half of a ConvBn after its convolution, which the
// hook batchNormCheck (batchnorm_check.cpp) also runs on its own.
torch::Tensor trainingBatchNorm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& y, const FoldState& fold);
torch::Tensor trainingBatchNormRelu(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& y, const FoldState& fold,
                                    const torch::Tensor& residual = torch::Tensor());

// A convolution and the BatchNorm after it. In eval mode, with folding on, the two run as one convolution
// with weight w * s and bias beta - mean * s (s = gamma / sqrt(var + eps)): on the CPU oneDNN adds the bias
// inside the convolution, so a forward pass skips every BatchNorm pass of the body. The folded copies are
// made at the first eval forward of each generation, and dropped by any training-mode forward (training
// changes the weights; tensor version counters cannot tell, as the optimizer writes through .data(), which
// has its own counter). In training mode the BatchNorm runs as usual.
struct ConvBn {
  ConvBn() = default;
  ConvBn(std::shared_ptr<torch::nn::Conv2dImpl> c, std::shared_ptr<torch::nn::BatchNorm2dImpl> b) : conv(std::move(c)), bn(std::move(b)) {}
  std::shared_ptr<torch::nn::Conv2dImpl> conv;
  std::shared_ptr<torch::nn::BatchNorm2dImpl> bn;
  torch::Tensor forward(const torch::Tensor& x, const FoldState& fold);
  // relu(forward(x)), or relu(forward(x) + residual) with a residual: torchvision's in-place add and ReLU,
  // or one fused call when the state says so
  torch::Tensor forwardRelu(const torch::Tensor& x, const FoldState& fold, const torch::Tensor& residual = torch::Tensor());

 private:
  torch::Tensor w_, b_;
  int64_t generation_ = -1;
};

struct BasicBlockImpl : torch::nn::Module {
  static constexpr int64_t expansion = 1;
  BasicBlockImpl(int64_t inplanes, int64_t planes, int64_t stride, torch::nn::Sequential downsample);
  torch::Tensor forward(torch::Tensor x);
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::ReLU relu{nullptr};  // registered as torchvision's; ConvBn::forwardRelu applies the same in-place ReLU
  torch::nn::Sequential downsample{nullptr};
  std::shared_ptr<FoldState> fold = std::make_shared<FoldState>();  // the ResNet's, shared
  ConvBn cb1, cb2, dsCb;
};
TORCH_MODULE(BasicBlock);

struct BottleneckImpl : torch::nn::Module {
  static constexpr int64_t expansion = 4;
  // groups and baseWidth: ResNeXt's grouped 3x3 convolution and Wide ResNet's wider one, as torchvision's
  BottleneckImpl(int64_t inplanes, int64_t planes, int64_t stride, torch::nn::Sequential downsample, int64_t groups = 1, int64_t baseWidth = 64);
  torch::Tensor forward(torch::Tensor x);
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::ReLU relu{nullptr};  // registered as torchvision's; ConvBn::forwardRelu applies the same in-place ReLU
  torch::nn::Sequential downsample{nullptr};
  std::shared_ptr<FoldState> fold = std::make_shared<FoldState>();  // the ResNet's, shared
  ConvBn cb1, cb2, cb3, dsCb;
};
TORCH_MODULE(Bottleneck);

// The architectures torchvision names resnet18 ... resnet152, resnext50_32x4d, resnext101_32x8d,
// resnext101_64x4d, wide_resnet50_2, wide_resnet101_2.
struct ArchSpec {
  bool bottleneck;
  std::array<int64_t, 4> layers;
  int64_t groups = 1;
  int64_t widthPerGroup = 64;
};
// the spec of a ResNet-family name, or nothing for another name
std::optional<ArchSpec> resnetSpec(const std::string& arch);

// With `withClassifier` false the network stops after layer4 (fast.ai's body: cut at -2), and has no
// avgpool/fc, so its state dict is torchvision's minus `fc.*`.
// fast.ai's split: resnet18 ... resnet152 are in its model_meta (_resnet_split: [stem..layer2], [layer3,
// layer4]); ResNeXt and Wide ResNet are not, so fast.ai gives them its default split (the whole body one group).
struct ResNetImpl : BackboneImpl {
  ResNetImpl(const std::string& arch, int64_t numClasses, bool withClassifier);
  torch::Tensor features(torch::Tensor x) override;  // up to and including layer4
  torch::Tensor classify(torch::Tensor a) override;
  int64_t numFeatures() const override { return numFeatures_; }
  int numBodyGroups() const override { return splitTwo_ ? 2 : 1; }
  int bodyGroup(const std::string& name) const override;
  std::string classifierPrefix() const override { return "fc."; }
  // Eval-mode forwards with every BatchNorm of the body folded into its convolution (see ConvBn).
  void setFoldBatchNorm(bool on) override;
  // The kernels of training-mode BatchNorm on bf16 CUDA batches (TrainBn).
  void setTrainBatchNorm(TrainBn impl) override { fold_->trainBn = impl; }
  // The weights were replaced or moved: folded copies are made again at the next eval forward.
  void weightsChanged() override { fold_->generation++; }

  torch::nn::Conv2d conv1{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::ReLU relu{nullptr};  // registered as torchvision's; ConvBn::forwardRelu applies the same in-place ReLU
  torch::nn::MaxPool2d maxpool{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};
  torch::nn::AdaptiveAvgPool2d avgpool{nullptr};
  torch::nn::Linear fc{nullptr};

 private:
  torch::nn::Sequential makeLayer(const ArchSpec& spec, int64_t& inplanes, int64_t planes, int64_t blocks, int64_t stride);
  bool withClassifier_;
  bool splitTwo_ = false;
  int64_t numFeatures_ = 0;
  std::shared_ptr<FoldState> fold_ = std::make_shared<FoldState>();
  ConvBn stem_;
};
TORCH_MODULE(ResNet);

// fast.ai v2's create_head: AdaptiveConcatPool2d (max, then avg) -> Flatten -> BN -> Dropout(ps/2) ->
// Linear(2nf, 512, no bias) -> ReLU -> BN -> Dropout(ps) -> Linear(512, n, no bias).
struct HeadOptions {
  int64_t numFeatures;
  int64_t numClasses;
  int64_t hidden = 512;
  double ps = 0.5;
  bool concatPool = true;
  bool linearBias = false;  // fast.ai v1 used biased linears
};
torch::nn::Sequential makeHead(const HeadOptions& opts);
// the head's forward, its BatchNorms through batchNorm() (sync_batchnorm.h)
torch::Tensor headForward(torch::nn::Sequential& head, torch::Tensor x);

struct AdaptiveConcatPool2dImpl : torch::nn::Module {
  torch::Tensor forward(const torch::Tensor& x);
};
TORCH_MODULE(AdaptiveConcatPool2d);

// PyTorch's state_dict order: for each module in pre-order, its own parameters then its own buffers.
NamedTensors stateDict(const torch::nn::Module& m, const std::string& prefix = "");

}  // namespace tl
