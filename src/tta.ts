// fast.ai v2's test-time augmentation (Learner.tta): n passes with the training transforms, averaged, then
// lerp with the plain pass, (1 - beta) * mean(augmented) + beta * plain. Used by the training learner's
// tta() and by a loaded export's getPreds(..., { tta }).

/** fast.ai's defaults: tta(n=4, beta=0.25). */
export const TTA_DEFAULTS = { n: 4, beta: 0.25 } as const;

/** Options of test-time augmentation (fast.ai's `tta`). */
export interface TtaOptions {
  /** augmented passes (default 4) */
  n?: number;
  /** weight of the plain pass (default 0.25) */
  beta?: number;
}

/** The plain pass's probabilities combined with `n` augmented passes drawn by `augmentedPass`. */
export async function ttaProbs(plain: Float32Array, augmentedPass: () => Promise<Float32Array>, o: TtaOptions = {}): Promise<Float32Array> {
  const n = o.n ?? TTA_DEFAULTS.n;
  const beta = o.beta ?? TTA_DEFAULTS.beta;
  if (!Number.isInteger(n) || n < 1) throw new Error(`tta: n must be a positive integer, got ${n}`);
  if (!(beta >= 0 && beta <= 1)) throw new Error(`tta: beta must be in [0, 1], got ${beta}`);
  const acc = new Float32Array(plain.length);
  for (let k = 0; k < n; k++) {
    const a = await augmentedPass();
    a.forEach((p, i) => (acc[i] += p / n));
  }
  return acc.map((a, i) => (1 - beta) * a + beta * plain[i]);
}

/** Per-item cross-entropy from probabilities: -log p[target] (clamped, so a zero probability stays finite);
 * multi-label (targets n * c of 0/1), the binary cross-entropy averaged over the item's labels. */
export function lossesFromProbs(probs: Float32Array, targets: Int32Array, numClasses: number, multiLabel = false): Float32Array {
  const log = (p: number) => Math.log(Math.max(1e-30, p));
  if (!multiLabel) return Float32Array.from(targets, (t, i) => -log(probs[i * numClasses + t]));
  return Float32Array.from({ length: targets.length / numClasses }, (_v, i) => {
    let s = 0;
    for (let k = i * numClasses; k < (i + 1) * numClasses; k++) s -= targets[k] ? log(probs[k]) : log(1 - probs[k]);
    return s / numClasses;
  });
}
