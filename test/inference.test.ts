import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, extname, join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { accuracy, folderItems, ImageDataLoaders, loadLearner, readWeightFile, visionLearner, type Learner } from '../src/index.js';
import { readTrace } from '../src/bench.js';
import { decodeAll } from '../src/data/images.js';
import { makeStripes } from './helpers/fixtures.js';
import { tempDir } from './helpers/python.js';

let dir: string;
let dls: ImageDataLoaders;
let learn: Learner;
let exported: string;

beforeAll(async () => {
  dir = tempDir();
  await makeStripes(join(dir, 's'), 30, 48, 2);
  dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 16, seed: 1 });
  learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, metrics: [accuracy()], seed: 0, modelDir: join(dir, 'models') });
  await learn.fitOneCycle(4, { lrMax: 5e-3 });
  exported = await learn.export(join(dir, 'export.safetensors'));
});

describe('export and loadLearner', () => {
  it('writes one .safetensors with everything prediction needs in its metadata', () => {
    const f = readWeightFile(exported);
    expect(f.format).toBe('safetensors');
    expect(f.metadata).toMatchObject({ format: 'torchlearn-export-v1', arch: 'resnet18', size: '32', presize: '40', method: 'crop' });
    expect(JSON.parse(f.metadata.vocab)).toEqual(['horizontal', 'vertical']);
    expect(JSON.parse(f.metadata.mean)).toEqual([0.485, 0.456, 0.406]);
    expect(f.metadata.torchVersion).toMatch(/^\d/);
    expect(f.tensors.some((t) => t.name.startsWith('opt.'))).toBe(false);
  });

  it("a loaded export predicts what the trained learner predicts, for the same files", async () => {
    const files = dls.valid.items.map((i) => i.path);
    const inf = loadLearner(exported, { device: 'cpu' });
    const a = await learn.predictBatch(files);
    const b = await inf.predictBatch(files);
    let worst = 0;
    a.forEach((p, i) => {
      expect(b[i].label).toBe(p.label);
      p.probs.forEach((v, k) => (worst = Math.max(worst, Math.abs(v - b[i].probs[k]))));
    });
    expect(worst).toBeLessThan(1e-5);
    // predictImages on the same decoded bytes: what predictBatch computes (the worker reads the caller's
    // array, which stays referenced until the Promise settles)
    const p = inf.info.presize;
    const dec = await decodeAll(files, p, inf.info.method);
    const raw = new Uint8Array(files.length * p * p * 3);
    dec.forEach((d, k) => raw.set((d as { data: Buffer }).data, k * p * p * 3));
    const fromBytes = await inf.predictImages(raw, files.length);
    fromBytes.forEach((q, i) => q.probs.forEach((v, k) => expect(v).toBe(b[i].probs[k])));
    await expect(inf.predictImages(raw.subarray(1), files.length)).rejects.toThrow(/images holds \d+ bytes, expected \d+ images of 40x40x3/);
    await expect(inf.predictImages(new Float32Array(raw.length) as unknown as Uint8Array, files.length)).rejects.toThrow(/images must be a Uint8Array/);
    // in forward passes of 3 images (the chunks' probabilities are gathered in order)
    const small = loadLearner(exported, { device: 'cpu', bs: 3 });
    const c = await small.predictBatch(files);
    c.forEach((p, i) => p.probs.forEach((v, k) => expect(Math.abs(v - b[i].probs[k])).toBeLessThan(1e-5)));
    // traced, the same call writes its operator table: one forward per chunk (a ResNet18 has 20 convolutions)
    const tracePath = join(dir, 'predict-trace.json');
    const traced = await small.predictImages(raw, files.length, { trace: tracePath });
    traced.forEach((q, i) => q.probs.forEach((v, k) => expect(v).toBe(c[i].probs[k])));
    const t = readTrace(tracePath);
    const calls = (name: string) => t.ops.find((o) => o.name === name && o.device === 'cpu')?.count;
    expect(t.steps).toBe(1);
    expect(calls('aten::conv2d')).toBe(20 * Math.ceil(files.length / 3));
    expect(calls('aten::upsample_bilinear2d')).toBe(Math.ceil(files.length / 3));
    // on the CPU each BatchNorm of the body runs folded into its convolution: only the head's 2 remain (of
    // 22 in a ResNet18 + head), with the same probabilities as the unfolded network to float rounding
    expect(calls('aten::batch_norm')).toBe(2 * Math.ceil(files.length / 3));
    const unfolded = loadLearner(exported, { device: 'cpu', bs: 3, foldBatchNorm: false });
    const uPath = join(dir, 'predict-trace-unfolded.json');
    const u = await unfolded.predictImages(raw, files.length, { trace: uPath });
    u.forEach((q, i) => q.probs.forEach((v, k) => expect(Math.abs(v - c[i].probs[k])).toBeLessThan(1e-5)));
    expect(readTrace(uPath).ops.find((o) => o.name === 'aten::batch_norm' && o.device === 'cpu')?.count).toBe(22 * Math.ceil(files.length / 3));
    unfolded.dispose();
    small.dispose();
    const one = await inf.predict(files[0]);
    expect(one.label).toBe(a[0].label);
    expect(one.index).toBe(inf.vocab.indexOf(one.label));
    // the bytes of an encoded image file (an upload, say) predict what the file does
    const fromBytes1 = await inf.predict(readFileSync(files[0]));
    expect(Array.from(fromBytes1.probs)).toEqual(Array.from(one.probs));
    (await learn.predict(new Uint8Array(readFileSync(files[0])))).probs.forEach((v, k) => expect(Math.abs(v - a[0].probs[k])).toBeLessThan(1e-5));
    await expect(inf.predictBatch([files[0], Buffer.from('not an image')])).rejects.toThrow(/cannot read image image bytes #1 \(12 bytes\)/);
    const g = await inf.getPreds(dls.valid.items);
    expect(g.targets!.length).toBe(files.length);
    g.losses!.forEach((l, i) => expect(l).toBeCloseTo(-Math.log(Math.max(1e-30, g.probs[i * 2 + g.targets![i]])), 4));
    // a folder: its class sub-folders are labelled items, the pictures lying in it unlabelled ones
    const all = await inf.getPreds(join(dir, 's'));
    const byItems = await inf.getPreds(folderItems(join(dir, 's')).items);
    expect(all.targets!.length).toBe(60);
    expect(Array.from(all.probs)).toEqual(Array.from(byItems.probs));
    expect(Array.from(all.targets!)).toEqual(Array.from(byItems.targets!));
    const flat = join(dir, 'flat');
    mkdirSync(flat);
    files.slice(0, 3).forEach((f, k) => copyFileSync(f, join(flat, `x${k}${extname(f)}`)));
    writeFileSync(join(flat, 'notes.txt'), 'not a picture');
    const loose = await inf.getPreds(flat);
    expect(loose.probs.length).toBe(3 * 2);
    expect(loose.targets).toBeUndefined();
    expect(loose.skipped).toEqual([]);
    mkdirSync(join(dir, 'empty'));
    await expect(inf.getPreds(join(dir, 'empty'))).rejects.toThrow(/no images in .*empty/);
    await expect(inf.getPreds(join(dir, 'missing'))).rejects.toThrow(/missing: cannot read the image folder \(ENOENT\)/);
    // the learner's own predictions on its validation set agree too
    const v = await learn.getPreds();
    v.probs.forEach((p, i) => expect(Math.abs(p - g.probs[i])).toBeLessThan(1e-5));
    inf.dispose();
    await expect(inf.predict(files[0])).rejects.toThrow(/disposed/);
  });

  it('tta: n augmented passes averaged, then lerp with the plain pass (beta 0.25)', async () => {
    const plain = await learn.getPreds();
    const t = await learn.tta({ n: 2, beta: 1 });
    plain.probs.forEach((p, i) => expect(t.probs[i]).toBeCloseTo(p, 6)); // beta 1 = the plain pass
    const t2 = await learn.tta({ n: 3 });
    expect(t2.probs.length).toBe(plain.probs.length);
    for (let i = 0; i < t2.probs.length; i += 2) expect(t2.probs[i] + t2.probs[i + 1]).toBeCloseTo(1, 5);
    // a loaded export does the same on files, with the training transforms its metadata records
    const inf = loadLearner(exported, { device: 'cpu' });
    const items = dls.valid.items;
    const p0 = await inf.getPreds(items);
    const same = await inf.getPreds(items, { tta: { n: 2, beta: 1 } });
    same.probs.forEach((p, i) => expect(p).toBeCloseTo(p0.probs[i], 6));
    await expect(inf.getPreds(items, { tta: { n: 0 } })).rejects.toThrow(/tta: n must be a positive integer, got 0/);
    inf.dispose();
    // The passes are augmented. Seen on a model that has not learnt the task: the trained one is so sure that
    // its probabilities round to 0 and 1 (with OpenBLAS, augmented and plain were 2.6e-9 apart), while an
    // untrained head's are near 0.5, where any change of the input shows.
    const fresh = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 1 });
    const freshExport = await fresh.export(join(dir, 'untrained.safetensors'));
    fresh.dispose();
    const raw = loadLearner(freshExport, { device: 'cpu' });
    const r0 = await raw.getPreds(items);
    const aug = await raw.getPreds(items, { tta: { n: 3, beta: 0 } });
    expect(Math.max(...aug.probs.map((p, i) => Math.abs(p - r0.probs[i])))).toBeGreaterThan(1e-4);
    for (let i = 0; i < aug.probs.length; i += 2) expect(aug.probs[i] + aug.probs[i + 1]).toBeCloseTo(1, 5);
    aug.losses!.forEach((l, i) => expect(l).toBeCloseTo(-Math.log(aug.probs[i * 2 + aug.targets![i]]), 4));
    raw.dispose();
  });

  it('refuses a checkpoint or weights instead of an export, and names bad images', async () => {
    const ck = await learn.save('stage-1');
    expect(() => loadLearner(ck)).toThrow(/checkpoint from learn\.save\(\)/);
    expect(() => loadLearner(exported, { bs: 0 })).toThrow(/loadLearner: bs must be a positive integer, got 0/);
    expect(() => loadLearner(exported, { precision: 'fp16' as 'fp32' })).toThrow(/precision must be 'bf16' or 'fp32', got 'fp16'/);
    writeFileSync(join(dir, 'bad.jpg'), 'nope');
    const inf = loadLearner(exported, { device: 'cpu' });
    await expect(inf.predict(join(dir, 'bad.jpg'))).rejects.toThrow(/cannot read image .*bad\.jpg/);
    inf.dispose();
  });

  it('the command line predicts with a table or JSON, and names a missing model file', () => {
    const cli = join(__dirname, '..', 'src', 'cli.ts');
    const tsx = join(__dirname, '..', 'node_modules', '.bin', 'tsx');
    const img = dls.valid.items[0].path;
    const json = JSON.parse(execFileSync(tsx, [cli, 'predict', exported, img, '--json', '--device', 'cpu'], { encoding: 'utf8' }));
    expect(json[0].file).toBe(img);
    expect(Object.keys(json[0].probs)).toEqual(['horizontal', 'vertical']);
    const table = execFileSync(tsx, [cli, 'predict', exported, img], { encoding: 'utf8' });
    expect(table).toMatch(/prediction/);
    // a folder stands for its images
    const folder = JSON.parse(execFileSync(tsx, [cli, 'predict', exported, join(dir, 's'), '--json', '--device', 'cpu'], { encoding: 'utf8' }));
    expect(folder.map((r: { file: string }) => r.file)).toEqual(folderItems(join(dir, 's')).items.map((i) => i.path));
    expect(execFileSync(tsx, [cli, 'info'], { encoding: 'utf8' })).toMatch(/LibTorch \d+\.\d+/);
    let err = '';
    try {
      execFileSync(tsx, [cli, 'predict', join(dir, 'nope.safetensors'), img], { encoding: 'utf8', stdio: 'pipe' });
    } catch (e) {
      err = String((e as { stderr: string }).stderr);
    }
    expect(err).toMatch(/nope\.safetensors: no such model file\. torchlearn predict needs an export: the \.safetensors file that learn\.export\(\) writes/);
  });

  it('the command line: help and version exit 0; a folder with an unreadable image reports it in its row and exits 1', () => {
    const cli = join(__dirname, '..', 'src', 'cli.ts');
    const tsx = join(__dirname, '..', 'node_modules', '.bin', 'tsx');
    const run = (args: string[]) => spawnSync(tsx, [cli, ...args], { encoding: 'utf8' });
    for (const flag of ['--help', '-h']) {
      const r = run([flag]);
      expect(r.status, flag).toBe(0);
      expect(r.stdout).toMatch(/torchlearn predict MODEL\.safetensors/);
    }
    const v = run(['--version']);
    expect(v.status).toBe(0);
    expect(v.stdout.trim()).toBe(JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')).version);
    const ph = run(['predict', '--help']);
    expect(ph.status).toBe(0);
    expect(ph.stdout).toMatch(/an export written by learn\.export\(\)/);
    expect(run(['frobnicate']).status).toBe(2);
    // a folder whose second image is not an image
    const folder = join(dir, 'mixed');
    mkdirSync(folder, { recursive: true });
    const good = dls.valid.items.slice(0, 2).map((i) => i.path);
    copyFileSync(good[0], join(folder, 'a.png'));
    writeFileSync(join(folder, 'b.png'), 'not a picture');
    copyFileSync(good[1], join(folder, 'c.png'));
    const r = run(['predict', exported, folder, '--json', '--device', 'cpu']);
    expect(r.status).toBe(1);
    const rows = JSON.parse(r.stdout) as { file: string; label?: string; error?: string }[];
    expect(rows.map((x) => basename(x.file))).toEqual(['a.png', 'b.png', 'c.png']);
    expect(rows[0].label).toBeDefined();
    expect(rows[1].error).toBeTruthy();
    expect(rows[2].label).toBeDefined();
    expect(r.stderr).toMatch(/1 of 3 image\(s\) could not be read/);
    const t = run(['predict', exported, folder, '--device', 'cpu']);
    expect(t.status).toBe(1);
    expect(t.stdout.split('\n').find((l) => l.includes('b.png'))).toMatch(/error/);
  });
});
