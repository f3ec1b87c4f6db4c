// Small generated image sets for the tests.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';

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
