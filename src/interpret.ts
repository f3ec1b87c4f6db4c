// fast.ai's ClassificationInterpretation: what the model gets wrong on the validation set, as numbers
// and pictures (confusion matrix, most confused pairs, top losses with Grad-CAM).
import { argmax, confusionMatrix } from './metrics.js';
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

  /** cm[actual][predicted] */
  confusionMatrix(): number[][] {
    return confusionMatrix(this.probs, this.targets, this.numClasses);
  }

  /** Draws the confusion matrix to a PNG (`normalize`: each row as fractions). */
  plotConfusionMatrix(path: string, o: { normalize?: boolean } = {}) {
    return renderChart(confusionSpec(this.vocab, this.confusionMatrix(), o.normalize ?? false), path);
  }

  /** Off-diagonal cells with at least minVal items: [actual, predicted, count], most first. */
  mostConfused(minVal = 1): [string, string, number][] {
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
   */
  async plotTopLosses(k: number, path: string, o: { heatmap?: boolean; alpha?: number } = {}): Promise<{ width: number; height: number }> {
    const { indices } = this.topLosses(k);
    const valid = this.learn.dls.valid;
    const p = this.learn.dls.presize;
    const tiles: Tile[] = [];
    for (const i of indices) {
      const rgb = valid.images.subarray(i * p * p * 3, (i + 1) * p * p * 3);
      const actual = this.targets[i];
      const title = `${this.vocab[this.preds[i]]}/${this.vocab[actual]}\n${this.losses[i].toFixed(2)}/${this.probs[i * this.numClasses + actual].toFixed(2)}`;
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
