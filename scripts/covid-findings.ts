// Multi-label classification on the covid-chestxray collection: each PA X-ray's `finding` as a set of labels
// ('COVID-19, ARDS' is COVID-19 and ARDS; the later hierarchical 'Pneumonia/Viral/COVID-19' is all three),
// patients kept on one side of the split, binary cross-entropy on each label, and a per-label report.
//
//   npm run example:findings -- [--data DIR] [--arch resnet18] [--size N] [--bs N] [--epochs N] [--lr X]
//                               [--pretrained] [--thresh X] [--out DIR] [--seed N]
//
// A learning exercise, not a diagnostic tool.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { accuracyMulti, ClassificationInterpretation, f1ScoreMulti, ImageDataLoaders, loadLearner, visionLearner, type Arch } from '../src/index.js';
import { findingLabels, readCovidMetadata } from '../src/datasets/covid.js';

const { values: opt } = parseArgs({
  options: {
    data: { type: 'string', default: '../shared/datasets/covid-chestxray' },
    out: { type: 'string', default: 'out/covid-findings' },
    arch: { type: 'string', default: 'resnet18' },
    size: { type: 'string', default: '224' },
    bs: { type: 'string', default: '16' },
    epochs: { type: 'string', default: '6' },
    lr: { type: 'string', default: '2e-3' },
    thresh: { type: 'string', default: '0.5' },
    pretrained: { type: 'boolean', default: false },
    seed: { type: 'string', default: '42' },
  },
});
const say = (s = '') => console.log(s);
say('Findings in chest X-rays (multi-label) with torchlearn: a learning exercise, not a diagnostic tool.\n');

const meta = readCovidMetadata(join(opt.data!, 'metadata.csv'));
const items = meta.items.map((it) => ({ path: it.path, label: it.finding, labels: findingLabels(it.finding), patient: it.patient }));
say(`1. ${items.length} PA X-rays of ${new Set(items.map((i) => i.patient)).size} patients; findings with more than one label: ${items.filter((i) => i.labels.length > 1).length}`);

const seed = Number(opt.seed);
const dls = await ImageDataLoaders.fromItems(items, { splitBy: 'patient', validPct: 0.2, size: Number(opt.size), bs: Number(opt.bs), seed, quiet: true });
say(`2. ${dls.c} labels; ${dls.summary().replace(/\n/g, '\n   ')}`);
for (const w of dls.warnings) say(`   note: ${w}`);

const thresh = Number(opt.thresh);
const learn = await visionLearner(dls, opt.arch as Arch, { pretrained: opt.pretrained, seed, metrics: [accuracyMulti({ thresh }), f1ScoreMulti({ average: 'samples', thresh })], lossFunc: { thresh } });
say(`3. ${opt.arch}, ${opt.pretrained ? 'ImageNet weights, body frozen' : 'from scratch'}; fitOneCycle(${opt.epochs})`);
await learn.fitOneCycle(Number(opt.epochs), { lrMax: Number(opt.lr) });

// the yardstick: every image given the labels most training images have (here, COVID-19 alone)
const c = dls.c;
const common = dls.vocab.map((v) => dls.train.classCounts(dls.vocab)[v] > dls.train.n / 2);
const baseline = accuracyMulti({ thresh: 0.5 }).fn(Float32Array.from(dls.valid.targets, (_t, j) => +common[j % c]), dls.valid.targets, c);
say(`   yardstick: giving every image the labels most training images have (${dls.vocab.filter((_v, k) => common[k]).join(', ')}) scores accuracy_multi ${baseline.toFixed(3)}`);

const interp = await ClassificationInterpretation.fromLearner(learn);
const report = interp.labelReport();
const f = (x: number) => (Number.isNaN(x) ? '  n/a' : x.toFixed(3));
say(`\n4. per label on the validation patients (threshold ${thresh}; ROC AUC n/a where the validation set has no positive or no negative)`);
say('   label                            support  predicted  precision  recall  f1     roc_auc');
for (const r of report) say(`   ${r.label.padEnd(32)} ${String(r.support).padStart(7)}  ${String(r.predicted).padStart(9)}  ${f(r.precision).padStart(9)}  ${f(r.recall).padStart(6)}  ${f(r.f1)}  ${f(r.rocAuc)}`);

mkdirSync(opt.out!, { recursive: true });
await interp.plotTopLosses(9, join(opt.out!, 'top_losses.png'));
const exported = await learn.export(join(opt.out!, 'findings.safetensors'));
const inf = loadLearner(exported);
const sample = dls.valid.items[0];
const p = await inf.predict(sample.path);
say(`\n5. exported and loaded: ${sample.path.split('/').pop()} (finding '${sample.label}') -> labels above ${thresh}: [${p.labels!.join(', ')}]`);
writeFileSync(join(opt.out!, 'report.json'), JSON.stringify({ settings: opt, labels: dls.vocab, report, table: learn.recorder.values }, null, 2));
inf.dispose();
learn.dispose();
