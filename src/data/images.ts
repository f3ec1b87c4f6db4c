// Decoding with sharp: any mode the collection has (8/16-bit grey, RGB, RGBA, palette; JPEG, PNG)
// becomes 3-channel 8-bit at the presize, in parallel.
import { availableParallelism } from 'node:os';
import sharp from 'sharp';
import type { ResizeMethod } from './transforms.js';

export interface Decoded {
  ok: true;
  data: Buffer; // P*P*3 bytes
}
export interface DecodeFailure {
  ok: false;
  reason: string;
}

export async function decodeImage(path: string, presize: number, method: ResizeMethod): Promise<Decoded | DecodeFailure> {
  try {
    const fit = method === 'crop' ? 'cover' : method === 'squish' ? 'fill' : 'contain';
    const { data, info } = await sharp(path, { failOn: 'error' })
      .resize(presize, presize, { fit, position: 'centre', background: { r: 0, g: 0, b: 0 }, kernel: 'lanczos3' })
      .removeAlpha()
      .toColourspace('srgb')
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (info.width !== presize || info.height !== presize) return { ok: false, reason: `resized to ${info.width}x${info.height}` };
    if (info.channels === 3) return { ok: true, data };
    if (info.channels === 1) {
      const out = Buffer.alloc(presize * presize * 3);
      for (let i = 0; i < presize * presize; i++) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = data[i];
      return { ok: true, data: out };
    }
    return { ok: false, reason: `${info.channels} channels after conversion` };
  } catch (e) {
    return { ok: false, reason: (e as Error).message.split('\n')[0] };
  }
}

/** Decodes many files with a bounded number in flight; `onProgress(done, total)`. */
export async function decodeAll(
  paths: string[],
  presize: number,
  method: ResizeMethod,
  onProgress?: (done: number, total: number) => void,
): Promise<(Decoded | DecodeFailure)[]> {
  const out = new Array<Decoded | DecodeFailure>(paths.length);
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < paths.length) {
      const i = next++;
      out[i] = await decodeImage(paths[i], presize, method);
      onProgress?.(++done, paths.length);
    }
  };
  await Promise.all(Array.from({ length: Math.min(paths.length, availableParallelism() * 2) }, worker));
  return out;
}
