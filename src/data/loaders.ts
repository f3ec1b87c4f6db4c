// fast.ai's ImageDataLoaders: items -> labelled, split, presized uint8 images ready for the native
// batch pipeline (augmentation, normalisation and batching happen in C++ on the training device).
import { readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { native } from '../binding.js';
import { writeGrid } from '../plot/grid.js';
import { decodeFiles, decodeWorkers } from './workers.js';
import { imageStore, type ImageStore } from './store.js';
import { csvItems, grandparentItems, isValidCell, nameFuncItems, pathReItems, tableItems, type Sourced, type TableOptions } from './sources.js';
import { groupSplit, randomSplit, rng, shuffle } from './split.js';
import { augTransforms, DATA_DEFAULTS, defaultPresize, imagenetStats, withItemTfms, type AugOptions, type ItemTransforms, type ResizeMethod } from './transforms.js';

/** One labelled image: its path and its class name (multi-label: `labels`, and `label` their joined text). */
export interface Item {
  path: string;
  label: string;
  /** multi-label classification: the image's labels (fromCsv / fromTable with labelDelim) */
  labels?: string[];
  [key: string]: unknown;
}

/** Options shared by the `ImageDataLoaders` constructors. */
export interface DataLoadersOptions {
  validPct?: number;
  seed?: number;
  size?: number;
  bs?: number;
  /** Side of the cached square images (default: size*1.25, rounded up to a multiple of 8). */
  presize?: number;
  method?: ResizeMethod;
  /** Augmentation (default: augTransforms()); `false` or null for none. */
  augment?: AugOptions | false | null;
  /** fast.ai's item transforms: `{ randomResizedCrop: { minScale, ratio } }` (done with the augmentation, on the
   * presized images) */
  itemTfms?: ItemTransforms;
  normalize?: { mean: readonly number[]; std: readonly number[] };
  /** A key of the items (e.g. 'patient') or a function of the file path: every image of a group stays on one side. */
  splitBy?: string | ((path: string) => string);
  /** The validation items by their index in the item list (fast.ai's IndexSplitter); overrides the other splits. */
  validIdx?: readonly number[];
  /** An item key whose value says which items validate (true/1/yes), as fast.ai's ColSplitter (fromCsv and
   * fromTable also take a column's position). */
  validCol?: string | number;
  /** Fixed class order (default: the sorted labels). */
  vocab?: string[];
  /** Called while decoding: (done, total). */
  onProgress?: (done: number, total: number) => void;
  /** Silence the per-file warnings for skipped images (they are still counted in `skipped`). */
  quiet?: boolean;
  /**
   * How many child processes decode the images (fast.ai's num_workers): 0 decodes in this process. Default: 1
   * from 64 images, else 0. A worker's decoder memory goes when it exits instead of staying resident through
   * training, and a file that crashes the decoder is skipped and counted like any unreadable image.
   */
  numWorkers?: number;
  /** Where a learner built on these loaders trains and keeps the image cache: 'auto' (default), 'cpu', 'cuda', 'cuda:N'. */
  device?: string;
}

/** An image that could not be decoded, and why: it was left out of the data set. */
export interface Skipped {
  path: string;
  reason: string;
}

/** One split (training or validation) of an `ImageDataLoaders`: the images decoded at `presize`, as uint8, and their labels. */
export class DataSplit {
  constructor(
    readonly items: Item[],
    /** each image's class index (multi-label: -1, the labels being in `multiHot`) */
    readonly labels: Int32Array,
    /** the images, uint8 [n, presize, presize, 3], in native memory (every learner on these loaders trains from them) */
    readonly store: ImageStore,
    readonly bs: number,
    readonly train: boolean,
    /** multi-label classification: 1 where image i has label k, at i * vocab.length + k; null for one label per image */
    readonly multiHot: Uint8Array | null = null,
  ) {}
  /** A copy of image `i`: uint8 [presize, presize, 3]. */
  image(i: number): Uint8Array {
    return this.store.read(i, 1);
  }
  /** A copy of all the images, uint8 [n, presize, presize, 3], made on each access (`image(i)` reads one). */
  get images(): Uint8Array {
    return this.store.read(0, this.store.n);
  }
  /** What the loss and the metrics compare with: the class indices, or the multi-hot rows as 0/1 (n * c). */
  get targets(): Int32Array {
    return this.multiHot ? Int32Array.from(this.multiHot) : this.labels;
  }
  /** number of items */
  get n(): number {
    return this.items.length;
  }
  /** number of batches, as len(dl) in fast.ai (the training loader drops the last partial batch) */
  get length(): number {
    if (this.n === 0) return 0;
    return this.train ? Math.max(1, Math.floor(this.n / this.bs)) : Math.ceil(this.n / this.bs);
  }
  /** The number of images of each class (multi-label: of each label) in this split. */
  classCounts(vocab: string[]): Record<string, number> {
    const c: Record<string, number> = Object.fromEntries(vocab.map((v) => [v, 0]));
    if (this.multiHot) this.multiHot.forEach((h, j) => (c[vocab[j % vocab.length]] += h));
    else this.labels.forEach((l) => c[vocab[l]]++);
    return c;
  }
}

/** New images for a trained learner (fast.ai's test_dl): decoded as the validation set is, labelled when every
 * item has a label of the vocab (then `learn.getPreds({ dl })` also gives targets, losses and metrics). */
export class TestSet extends DataSplit {
  constructor(
    items: Item[],
    labels: Int32Array,
    store: ImageStore,
    bs: number,
    /** every image has a label of the vocab */
    readonly labelled: boolean,
    /** images that could not be decoded, left out */
    readonly skipped: Skipped[],
    /** the presize the images were decoded at (the loaders' at the time) */
    readonly presize: number,
    multiHot: Uint8Array | null = null,
  ) {
    super(items, labels, store, bs, false, multiHot);
  }
}

const IMAGE_EXT = /\.(jpe?g|png|webp|tiff?|gif|bmp|avif)$/i;

/**
 * The images of a folder, fast.ai-style: every file in each sub-folder, labelled with the sub-folder's name
 * (parent_label), and the image files lying in the folder itself, unlabelled (a folder of pictures to
 * predict). Hidden entries are ignored; sorted, so the order is the same on every machine. A file that is
 * not a readable image is reported by the decoder later (skipped and counted), as in any dataset.
 */
export function folderItems(dir: string): { items: { path: string; label?: string }[]; folders: string[] } {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true }).filter((d) => !d.name.startsWith('.'));
  } catch (e) {
    throw new Error(`${dir}: cannot read the image folder (${(e as NodeJS.ErrnoException).code ?? e})`);
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const items: { path: string; label?: string }[] = [];
  const folders: string[] = [];
  // A link that leads nowhere (dangling, or a loop) is not a folder: as a file it reaches the decoder, which
  // skips and counts it like any unreadable image.
  const kind = (p: string): 'dir' | 'file' | 'other' => {
    try {
      const st = statSync(p);
      return st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other';
    } catch {
      return 'file';
    }
  };
  for (const e of entries) {
    const k = kind(join(dir, e.name));
    if (k === 'dir') folders.push(e.name); // (a link to a folder counts)
    else if (k === 'file' && IMAGE_EXT.test(e.name)) items.push({ path: join(dir, e.name) });
  }
  for (const name of folders) {
    let names: string[];
    try {
      names = readdirSync(join(dir, name));
    } catch (e) {
      throw new Error(`${join(dir, name)}: cannot read the class folder (${(e as NodeJS.ErrnoException).code ?? e})`);
    }
    const files = names
      .filter((f) => !f.startsWith('.'))
      .sort()
      .map((f) => join(dir, name, f))
      .filter((p) => kind(p) === 'file');
    for (const p of files) items.push({ path: p, label: name });
  }
  return { items, folders };
}

/**
 * fast.ai's `ImageDataLoaders`: images decoded once (sharp) and kept at `presize`, split into training and validation sets; batches are assembled, augmented and normalised natively on the training device.
 *
 * @example
 * ```ts
 * const dls = await ImageDataLoaders.fromFolder('data/xrays', { validPct: 0.2, size: 224, bs: 64, seed: 42 });
 * console.log(dls.vocab, dls.train.n, dls.valid.n);
 * await dls.showBatch({ n: 9, path: 'batch.png' });
 * ```
 */
export class ImageDataLoaders {
  private constructor(
    readonly vocab: string[],
    readonly train: DataSplit,
    readonly valid: DataSplit,
    readonly size: number,
    readonly bs: number,
    readonly presize: number,
    readonly method: ResizeMethod,
    readonly augment: AugOptions | null,
    readonly normalize: { mean: number[]; std: number[] },
    readonly seed: number,
    readonly skipped: Skipped[],
    readonly groups: { train: number; valid: number } | null,
    readonly device: string = 'auto',
    /** what works but may not be what was meant (a class missing from the validation set, say) */
    readonly warnings: string[] = [],
  ) {}

  /**
   * One sub-folder per class, the folder names being the labels (fast.ai's from_folder). An ImageNet-style
   * folder with its own `train/` and `valid/` (each with one sub-folder per class) is split as they say
   * (fast.ai's GrandparentSplitter): named by `{ train, valid }`, or found by those default names when no
   * `validPct` is given.
   */
  static async fromFolder(dir: string, opts: DataLoadersOptions & { train?: string; valid?: string } = {}): Promise<ImageDataLoaders> {
    const { train, valid, ...rest } = opts;
    const isDir = (name: string) => Boolean(statSync(join(dir, name), { throwIfNoEntry: false })?.isDirectory());
    if (train !== undefined || valid !== undefined || (opts.validPct === undefined && isDir('train') && isDir('valid'))) {
      return ImageDataLoaders.#fromSourced(grandparentItems(dir, train ?? 'train', valid ?? 'valid', folderItems), rest);
    }
    const { items, folders } = folderItems(dir);
    if (folders.length === 0) throw new Error(`${dir}: no class sub-folders found (expected one folder per class, e.g. ${dir}/covid_positive)`);
    if (folders.length === 1)
      throw new Error(`${dir}: only one class folder found ('${folders[0]}'): a classifier needs at least two classes, each in its own sub-folder (e.g. ${dir}/${folders[0]} and ${dir}/other)`);
    for (const c of folders) if (!items.some((i) => i.label === c)) throw new Error(`${join(dir, c)}: the class '${c}' has no images`);
    // (images lying beside the class folders have no label: not training data)
    return ImageDataLoaders.fromItems(items.filter((i): i is Item => i.label !== undefined), opts);
  }

  /**
   * A CSV file with a header row: a file-name column and a label column (by name or position; fast.ai's
   * from_csv, its defaults the first and second columns), file names relative to the CSV's folder (or `path`,
   * plus `folder`, plus `suffix`); `validCol` names the column that says which rows validate, else the split
   * options apply. A missing column names the columns there are; an empty label names its line.
   *
   * @example
   * ```ts
   * const dls = await ImageDataLoaders.fromCsv('data/labels.csv', { folder: 'images', fnCol: 'file', labelCol: 'finding', validCol: 'is_valid' });
   * ```
   */
  static async fromCsv(csvPath: string, opts: TableOptions & DataLoadersOptions = {}): Promise<ImageDataLoaders> {
    return ImageDataLoaders.#fromSourced(csvItems(csvPath, opts), opts);
  }

  /** Rows already in memory (objects, one key per column), as fromCsv reads a file (fast.ai's from_df). */
  static async fromTable(rows: readonly Record<string, unknown>[], opts: TableOptions & DataLoadersOptions = {}): Promise<ImageDataLoaders> {
    return ImageDataLoaders.#fromSourced(tableItems(rows, opts, 'the table', opts.path ?? '.', (i) => `row ${i}`), opts);
  }

  /** Files in `dir` labelled by a function of their path (fast.ai's from_name_func). */
  static async fromNameFunc(dir: string, files: readonly string[], labelFunc: (path: string) => string, opts: DataLoadersOptions = {}): Promise<ImageDataLoaders> {
    return ImageDataLoaders.#fromSourced(nameFuncItems(dir, files, labelFunc), opts);
  }

  /** Files in `dir` labelled by the first group of `pattern` matched on their path (fast.ai's from_path_re). */
  static async fromPathRe(dir: string, files: readonly string[], pattern: RegExp, opts: DataLoadersOptions = {}): Promise<ImageDataLoaders> {
    return ImageDataLoaders.#fromSourced(pathReItems(dir, files, pattern), opts);
  }

  static async #fromSourced(s: Sourced, opts: DataLoadersOptions): Promise<ImageDataLoaders> {
    return ImageDataLoaders.fromItems(s.items, s.validIdx ? { ...opts, validIdx: opts.validIdx ?? s.validIdx } : opts);
  }

  /** Items with a path and a label (and any keys to split by, e.g. patient); items with `labels` (every item)
   * make the loaders multi-label. */
  static async fromItems(itemList: readonly { path: string; label: string; labels?: string[] }[], opts: DataLoadersOptions = {}): Promise<ImageDataLoaders> {
    const items = itemList as Item[];
    const multi = items.some((i) => i.labels !== undefined);
    if (multi) {
      const bad = items.find((i) => !Array.isArray(i.labels) || i.labels.length === 0 || i.labels.some((l) => typeof l !== 'string' || l === ''));
      if (bad) throw new Error(`${bad.path}: in multi-label data every item needs a non-empty list of labels (labels: ${JSON.stringify(bad.labels)})`);
    }
    const size = opts.size ?? DATA_DEFAULTS.size;
    const bs = opts.bs ?? DATA_DEFAULTS.bs;
    const validPct = opts.validPct ?? DATA_DEFAULTS.validPct;
    const seed = opts.seed ?? DATA_DEFAULTS.seed;
    const method = opts.method ?? DATA_DEFAULTS.method;
    const presize = opts.presize ?? defaultPresize(size);
    if (!Number.isInteger(size) || size < 32) throw new Error(`size must be an integer of at least 32 pixels, got ${size}`);
    if (!Number.isInteger(bs) || bs < 1) throw new Error(`bs must be a positive integer, got ${bs}`);
    if (!Number.isInteger(presize) || presize < size) throw new Error(`presize must be an integer >= size (${size}), got ${presize}`);
    if (!(validPct >= 0 && validPct < 1)) throw new Error(`validPct must be in [0, 1), got ${validPct}`);
    if (!['crop', 'squish', 'pad'].includes(method)) throw new Error(`method must be 'crop', 'squish' or 'pad', got '${method}'`);
    if (items.length === 0) throw new Error('no images: the item list is empty');
    const numWorkers = decodeWorkers(opts.numWorkers, items.length);
    const augment = withItemTfms(opts.augment === false || opts.augment === null ? null : (opts.augment ?? augTransforms()), opts.itemTfms);
    const normalize = { mean: [...(opts.normalize ?? imagenetStats).mean], std: [...(opts.normalize ?? imagenetStats).std] };

    // Decode everything once; bad files are skipped and counted, never fatal.
    if (opts.validIdx !== undefined) {
      for (const i of opts.validIdx) if (!(Number.isInteger(i) && i >= 0 && i < items.length)) throw new Error(`validIdx: ${i} is not an index of the ${items.length} items`);
    }
    const decoded = await decodeFiles(
      items.map((i) => i.path),
      presize,
      method,
      { numWorkers, onProgress: opts.onProgress, quiet: opts.quiet },
    );
    const skipped: Skipped[] = [];
    const good: { item: Item; data: Buffer; index: number }[] = [];
    decoded.forEach((d, i) => {
      if (d.ok) good.push({ item: items[i], data: d.data, index: i });
      else {
        skipped.push({ path: items[i].path, reason: d.reason });
        if (!opts.quiet) console.warn(`torchlearn: skipping ${items[i].path}: ${d.reason}`);
      }
    });
    if (good.length === 0) throw new Error(`none of the ${items.length} images could be read (first: ${skipped[0].path}: ${skipped[0].reason})`);
    const labelsOf = (i: Item) => (multi ? i.labels! : [i.label]);
    const vocab = opts.vocab ?? [...new Set(items.flatMap(labelsOf))].sort();
    for (const v of new Set(items.flatMap(labelsOf))) if (!vocab.includes(v)) throw new Error(`label '${v}' is not in the vocab [${vocab.join(', ')}]`);
    for (const v of vocab) if (!good.some((g) => labelsOf(g.item).includes(v))) throw new Error(`the ${multi ? 'label' : 'class'} '${v}' has no readable images`);
    if (vocab.length < 2)
      throw new Error(multi ? `only one label in the data ('${vocab[0]}'): a multi-label classifier needs at least two` : `only one class in the data ('${vocab[0]}', ${good.length} images): a classifier needs at least two`);
    const labels = good.map((g) => (multi ? -1 : vocab.indexOf(g.item.label)));
    const hot = multi ? good.map((g) => vocab.map((v) => +g.item.labels!.includes(v))) : null;
    // the groups are stratified by class: multi-label, by each image's set of labels
    const setOf = (i: Item) => i.labels!.slice().sort().join('\u0000');
    const sets = multi ? [...new Set(good.map((g) => setOf(g.item)))].sort() : [];
    const strata = multi ? good.map((g) => sets.indexOf(setOf(g.item))) : labels;

    let split: { train: number[]; valid: number[] };
    let groups: { train: number; valid: number } | null = null;
    const byFlag = (isValid: (g: { item: Item; index: number }) => boolean) => {
      const s = { train: [] as number[], valid: [] as number[] };
      good.forEach((g, k) => (isValid(g) ? s.valid : s.train).push(k));
      return s;
    };
    if (opts.validIdx !== undefined) {
      const set = new Set(opts.validIdx);
      split = byFlag((g) => set.has(g.index));
    } else if (opts.validCol !== undefined) {
      const col = String(opts.validCol);
      split = byFlag((g) => {
        if (!(col in g.item)) throw new Error(`validCol: ${g.item.path} has no '${col}'`);
        return isValidCell(g.item[col], () => `validCol: ${g.item.path}`);
      });
    } else if (opts.splitBy !== undefined) {
      const key = opts.splitBy;
      const gs = good.map((g) => {
        const v = typeof key === 'function' ? key(g.item.path) : g.item[key];
        if (v === undefined || v === null || v === '') throw new Error(`splitBy: ${g.item.path} has no group (${typeof key === 'string' ? `item key '${key}'` : 'function returned nothing'})`);
        return String(v);
      });
      const s = groupSplit(gs, strata, validPct, seed);
      split = s;
      groups = { train: s.trainGroups.size, valid: s.validGroups.size };
    } else {
      split = randomSplit(good.length, validPct, seed);
    }
    if (split.train.length === 0) throw new Error(`no training images: all ${good.length} readable images are in the validation set`);
    // what can train but may not be what was meant
    const warnings: string[] = [];
    const present = (idx: number[]) => new Set(idx.flatMap((i) => (hot ? hot[i].flatMap((h, c) => (h ? [c] : [])) : [labels[i]])));
    const inTrain = present(split.train);
    const inValid = present(split.valid);
    const kind = multi ? 'label' : 'class';
    for (let c = 0; c < vocab.length; c++) {
      if (!inTrain.has(c)) warnings.push(`the training set has no images of ${kind} '${vocab[c]}': the model cannot learn it`);
      else if (split.valid.length && !inValid.has(c)) warnings.push(`the validation set has no images of ${kind} '${vocab[c]}': its metrics will not measure that ${kind}`);
    }
    if (!opts.quiet) for (const w of warnings) console.warn(`torchlearn: ${w}`);
    const make = (idx: number[], train: boolean) => {
      const store = imageStore(idx.length, presize);
      idx.forEach((i, k) => store.set(k, good[i].data, 3));
      return new DataSplit(idx.map((i) => good[i].item), Int32Array.from(idx.map((i) => labels[i])), store, bs, train, hot ? Uint8Array.from(idx.flatMap((i) => hot[i])) : null);
    };
    return new ImageDataLoaders(vocab, make(split.train, true), make(split.valid, false), size, bs, presize, method, augment, normalize, seed, skipped, groups, opts.device ?? 'auto', warnings);
  }

  /**
   * From images already in memory: uint8 [n, presize, presize, 3] and one label index per image
   * (for benchmarks and data that never lived in files).
   */
  static fromArrays(
    images: Uint8Array,
    labels: Int32Array,
    vocab: string[],
    opts: Omit<DataLoadersOptions, 'splitBy' | 'method' | 'onProgress' | 'quiet' | 'vocab' | 'numWorkers'> & { presize: number },
  ): ImageDataLoaders {
    const size = opts.size ?? DATA_DEFAULTS.size;
    const bs = opts.bs ?? DATA_DEFAULTS.bs;
    const p = opts.presize;
    if (images.length !== labels.length * p * p * 3) throw new Error(`fromArrays: images must hold ${labels.length}*${p}*${p}*3 bytes`);
    if (vocab.length < 2) throw new Error(`fromArrays: a classifier needs at least two classes, the vocab has ${vocab.length}`);
    labels.forEach((l, i) => {
      if (!(Number.isInteger(l) && l >= 0 && l < vocab.length)) throw new Error(`fromArrays: label ${l} of image ${i} is not an index of the vocab [0, ${vocab.length})`);
    });
    const split = randomSplit(labels.length, opts.validPct ?? 0.2, opts.seed ?? 42);
    const items = Array.from(labels, (l, i) => ({ path: `#${i}`, label: vocab[l] }));
    const make = (idx: number[], train: boolean) => {
      const store = imageStore(idx.length, p);
      idx.forEach((i, k) => store.set(k, images.subarray(i * p * p * 3, (i + 1) * p * p * 3), 3));
      return new DataSplit(idx.map((i) => items[i]), Int32Array.from(idx.map((i) => labels[i])), store, bs, train);
    };
    const augment = withItemTfms(opts.augment === false || opts.augment === null ? null : (opts.augment ?? augTransforms()), opts.itemTfms);
    const normalize = { mean: [...(opts.normalize ?? imagenetStats).mean], std: [...(opts.normalize ?? imagenetStats).std] };
    return new ImageDataLoaders(vocab, make(split.train, true), make(split.valid, false), size, bs, p, 'crop', augment, normalize, opts.seed ?? 42, [], null, opts.device ?? 'auto');
  }

  /** The number of classes (multi-label: of labels). */
  get c(): number {
    return this.vocab.length;
  }

  /** Each image has a set of labels (fromCsv / fromTable with labelDelim): binary cross-entropy, sigmoid probabilities. */
  get multiLabel(): boolean {
    return this.train.multiHot !== null;
  }

  /**
   * fast.ai's test_dl: images to predict with a learner trained on these loaders (a folder, as `folderItems`
   * reads it, or a list of paths or `{ path, label }` items), decoded and resized as the validation set.
   * Unreadable images are skipped and counted; labels outside the vocab are refused. `numWorkers` as the
   * loaders' option of that name.
   */
  async testDl(src: string | readonly (string | { path: string; label?: string; labels?: string[] })[], o: { quiet?: boolean; numWorkers?: number } = {}): Promise<TestSet> {
    const list: { path: string; label?: string; labels?: string[] }[] = typeof src === 'string' ? folderItems(src).items : src.map((s) => (typeof s === 'string' ? { path: s } : s));
    if (list.length === 0) throw new Error(`testDl: no images${typeof src === 'string' ? ` in ${src}` : ' (the list is empty)'}`);
    // multi-label loaders: labelled items carry `labels` (a folder's class names are single labels)
    const labelsOf = (i: { label?: string; labels?: string[] }) => (this.multiLabel ? i.labels : i.label === undefined ? undefined : [i.label]);
    const labelled = list.every((i) => labelsOf(i) !== undefined);
    if (labelled)
      for (const i of list)
        for (const l of labelsOf(i)!) if (!this.vocab.includes(l)) throw new Error(`testDl: ${i.path} has the label '${l}', not one of the vocab [${this.vocab.join(', ')}]`);
    const p = this.presize;
    const decoded = await decodeFiles(
      list.map((i) => i.path),
      p,
      this.method,
      { numWorkers: decodeWorkers(o.numWorkers, list.length), quiet: o.quiet },
    );
    const skipped: Skipped[] = [];
    const ok: number[] = [];
    decoded.forEach((d, k) => {
      if (d.ok) ok.push(k);
      else {
        skipped.push({ path: list[k].path, reason: d.reason });
        if (!o.quiet) console.warn(`torchlearn: skipping ${list[k].path}: ${d.reason}`);
      }
    });
    if (ok.length === 0) throw new Error(`testDl: none of the ${list.length} images could be read (first: ${skipped[0].path}: ${skipped[0].reason})`);
    const images = imageStore(ok.length, p);
    ok.forEach((k, j) => images.set(j, (decoded[k] as { data: Buffer }).data, 3));
    const items = ok.map((k) => ({ ...list[k], label: list[k].label ?? list[k].labels?.join(';') ?? '' }));
    const labels = Int32Array.from(items, (i) => (labelled && !this.multiLabel ? this.vocab.indexOf(i.label) : -1));
    const hot = this.multiLabel && labelled ? Uint8Array.from(ok.flatMap((k) => this.vocab.map((v) => +list[k].labels!.includes(v)))) : null;
    return new TestSet(items, labels, images, this.bs, labelled, skipped, p, hot);
  }

  /**
   * Writes a PNG grid of `n` training images as the model sees them (augmented, before
   * normalisation), each titled with its label. Returns the file's size in pixels.
   */
  async showBatch(o: { n?: number; path: string; split?: 'train' | 'valid'; augment?: boolean; seed?: number }): Promise<{ width: number; height: number }> {
    const split = o.split === 'valid' ? this.valid : this.train;
    const n = Math.min(o.n ?? 9, split.n);
    if (n === 0) throw new Error(`showBatch: the ${o.split ?? 'train'} set is empty`);
    const p = this.presize;
    // a random batch from the training set (seeded), the first items of the validation set
    const pick = split.train ? shuffle([...Array(split.n).keys()], rng(o.seed ?? this.seed)).slice(0, n) : [...Array(n).keys()];
    const imgs = new Uint8Array(n * p * p * 3);
    pick.forEach((j, k) => imgs.set(split.image(j), k * p * p * 3));
    const augment = (o.augment ?? split.train) && this.augment;
    const out = native.augmentImages(imgs, n, p, this.size, augment ? { aug: this.augment, seed: o.seed ?? this.seed } : {});
    const s = this.size;
    const tiles = Array.from({ length: n }, (_, i) => ({
      rgb: out.subarray(i * s * s * 3, (i + 1) * s * s * 3),
      size: s,
      title: split.multiHot ? this.vocab.filter((_v, k) => split.multiHot![pick[i] * this.c + k]).join('; ') : this.vocab[split.labels[pick[i]]],
    }));
    return writeGrid(tiles, o.path);
  }

  /** A short description: sizes per split and class, skipped files. */
  summary(): string {
    const cc = (s: DataSplit) => Object.entries(s.classCounts(this.vocab)).map(([k, v]) => `${k} ${v}`).join(', ');
    const lines = [
      `train: ${this.train.n} images (${cc(this.train)})${this.groups ? `, ${this.groups.train} groups` : ''}`,
      `valid: ${this.valid.n} images (${cc(this.valid)})${this.groups ? `, ${this.groups.valid} groups` : ''}`,
    ];
    if (this.skipped.length) lines.push(`skipped: ${this.skipped.length} unreadable file(s): ${this.skipped.map((s) => basename(s.path)).join(', ')}`);
    return lines.join('\n');
  }
}
