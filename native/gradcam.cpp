// Grad-CAM (fast.ai v1) in native code.
#include "learner_core.h"
#include "js.h"

namespace tl {

struct CamResult {
  torch::Tensor map, probs;
};

// gradCam(image: Uint8Array [P*P*3], presize, classIdx) -> { map: Float32Array [h*w], h, w, probs }
// fast.ai v1's Grad-CAM: activations and gradients of layer4 for the class's raw logit; channel
// weights = spatial mean of the gradients; map = ReLU(sum_c w_c * A_c), not normalised.
Napi::Value Learner::GradCam(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  core_->check();
  const int64_t p = js::integer(info[1], "gradCam: presize", 1, js::kMaxSide);
  const int64_t cls = js::integer(info[2], "gradCam: classIdx", 0, core_->net->numClasses - 1);
  auto image = uint8Images(info[0], 1, p, "image");
  return onWorker<CamResult>(
      env, core_,
      [image, cls](Core& core) {
        auto* c = &core;
        c->net->module->eval();
        torch::Tensor acts, logits;
        {
          torch::NoGradGuard ng;
          acts = c->net->features(c->inputs(image.to(c->net->device), identityAugParams(1))).to(torch::kFloat32);
        }
        acts = acts.detach().contiguous().requires_grad_(true);
        logits = c->net->classify(acts);
        if (cls < 0 || cls >= logits.size(1))
          throw UserError("gradcam: class index " + std::to_string(cls) + " is out of range (0.." + std::to_string(logits.size(1) - 1) + ")");
        auto grad = torch::autograd::grad({logits[0][cls]}, {acts})[0];
        auto w = grad.mean({2, 3}, true);
        CamResult r;
        r.map = torch::relu((w * acts).sum(1)).squeeze(0).detach().to(torch::kCPU);
        r.probs = c->activation(logits.detach()).squeeze(0).to(torch::kCPU);
        return r;
      },
      [](Napi::Env env, CamResult& r) -> Napi::Value {
        auto o = Napi::Object::New(env);
        o.Set("map", tensorToFloat32Array(env, r.map));
        o.Set("h", Napi::Number::New(env, static_cast<double>(r.map.size(0))));
        o.Set("w", Napi::Number::New(env, static_cast<double>(r.map.size(1))));
        o.Set("probs", tensorToFloat32Array(env, r.probs));
        return o;
      });
  TL_CATCH(env)
}

}  // namespace tl
