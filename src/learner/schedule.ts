// Learning rates per layer group, as fast.ai's lr_range / set_hyper turn a number or slice into
// one value per group.

/** A learning rate: a number (every group), [b] (fast.ai's slice(b)) or [a, b] (slice(a, b)). */
export type LrSpec = number | readonly [number] | readonly [number, number];

/** One learning rate per layer group from fast.ai's forms: a number (every group), `[low, high]` (spread geometrically, as `slice(low, high)`), or one per group. */
export function lrPerGroup(lr: LrSpec, groups: number, what = 'lrMax'): number[] {
  const check = (x: number) => {
    if (!(x > 0) || !Number.isFinite(x)) throw new Error(`${what} must be a positive, finite learning rate, got ${x}`);
    return x;
  };
  if (typeof lr === 'number') return new Array(groups).fill(check(lr));
  if (!Array.isArray(lr) || lr.length < 1 || lr.length > 2) throw new Error(`${what} must be a number, [max] or [min, max]`);
  if (lr.length === 1) {
    // slice(b): b/10 for every group but the last
    const b = check(lr[0]);
    return Array.from({ length: groups }, (_, i) => (i === groups - 1 ? b : b / 10));
  }
  // slice(a, b): even_mults, geometric steps from a to b
  const [a, b] = [check(lr[0]), check(lr[1])];
  if (groups === 1) return [b];
  const step = (b / a) ** (1 / (groups - 1));
  return Array.from({ length: groups }, (_, i) => a * step ** i);
}
