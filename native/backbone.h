// What every network the addon builds offers, whatever its family: torchvision's model split where fast.ai
// cuts it (features: the body; classify: torchvision's pool and classifier after it), fast.ai's layer groups
// of the body, and the BatchNorm switches only the ResNets use.
#pragma once
#include <optional>

#include "common.h"

namespace tl {

// Which kernels run a training-mode BatchNorm of a bf16 CUDA batch: cuDNN's, with the ReLU and the residual
// add after it in the same call (batchnorm_cudnn.h; the default), or ATen's (what PyTorch runs, and where
// cuDNN refuses). The hook setBatchNormKernels: 'cudnn-fused', 'aten'.
enum class TrainBn { Aten = 0, CudnnFused = 1 };
inline const std::vector<std::pair<std::string, TrainBn>> kTrainBnNames = {{"aten", TrainBn::Aten}, {"cudnn-fused", TrainBn::CudnnFused}};

struct BackboneImpl : torch::nn::Module {
  // torchvision's forward up to where fast.ai cuts (its `create_body`): the body's output
  virtual torch::Tensor features(torch::Tensor x) = 0;
  // the rest of torchvision's forward, from features to logits (only with the classifier built)
  virtual torch::Tensor classify(torch::Tensor a) = 0;
  torch::Tensor forward(torch::Tensor x) { return classify(features(x)); }
  // channels of the body's output, the head's input
  virtual int64_t numFeatures() const = 0;
  // fast.ai's split of the body (model_meta): how many groups, and the group of a body parameter, by its
  // torchvision name ("layer3.0.conv1.weight")
  virtual int numBodyGroups() const { return 1; }
  virtual int bodyGroup(const std::string& /*name*/) const { return 0; }
  // the prefix of torchvision's classifier parameters, which the body does not have ("fc.", "classifier.")
  virtual std::string classifierPrefix() const = 0;
  // BatchNorm folding in eval forwards and the training kernels (resnet.h); the other families ignore them
  virtual void setFoldBatchNorm(bool /*on*/) {}
  virtual void setTrainBatchNorm(TrainBn /*impl*/) {}
  virtual void weightsChanged() {}
};

// Every architecture name the addon builds, in the order the docs list them.
const std::vector<std::string>& architectures();
// torchvision's network `arch`; without the classifier (`withClassifier` false) it is fast.ai's body, whose
// state dict is torchvision's minus the classifier's keys.
std::shared_ptr<BackboneImpl> makeBackbone(const std::string& arch, int64_t numClasses, bool withClassifier);

// A TorchScript module's bytes (a file saved by torch.jit.save) as a body (torchscript.cpp): the module's
// own parameter names; `groupStarts`, the parameter-name prefixes where fast.ai's later layer groups start
// (none: the body is one group). `source` names the file in errors.
std::shared_ptr<BackboneImpl> makeTorchScriptBody(const std::string& bytes, const std::string& source, const std::vector<std::string>& groupStarts);
// whether a module of such a body is one of fast.ai's norm_types (BatchNorm, InstanceNorm, LayerNorm)
bool isScriptNorm(const torch::nn::Module& m);

// torchvision's stochastic depth ("row" mode): in training, each image's residual branch is zeroed with
// probability p and the others scaled by 1 / (1 - p); drawn as torchvision draws it, so that a seeded run
// matches PyTorch's.
torch::Tensor stochasticDepth(const torch::Tensor& x, double p, bool training);

}  // namespace tl
