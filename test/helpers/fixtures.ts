// Small generated image sets for the tests.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { ImageDataLoaders, loadLearner, type Learner } from '../../src/index.js';
import { maxRelError } from './python.js';

/** Class 'horizontal' has horizontal stripes, 'vertical' vertical ones: flips and small rotations keep them apart. */
export async function makeStripes(dir: string, perClass = 24, size = 48, seed = 1): Promise<void> {
  let s = seed;
  const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (const cls of ['horizontal', 'vertical']) {
    mkdirSync(join(dir, cls), { recursive: true });
    for (let k = 0; k < perClass; k++) {
      const period = 6 + Math.floor(rand() * 6);
      const phase = Math.floor(rand() * period);
      const tint = [rand(), rand(), rand()].map((x) => 0.6 + 0.4 * x);
      const px = Buffer.alloc(size * size * 3);
      for (let y = 0; y < size; y++)
        for (let x = 0; x < size; x++) {
          const on = ((cls === 'horizontal' ? y : x) + phase) % period < period / 2;
          const v = (on ? 220 : 40) + Math.floor(rand() * 20);
          for (let c = 0; c < 3; c++) px[(y * size + x) * 3 + c] = Math.min(255, Math.round(v * tint[c]));
        }
      await sharp(px, { raw: { width: size, height: size, channels: 3 } }).png().toFile(join(dir, cls, `${cls}-${k}.png`));
    }
  }
}

/** Class 'patch': grey with stripes in one random quadrant; class 'plain': the same grey, no stripes. */
export async function makeQuadrantPatches(dir: string, perClass: number, size: number, seed = 1): Promise<void> {
  let s = seed;
  const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (const cls of ['patch', 'plain']) {
    mkdirSync(join(dir, cls), { recursive: true });
    for (let k = 0; k < perClass; k++) {
      const px = cls === 'patch' ? quadrantPatch(Math.floor(rand() * 4), size, 4 + Math.floor(rand() * 4), rand() < 0.5) : Buffer.alloc(size * size * 3, 128);
      for (let i = 0; i < px.length; i++) px[i] = Math.max(0, Math.min(255, px[i] + Math.floor(rand() * 16) - 8));
      await sharp(px, { raw: { width: size, height: size, channels: 3 } }).png().toFile(join(dir, cls, `${cls}-${k}.png`));
    }
  }
}

export function quadrantPatch(quadrant: number, size: number, period = 6, horizontal = true): Buffer {
  const px = Buffer.alloc(size * size * 3, 128);
  const h = size / 2;
  const qx = (quadrant % 2) * h;
  const qy = Math.floor(quadrant / 2) * h;
  for (let y = qy; y < qy + h; y++)
    for (let x = qx; x < qx + h; x++) px.fill(((horizontal ? y : x) % period) < period / 2 ? 230 : 20, (y * size + x) * 3, (y * size + x) * 3 + 3);
  return px;
}

/** Whether every float32 weight of a learner is finite (after a diverged step, say). */
export async function finiteWeights(l: Learner): Promise<boolean> {
  return (await l.state(false)).every((t) => t.dtype !== 'F32' || new Float32Array(t.data.slice().buffer).every(Number.isFinite));
}

/** The stripes at 48 px, 24 per class, as loaders of 32 px at batch 8: the small set most files train on. */
export async function stripesLoaders(dir: string): Promise<ImageDataLoaders> {
  await makeStripes(join(dir, 's'), 24, 48);
  return ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 8, seed: 3 });
}

/**
 * Multi-label images: stripes in the top half ('top'), in the bottom half ('bottom'), or both, over grey (a
 * horizontal flip keeps each label). Writes the PNGs and labels.csv (file,labels,is_valid; labels separated
 * by a space, every fifth row validating). Returns the rows.
 */
export async function makeHalves(dir: string, n: number, size = 48, seed = 1): Promise<{ file: string; labels: string[] }[]> {
  let s = seed;
  const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  mkdirSync(join(dir, 'images'), { recursive: true });
  const rows: { file: string; labels: string[]; valid: boolean }[] = [];
  for (let k = 0; k < n; k++) {
    const labels = [['top'], ['bottom'], ['top', 'bottom']][k % 3];
    const period = 4 + Math.floor(rand() * 4);
    const px = Buffer.alloc(size * size * 3);
    for (let y = 0; y < size; y++)
      for (let x = 0; x < size; x++) {
        const half = y < size / 2 ? 'top' : 'bottom';
        const v = labels.includes(half) ? (Math.floor(y / (period / 2)) % 2 ? 220 : 40) : 128;
        for (let c = 0; c < 3; c++) px[(y * size + x) * 3 + c] = Math.max(0, Math.min(255, v + Math.floor(rand() * 16) - 8));
      }
    const file = `img-${k}.png`;
    await sharp(px, { raw: { width: size, height: size, channels: 3 } }).png().toFile(join(dir, 'images', file));
    rows.push({ file, labels, valid: k % 5 === 4 });
  }
  writeFileSync(join(dir, 'labels.csv'), 'file,labels,is_valid\n' + rows.map((r) => `${r.file},${r.labels.join(' ')},${r.valid}`).join('\n') + '\n');
  return rows;
}

/**
 * Exports a learner to `path`, loads the export on the CPU and predicts `files` with both: the loaded
 * export's architecture and, per file, the relative difference of its probabilities (floor 1e-3).
 */
export async function exportRoundTrip(learn: Learner, path: string, files: string[]): Promise<{ exported: string; arch: string; errors: number[] }> {
  const exported = await learn.export(path);
  const inf = loadLearner(exported, { device: 'cpu' });
  const a = await learn.predictBatch(files);
  const b = await inf.predictBatch(files);
  const errors = files.map((_, i) => maxRelError(b[i].probs, a[i].probs, 1e-3));
  const arch = inf.info.arch;
  inf.dispose();
  return { exported, arch, errors };
}
