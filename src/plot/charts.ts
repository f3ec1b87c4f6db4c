// Charts with Vega-Lite, rendered headless to SVG and rasterised by sharp: a `.svg` path gets the
// SVG, any other path a PNG at twice the chart's size.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import sharp from 'sharp';
import type { TopLevelSpec } from 'vega-lite';

const FONT = 'DejaVu Sans, sans-serif';

export async function renderChart(spec: Record<string, unknown>, path: string): Promise<{ width: number; height: number }> {
  const full = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    background: 'white',
    padding: 10,
    config: { font: FONT, axis: { labelFontSize: 11, titleFontSize: 12 }, title: { fontSize: 14 }, legend: { labelFontSize: 11 } },
    ...spec,
  } as TopLevelSpec;
  // loaded on first use: training does not pay for the charting library's start-up
  const [vega, vegaLite] = await Promise.all([import('vega'), import('vega-lite')]);
  const view = new vega.View(vega.parse(vegaLite.compile(full).spec), { renderer: 'none' });
  const svg = await view.toSVG(2);
  mkdirSync(dirname(path), { recursive: true });
  if (path.endsWith('.svg')) {
    writeFileSync(path, svg);
    const m = /width="([\d.]+)" height="([\d.]+)"/.exec(svg);
    return { width: Number(m?.[1] ?? 0), height: Number(m?.[2] ?? 0) };
  }
  const info = await sharp(Buffer.from(svg)).png().toFile(path);
  return { width: info.width, height: info.height };
}

/** Loss against learning rate (log x), with fast.ai's suggestions marked. */
export function lrFindSpec(lrs: number[], losses: number[], suggestions: Record<string, number>, skipEnd = 5): Record<string, unknown> {
  const n = Math.max(2, lrs.length - skipEnd);
  const curve = lrs.slice(0, n).map((lr, i) => ({ lr, loss: losses[i] }));
  const interp = (x: number) => {
    let k = 0;
    while (k + 1 < n - 1 && lrs[k + 1] < x) k++;
    const t = (Math.log(x) - Math.log(lrs[k])) / (Math.log(lrs[k + 1]) - Math.log(lrs[k]) || 1);
    return losses[k] + Math.min(1, Math.max(0, t)) * (losses[k + 1] - losses[k]);
  };
  const points = Object.entries(suggestions).map(([name, lr]) => ({
    name: `${name}: ${lr.toExponential(2)}`,
    lr: name === 'minimum' ? lr * 10 : lr, // fast.ai plots the minimum at the undivided lr
    loss: interp(name === 'minimum' ? lr * 10 : lr),
  }));
  return {
    width: 480,
    height: 300,
    title: 'Learning rate finder',
    layer: [
      { data: { values: curve }, mark: { type: 'line', color: '#1f77b4' }, encoding: { x: { field: 'lr', type: 'quantitative', scale: { type: 'log' }, title: 'Learning Rate' }, y: { field: 'loss', type: 'quantitative', scale: { zero: false }, title: 'Loss' } } },
      { data: { values: points }, mark: { type: 'point', filled: true, size: 90 }, encoding: { x: { field: 'lr', type: 'quantitative' }, y: { field: 'loss', type: 'quantitative' }, color: { field: 'name', type: 'nominal', title: 'suggestion' } } },
    ],
  };
}

/** Training loss per batch and validation loss per epoch (fast.ai's plot_loss). */
export function lossesSpec(trainLosses: number[], validLosses: { iter: number; loss: number }[]): Record<string, unknown> {
  const values = [
    ...trainLosses.map((loss, i) => ({ iter: i + 1, loss, series: 'train' })),
    ...validLosses.map((v) => ({ iter: v.iter, loss: v.loss, series: 'valid' })),
  ];
  return {
    width: 480,
    height: 300,
    title: 'Losses',
    data: { values },
    mark: { type: 'line', point: validLosses.length < 30 },
    encoding: {
      x: { field: 'iter', type: 'quantitative', title: 'Batches processed' },
      y: { field: 'loss', type: 'quantitative', title: 'Loss', scale: { zero: false } },
      color: { field: 'series', type: 'nominal', title: null },
    },
  };
}

/** The learning rate (per layer group) and momentum over the batches of the last fit. */
export function schedSpec(lrs: number[][], moms: number[]): Record<string, unknown> {
  const lrValues = lrs.flatMap((row, i) => row.map((lr, g) => ({ iter: i + 1, value: lr, series: `group ${g}` })));
  const momValues = moms.map((m, i) => ({ iter: i + 1, value: m }));
  return {
    title: 'Schedule',
    hconcat: [
      { width: 320, height: 240, data: { values: lrValues }, mark: 'line', encoding: { x: { field: 'iter', type: 'quantitative', title: 'Batch' }, y: { field: 'value', type: 'quantitative', title: 'Learning rate', scale: { type: 'log' } }, color: { field: 'series', type: 'nominal', title: null } } },
      { width: 320, height: 240, data: { values: momValues }, mark: 'line', encoding: { x: { field: 'iter', type: 'quantitative', title: 'Batch' }, y: { field: 'value', type: 'quantitative', title: 'Momentum (beta1)', scale: { zero: false } } } },
    ],
  };
}

/** Each metric per epoch. */
export function metricsSpec(names: string[], values: number[][]): Record<string, unknown> {
  const rows = values.flatMap((row, e) => names.map((n, k) => ({ epoch: e, metric: n, value: row[k] })));
  return {
    width: 480,
    height: 300,
    title: 'Metrics',
    data: { values: rows },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'epoch', type: 'quantitative', title: 'Epoch', axis: { tickMinStep: 1 } },
      y: { field: 'value', type: 'quantitative', title: 'Value' },
      color: { field: 'metric', type: 'nominal', title: null },
    },
  };
}

/** fast.ai's plot_confusion_matrix: rows actual, columns predicted, Blues, counts (or row-normalised) in the cells. */
export function confusionSpec(vocab: string[], cm: number[][], normalize = false): Record<string, unknown> {
  const values = cm.flatMap((row, a) => {
    const sum = row.reduce((x, y) => x + y, 0) || 1;
    return row.map((v, p) => ({ actual: vocab[a], predicted: vocab[p], value: normalize ? v / sum : v, label: normalize ? (v / sum).toFixed(2) : String(v) }));
  });
  const max = Math.max(...values.map((v) => v.value));
  const side = Math.max(200, 90 * vocab.length);
  return {
    width: side,
    height: side,
    title: normalize ? 'Normalized confusion matrix' : 'Confusion matrix',
    data: { values },
    encoding: {
      x: { field: 'predicted', type: 'nominal', title: 'Predicted', sort: vocab, axis: { labelAngle: -30 } },
      y: { field: 'actual', type: 'nominal', title: 'Actual', sort: vocab },
    },
    layer: [
      { mark: 'rect', encoding: { color: { field: 'value', type: 'quantitative', scale: { scheme: 'blues', domainMin: 0 }, legend: null } } },
      { mark: { type: 'text', fontSize: 16 }, encoding: { text: { field: 'label' }, color: { condition: { test: `datum.value > ${max / 2}`, value: 'white' }, value: 'black' } } },
    ],
  };
}
