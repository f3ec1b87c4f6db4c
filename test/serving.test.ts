import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import Fastify from 'fastify';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { ImageDataLoaders, ImageDecodeError, loadLearner, QueueFullError, visionLearner, type Prediction } from '../src/index.js';
import { createServer, torchlearnServe, type PredictResponse } from '../src/serving/index.js';
import { makeStripes } from './helpers/fixtures.js';
import { tempDir } from './helpers/python.js';

const ROOT = join(__dirname, '..');
const XRAYS = join(ROOT, '..', 'shared', 'datasets', 'covid-chestxray', 'images');
let dir: string;
let exported: string;
let files: string[];

beforeAll(async () => {
  dir = tempDir();
  await makeStripes(join(dir, 's'), 24, 48, 3);
  const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 16, seed: 1 });
  const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0 });
  await learn.fitOneCycle(2, { lrMax: 5e-3 });
  exported = await learn.export(join(dir, 'export.safetensors'));
  learn.dispose();
  files = [...dls.train.items, ...dls.valid.items].map((i) => i.path);
});

const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i])));

describe('dynamic batching of predict()', () => {
  it('concurrent calls share forward passes, and each gets what the single-image path gives it (1e-5)', async () => {
    const inf = loadLearner(exported, { device: 'cpu', bs: 16 });
    const single: Prediction[] = [];
    for (const f of files) single.push(await inf.predict(f));
    expect(inf.batcher.stats.batches).toBe(files.length); // one after another: batches of one
    const before = { ...inf.batcher.stats };
    const together = await Promise.all(files.map((f) => inf.predict(f)));
    const batches = inf.batcher.stats.batches - before.batches;
    expect(inf.batcher.stats.images - before.images).toBe(files.length);
    expect(batches).toBeLessThanOrEqual(Math.ceil(files.length / 4)); // (at most 16 each; several arrive during a pass)
    let worst = 0;
    together.forEach((p, i) => {
      expect(p.label).toBe(single[i].label);
      worst = Math.max(worst, maxDiff(p.probs, single[i].probs));
      expect(p.timing.batchSize).toBeGreaterThanOrEqual(1);
      expect(p.timing.batchSize).toBeLessThanOrEqual(16);
      expect(p.timing.inferMs).toBeGreaterThan(0);
    });
    console.log(`${files.length} concurrent predict() calls ran as ${batches} batches; largest difference from one at a time ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(1e-5);
    // what predictBatch computes for the same files
    const batch = await inf.predictBatch(files);
    batch.forEach((p, i) => expect(maxDiff(p.probs, together[i].probs)).toBeLessThan(1e-5));
    inf.dispose();
  });

  it('an unreadable image fails its own call only; the others in its batch are predicted', async () => {
    const inf = loadLearner(exported, { device: 'cpu', bs: 8 });
    const good = readFileSync(files[0]);
    const sources: (string | Uint8Array)[] = [files[0], Buffer.from('not an image at all'), good.subarray(0, 40), files[1], join(dir, 'missing.png'), good];
    const r = await Promise.allSettled(sources.map((s) => inf.predict(s)));
    expect(r.map((x) => x.status)).toEqual(['fulfilled', 'rejected', 'rejected', 'fulfilled', 'rejected', 'fulfilled']);
    for (const k of [1, 2, 4]) expect((r[k] as PromiseRejectedResult).reason).toBeInstanceOf(ImageDecodeError);
    expect(String((r[4] as PromiseRejectedResult).reason.message)).toContain('missing.png');
    const first = (r[0] as PromiseFulfilledResult<{ probs: Float32Array }>).value.probs;
    expect(maxDiff((r[5] as PromiseFulfilledResult<{ probs: Float32Array }>).value.probs, first)).toBeLessThan(1e-5);
    expect(inf.batcher.pending).toBe(0);
    inf.dispose();
  });

  it('past maxQueue images waiting, predict() fails at once with QueueFullError; the queue empties after', async () => {
    const inf = loadLearner(exported, { device: 'cpu', batching: { maxQueue: 4, maxBatch: 4 } });
    const r = await Promise.allSettled(files.slice(0, 10).map((f) => inf.predict(f)));
    const refused = r.filter((x) => x.status === 'rejected');
    expect(r.filter((x) => x.status === 'fulfilled')).toHaveLength(4);
    expect(refused).toHaveLength(6);
    for (const x of refused) expect((x as PromiseRejectedResult).reason).toBeInstanceOf(QueueFullError);
    expect(inf.batcher.pending).toBe(0);
    await expect(inf.predict(files[0])).resolves.toHaveProperty('label');
    expect(() => loadLearner(exported, { device: 'cpu', batching: { maxBatch: 0 } })).toThrow(/maxBatch must be an integer >= 1, got 0/);
    inf.dispose();
  });
});

describe('the HTTP server', () => {
  it('POST /predict answers the label, every probability and the timing, from raw bytes or a multipart form; ?gradcam=1 adds a PNG', async () => {
    const inf = loadLearner(exported, { device: 'cpu' });
    const ref = await inf.predict(files[2]);
    const app = await createServer(inf);
    const bytes = readFileSync(files[2]);
    const raw = await app.inject({ method: 'POST', url: '/predict', headers: { 'content-type': 'image/png' }, payload: bytes });
    expect(raw.statusCode).toBe(200);
    const body = raw.json<PredictResponse>();
    expect(body.label).toBe(ref.label);
    expect(Object.keys(body.probs)).toEqual(inf.vocab);
    expect(maxDiff(Object.values(body.probs), ref.probs)).toBeLessThan(1e-5);
    expect(body.timing.totalMs).toBeGreaterThan(0);
    expect(body.gradcam).toBeUndefined();
    // multipart, as a browser form sends it
    const boundary = '----torchlearn' + Date.now();
    const form = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n`),
      bytes,
      Buffer.from(`\r\n--${boundary}--\r\n`),
    ]);
    const multi = await app.inject({ method: 'POST', url: '/predict?gradcam=1', headers: { 'content-type': `multipart/form-data; boundary=${boundary}` }, payload: form });
    expect(multi.statusCode).toBe(200);
    const mb = multi.json<PredictResponse>();
    expect(mb.label).toBe(ref.label);
    expect(maxDiff(Object.values(mb.probs), ref.probs)).toBeLessThan(1e-5);
    expect(mb.gradcam).toMatch(/^data:image\/png;base64,/);
    const png = await sharp(Buffer.from(mb.gradcam!.split(',')[1], 'base64')).metadata();
    expect(png.format).toBe('png');
    expect(png.width).toBeGreaterThanOrEqual(160);
    // /info and /health
    const info = (await app.inject({ url: '/info' })).json();
    expect(info).toMatchObject({ classes: inf.vocab, arch: 'resnet18', size: 32, presize: 40, device: 'cpu', batching: { maxBatch: 64, maxDelayMs: 2, maxQueue: 1024 } });
    expect(info.torchVersion).toMatch(/^\d/);
    expect((await app.inject({ url: '/health' })).json()).toEqual({ status: 'ok', pending: 0 });
    const page = await app.inject({ url: '/' });
    expect(page.headers['content-type']).toMatch(/text\/html/);
    expect(page.body).toContain('<input id="file" type="file"');
    await app.close();
    inf.dispose();
  });

  it('answers bad requests with their status and a reason: 400 not an image or no body, 413 too large, 415 wrong type, 503 queue full with Retry-After', async () => {
    const inf = loadLearner(exported, { device: 'cpu', batching: { maxQueue: 2, maxBatch: 2, maxDelayMs: 50 } });
    const app = await createServer(inf, { bodyLimit: 64 * 1024 });
    const post = (payload: Buffer | string, type = 'image/jpeg') => app.inject({ method: 'POST', url: '/predict', headers: { 'content-type': type }, payload });
    const corrupt = await post(Buffer.from('GIF89a but not really'));
    expect(corrupt.statusCode).toBe(400);
    expect(corrupt.json().error).toMatch(/^not an image, or a corrupt one: /);
    const truncated = await post(readFileSync(files[0]).subarray(0, 60), 'image/png');
    expect(truncated.statusCode).toBe(400);
    expect((await post(Buffer.alloc(0))).json().error).toMatch(/^no image/);
    const big = await post(Buffer.alloc(100 * 1024, 1));
    expect(big.statusCode).toBe(413);
    expect(big.json().error).toMatch(/larger than the limit of 65536 bytes/);
    const json = await app.inject({ method: 'POST', url: '/predict', headers: { 'content-type': 'application/json' }, payload: '{"image":1}' });
    expect(json.statusCode).toBe(415);
    // more at once than the queue holds: some served, the rest told to come back
    const good = readFileSync(files[0]);
    const many = await Promise.all(Array.from({ length: 8 }, () => post(good, 'image/png')));
    const codes = many.map((r) => r.statusCode).sort();
    expect(codes.filter((c) => c === 200).length).toBeGreaterThanOrEqual(2);
    expect(codes.filter((c) => c === 503).length).toBeGreaterThanOrEqual(1);
    expect(codes.every((c) => c === 200 || c === 503)).toBe(true);
    const busy = many.find((r) => r.statusCode === 503)!;
    expect(busy.headers['retry-after']).toBe('1');
    expect(busy.json().error).toMatch(/queue is full/);
    await app.close();
    inf.dispose();
  });

  it("is a fastify plugin: registered under a prefix in a user's own app, beside the app's routes", async () => {
    const inf = loadLearner(exported, { device: 'cpu' });
    const app = Fastify();
    app.get('/', async () => ({ app: 'mine' }));
    await app.register(torchlearnServe, { prefix: '/xray', learner: inf, page: false });
    expect((await app.inject({ url: '/' })).json()).toEqual({ app: 'mine' });
    const r = await app.inject({ method: 'POST', url: '/xray/predict', headers: { 'content-type': 'image/png' }, payload: readFileSync(files[0]) });
    expect(r.statusCode).toBe(200);
    expect(inf.vocab).toContain(r.json().label);
    expect((await app.inject({ url: '/xray/' })).statusCode).toBe(404); // page: false
    await app.close();
    inf.dispose();
  });

  it('torchlearn serve: SIGTERM lets the requests in flight finish, then the process exits 0', async () => {
    // a long batching window holds the requests in the queue, so that the signal arrives while they are in flight
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src', 'cli.ts'), 'serve', exported, '--port', '0', '--device', 'cpu', '--max-delay-ms', '1500'], { cwd: ROOT });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
    const deadline = Date.now() + 60_000;
    while (!/at (http:\/\/\S+)/.test(out)) {
      if (Date.now() > deadline) throw new Error(`the server did not start:\n${out}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const url = out.match(/at (http:\/\/\S+)/)![1];
    const bytes = readFileSync(files[0]);
    const inflight = Array.from({ length: 6 }, () => fetch(`${url}/predict`, { method: 'POST', headers: { 'content-type': 'image/png' }, body: bytes }));
    while ((await (await fetch(`${url}/health`)).json()).pending < 6) await new Promise((r) => setTimeout(r, 20));
    child.kill('SIGTERM');
    const answers = await Promise.all(inflight);
    expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200, 200, 200]);
    for (const a of answers) expect((await a.json()).label).toBeTypeOf('string');
    expect(await exited).toBe(0);
    expect(out).toMatch(/SIGTERM: finishing the requests in flight/);
  });
});

// A real browser: Debian's chromium, driven by puppeteer-core, uploads a real X-ray on the page.
const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
const XRAY = existsSync(XRAYS) ? readdirSync(XRAYS).filter((f) => f.endsWith('.jpg')).sort()[0] : undefined;
const browserSkip = !CHROMIUM ? 'no chromium (sudo apt-get install chromium)' : !XRAY ? `no covid-chestxray images at ${XRAYS}` : '';
if (browserSkip) console.log(`serving page browser test skipped: ${browserSkip}`);

describe.skipIf(Boolean(browserSkip))('the page at /, in a real browser', () => {
  it('uploads a real X-ray and shows what the CLI predicts for the same file, with a bar per class and the Grad-CAM', async () => {
    const { default: puppeteer } = await import('puppeteer-core');
    const xray = join(XRAYS, XRAY!);
    const cli = JSON.parse(execFileSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src', 'cli.ts'), 'predict', exported, xray, '--json', '--device', 'cpu'], { cwd: ROOT, encoding: 'utf8' }));
    const inf = loadLearner(exported, { device: 'cpu' });
    const app = await createServer(inf);
    const url = await app.listen({ port: 0, host: '127.0.0.1' });
    const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
    try {
      const page = await browser.newPage();
      await page.goto(url);
      await page.waitForFunction(() => !document.getElementById('model')!.textContent!.startsWith('loading'));
      expect(await page.$eval('#model', (e) => e.textContent)).toContain('resnet18');
      const input = await page.$('#file');
      await (input as unknown as { uploadFile(p: string): Promise<void> }).uploadFile(xray);
      await page.waitForFunction(() => document.body.dataset.done !== undefined, { timeout: 60_000 });
      expect(await page.$eval('body', (b) => b.dataset.done)).toBe('1');
      const label = await page.$eval('#label', (e) => e.textContent);
      const bars = await page.$$eval('.bar', (rows) => rows.map((r) => [(r as HTMLElement).dataset.class!, Number((r as HTMLElement).dataset.prob)] as [string, number]));
      const cam = await page.$eval('#cam', (img) => ({ src: (img as HTMLImageElement).src.slice(0, 22), w: (img as HTMLImageElement).naturalWidth }));
      console.log(`browser: ${XRAY} -> ${label} ${JSON.stringify(bars)}; CLI: ${cli[0].label} ${JSON.stringify(cli[0].probs)}`);
      expect(label).toBe(cli[0].label);
      expect(bars.map(([c]) => c).sort()).toEqual([...inf.vocab].sort());
      for (const [c, p] of bars) expect(Math.abs(p - cli[0].probs[c])).toBeLessThan(1e-5);
      expect(cam.src).toBe('data:image/png;base64,');
      expect(cam.w).toBeGreaterThanOrEqual(160);
    } finally {
      await browser.close();
      await app.close();
      inf.dispose();
    }
  });
});
