// fast.ai's data defaults, in one place: augmentation (aug_transforms), normalisation statistics,
// and the presize rule.
import type { NativeAugOptions } from '../binding.js';

export type AugOptions = NativeAugOptions;

/** fast.ai's aug_transforms defaults: flip p=0.5, rotate ±10°, zoom 1..1.1, warp 0.2, lighting 0.2, p 0.75. */
export function augTransforms(o: Partial<AugOptions> & { mult?: number } = {}): AugOptions {
  const mult = o.mult ?? 1;
  return {
    doFlip: o.doFlip ?? true,
    maxRotate: (o.maxRotate ?? 10) * mult,
    minZoom: o.minZoom ?? 1,
    maxZoom: o.maxZoom ?? 1.1,
    maxLighting: (o.maxLighting ?? 0.2) * mult,
    maxWarp: (o.maxWarp ?? 0.2) * mult,
    pAffine: o.pAffine ?? 0.75,
    pLighting: o.pLighting ?? 0.75,
  };
}

/** What pretrained torchvision ResNets expect. */
export const imagenetStats = { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] } as const;

export type ResizeMethod = 'crop' | 'squish' | 'pad';

/** The cached copy is somewhat larger than `size`, so zoom and rotation resample real pixels (fast.ai's presizing). */
export function defaultPresize(size: number): number {
  return Math.ceil((size * 1.25) / 8) * 8;
}
