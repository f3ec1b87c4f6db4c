// fast.ai's data defaults, in one place: augmentation (aug_transforms), normalisation statistics,
// and the presize rule.
/** The batch augmentation's settings (`augTransforms()` makes fast.ai's defaults); the formulas are fast.ai v2's. */
export interface AugOptions {
  /** flip horizontally with probability 0.5 */
  doFlip: boolean;
  /** rotate by up to this many degrees either way (probability pAffine) */
  maxRotate: number;
  /** zoom drawn in [minZoom, maxZoom] (probability pAffine) */
  minZoom: number;
  maxZoom: number;
  /** brightness and contrast change of up to this fraction (probability pLighting) */
  maxLighting: number;
  /** perspective warp of up to this magnitude (probability pAffine) */
  maxWarp: number;
  pAffine: number;
  pLighting: number;
}

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

/** fast.ai's data defaults (ImageDataLoaders): image size, batch size, validation share, seed, resize method. */
export const DATA_DEFAULTS = { size: 224, bs: 64, validPct: 0.2, seed: 42, method: 'crop' } as const;

/** What pretrained torchvision ResNets expect. */
export const imagenetStats = { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] } as const;

/** How images are brought to `presize`: centre `crop` of the short side, `squish`, or `pad` with black. */
export type ResizeMethod = 'crop' | 'squish' | 'pad';

/** The cached copy is somewhat larger than `size`, so zoom and rotation resample real pixels (fast.ai's presizing). */
export function defaultPresize(size: number): number {
  return Math.ceil((size * 1.25) / 8) * 8;
}
