// A TorchScript module (scripted or traced in PyTorch: any timm or torchvision model cut before its
// classifier) as the body of a learner. Its parameters and buffers are mirrored, the same tensors under the
// same names, into plain modules, so that what works on a body (state dicts, the parameter table, freezing,
// moves, the optimizer) works on it, and the scripted forward runs on them.
#include <torch/script.h>

#include <sstream>

#include "backbone.h"

namespace tl {
namespace {

// A submodule of the script, holding its own parameters and buffers; `norm`: one of fast.ai's norm_types
struct ScriptPartImpl : torch::nn::Module {
  explicit ScriptPartImpl(bool norm) : norm(norm) {}
  bool norm;
};

bool isNormType(const std::string& t) {
  return t.rfind("BatchNorm", 0) == 0 || t.rfind("InstanceNorm", 0) == 0 || t == "LayerNorm" || t == "LayerNorm2d";
}

void mirror(const torch::jit::Module& m, torch::nn::Module& into) {
  for (const auto& p : m.named_parameters(/*recurse=*/false)) into.register_parameter(p.name, p.value, p.value.requires_grad());
  for (const auto& b : m.named_buffers(/*recurse=*/false)) into.register_buffer(b.name, b.value);
  for (const auto& c : m.named_children()) {
    const auto type = c.value.type()->name();
    auto part = std::make_shared<ScriptPartImpl>(type && isNormType(type->name()));
    mirror(c.value, *part);
    into.register_module(c.name, part);
  }
}

struct TorchScriptBodyImpl : BackboneImpl {
  TorchScriptBodyImpl(const std::string& bytes, const std::string& source, const std::vector<std::string>& groupStarts) : source_(source) {
    std::istringstream in(bytes);
    try {
      script_ = torch::jit::load(in, torch::Device(torch::kCPU));
    } catch (const c10::Error& e) {
      std::string why = e.what_without_backtrace();
      throw UserError(source + ": LibTorch " + std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
                      " cannot load this TorchScript module (" + why.substr(0, why.find('\n')) + ")");
    }
    mirror(script_, *this);
    // fast.ai's layer groups: one for the body unless the file names where later groups start
    int group = 0;
    size_t next = 0;
    for (const auto& p : named_parameters()) {
      if (next < groupStarts.size() && p.key().rfind(groupStarts[next], 0) == 0) {
        group++;
        next++;
      }
      groups_[p.key()] = group;
    }
    if (next < groupStarts.size())
      throw UserError(source + ": the layer group starting at '" + groupStarts[next] + "' starts at no parameter after the previous group's (groups are name prefixes, in parameter order)");
    numGroups_ = group + 1;
    // fast.ai's num_features_model: the channels of the body's output on a small image
    torch::NoGradGuard ng;
    const bool was = script_.is_training();
    script_.eval();
    auto y = features(torch::zeros({1, 3, 64, 64}));
    script_.train(was);
    nf_ = y.size(1);
  }
  torch::Tensor features(torch::Tensor x) override {
    auto out = script_.forward({x});
    if (!out.isTensor()) throw UserError(source_ + ": the TorchScript body must return one tensor, not " + out.tagKind());
    auto t = out.toTensor();
    if (t.dim() != 4) throw UserError(source_ + ": the TorchScript body must return [batch, channels, height, width] feature maps (cut the model before its pool and classifier); it returned " + std::to_string(t.dim()) + " dimensions");
    return t;
  }
  torch::Tensor classify(torch::Tensor) override { throw std::logic_error("classify: a TorchScript body has no classifier"); }
  int64_t numFeatures() const override { return nf_; }
  int numBodyGroups() const override { return numGroups_; }
  int bodyGroup(const std::string& name) const override {
    auto it = groups_.find(name);
    return it == groups_.end() ? 0 : it->second;
  }
  std::string classifierPrefix() const override { return ""; }
  void train(bool on) override {
    BackboneImpl::train(on);
    script_.train(on);
  }

 private:
  torch::jit::Module script_;
  std::string source_;
  std::unordered_map<std::string, int> groups_;
  int numGroups_ = 1;
  int64_t nf_ = 0;
};

}  // namespace

bool isScriptNorm(const torch::nn::Module& m) {
  auto* p = m.as<ScriptPartImpl>();
  return p != nullptr && p->norm;
}

std::shared_ptr<BackboneImpl> makeTorchScriptBody(const std::string& bytes, const std::string& source, const std::vector<std::string>& groupStarts) {
  return std::make_shared<TorchScriptBodyImpl>(bytes, source, groupStarts);
}

}  // namespace tl
