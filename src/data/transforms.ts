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
  /** fast.ai's Dihedral (any of the 8 flips and quarter turns, probability 0.5) instead of the plain flip */
  flipVert?: boolean;
  /** a random crop of area fraction U(minScale, 1) first (fast.ai's RandomResizedCrop; 1: none) */
  minScale?: number;
  /** the crop's aspect ratio range, log-uniform (default [1, 1]: square crops, as aug_transforms) */
  ratio?: [number, number];
}

/** fast.ai's aug_transforms defaults: flip p=0.5, rotate ±10°, zoom 1..1.1, warp 0.2, lighting 0.2, p 0.75. */
export function augTransforms(o: Partial<AugOptions> & { mult?: number } = {}): AugOptions {
  const mult = o.mult ?? 1;
  const minScale = o.minScale ?? 1;
  if (!(minScale > 0 && minScale <= 1)) throw new Error(`augTransforms: minScale must be in (0, 1], got ${o.minScale}`);
  return {
    doFlip: o.doFlip ?? true,
    maxRotate: (o.maxRotate ?? 10) * mult,
    minZoom: o.minZoom ?? 1,
    maxZoom: o.maxZoom ?? 1.1,
    maxLighting: (o.maxLighting ?? 0.2) * mult,
    maxWarp: (o.maxWarp ?? 0.2) * mult,
    pAffine: o.pAffine ?? 0.75,
    pLighting: o.pLighting ?? 0.75,
    flipVert: o.flipVert ?? false,
    minScale,
    ...(o.ratio ? { ratio: o.ratio } : {}),
  };
}

/** No augmentation but what is asked for: the base item transforms add to (a crop alone, say). */
export const NO_AUGMENT: AugOptions = { doFlip: false, maxRotate: 0, minZoom: 1, maxZoom: 1, maxLighting: 0, maxWarp: 0, pAffine: 0, pLighting: 0 };

/** Item transforms fast.ai users set: `randomResizedCrop` (fast.ai's RandomResizedCrop: a crop of area fraction
 * U(minScale, 1), default 0.08, and aspect ratio in `ratio`, default [3/4, 4/3], resized to the training size). */
export interface ItemTransforms {
  randomResizedCrop?: { minScale?: number; ratio?: [number, number] };
}

/** The augmentation with the item transforms folded in (the native pipeline does both in one grid). */
export function withItemTfms(augment: AugOptions | null, itemTfms: ItemTransforms | undefined): AugOptions | null {
  const rrc = itemTfms?.randomResizedCrop;
  if (!rrc) return augment;
  const minScale = rrc.minScale ?? 0.08;
  const ratio = rrc.ratio ?? [3 / 4, 4 / 3];
  if (!(minScale > 0 && minScale <= 1)) throw new Error(`itemTfms.randomResizedCrop: minScale must be in (0, 1], got ${rrc.minScale}`);
  if (!(ratio[0] > 0 && ratio[0] <= ratio[1])) throw new Error(`itemTfms.randomResizedCrop: ratio must be [low, high] with 0 < low <= high, got [${ratio.join(', ')}]`);
  return { ...(augment ?? NO_AUGMENT), minScale, ratio };
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
