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

/** An image to decode: a file's path, or the bytes of an encoded image file (JPEG, PNG, ...: an upload, say). */
export type ImageSource = string | Uint8Array;

/** How errors name a source: the path, or the bytes' position in the call and their size. */
export function describeSource(src: ImageSource, index = 0): string {
  return typeof src === 'string' ? src : `image bytes #${index} (${src.byteLength} bytes)`;
}

export async function decodeImage(src: ImageSource, presize: number, method: ResizeMethod): Promise<Decoded | DecodeFailure> {
  try {
    const fit = method === 'crop' ? 'cover' : method === 'squish' ? 'fill' : 'contain';
    const { data, info } = await sharp(src, { failOn: 'error' })
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
  paths: ImageSource[],
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
