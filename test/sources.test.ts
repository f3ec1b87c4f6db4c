import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { accuracy, ImageDataLoaders, visionLearner } from '../src/index.js';
import { makeStripes } from './helpers/fixtures.js';
import { tempDir } from './helpers/python.js';

let dir: string;
let src: string;
const quiet = { verbose: false, pretrained: false } as const;
const files = (cls: string) => readdirSync(join(src, cls)).sort();

beforeAll(async () => {
  dir = tempDir();
  src = join(dir, 'stripes');
  await makeStripes(src, 16, 40, 5);
});

describe('data sources', () => {
  it("fromFolder reads an ImageNet-style train/ and valid/ layout as its own split (fast.ai's GrandparentSplitter)", async () => {
    const root = join(dir, 'imagenet');
    for (const cls of ['horizontal', 'vertical'])
      files(cls).forEach((f, k) => {
        const side = k < 12 ? 'train' : 'valid';
        mkdirSync(join(root, side, cls), { recursive: true });
        copyFileSync(join(src, cls, f), join(root, side, cls, f));
      });
    const dls = await ImageDataLoaders.fromFolder(root, { size: 32, bs: 8 });
    expect(dls.vocab).toEqual(['horizontal', 'vertical']);
    expect([dls.train.n, dls.valid.n]).toEqual([24, 8]);
    expect(dls.valid.items.every((i) => i.path.includes(`${join(root, 'valid')}/`))).toBe(true);
    expect(dls.valid.classCounts(dls.vocab)).toEqual({ horizontal: 4, vertical: 4 });
    // other names, and what is refused
    const named = await ImageDataLoaders.fromFolder(root, { size: 32, bs: 8, train: 'train', valid: 'valid' });
    expect(named.valid.n).toBe(8);
    await expect(ImageDataLoaders.fromFolder(root, { train: 'train', valid: 'val' })).rejects.toThrow(/imagenet\/val: no such folder/);
    // a class only in train/: a warning, not an error
    mkdirSync(join(root, 'train', 'diagonal'));
    copyFileSync(join(src, 'horizontal', files('horizontal')[0]), join(root, 'train', 'diagonal', 'd.png'));
    const warned = await ImageDataLoaders.fromFolder(root, { size: 32, bs: 8, quiet: true });
    expect(warned.warnings).toEqual(["the validation set has no images of class 'diagonal': its metrics will not measure that class"]);
  });

  it('fromCsv: file and label columns by name or position, a validation column, folder and suffix; fromTable reads the same rows', async () => {
    const rows = ['horizontal', 'vertical'].flatMap((cls) => files(cls).map((f, k) => ({ file: `${cls}/${f.replace(/\.png$/, '')}`, finding: cls, is_valid: k % 4 === 0 ? 'True' : 'False', patient: `p${k}` })));
    const csv = join(dir, 'labels.csv');
    writeFileSync(csv, 'file,finding,is_valid,patient\n' + rows.map((r) => `${r.file},${r.finding},${r.is_valid},${r.patient}`).join('\n') + '\n');
    // (the images are in dir/stripes: `folder`, and the names lack the extension: `suffix`)
    const dls = await ImageDataLoaders.fromCsv(csv, { folder: 'stripes', suffix: '.png', fnCol: 'file', labelCol: 'finding', validCol: 'is_valid', size: 32, bs: 8 });
    expect([dls.train.n, dls.valid.n]).toEqual([24, 8]);
    expect(dls.valid.items.every((i) => i.is_valid === 'True')).toBe(true);
    expect(dls.train.items[0]).toMatchObject({ patient: expect.stringMatching(/^p\d+$/) }); // the row's other columns stay
    const byPos = await ImageDataLoaders.fromCsv(csv, { folder: 'stripes', suffix: '.png', validCol: 2, size: 32, bs: 8 });
    expect(byPos.valid.items.map((i) => i.path)).toEqual(dls.valid.items.map((i) => i.path));
    const table = await ImageDataLoaders.fromTable(rows, { path: src, suffix: '.png', fnCol: 'file', labelCol: 'finding', validCol: 'is_valid', size: 32, bs: 8 });
    expect(table.valid.items.map((i) => basename(i.path))).toEqual(dls.valid.items.map((i) => basename(i.path)));
    // a split by group still works through the rows' columns
    const grouped = await ImageDataLoaders.fromCsv(csv, { folder: 'stripes', suffix: '.png', splitBy: 'patient', validPct: 0.25, size: 32, bs: 8 });
    expect(grouped.groups).not.toBeNull();
    // refusals name the file, the line and the columns there are
    await expect(ImageDataLoaders.fromCsv(csv, { labelCol: 'label' })).rejects.toThrow(/labels\.csv: no column 'label' for the label column \(the columns are: file, finding, is_valid, patient\)/);
    await expect(ImageDataLoaders.fromCsv(csv, { fnCol: 7 })).rejects.toThrow(/file-name column 7 is not a column \(the table has 4: file, finding, is_valid, patient\)/);
    const holes = join(dir, 'holes.csv');
    writeFileSync(holes, 'file,finding\nhorizontal/horizontal-0,horizontal\nvertical/vertical-0,\n');
    await expect(ImageDataLoaders.fromCsv(holes, { folder: 'stripes', suffix: '.png' })).rejects.toThrow(/holes\.csv, line 3 \(vertical\/vertical-0\): the label column 'finding' is empty/);
    const badFlag = join(dir, 'flag.csv');
    writeFileSync(badFlag, 'file,finding,v\nhorizontal/horizontal-0,horizontal,maybe\n');
    await expect(ImageDataLoaders.fromCsv(badFlag, { validCol: 'v' })).rejects.toThrow(/flag\.csv, line 2, column 'v': 'maybe' is not a validation flag/);
    await expect(ImageDataLoaders.fromCsv(join(dir, 'nope.csv'))).rejects.toThrow(/nope\.csv: cannot read the CSV file \(ENOENT\)/);
    // multi-label tables (test/multilabel.test.ts trains on one): a delimiter must be something, a cell must hold a label
    await expect(ImageDataLoaders.fromTable(rows, { fnCol: 'file', labelCol: 'finding', labelDelim: '' })).rejects.toThrow(/labelDelim must not be empty/);
    const onlyDelims = rows.map((r, i) => (i === 0 ? { ...r, finding: ' | ' } : r));
    await expect(ImageDataLoaders.fromTable(onlyDelims, { fnCol: 'file', labelCol: 'finding', labelDelim: '|' })).rejects.toThrow(/the table, row 0 \([^)]*\): the label column 'finding' holds no label between the delimiters '\|'/);
  });

  it('fromNameFunc and fromPathRe label by the path; explicit validation indices; a pattern that matches nothing names the file', async () => {
    const names = [...files('horizontal').map((f) => `horizontal/${f}`), ...files('vertical').map((f) => `vertical/${f}`)];
    const byFunc = await ImageDataLoaders.fromNameFunc(src, names, (p) => (basename(p).startsWith('horizontal') ? 'h' : 'v'), { size: 32, bs: 8, validIdx: [0, 1, 16, 17] });
    expect(byFunc.vocab).toEqual(['h', 'v']);
    expect(byFunc.valid.items.map((i) => basename(i.path))).toEqual(['horizontal-0.png', 'horizontal-1.png', 'vertical-0.png', 'vertical-1.png']);
    const byRe = await ImageDataLoaders.fromPathRe(src, names, /\/([a-z]+)-\d+\.png$/, { size: 32, bs: 8, validPct: 0.25, seed: 3 });
    expect(byRe.vocab).toEqual(['horizontal', 'vertical']);
    expect(byRe.train.n + byRe.valid.n).toBe(32);
    await expect(ImageDataLoaders.fromPathRe(src, [...names, 'odd.png'], /\/([a-z]+)-\d+\.png$/)).rejects.toThrow(/stripes\/odd\.png: the pattern .* does not match this file's path/);
    await expect(ImageDataLoaders.fromNameFunc(src, names, () => 'one')).rejects.toThrow(/only one class/);
    await expect(ImageDataLoaders.fromNameFunc(src, names, (p) => p, { validIdx: [40] })).rejects.toThrow(/validIdx: 40 is not an index of the 32 items/);
    const allValid = [...Array(32).keys()];
    await expect(ImageDataLoaders.fromNameFunc(src, names, (p) => (p.includes('horiz') ? 'h' : 'v'), { validIdx: allValid })).rejects.toThrow(/no training images/);
  });
});

describe('test sets and new data on a trained learner', () => {
  it('dls.testDl: getPreds on it equals predictBatch; with labels, targets, losses and metrics; unreadable images skipped', async () => {
    const dls = await ImageDataLoaders.fromFolder(src, { size: 32, bs: 8, seed: 2 });
    const learn = await visionLearner(dls, 'resnet18', { ...quiet, seed: 0, metrics: [accuracy()] });
    await learn.fitOneCycle(2, { lrMax: 5e-3 });
    const paths = dls.valid.items.map((i) => i.path);
    writeFileSync(join(dir, 'broken.png'), 'not a png');
    const unlabelled = await dls.testDl([...paths, join(dir, 'broken.png')], { quiet: true });
    expect([unlabelled.n, unlabelled.labelled, unlabelled.skipped.length]).toEqual([paths.length, false, 1]);
    const p = await learn.getPreds({ dl: unlabelled });
    expect(p.targets).toBeUndefined();
    const direct = await learn.predictBatch(paths);
    direct.forEach((d, i) => d.probs.forEach((v, k) => expect(Math.abs(v - p.probs[i * 2 + k])).toBeLessThan(1e-5)));
    // labelled: the validation set again, so the metrics equal validate()'s
    const labelled = await dls.testDl(dls.valid.items);
    const lp = await learn.getPreds({ dl: labelled });
    expect(Array.from(lp.targets!)).toEqual(Array.from(dls.valid.labels));
    const v = await learn.validate();
    const t = await learn.validate({ dl: labelled });
    expect(t.accuracy).toBeCloseTo(v.accuracy, 10);
    expect(Math.abs(t.valid_loss - v.valid_loss)).toBeLessThan(1e-4);
    // a folder: its class sub-folders label it
    const folder = await dls.testDl(src);
    expect([folder.labelled, folder.n]).toEqual([true, 32]);
    await expect(dls.testDl([{ path: paths[0], label: 'diagonal' }])).rejects.toThrow(/has the label 'diagonal', not one of the vocab \[horizontal, vertical\]/);
    learn.dispose();
  });

  it("learn.dls = loaders at another size: fast.ai's progressive resizing; the second size trains", async () => {
    const small = await ImageDataLoaders.fromFolder(src, { size: 32, bs: 8, seed: 2 });
    const learn = await visionLearner(small, 'resnet18', { ...quiet, seed: 0, metrics: [accuracy()] });
    await learn.fitOneCycle(2, { lrMax: 5e-3 });
    const big = await ImageDataLoaders.fromFolder(src, { size: 48, bs: 4, seed: 2 });
    learn.dls = big;
    expect([learn.dls.size, learn.bs]).toEqual([48, 4]);
    const before = await learn.validate();
    await learn.fitOneCycle(3, { lrMax: 2e-3 });
    const after = await learn.validate();
    expect(learn.recorder.rawLosses.every(Number.isFinite)).toBe(true);
    // (the recorder keeps the last fit: 4 images a batch at 48 px, twice the batches of an epoch at 32 px)
    expect(learn.recorder.rawLosses.length).toBe(3 * Math.floor(big.train.n / 4));
    console.log(`progressive resizing: valid accuracy ${before.accuracy.toFixed(3)} at 48 px before training there, ${after.accuracy.toFixed(3)} after`);
    expect(after.accuracy).toBeGreaterThanOrEqual(0.75);
    const other = await ImageDataLoaders.fromNameFunc(src, ['horizontal/horizontal-0.png', 'vertical/vertical-0.png', 'horizontal/horizontal-1.png', 'vertical/vertical-1.png'], (p) => (p.includes('horiz') ? 'a' : 'b'), { size: 32, validPct: 0 });
    expect(() => (learn.dls = other)).toThrow(/the new loaders' classes \[a, b\] are not the learner's \[horizontal, vertical\]/);
    learn.dispose();
    // The graph step (run without capture on the CPU) follows the new shape: it takes its 3 ordinary warm-up
    // steps again, then steps every batch.
    const g = await visionLearner(small, 'resnet18', { ...quiet, seed: 0, cudaGraph: true });
    await g.fitOneCycle(1, { lrMax: 5e-3 });
    g.dls = big;
    await g.fitOneCycle(2, { lrMax: 2e-3 });
    const n = Math.floor(big.train.n / 4);
    expect(g.recorder.graphs.map((e) => e.steps)).toEqual([n - 3, n]);
    expect(g.recorder.rawLosses.every(Number.isFinite)).toBe(true);
    g.dispose();
  });
});
