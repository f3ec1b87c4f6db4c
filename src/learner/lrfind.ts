// fast.ai v2's learning-rate suggestions (callback/schedule.py), computed on lrs[numIt/10 : -5]
// truncated at the first NaN.

/** fast.ai's four learning-rate suggestions (valley, minimum / 10, steepest descent, slide). */
export interface Suggestions {
  valley: number;
  minimum: number;
  steep: number;
  slide: number;
}

export function suggestionWindow(lrs: number[], losses: number[], numIt: number): { lrs: number[]; losses: number[] } {
  let start = Math.floor(numIt / 10);
  let end = lrs.length - 5;
  if (end - start < 2) {
    start = 0;
    end = lrs.length;
  }
  let l = lrs.slice(start, end);
  let s = losses.slice(start, end);
  const nan = s.findIndex((x) => !Number.isFinite(x));
  if (nan >= 0) {
    l = l.slice(0, nan);
    s = s.slice(0, nan);
  }
  return { lrs: l, losses: s };
}

export function valley(lrs: number[], losses: number[]): number {
  const n = losses.length;
  let maxStart = 0;
  let maxEnd = 0;
  const lds = new Array(n).fill(1);
  for (let i = 1; i < n; i++) {
    for (let j = 0; j < i; j++) {
      if (losses[i] < losses[j] && lds[i] < lds[j] + 1) lds[i] = lds[j] + 1;
      if (lds[maxEnd] < lds[i]) {
        maxEnd = i;
        maxStart = maxEnd - lds[maxEnd];
      }
    }
  }
  const sections = (maxEnd - maxStart) / 3;
  const idx = maxStart + Math.trunc(sections) + Math.trunc(sections / 2);
  return lrs[Math.min(Math.max(idx, 0), n - 1)];
}

export function minimum(lrs: number[], losses: number[]): number {
  let k = 0;
  losses.forEach((l, i) => (l < losses[k] ? (k = i) : 0));
  return lrs[k] / 10;
}

export function steep(lrs: number[], losses: number[]): number {
  let best = Infinity;
  let k = 0;
  for (let i = 0; i + 1 < losses.length; i++) {
    const g = (losses[i + 1] - losses[i]) / (Math.log(lrs[i + 1]) - Math.log(lrs[i]));
    if (g < best) {
      best = g;
      k = i;
    }
  }
  return lrs[k];
}

/** numpy.gradient: central differences inside, one-sided at the ends. */
export function gradient(y: number[]): number[] {
  const n = y.length;
  if (n < 2) return y.map(() => 0);
  return y.map((_, i) => (i === 0 ? y[1] - y[0] : i === n - 1 ? y[n - 1] - y[n - 2] : (y[i + 1] - y[i - 1]) / 2));
}

export function slide(lrs: number[], losses: number[], lrDiff = 15, thresh = 0.005, adjust = 1): number {
  const n = losses.length;
  if (n <= lrDiff) return lrs[0] * adjust;
  const g = gradient(losses);
  let r = n - 1;
  let l = r - lrDiff;
  let local = lrs[l];
  while (l >= 0 && Math.abs(g[r] - g[l]) > thresh) {
    local = lrs[l];
    r--;
    l--;
  }
  return local * adjust;
}

export function suggest(lrs: number[], losses: number[], numIt: number): Suggestions {
  const w = suggestionWindow(lrs, losses, numIt);
  if (w.lrs.length < 2) throw new Error('lrFind: too few finite losses to suggest a learning rate (the loss diverged at once: lower startLr)');
  return { valley: valley(w.lrs, w.losses), minimum: minimum(w.lrs, w.losses), steep: steep(w.lrs, w.losses), slide: slide(w.lrs, w.losses) };
}
