// Dynamic batching of single predictions, as TorchServe and Triton do it: predict() calls that arrive while
// the network is busy, or within a short window of each other, run as one batch. Each call decodes its own
// image at once (sharp, on libuv's pool, in parallel with the others and with the network), then waits in
// the queue; a decoding error fails that call alone.
import { availableParallelism } from 'node:os';
import { decodeImage, describeSource, type ImageSource } from '../data/images.js';
import type { ResizeMethod } from '../data/transforms.js';

/** How predictions are grouped into batches. */
export interface BatchingOptions {
  /** the most images in one forward pass (default: the learner's batch size) */
  maxBatch?: number;
  /** how long the first image of a batch waits for others while the network is idle (default 2 ms); 0 runs
   * each image at once when the network is idle (images that arrive while it is busy still batch) */
  maxDelayMs?: number;
  /** the most images decoded or waiting at once; past it predict() fails with a QueueFullError (default 1024) */
  maxQueue?: number;
  /** decode images while a batch runs (default: on CUDA, where the device computes while the CPU decodes; off
   * on the CPU, where decoding and the network would compete for the same cores: there decoding pauses during
   * a batch, and a batch waits for the decodes in flight, as predictBatch decodes first and infers after) */
  overlap?: boolean;
}

/** Where one prediction's time went, in milliseconds. */
export interface PredictTiming {
  /** decoding and resizing the image */
  decodeMs: number;
  /** waiting for the batch to start */
  queueMs: number;
  /** the batch's forward pass (shared by every image in it) */
  inferMs: number;
  /** the number of images in the batch */
  batchSize: number;
}

/** predict() refused an image because `maxQueue` images are already waiting: try again later. */
export class QueueFullError extends Error {
  readonly code = 'EQUEUEFULL';
  constructor(readonly limit: number) {
    super(`the prediction queue is full (${limit} images waiting): try again later, or raise maxQueue`);
  }
}

/** An image that could not be decoded: not an image, or a corrupt one. */
export class ImageDecodeError extends Error {
  readonly code = 'EDECODE';
  constructor(
    readonly source: string,
    readonly reason: string,
  ) {
    super(`cannot read image ${source}: ${reason}`);
  }
}

/** What runs a batch: n presized uint8 images [n, P, P, 3] to their probabilities (row by row). */
export type BatchRunner = (images: Uint8Array, n: number) => Promise<{ probs: Float32Array; numClasses: number }>;

interface Waiting {
  pixels: Uint8Array;
  decodeMs: number;
  queued: number;
  resolve: (r: { probs: Float32Array; timing: PredictTiming }) => void;
  reject: (e: Error) => void;
}

/** The queue behind `InferenceLearner.predict()`: decodes each image as it comes, runs the waiting ones as
 * one batch (see `BatchingOptions`), and gives each caller its own row or its own error. */
export class PredictBatcher {
  readonly maxBatch: number;
  readonly maxDelayMs: number;
  readonly maxQueue: number;
  #run: BatchRunner;
  #presize: number;
  #method: ResizeMethod;
  #queue: Waiting[] = [];
  #pending = 0; // decoding or queued
  #busy = false;
  #timer: NodeJS.Timeout | null = null;
  // Decodes in flight are bounded as decodeAll bounds them: hundreds of sharp pipelines at once only compete
  // with each other and with the network for the same cores.
  #decoding = 0;
  #decodeSlots: (() => void)[] = [];
  readonly #maxDecoding = availableParallelism() * 2;
  readonly overlap: boolean;
  /** batches run so far, and the images in them (for the bench and tests) */
  readonly stats = { batches: 0, images: 0 };

  constructor(run: BatchRunner, o: { presize: number; method: ResizeMethod; defaultBatch: number; defaultOverlap: boolean } & BatchingOptions) {
    const int = (v: number, what: string, min: number) => {
      if (!Number.isInteger(v) || v < min) throw new Error(`${what} must be an integer >= ${min}, got ${v}`);
      return v;
    };
    this.maxBatch = int(o.maxBatch ?? o.defaultBatch, 'maxBatch', 1);
    this.maxQueue = int(o.maxQueue ?? 1024, 'maxQueue', 1);
    this.maxDelayMs = o.maxDelayMs ?? 2;
    if (!(this.maxDelayMs >= 0 && this.maxDelayMs <= 10_000)) throw new Error(`maxDelayMs must be in [0, 10000], got ${o.maxDelayMs}`);
    this.overlap = o.overlap ?? o.defaultOverlap;
    this.#run = run;
    this.#presize = o.presize;
    this.#method = o.method;
  }

  /** Images decoding or waiting now. */
  get pending(): number {
    return this.#pending;
  }

  /** One image's probabilities, batched with whatever else arrives. */
  async predict(src: ImageSource): Promise<{ probs: Float32Array; timing: PredictTiming }> {
    if (this.#pending >= this.maxQueue) throw new QueueFullError(this.maxQueue);
    this.#pending++;
    let queued = false;
    try {
      if (this.#mayDecode()) this.#decoding++;
      else await new Promise<void>((r) => this.#decodeSlots.push(r)); // (the call that wakes it counts it in)
      const t0 = performance.now();
      let d;
      try {
        d = await decodeImage(src, this.#presize, this.#method);
      } finally {
        this.#decoding--;
        this.#releaseDecoders();
      }
      if (!d.ok) throw new ImageDecodeError(describeSource(src), d.reason);
      const t1 = performance.now();
      queued = true;
      return await new Promise((resolve, reject) => {
        this.#queue.push({ pixels: d.data, decodeMs: t1 - t0, queued: t1, resolve, reject });
        this.#schedule();
      });
    } finally {
      if (!queued) this.#pending--;
    }
  }

  #mayDecode(): boolean {
    return this.#decoding < this.#maxDecoding && (this.overlap || !this.#busy);
  }

  #releaseDecoders(): void {
    while (this.#decodeSlots.length && this.#mayDecode()) {
      this.#decoding++;
      this.#decodeSlots.shift()!();
    }
  }

  #schedule(): void {
    if (this.#busy) return; // the batch in flight starts the next one when it ends
    // Without overlap, images still decoding join this batch rather than wait a whole pass for the next one.
    if (!this.overlap && this.#queue.length < this.maxBatch && (this.#decoding > 0 || this.#decodeSlots.length > 0)) return;
    if (this.#queue.length >= this.maxBatch || this.maxDelayMs === 0) {
      this.#flush();
    } else if (!this.#timer) {
      this.#timer = setTimeout(() => this.#flush(), this.maxDelayMs);
    }
  }

  #flush(): void {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    if (this.#busy || this.#queue.length === 0) return;
    const batch = this.#queue.splice(0, this.maxBatch);
    this.#busy = true;
    const p = this.#presize;
    const images = new Uint8Array(batch.length * p * p * 3);
    batch.forEach((w, k) => images.set(w.pixels, k * p * p * 3));
    const start = performance.now();
    this.stats.batches++;
    this.stats.images += batch.length;
    this.#run(images, batch.length).then(
      (r) => {
        const inferMs = performance.now() - start;
        batch.forEach((w, k) =>
          w.resolve({
            probs: r.probs.slice(k * r.numClasses, (k + 1) * r.numClasses),
            timing: { decodeMs: w.decodeMs, queueMs: start - w.queued, inferMs, batchSize: batch.length },
          }),
        );
      },
      (e: Error) => batch.forEach((w) => w.reject(e)),
    ).finally(() => {
      this.#pending -= batch.length;
      this.#busy = false;
      this.#releaseDecoders();
      // what arrived during the batch goes now: it has waited at least one forward pass already
      if (this.#queue.length) this.#schedule();
    });
  }
}
