// What the last fit did, per training batch and per epoch (fast.ai's learn.recorder).
import type { NativeEpochResult } from '../binding.js';
import { lossesSpec, metricsSpec, renderChart, schedSpec } from '../plot/charts.js';

/** fast.ai's Recorder: the learning rates, momentums and losses of every batch, and the metrics of every epoch, with their plots. */
export class Recorder {
  /** per training batch: one learning rate per layer group */
  lrs: number[][] = [];
  /** per training batch: beta1 */
  moms: number[] = [];
  /** per training batch: fast.ai's smoothed loss */
  losses: number[] = [];
  /** per training batch: the raw loss */
  rawLosses: number[] = [];
  /** per epoch: the values of the results table after `epoch` (train_loss, valid_loss, metrics...) */
  values: number[][] = [];
  /** the names of `values`' columns */
  metricNames: string[] = [];
  /** batches processed at the end of each epoch (where the valid loss is drawn) */
  iters: number[] = [];
  /** seconds of training (no validation) per epoch */
  trainSeconds: number[] = [];
  /** seconds per epoch, training and validation */
  epochSeconds: number[] = [];
  /** per epoch, with fit(..., { profile: true }): seconds per phase and memory-layout checks */
  profiles: NonNullable<NativeEpochResult['profile']>[] = [];
  /** per epoch, with the cudaGraph option: steps taken by the graph, whether it was captured, a capture error */
  graphs: NonNullable<NativeEpochResult['graph']>[] = [];

  /** Forgets everything (a new fit). */
  reset(metricNames: string[]): void {
    this.lrs = [];
    this.moms = [];
    this.losses = [];
    this.rawLosses = [];
    this.values = [];
    this.iters = [];
    this.trainSeconds = [];
    this.epochSeconds = [];
    this.profiles = [];
    this.graphs = [];
    this.metricNames = metricNames;
  }

  /** Training loss per batch and validation loss per epoch. */
  plotLosses(path: string) {
    const vi = this.metricNames.indexOf('valid_loss');
    return renderChart(lossesSpec(this.losses, this.values.map((v, e) => ({ iter: this.iters[e], loss: v[vi] }))), path);
  }

  /** Learning rate per group and momentum over the batches. */
  plotSched(path: string) {
    return renderChart(schedSpec(this.lrs, this.moms), path);
  }

  /** Every metric per epoch. */
  plotMetrics(path: string) {
    const names = this.metricNames.filter((n) => n !== 'train_loss');
    const idx = names.map((n) => this.metricNames.indexOf(n));
    return renderChart(metricsSpec(names, this.values.map((row) => idx.map((i) => row[i]))), path);
  }
}
