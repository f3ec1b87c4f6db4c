// The decoded images of a data set, held once in native memory (native/image_store.h says why): the loaders
// fill a store as the files are decoded, and every learner built on them trains from it without a copy.
import { native } from '../binding.js';

/**
 * A data set's images, uint8 [n, presize, presize, 3], in native memory. Read through copies (`read`); a store
 * a learner has trained from is sealed and takes no more writes.
 */
export interface ImageStore {
  /** the number of images */
  readonly n: number;
  /** the side of each (square) image */
  readonly presize: number;
  /** in use by a learner: no more writes */
  readonly sealed: boolean;
  /** Writes image `i` from presize * presize * channels bytes (channels 1: grey, repeated into RGB). */
  set(i: number, pixels: Uint8Array, channels: 1 | 3): void;
  /** A copy of images [start, start + count). */
  read(start: number, count: number): Uint8Array;
}

/** A store of `n` images of `presize` px (zeros until `set`). */
export function imageStore(n: number, presize: number): ImageStore {
  return new native.ImageStore(n, presize);
}
