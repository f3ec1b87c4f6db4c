// Batch assembly on the training device: index the uint8 image cache, then one affine grid per image
// (flip, rotate, zoom, perspective warp), lighting in logit space, float conversion and normalisation:
// fast.ai v2's aug_transforms design (one grid_sample, one lighting transform), done in C++.
#pragma once
#include "common.h"

namespace tl {

// The values always come from JavaScript (augTransforms() in src/data/transforms.ts holds fast.ai's
// defaults); what is here is "no augmentation".
struct AugOptions {
  bool enabled = false;
  bool doFlip = false;
  double maxRotate = 0;  // degrees
  double minZoom = 1, maxZoom = 1;
  double maxLighting = 0;
  double maxWarp = 0;
  double pAffine = 0;
  double pLighting = 0;
  bool flipVert = false;  // fast.ai's Dihedral(p=0.5) (the 8 symmetries) in place of the plain flip
  // a random crop of the image (fast.ai's RandomResizedCrop, continuous): area fraction U(minScale, 1),
  // aspect ratio log-uniform in [ratioLo, ratioHi]; minScale 1 and ratio (1, 1) is no crop
  double minScale = 1, ratioLo = 1, ratioHi = 1;
};
// Reads every field; a missing one is an error (null or undefined means no augmentation).
AugOptions augOptionsFromJs(const Napi::Value& v);

// Per-image random draws: [B, kAugParams] = x sign (±1: the flip), angle(rad), zoom scale s (<= 1), centre x,
// centre y, warp x, warp y, brightness change, contrast scale, y sign (±1), transpose (0/1: with the signs,
// fast.ai's dihedral matrix), crop scale x, crop scale y, crop centre x, crop centre y.
// Identity row: 1,0,1,0,0,0,0,0.5,1,1,0,1,1,0,0.
constexpr int64_t kAugParams = 15;
torch::Tensor drawAugParams(int64_t n, const AugOptions& o, torch::Generator& gen);
torch::Tensor identityAugParams(int64_t n);

// Set from JavaScript (imagenetStats in src/data/transforms.ts); the identity until then.
struct Normalize {
  std::array<double, 3> mean{0, 0, 0};
  std::array<double, 3> std{1, 1, 1};
};
Normalize normalizeFromJs(const Napi::Value& mean, const Napi::Value& std);

// Host-to-device copy that does not synchronise: pinned staging, non-blocking copy. A plain copy of
// pageable memory waits for the GPU to drain, which stalls the whole training pipeline every batch.
torch::Tensor toDevice(const torch::Tensor& cpu, const torch::Device& device);

// images: uint8 [B, P, P, 3] on the device. Returns float [B, 3, size, size] in [0, 1] (channels_last).
torch::Tensor augmentImages(const torch::Tensor& images, const torch::Tensor& params, int64_t size);
torch::Tensor normalizeBatch(const torch::Tensor& x, const Normalize& n);
// The same with mean/std already on the device, [1, 3, 1, 1].
torch::Tensor normalizeBatch(const torch::Tensor& x, const torch::Tensor& mean, const torch::Tensor& std);

}  // namespace tl
