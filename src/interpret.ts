// fast.ai's ClassificationInterpretation: what the model gets wrong on the validation set, as numbers
// and pictures (confusion matrix, most confused pairs, top losses with Grad-CAM; for multi-label data, a
// report and a 2x2 confusion matrix per label).
import { argmax, confusionMatrix } from './metrics.js';
import { labelReport, type LabelReport } from './multilabel.js';
import type { Learner, Preds } from './learner/learner.js';
import { confusionSpec, renderChart } from './plot/charts.js';
import { writeGrid, type Tile } from './plot/grid.js';

/** fast.ai's ClassificationInterpretation: the confusion matrix, the most confused classes and the top losses (with Grad-CAM) of a learner's validation set. */
export class ClassificationInterpretation {
  readonly preds: Int32Array;

  private constructor(
    readonly learn: Learner,
    readonly probs: Float32Array,
    readonly targets: Int32Array,
    readonly losses: Float32Array,
    readonly numClasses: number,
  ) {
    this.preds = argmax(probs, numClasses);
  }

  /** Runs the validation set once (or with test-time augmentation) and keeps predictions and per-item losses. */
  static async fromLearner(learn: Learner, o: { tta?: boolean } = {}): Promise<ClassificationInterpretation> {
    const p: Preds = o.tta ? await learn.tta() : await learn.getPreds();
    return new ClassificationInterpretation(learn, p.probs, p.targets, p.losses, p.numClasses);
  }

  /** The class names. */
  get vocab(): string[] {
    return this.learn.dls.vocab;
  }

  /** cm[actual][predicted] (one class per image; multi-label data: labelConfusion) */
  confusionMatrix(): number[][] {
    this.#single('confusionMatrix', 'labelConfusion() or labelReport()');
    return confusionMatrix(this.probs, this.targets, this.numClasses);
  }

  #single(what: string, instead: string): void {
    if (this.learn.multiLabel) throw new Error(`${what} is for one class per image; these data are multi-label: use ${instead}`);
  }
  #multi(what: string): void {
    if (!this.learn.multiLabel) throw new Error(`${what} is for multi-label data; these data have one class per image: use confusionMatrix()`);
  }

  /** Multi-label: each label's precision, recall, F1, support and ROC AUC at `thresh` (default: the learner's,
   * lossFunc.thresh), as sklearn's classification_report. */
  labelReport(thresh?: number): LabelReport[] {
    this.#multi('labelReport');
    return labelReport(this.probs, this.targets, this.vocab, thresh ?? this.#thresh());
  }

  /** Multi-label: per label, [[true negatives, false positives], [false negatives, true positives]] at `thresh`
   * (sklearn's multilabel_confusion_matrix). */
  labelConfusion(thresh?: number): Record<string, [[number, number], [number, number]]> {
    this.#multi('labelConfusion');
    const n = this.targets.length / this.numClasses;
    return Object.fromEntries(
      labelReport(this.probs, this.targets, this.vocab, thresh ?? this.#thresh()).map((r) => [r.label, [[n - r.support - (r.predicted - r.truePositives), r.predicted - r.truePositives], [r.support - r.truePositives, r.truePositives]]]),
    );
  }

  #thresh(): number {
    const d = this.learn.decoding;
    return d.multiLabel ? d.thresh : 0.5;
  }

  /** Draws the confusion matrix to a PNG (`normalize`: each row as fractions). */
  plotConfusionMatrix(path: string, o: { normalize?: boolean } = {}) {
    return renderChart(confusionSpec(this.vocab, this.confusionMatrix(), o.normalize ?? false), path);
  }

  /** Off-diagonal cells with at least minVal items: [actual, predicted, count], most first. */
  mostConfused(minVal = 1): [string, string, number][] {
    this.#single('mostConfused', 'labelConfusion() or labelReport()');
    const cm = this.confusionMatrix();
    const out: [string, string, number][] = [];
    cm.forEach((row, a) => row.forEach((n, p) => a !== p && n >= minVal && out.push([this.vocab[a], this.vocab[p], n])));
    return out.sort((x, y) => y[2] - x[2]);
  }

  /** The k largest losses: values, indices into the validation set, and file paths. */
  topLosses(k = this.losses.length): { values: number[]; indices: number[]; paths: string[] } {
    const idx = [...this.losses.keys()].sort((a, b) => this.losses[b] - this.losses[a] || a - b).slice(0, k);
    return { values: idx.map((i) => this.losses[i]), indices: idx, paths: idx.map((i) => this.learn.dls.valid.items[i].path) };
  }

  /**
   * A grid of the k worst images titled as fast.ai v1 does, "prediction/actual/loss/probability of the
   * actual class", with the Grad-CAM map of the actual class over each image (heatmap, default true).
   * Multi-label: "predicted labels/actual labels/loss/the label furthest from its target", the map of that label.
   */
  async plotTopLosses(k: number, path: string, o: { heatmap?: boolean; alpha?: number } = {}): Promise<{ width: number; height: number }> {
    const { indices } = this.topLosses(k);
    const valid = this.learn.dls.valid;
    const p = this.learn.dls.presize;
    const tiles: Tile[] = [];
    const c = this.numClasses;
    for (const i of indices) {
      const rgb = valid.image(i);
      let actual: number;
      let title: string;
      if (this.learn.multiLabel) {
        // predicted labels / actual labels, then the loss; the map is of the label the model got most wrong
        const t = this.#thresh();
        const row = (f: (k: number) => boolean) => this.vocab.filter((_v, k) => f(k)).join(';') || '-';
        const err = (k: number) => Math.abs(this.targets[i * c + k] - this.probs[i * c + k]);
        actual = [...Array(c).keys()].reduce((a, k) => (err(k) > err(a) ? k : a), 0);
        title = `${row((k) => this.probs[i * c + k] > t)}/${row((k) => this.targets[i * c + k] === 1)}\n${this.losses[i].toFixed(2)}/${this.vocab[actual]}`;
      } else {
        actual = this.targets[i];
        title = `${this.vocab[this.preds[i]]}/${this.vocab[actual]}\n${this.losses[i].toFixed(2)}/${this.probs[i * c + actual].toFixed(2)}`;
      }
      const tile: Tile = { rgb, size: p, title };
      if (o.heatmap ?? true) {
        const cam = await this.learn.gradcamRaw(rgb, actual);
        tile.heat = { map: cam.map, h: cam.h, w: cam.w, alpha: o.alpha ?? 0.6 };
      }
      tiles.push(tile);
    }
    return writeGrid(tiles, path);
  }
}
