// Train/validation splits: fast.ai's random split, and a split by group (patient) that keeps every
// image of a group on one side, stratified by class.

/** A small, seeded PRNG (mulberry32): the same seed gives the same split on every machine. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function shuffle<T>(xs: T[], rand: () => number): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

export function checkValidPct(validPct: number): void {
  if (!(validPct >= 0 && validPct < 1)) throw new Error(`validPct must be in [0, 1), got ${validPct}`);
}

/** fast.ai's RandomSplitter: a permutation, the first int(validPct*N) are validation. */
export function randomSplit(n: number, validPct: number, seed: number): { train: number[]; valid: number[] } {
  checkValidPct(validPct);
  const perm = shuffle([...Array(n).keys()], rng(seed));
  const nv = Math.floor(validPct * n);
  return { valid: perm.slice(0, nv).sort((a, b) => a - b), train: perm.slice(nv).sort((a, b) => a - b) };
}

/**
 * Split by group: each group goes wholly to one side; within each class (a group's class is its
 * most frequent label) round(validPct * groups) groups go to validation.
 */
export function groupSplit(
  groups: string[],
  labels: number[],
  validPct: number,
  seed: number,
): { train: number[]; valid: number[]; validGroups: Set<string>; trainGroups: Set<string> } {
  checkValidPct(validPct);
  const members = new Map<string, number[]>();
  groups.forEach((g, i) => (members.get(g) ?? members.set(g, []).get(g)!).push(i));
  const byClass = new Map<number, string[]>();
  for (const [g, idx] of members) {
    const counts = new Map<number, number>();
    for (const i of idx) counts.set(labels[i], (counts.get(labels[i]) ?? 0) + 1);
    const cls = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0][0];
    (byClass.get(cls) ?? byClass.set(cls, []).get(cls)!).push(g);
  }
  const rand = rng(seed);
  const validGroups = new Set<string>();
  for (const cls of [...byClass.keys()].sort((a, b) => a - b)) {
    const gs = shuffle(byClass.get(cls)!.sort(), rand);
    const nv = validPct > 0 ? Math.max(gs.length > 1 ? 1 : 0, Math.round(validPct * gs.length)) : 0;
    gs.slice(0, nv).forEach((g) => validGroups.add(g));
  }
  const train: number[] = [];
  const valid: number[] = [];
  groups.forEach((g, i) => (validGroups.has(g) ? valid : train).push(i));
  const trainGroups = new Set(groups.filter((g) => !validGroups.has(g)));
  return { train, valid, validGroups, trainGroups };
}
