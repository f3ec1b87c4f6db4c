// The seed experiment, in TypeScript: detecting COVID-19 in chest X-rays (posteroanterior views of the
// covid-chestxray collection) by transfer learning a ResNet50, the fast.ai way.
//
//   npm run example -- [--data DIR] [--out DIR] [--pretrained resnet50.pth] [--size N] [--bs N]
//                      [--epochs a,b] [--lr X] [--split patient|random] [--device auto|cpu|cuda] [--seed N]
//                      [--tensorboard DIR] [--mixup]
//
// A learning exercise, not a diagnostic tool.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  ClassificationInterpretation,
  ImageDataLoaders,
  accuracy,
  confusionMatrix,
  csvLogger,
  tensorBoard,
  mixUp,
  f1Score,
  loadLearner,
  precision,
  recall,
  rocAucBinary,
  torchInfo,
  TORCHVISION_WEIGHTS,
  visionLearner,
  type Arch,
} from '../src/index.js';
import { readCovidMetadata, segregateByLabel } from '../src/datasets/covid.js';

const { values: opt } = parseArgs({
  options: {
    data: { type: 'string' },
    out: { type: 'string', default: 'out/covid-xray' },
    pretrained: { type: 'string' },
    size: { type: 'string' },
    bs: { type: 'string' },
    epochs: { type: 'string' },
    lr: { type: 'string' },
    'lr-find-iters': { type: 'string' },
    split: { type: 'string', default: 'patient' },
    device: { type: 'string', default: 'auto' },
    seed: { type: 'string', default: '42' },
    arch: { type: 'string', default: 'resnet50' },
    // both fits as TensorBoard event files in this folder (tensorboard --logdir DIR)
    tensorboard: { type: 'string' },
    // fast.ai's MixUp (alpha 0.4) in both fits
    mixup: { type: 'boolean', default: false },
    limit: { type: 'string' },
    // the training step is a CUDA graph by default on CUDA (visionLearner's cudaGraph); this turns it off
    'no-cuda-graph': { type: 'boolean', default: false },
  },
});

const started = Date.now();
const timings: Record<string, number> = {};
const lap = (name: string, t0: number) => (timings[name] = (Date.now() - t0) / 1000);
const say = (s = '') => console.log(s);
const info = torchInfo();
const onGpu = opt.device === 'cuda' || (opt.device === 'auto' && info.cuda);

say('COVID-19 in chest X-rays with torchlearn: a learning exercise, not a diagnostic tool.');
say('Do not use it, or any model trained on this collection, to make clinical decisions.\n');

// Defaults: the seed's settings on a GPU; on a CPU smaller images, batches and LR finder, so that the
// whole run takes minutes on two cores.
const size = Number(opt.size ?? (onGpu ? 224 : 128));
const bs = Number(opt.bs ?? (onGpu ? 64 : 16));
const [epochs1, epochs2] = (opt.epochs ?? '4,2').split(',').map(Number);
const lrFindIters = Number(opt['lr-find-iters'] ?? (onGpu ? 100 : 40));
const seed = Number(opt.seed);
const arch = opt.arch as Arch;
say(`LibTorch ${info.torchVersion} on ${onGpu ? `${info.deviceName ?? 'CUDA'}` : `the CPU (${info.threads} threads)`}`);
say(`settings: ${arch}, size ${size}, batch ${bs}, epochs ${epochs1}+${epochs2}, LR finder ${lrFindIters} iterations, split by ${opt.split}, seed ${seed}` +
    (onGpu || opt.size ? '' : ' (CPU defaults: --size 224 --bs 64 --lr-find-iters 100 for the full experiment)'));

// --- 1. metadata.csv -> labelled folders --------------------------------------------------------------
const data = resolve(opt.data ?? '../shared/datasets/covid-chestxray');
if (!existsSync(join(data, 'metadata.csv'))) {
  console.error(`No covid-chestxray collection at ${data} (metadata.csv and images/).\n` +
    'Get it from github.com/ieee8023/covid-chestxray-dataset (a June 2020 snapshot matches the README) and pass --data DIR.');
  process.exit(1);
}
let t = Date.now();
const meta = readCovidMetadata(join(data, 'metadata.csv'));
let items = meta.items;
if (opt.limit) items = items.filter((_, i) => i % Math.max(1, Math.floor(meta.items.length / Number(opt.limit))) === 0).slice(0, Number(opt.limit));
say(`\n1. metadata.csv: ${meta.rows} rows; kept ${meta.kept} X-ray PA images`);
say(`   dropped: ${meta.dropped.modality} not X-ray, ${meta.dropped.view} not PA (or no view), ${meta.dropped.folder} not in images/, ` +
    `${meta.dropped.finding} without a finding (todo/Unknown), ${meta.dropped.duplicate} naming a file already listed; ${meta.missingFiles.length} image files missing`);
say(`   per class: covid_positive ${meta.perClass.covid_positive}, covid_negative ${meta.perClass.covid_negative}`);
const out = resolve(opt.out!);
const folders = join(out, 'images');
const seg = segregateByLabel(items, folders);
say(`   labelled folders in ${folders}: ${Object.entries(seg.perClass).map(([k, v]) => `${k}/ ${v}`).join(', ')} (${seg.created} new links)`);
const patientOf = new Map([...seg.files].map(([target, src]) => [target, items.find((i) => i.path === src)!.patient]));
lap('metadata', t);

// --- 2. data loaders -----------------------------------------------------------------------------------
t = Date.now();
const dls = await ImageDataLoaders.fromFolder(folders, {
  size, bs, seed, validPct: 0.2,
  splitBy: opt.split === 'random' ? undefined : (file) => patientOf.get(file)!,
});
lap('data', t);
say(`\n2. data loaders (${timings.data.toFixed(1)} s to decode and cache ${dls.train.n + dls.valid.n} images at ${dls.presize} px)`);
say('   ' + dls.summary().split('\n').join('\n   '));
await dls.showBatch({ n: 9, path: join(out, 'batch.png') });
say(`   a batch as the model sees it: ${join(out, 'batch.png')}`);

// --- 3. the learner ------------------------------------------------------------------------------------
// torchvision's ImageNet weights unless --pretrained names a file: from PyTorch's hub cache, else downloaded
// into it. Offline (this project's own machines), the example alone trains from scratch, and says so.
const learnerOptions = {
  metrics: [precision(), recall()],
  device: opt.device,
  seed,
  modelDir: join(out, 'models'),
  cudaGraph: opt['no-cuda-graph'] ? false : undefined,
};
let pretrained: string | false = opt.pretrained ?? TORCHVISION_WEIGHTS[arch];
let learn;
try {
  learn = await visionLearner(dls, arch, { ...learnerOptions, pretrained: opt.pretrained ?? true });
  say(`\n3. ${arch} with ImageNet weights (${opt.pretrained ?? TORCHVISION_WEIGHTS[arch]}), body frozen`);
} catch (e) {
  if (opt.pretrained) throw e;
  pretrained = false;
  say(`\n3. !!! No ImageNet weights: ${(e as Error).message.split('\n')[0]}`);
  say(`   !!! The ${arch} body trains FROM SCRATCH: on ~230 images, expect little better than predicting the majority`);
  say(`   !!! class. With a network the weights download by themselves; offline, put ${TORCHVISION_WEIGHTS[arch]} in PyTorch's`);
  say(`   !!! hub cache (torchlearn weights list shows where) or pass --pretrained FILE.`);
  learn = await visionLearner(dls, arch, { ...learnerOptions, pretrained: false });
}

// Ctrl-C stops after the current batch, leaving a consistent model.
const stop = new AbortController();
let lastCheckpoint = '(none yet)';
process.once('SIGINT', () => {
  say(`\nstopping after the current batch; the last checkpoint is ${lastCheckpoint}`);
  stop.abort();
});

// --- 4. train: frozen, then unfrozen with discriminative learning rates ---------------------------------
t = Date.now();
say(`\n4. fitOneCycle(${epochs1})`);
// history.csv: fast.ai's CSVLogger, one line per epoch of both fits, written as each epoch ends
const history = join(out, 'history.csv');
const extraCbs = [...(opt.tensorboard ? [tensorBoard({ logDir: opt.tensorboard })] : []), ...(opt.mixup ? [mixUp()] : [])];
await learn.fitOneCycle(epochs1, { signal: stop.signal, cbs: [csvLogger({ fname: history }), ...extraCbs] });
lastCheckpoint = await learn.save('stage-1');
lap('stage1', t);
if (stop.signal.aborted) process.exit(130);

learn.unfreeze();
t = Date.now();
const lrf = await learn.lrFind({ numIt: lrFindIters, signal: stop.signal });
await lrf.plot(join(out, 'lr_find.png'));
lap('lrFind', t);
const lr = opt.lr ? Number(opt.lr) : lrf.suggestions.valley;
say(`   lrFind: valley ${lrf.suggestions.valley.toExponential(2)}, minimum/10 ${lrf.suggestions.minimum.toExponential(2)}, ` +
    `steep ${lrf.suggestions.steep.toExponential(2)} -> ${join(out, 'lr_find.png')}`);
say(`   fitOneCycle(${epochs2}, { lrMax: [${(lr / 10).toExponential(2)}, ${lr.toExponential(2)}] })${opt.lr ? ' (--lr)' : ' (the valley suggestion)'}`);
t = Date.now();
await learn.fitOneCycle(epochs2, { lrMax: [lr / 10, lr], signal: stop.signal, cbs: [csvLogger({ fname: history, append: true }), ...extraCbs] });
lastCheckpoint = await learn.save('stage-2');
lap('stage2', t);
if (stop.signal.aborted) process.exit(130);

// --- 5. interpretation ----------------------------------------------------------------------------------
t = Date.now();
const interp = await ClassificationInterpretation.fromLearner(learn);
await interp.plotConfusionMatrix(join(out, 'confusion_matrix.png'));
await interp.plotTopLosses(Math.min(9, dls.valid.n), join(out, 'top_losses.png'), { heatmap: true });
await learn.showResults({ n: 9, path: join(out, 'results.png') });
const { probs, targets, numClasses } = interp;
const valid = {
  accuracy: accuracy().fn(probs, targets, numClasses),
  precision: precision().fn(probs, targets, numClasses),
  recall: recall().fn(probs, targets, numClasses),
  f1: f1Score().fn(probs, targets, numClasses),
  rocAuc: rocAucBinary().fn(probs, targets, numClasses),
};
const counts = dls.valid.classCounts(dls.vocab);
const majority = Math.max(...Object.values(counts)) / dls.valid.n;
lap('interpretation', t);
say('\n5. on the validation ' + (opt.split === 'random' ? 'images' : 'patients'));
say(`   confusion matrix (rows actual, columns predicted; ${dls.vocab.join(', ')}): ${JSON.stringify(interp.confusionMatrix())}`);
say(`   most confused: ${JSON.stringify(interp.mostConfused())}`);
say(`   accuracy ${valid.accuracy.toFixed(3)} (always predicting the majority class: ${majority.toFixed(3)}), ` +
    `precision ${valid.precision.toFixed(3)}, recall ${valid.recall.toFixed(3)}, F1 ${valid.f1.toFixed(3)}, ROC AUC ${valid.rocAuc.toFixed(3)}`);
say(`   class balance: ${Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(', ')}`);
say(`   pictures: ${['confusion_matrix.png', 'top_losses.png', 'results.png'].map((f) => join(out, f)).join(', ')}; epochs: ${history}`);

// --- 6. export, load it back, predict one validation image ---------------------------------------------
const exportPath = await learn.export(join(out, 'export.safetensors'));
const inf = loadLearner(exportPath, { device: opt.device });
const sample = dls.valid.items[0].path;
const pred = await inf.predict(sample);
say(`\n6. exported to ${exportPath}; loadLearner + predict(${basename(sample)}) -> ${pred.label} ` +
    `(${dls.vocab.map((v, i) => `${v} ${pred.probs[i].toFixed(3)}`).join(', ')}; actual ${dls.valid.items[0].label})`);
inf.dispose();

// --- 7. metrics.json -------------------------------------------------------------------------------------
timings.total = (Date.now() - started) / 1000;
const report = {
  disclaimer: 'A learning exercise on a small public collection; not a diagnostic tool.',
  settings: { arch, size, bs, epochs: [epochs1, epochs2], lrFindIters, lr, split: opt.split, seed, pretrained, device: learn.device, precision: learn.bf16 ? 'bf16' : 'fp32', cudaGraph: learn.cudaGraph },
  torch: { version: info.torchVersion, source: info.torchSource, cuda: info.cuda, deviceName: info.deviceName ?? null, threads: info.threads },
  metadata: { rows: meta.rows, kept: meta.kept, dropped: meta.dropped, missingFiles: meta.missingFiles.length, perClass: meta.perClass, used: items.length },
  split: { train: dls.train.classCounts(dls.vocab), valid: counts, groups: dls.groups, skipped: dls.skipped.length },
  history: { names: learn.recorder.metricNames, stage2: learn.recorder.values },
  lrFind: { suggestions: lrf.suggestions, used: lr },
  valid: { ...valid, majorityBaseline: majority, confusionMatrix: confusionMatrix(probs, targets, numClasses), vocab: dls.vocab },
  prediction: { file: sample, label: pred.label, probs: Array.from(pred.probs) },
  timings,
};
mkdirSync(out, { recursive: true });
writeFileSync(join(out, 'metrics.json'), JSON.stringify(report, null, 2));
say(`\n7. everything above is in ${join(out, 'metrics.json')} (total ${timings.total.toFixed(0)} s)`);
learn.dispose();
