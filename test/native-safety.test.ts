// The native layer on its own: hostile or careless calls, files and timings. Each case runs in a child
// process, so that a crash (exit 139) or a hang (the timeout) fails its test instead of the whole run.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ImageDataLoaders, visionLearner } from '../src/index.js';
import { makeStripes } from './helpers/fixtures.js';
import { runPython, tempDir } from './helpers/python.js';

const ROOT = join(__dirname, '..');
let dir: string;
let exported: string;
let data: string;

beforeAll(async () => {
  dir = tempDir();
  data = join(dir, 's');
  await makeStripes(data, 12, 48, 2);
  const dls = await ImageDataLoaders.fromFolder(data, { size: 32, presize: 40, bs: 8, seed: 1 });
  const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0 });
  exported = await learn.export(join(dir, 'export.safetensors'));
  learn.dispose();
});

// Runs `body` (TypeScript, top-level await allowed) in a fresh Node process with `native`, the library and
// the fixtures' paths in scope; returns what it printed and how it ended.
function child(body: string, o: { timeoutMs?: number; nodeFlags?: string[] } = {}) {
  const file = join(dir, `child-${Math.random().toString(36).slice(2)}.mts`);
  writeFileSync(
    file,
    `import { native } from ${JSON.stringify(join(ROOT, 'src', 'binding.js'))};\n` +
      `import { hooks } from ${JSON.stringify(join(ROOT, 'src', 'hooks.js'))};\n` +
      `import * as tl from ${JSON.stringify(join(ROOT, 'src', 'index.js'))};\n` +
      `const EXPORT = ${JSON.stringify(exported)}; const DATA = ${JSON.stringify(data)}; const DIR = ${JSON.stringify(dir)};\n` +
      `void native; void hooks; void tl; void EXPORT; void DATA; void DIR;\n${body}\n`,
  );
  const r = spawnSync(process.execPath, [...(o.nodeFlags ?? []), '--import', 'tsx', file], { cwd: ROOT, encoding: 'utf8', timeout: o.timeoutMs ?? 120_000 });
  return { status: r.status, signal: r.signal, out: r.stdout, err: r.stderr, timedOut: r.error !== undefined };
}

function expectClean(r: ReturnType<typeof child>, what: string) {
  expect({ status: r.status, signal: r.signal, timedOut: r.timedOut }, `${what}\n${r.err.split('\n').slice(-8).join('\n')}`).toEqual({ status: 0, signal: null, timedOut: false });
}

describe('crashes', () => {
  it('predictImages owns its bytes: a detached, changed or dropped array after the call changes nothing', () => {
    const r = child(`
      const inf = tl.loadLearner(EXPORT, { device: 'cpu' });
      const p = inf.info.presize;
      const n = 6;
      const frames = new Uint8Array(n * p * p * 3);
      for (let i = 0; i < frames.length; i++) frames[i] = (i * 7919) % 251;
      const expected = (await inf.predictImages(frames.slice(), n)).map((x) => Array.from(x.probs));
      // keep the CPU worker busy, so that the prediction waits in its queue
      const big = tl.resnet50();
      const busy = big.forward(new Float32Array(4 * 3 * 160 * 160), [4, 3, 160, 160]);
      const mutated = frames.slice();
      const pending1 = inf.predictImages(mutated, n);
      mutated.fill(0);
      const pending2 = inf.predictImages(frames, n);
      const { port1, port2 } = new MessageChannel();
      port1.postMessage(frames, [frames.buffer]);  // detaches it
      port1.close(); port2.close();
      (globalThis as { gc?: () => void }).gc?.();
      await busy;
      const got1 = (await pending1).map((x) => Array.from(x.probs));
      const got2 = (await pending2).map((x) => Array.from(x.probs));
      console.log(JSON.stringify({ detached: frames.byteLength === 0, same1: JSON.stringify(got1) === JSON.stringify(expected), same2: JSON.stringify(got2) === JSON.stringify(expected) }));
      big.dispose(); inf.dispose();
    `, { nodeFlags: ['--expose-gc'] });
    expectClean(r, 'predictImages after detaching its array');
    expect(JSON.parse(r.out.trim().split('\n').pop()!)).toEqual({ detached: true, same1: true, same2: true });
  });

  it('process.exit in the middle of a fit exits cleanly (3 runs)', () => {
    for (let k = 0; k < 3; k++) {
      const r = child(`
        const dls = await tl.ImageDataLoaders.fromFolder(DATA, { size: 64, presize: 72, bs: 8, seed: 1, quiet: true });
        const learn = await tl.visionLearner(dls, 'resnet18', { pretrained: false, verbose: false });
        setTimeout(() => process.exit(0), ${300 + 200 * k});
        await learn.fit(5);
        console.log('the fit ended before the exit');
      `);
      expectClean(r, `process.exit during fit, run ${k}`);
    }
  });

  it('a checkpoint with a damaged fit state is refused; the raw trainEpoch refuses a negative or fractional startBatch', () => {
    const r = child(`
      const { readWeightFile, writeWeightFile } = tl;
      const dls = await tl.ImageDataLoaders.fromFolder(DATA, { size: 32, presize: 40, bs: 8, seed: 1, quiet: true });
      const learn = await tl.visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, modelDir: DIR + '/m' });
      await learn.fitOneCycle(1, { checkpoint: 'ck' });
      const f = readWeightFile(DIR + '/m/ck.safetensors');
      const messages = [];
      for (const batchesDone of [-1, 1.5, 1e12]) {
        const fit = { ...JSON.parse(f.metadata.fit), epochsDone: 0, batchesDone };
        writeWeightFile(DIR + '/m/bad.safetensors', f.tensors, { ...f.metadata, fit: JSON.stringify(fit) });
        try { await learn.fitOneCycle(1, { resume: 'bad' }); messages.push('resumed'); } catch (e) { messages.push(e.message); }
      }
      const nl = new native.Learner(new native.Net({ arch: 'resnet18', kind: 'fastai', numClasses: 2 }), { device: 'cpu' });
      const p = 40, n = 8;
      nl.setData('train', new Uint8Array(n * p * p * 3), new Int32Array(n), p);
      nl.setOptions({ bs: 4, size: 32 });
      const sched = { kind: 'constant', lrMax: [1e-3, 1e-3, 1e-3], moms: [0.9, 0.9, 0.9] };
      for (const startBatch of [-1, 0.5, NaN]) {
        try { await nl.trainEpoch({ schedule: sched, epoch: 0, nEpochs: 1, smoothVal: 0, smoothCount: 0, startBatch, epochRng: new Uint8Array(5056) }); messages.push('trained'); } catch (e) { messages.push(e.message); }
      }
      console.log(JSON.stringify(messages));
    `);
    expectClean(r, 'damaged fit state');
    const m = JSON.parse(r.out.trim().split('\n').pop()!) as string[];
    expect(m.slice(0, 3).every((x) => /bad\.safetensors: damaged fit state \(batchesDone|bad\.safetensors stops inside epoch 0 but holds no random state for it/.test(x)), m.join('\n')).toBe(true);
    expect(m.slice(3).every((x) => /startBatch must be (an integer in \[0, |a finite number)/.test(x)), m.join('\n')).toBe(true);
  });

  it('typed arrays of the wrong kind or length are refused, whatever their bytes', () => {
    const r = child(`
      const out = [];
      const attempt = async (what, f) => { try { await f(); out.push(what + ': accepted'); } catch (e) { out.push(what + ': ' + e.message); } };
      const nl = new native.Learner(new native.Net({ arch: 'resnet18', kind: 'fastai', numClasses: 2 }), { device: 'cpu' });
      const p = 40, n = 4;
      await attempt('uint8 labels', () => nl.setData('train', new Uint8Array(n * p * p * 3), new Uint8Array(64 << 20), p));
      await attempt('labels out of range', () => nl.setData('train', new Uint8Array(n * p * p * 3), Int32Array.from([0, 1, 2, 0]), p));
      await attempt('labels -100', () => nl.setData('train', new Uint8Array(n * p * p * 3), Int32Array.from([0, 1, -100, 0]), p));
      await attempt('short class weights', () => nl.setOptions({ classWeights: new Float32Array(new ArrayBuffer(8), 0, 1) }));
      await attempt('float64 class weights', () => nl.setOptions({ classWeights: new Float64Array(2) }));
      await attempt('9-byte params', () => native.augmentImages(new Uint8Array(p * p * 3), 1, p, 32, { params: new Float64Array(new ArrayBuffer(72), 0, 1) }));
      await attempt('uint8 params', () => native.augmentImages(new Uint8Array(p * p * 3), 1, p, 32, { params: new Uint8Array(72) }));
      await attempt('images as Int8Array', () => nl.predict(new Int8Array(p * p * 3), 1, p));
      await attempt('epochRng as Int32Array', () => nl.trainEpoch({ schedule: { kind: 'constant', lrMax: [1e-3, 1e-3, 1e-3], moms: [0.9, 0.9, 0.9] }, epoch: 0, nEpochs: 1, smoothVal: 0, smoothCount: 0, epochRng: new Int32Array(4) }));
      await attempt('positions as Float32Array', () => hooks.scheduleValues({ kind: 'constant', lrMax: [1e-3], moms: [0.9, 0.9, 0.9] }, 1, new Float32Array(4)));
      console.log(JSON.stringify(out));
    `);
    expectClean(r, 'typed arrays');
    const out = JSON.parse(r.out.trim().split('\n').pop()!) as string[];
    expect(out).toEqual([
      'uint8 labels: setData: labels must be a Int32Array',
      'labels out of range: setData: labels must be class indices in [0, 2), got 2',
      'labels -100: setData: labels must be class indices in [0, 2), got -100',
      'short class weights: classWeights must hold 2 values, got 1',
      'float64 class weights: classWeights must be a Float32Array',
      '9-byte params: augmentImages: params (15 per image) must hold 15 values, got 1',
      'uint8 params: augmentImages: params (15 per image) must be a Float64Array',
      'images as Int8Array: images must be a Uint8Array',
      'epochRng as Int32Array: epochRng must be a Uint8Array',
      'positions as Float32Array: scheduleValues: positions must be a Float64Array',
    ]);
  });

  it('a refused setOptions changes nothing: validation and prediction still run', () => {
    const r = child(`
      const nl = new native.Learner(new native.Net({ arch: 'resnet18', kind: 'fastai', numClasses: 2 }), { device: 'cpu' });
      const p = 40, n = 4;
      nl.setData('valid', new Uint8Array(n * p * p * 3), new Int32Array(n), p);
      nl.setOptions({ bs: 2, size: 32 });
      const errors = [];
      for (const o of [{ bs: 0 }, { bs: -1 }, { bs: 2.5 }, { size: 0 }, { bs: 4, size: -3 }, { wd: NaN }]) {
        try { nl.setOptions(o); errors.push('accepted'); } catch (e) { errors.push(e.message); }
      }
      const v = await nl.validate({ split: 'valid', augment: false });
      const pr = await nl.predict(new Uint8Array(n * p * p * 3), n, p);
      console.log(JSON.stringify({ errors, valid: v.probs.length, predicted: pr.probs.length }));
    `, { timeoutMs: 60_000 });
    expectClean(r, 'setOptions');
    const o = JSON.parse(r.out.trim().split('\n').pop()!);
    expect(o.valid).toBe(8);
    expect(o.predicted).toBe(8);
    expect(o.errors.every((e: string) => /must be/.test(e)), o.errors.join('\n')).toBe(true);
  });
});

describe('hangs and leaks', () => {
  it('a thread count past a few times the cores is refused at once', () => {
    const r = child(`
      const out = [];
      for (const n of [2000, 100000, 0, -1, 1.5, NaN]) { try { tl.setNumThreads(n); out.push('accepted'); } catch (e) { out.push(e.message); } }
      const m = tl.resnet18(); const t0 = Date.now();
      await m.forward(new Float32Array(3 * 32 * 32), [1, 3, 32, 32]);
      console.log(JSON.stringify({ out, ms: Date.now() - t0 }));
    `, { timeoutMs: 60_000 });
    expectClean(r, 'setNumThreads');
    const o = JSON.parse(r.out.trim().split('\n').pop()!);
    expect(o.out.every((e: string) => /threads must be an integer from 1 to \d+ \(this machine has \d+ cores\)|must be a positive integer/.test(e)), o.out.join('\n')).toBe(true);
    const env = spawnSync(process.execPath, ['--import', 'tsx', '-e', `import(${JSON.stringify(join(ROOT, 'src', 'index.js'))}).then(() => console.log('loaded'), (e) => { console.log(e.message); })`], { cwd: ROOT, encoding: 'utf8', timeout: 60_000, env: { ...process.env, TORCHLEARN_THREADS: '2000' } });
    expect(env.stdout).toMatch(/TORCHLEARN_THREADS.*threads must be an integer from 1 to/);
  });

  it("dispose() and new Learner() on a network in training do not wait for the epoch; dispose frees a network kept referenced", () => {
    const r = child(`
      const dls = await tl.ImageDataLoaders.fromFolder(DATA, { size: 64, presize: 72, bs: 8, seed: 1, quiet: true });
      const learn = await tl.visionLearner(dls, 'resnet18', { pretrained: false, verbose: false });
      const fit = learn.fit(3).then(() => 'finished', (e) => 'rejected: ' + e.message);
      await new Promise((r) => setTimeout(r, 300));
      let t0 = performance.now();
      let refused = '';
      try { new native.Learner(learn.net, { device: 'cpu' }); } catch (e) { refused = e.message; }
      const newLearnerMs = performance.now() - t0;
      t0 = performance.now();
      learn.dispose();
      const disposeMs = performance.now() - t0;
      const ended = await fit;
      // twelve resnet50s made, disposed and kept referenced: their weights must go
      const rss0 = process.memoryUsage().rss;
      const kept = [];
      for (let i = 0; i < 12; i++) { const m = tl.resnet50(); m.dispose(); kept.push(m); }
      const grew = (process.memoryUsage().rss - rss0) / 2 ** 20;
      console.log(JSON.stringify({ newLearnerMs, disposeMs, refused, ended, grew, kept: kept.length }));
    `);
    expectClean(r, 'dispose during a fit');
    const o = JSON.parse(r.out.trim().split('\n').pop()!);
    expect(o.refused).toMatch(/new Learner: the network is busy/);
    expect(o.newLearnerMs).toBeLessThan(100);
    expect(o.disposeMs).toBeLessThan(100);
    expect(o.ended).toMatch(/finished|rejected: this learner was disposed/);
    // 12 x 98 MB of weights if dispose freed nothing
    expect(o.grew).toBeLessThan(300);
  });

  it('a .pth claiming 2^31 elements over a 4-byte storage, or a deflate bomb, is refused fast', () => {
    // a broadcast view saved by PyTorch: one float of storage, 2147483647 elements
    runPython(`import sys, torch; torch.save({'fc.bias': torch.zeros(1).expand(2147483647)}, sys.argv[1])`, [join(dir, 'wide.pth')]);
    // a zip whose deflated storage declares 64 MiB from a few kilobytes (zeros)
    runPython(
      `import sys, zipfile, torch, io
buf = io.BytesIO(); torch.save({'fc.bias': torch.zeros(16 << 20)}, buf)
src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
with zipfile.ZipFile(sys.argv[1], 'w') as z:
    for info in src.infolist():
        z.writestr(info.filename, src.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)`,
      [join(dir, 'bomb.pth')],
    );
    const r = child(`
      const out = [];
      for (const f of ['wide.pth', 'bomb.pth']) {
        const t0 = Date.now();
        try { tl.readWeightFile(DIR + '/' + f); out.push(f + ': read'); } catch (e) { out.push(f + ': ' + e.message.replace(DIR + '/', '')); }
        out.push(Date.now() - t0);
      }
      console.log(JSON.stringify({ out, rss: process.memoryUsage().rss / 2 ** 20 }));
    `, { timeoutMs: 60_000 });
    expectClean(r, 'hostile .pth');
    const o = JSON.parse(r.out.trim().split('\n').pop()!);
    expect(o.out[0]).toMatch(/wide\.pth: .*tensor 'fc\.bias' is a broadcast view \(stride 0 along dimension 0\)/);
    expect(o.out[1]).toBeLessThan(2000);
    expect(o.out[2]).toMatch(/bomb\.pth: .*declares 67108864 bytes from \d+ compressed \(over 100x: not weights\)/);
    expect(o.out[3]).toBeLessThan(2000);
    expect(o.rss).toBeLessThan(500);
  });
});

describe('wrong results', () => {
  it('torchlearn in a worker thread trains while the main thread predicts; the main thread works after the worker ends', () => {
    const r = child(`
      const { Worker } = await import('node:worker_threads');
      // The worker loads the addon itself (its own environment, its own classes) and trains through the raw
      // binding: a worker cannot load TypeScript sources, and the addon is what must keep environments apart.
      const code = \`
        const { parentPort, workerData } = require('node:worker_threads');
        (async () => {
          const native = require(workerData.addon);
          const net = new native.Net({ arch: 'resnet18', kind: 'fastai', numClasses: 2 });
          const learner = new native.Learner(net, { device: 'cpu' });
          const p = 40, n = 16;
          learner.setData('train', new Uint8Array(n * p * p * 3).map((_, i) => i % 251), Int32Array.from({ length: n }, (_, i) => i % 2), p);
          learner.setOptions({ bs: 8, size: 32, sqrMom: 0.99, eps: 1e-5 });
          const r = await learner.trainEpoch({ schedule: { kind: 'constant', lrMax: [1e-3, 1e-3, 1e-3], moms: [0.9, 0.9, 0.9] }, epoch: 0, nEpochs: 1, smoothVal: 0, smoothCount: 0 });
          learner.dispose(); net.dispose();
          parentPort.postMessage(r.done === 2 ? 'trained' : 'trained ' + r.done + ' batches');
        })().catch((e) => parentPort.postMessage('worker failed: ' + e.message));
      \`;
      const w = new Worker(code, { eval: true, workerData: { addon: ${JSON.stringify(join(ROOT, 'build', 'Release', 'torchlearn.node'))} } });
      const done = new Promise((r) => w.once('message', r));
      const inf = tl.loadLearner(EXPORT, { device: 'cpu' });
      const files = tl.folderItems(DATA).items.slice(0, 3).map((i) => i.path);
      const during = await inf.predictBatch(files);
      const msg = await done;
      await w.terminate();
      const after = tl.loadLearner(EXPORT, { device: 'cpu' });
      const again = await after.predictBatch(files);
      console.log(JSON.stringify({ msg, during: during.length, same: JSON.stringify(again.map((p) => Array.from(p.probs))) === JSON.stringify(during.map((p) => Array.from(p.probs))) }));
    `);
    expectClean(r, 'worker thread');
    expect(JSON.parse(r.out.trim().split('\n').pop()!)).toEqual({ msg: 'trained', during: 3, same: true });
  });

  it('gradcam refuses a class index that is not one', async () => {
    const dls = await ImageDataLoaders.fromFolder(data, { size: 32, presize: 40, bs: 8, seed: 1, quiet: true });
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false });
    const img = dls.valid.items[0].path;
    for (const classIdx of [NaN, -1, 2, 0.5]) await expect(learn.gradcam(img, { classIdx })).rejects.toThrow(/gradcam: classIdx must be a class index in \[0, 2\)/);
    learn.dispose();
  });
});

describe('fuzzing the raw binding (bounded time): always an Error or a result, never a crash or a hang', () => {
  it('every entry point with wrong types, kinds, lengths, NaN, negative and huge numbers, missing fields', () => {
    const r = child(`
      const values = [undefined, null, true, 0, -1, 1.5, NaN, Infinity, -Infinity, 2 ** 53, 1e300, '', 'x', 'cpu', [], [1, 2, 3], {}, { a: 1 },
        new Uint8Array(7), new Int32Array(3), new Float32Array(5), new Float64Array(9), new Int8Array(2), () => 1, Symbol('s'), 10n];
      let s = 7; const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
      const pick = () => values[Math.floor(rand() * values.length)];
      const net = new native.Net({ arch: 'resnet18', kind: 'fastai', numClasses: 2 });
      const nl = new native.Learner(net, { device: 'cpu' });
      const p = 40;
      nl.setData('train', new Uint8Array(8 * p * p * 3), new Int32Array(8), p);
      nl.setData('valid', new Uint8Array(4 * p * p * 3), new Int32Array(4), p);
      nl.setOptions({ bs: 4, size: 32 });
      const st = new native.ImageStore(4, 8);
      const calls = {
        'Net': (a, b) => new native.Net(a, b),
        'Net fields': () => new native.Net({ arch: pick(), kind: pick(), numClasses: pick(), head: pick() }),
        'Net torchscript': () => new native.Net({ arch: 'torchscript', kind: 'fastai', numClasses: 2, torchscript: pick(), source: pick(), groupStarts: pick() }),
        'Learner': (a, b) => new native.Learner(a, b),
        'setData': (a, b, c, d) => nl.setData(a, b, c, d),
        'setData store': (a, b, c) => nl.setData(a, st, b, c),
        'ImageStore': (a, b) => new native.ImageStore(a, b),
        'ImageStore.set': (a, b, c) => st.set(a, b, c),
        'ImageStore.read': (a, b) => st.read(a, b),
        'predict store': (a, b, c) => nl.predict(st, a, b, c),
        'setOptions': (a) => nl.setOptions(a),
        'setOptions fields': () => nl.setOptions({ [['bs', 'size', 'wd', 'aug', 'mean', 'classWeights', 'labelSmoothing', 'seed', 'cudaGraph', 'batchNorm', 'sqrMom', 'nAcc', 'batchNormEval', 'syncBatchNorm'][Math.floor(rand() * 14)]]: pick() }),
        'freezeTo': (a) => nl.freezeTo(a),
        'gradients': (a) => nl.gradients(a),
        'distInit': (a) => native.distInit(a),
        // (no valid world size among the values: nothing connects anywhere)
        'distInit fields': () => native.distInit({ rank: pick(), worldSize: pick(), masterAddr: pick(), masterPort: pick(), timeoutMs: pick(), backend: pick(), agentStorePrefix: pick() }),
        'distAllreduce': (a, b) => native.distAllreduce(a, b),
        'trainEpoch': (a) => nl.trainEpoch(a),
        'trainEpoch fields': () => nl.trainEpoch({ schedule: pick(), epoch: pick(), nEpochs: pick(), smoothVal: pick(), smoothCount: pick(), startBatch: pick(), endBatch: pick(), epochRng: pick() }),
        'validate': (a) => nl.validate(a),
        'lrFind': (a) => nl.lrFind(a),
        'lrFind fields': () => nl.lrFind({ startLr: pick(), endLr: pick(), numIt: pick(), stopDiv: pick(), mom: pick() }),
        'predict': (a, b, c, d) => nl.predict(a, b, c, d),
        'gradCam': (a, b, c) => nl.gradCam(a, b, c),
        'getState': (a) => nl.getState(a),
        'setState': (a, b) => nl.setState(a, b),
        'loadStateDict': (a, b) => net.loadStateDict(a, b),
        'loadStateDict fields': () => net.loadStateDict([{ name: pick(), dtype: pick(), shape: pick(), data: pick() }], { strict: false }),
        'forward': (a, b) => net.forward(a, b),
        'to': (a) => net.to(a),
        'setNumThreads': (a) => native.setNumThreads(a),
        'tuneHostMalloc': (a) => native.tuneHostMalloc(a),
        'releaseHostMemory': (a) => native.releaseHostMemory(a),
        'manualSeed': (a) => native.manualSeed(a),
        'augmentImages': (a, b, c, d, e) => native.augmentImages(a, b, c, d, e),
        'scheduleValues': (a, b, c) => hooks.scheduleValues(a, b, c),
        'fastAdamSteps': (a) => hooks.fastAdamSteps(a),
        'trainForward': (a, b) => hooks.trainForward(a, b),
        'trainForward fields': () => hooks.trainForward(net, { data: pick(), shape: pick(), seed: pick() }),
        'bodyFeatures': (a, b) => hooks.bodyFeatures(a, b),
        'bodyFeatures fields': () => hooks.bodyFeatures(net, { data: pick(), shape: pick() }),
      };
      const tally = {};
      const t0 = Date.now();
      let n = 0;
      while (Date.now() - t0 < 10000) {
        for (const [name, f] of Object.entries(calls)) {
          const args = [pick(), pick(), pick(), pick(), pick()];
          let outcome;
          try {
            const r = f(...args);
            if (r && typeof r.then === 'function') await Promise.race([r, new Promise((_, rej) => setTimeout(() => rej(new Error('slow')), 20000))]);
            outcome = 'ok';
          } catch (e) {
            outcome = e instanceof Error ? (e.message === 'slow' ? 'SLOW' : 'error') : 'NOT AN ERROR: ' + String(e);
          }
          tally[name + ' ' + outcome] = (tally[name + ' ' + outcome] ?? 0) + 1;
          n++;
        }
      }
      native.setNumThreads(2);
      console.log(JSON.stringify({ n, tally }));
    `, { timeoutMs: 120_000 });
    expectClean(r, 'fuzzing the binding');
    const o = JSON.parse(r.out.trim().split('\n').pop()!) as { n: number; tally: Record<string, number> };
    console.log(`fuzzed the raw binding ${o.n} times: ${Object.entries(o.tally).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    expect(o.n).toBeGreaterThan(200);
    expect(Object.keys(o.tally).filter((k) => / (SLOW|NOT AN ERROR)/.test(k))).toEqual([]);
  });
});
