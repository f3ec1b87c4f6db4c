// fast.ai's MixUp and CutMix (callback/mixup.py) on a training batch, natively: the batch mixed with a
// shuffled copy of itself, and the targets mixed the same way as soft targets (class probabilities, or
// multi-hot rows lerped), so that the ordinary loss on them is fast.ai's lam-weighted pair of losses
// (cross-entropy and binary cross-entropy are linear in the target). Draws come from the learner's
// generator: a seed repeats a run.
#pragma once
#include "common.h"

namespace tl {

enum class MixKind { None = 0, MixUp = 1, CutMix = 2 };

struct MixOptions {
  MixKind kind = MixKind::None;
  double alpha = 0.4;  // Beta(alpha, alpha)
};

// One batch's draws. MixUp: lam per image, max(l, 1 - l) of a Beta(alpha, alpha) draw; CutMix: one Beta draw
// for the batch, the box it cuts (centre uniform over the image, sides round(W * sqrt(1 - lam)), clamped)
// and lam replaced by the share of the image outside the box.
struct MixDraw {
  torch::Tensor lam;   // float64 [n] (CutMix: n copies of the batch's)
  torch::Tensor perm;  // int64 [n]: each image's partner
  int64_t x1 = 0, y1 = 0, x2 = 0, y2 = 0, cx = 0, cy = 0;
  double lamDrawn = 0;  // CutMix: the Beta draw before the box
};

MixDraw drawMix(int64_t n, int64_t h, int64_t w, const MixOptions& o, torch::Generator& gen);

// x: [n, C, H, W] normalised batch (changed in place for CutMix); y: int64 class indices [n] or float
// multi-hot [n, classes]. Returns the mixed batch and float [n, classes] soft targets.
std::pair<torch::Tensor, torch::Tensor> applyMix(torch::Tensor x, const torch::Tensor& y, const MixDraw& d, MixKind kind, int64_t classes);

}  // namespace tl
