// The serving bench (npm run bench -- --only serve): concurrent predict() calls against the sequential and
// predictBatch rates in one process, then `torchlearn serve` in a child process under autocannon at 1, 16 and
// 64 connections, its RSS over 10,000 requests, and a mix of valid and corrupt bodies with their status codes.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import autocannon from 'autocannon';
import sharp from 'sharp';
import { ImageDataLoaders, loadLearner, visionLearner, type Arch } from '../../src/index.js';

type Row = Record<string, unknown>;

/** An untrained export of `arch` at `size` px (its speed does not depend on what it learnt). */
async function makeExport(dir: string, arch: Arch, size: number, presize: number, device: string): Promise<string> {
  const n = 4;
  const dls = ImageDataLoaders.fromArrays(new Uint8Array(n * presize * presize * 3), Int32Array.from({ length: n }, (_, i) => i % 2), ['negative', 'positive'], { presize, size, bs: 64 });
  const learn = await visionLearner(dls, arch, { pretrained: false, verbose: false, device, seed: 0 });
  const path = await learn.export(join(dir, `serve-${arch}-${size}.safetensors`));
  learn.dispose();
  return path;
}

const rate = (n: number, ms: number) => n / (ms / 1000);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** `n` predictions three ways on one loaded export: one after another, predictBatch, and `n` concurrent
 * predict() calls; the three interleaved over `rounds` rounds (this machine's speed drifts), medians reported. */
async function concurrency(rows: Row[], path: string, arch: string, size: number, device: string, image: Buffer, n: number, rounds: number, log: (s: string) => void) {
  const inf = loadLearner(path, { device });
  const sources = Array.from({ length: n }, () => image);
  for (let i = 0; i < 3; i++) await inf.predict(image); // warm-up
  await inf.predictBatch(sources.slice(0, 8));
  const seqN = Math.min(n, arch === 'resnet18' ? 100 : 32);
  const runs = { sequential: [] as number[], batch: [] as number[], concurrent: [] as number[] };
  let batches = 0;
  for (let round = 0; round < rounds; round++) {
    let t = performance.now();
    for (let i = 0; i < seqN; i++) await inf.predict(image);
    runs.sequential.push(rate(seqN, performance.now() - t));
    t = performance.now();
    await inf.predictBatch(sources);
    runs.batch.push(rate(n, performance.now() - t));
    const before = inf.batcher.stats.batches;
    t = performance.now();
    await Promise.all(sources.map((s) => inf.predict(s)));
    runs.concurrent.push(rate(n, performance.now() - t));
    batches = inf.batcher.stats.batches - before;
  }
  inf.dispose();
  log(`${arch} ${size}px rounds: ${JSON.stringify(Object.fromEntries(Object.entries(runs).map(([k, v]) => [k, v.map((x) => +x.toFixed(1))])))}`);
  const [sequential, batch, concurrent] = [median(runs.sequential), median(runs.batch), median(runs.concurrent)];
  const base = { bench: 'concurrent predict()', arch, device, size, calls: n };
  rows.push({ ...base, impl: 'torchlearn, one call after another', images_per_s: sequential, calls: seqN, rounds: runs.sequential });
  rows.push({ ...base, impl: 'torchlearn, predictBatch', images_per_s: batch, rounds: runs.batch });
  rows.push({ ...base, impl: `torchlearn, ${n} concurrent predict() (${batches} batches)`, images_per_s: concurrent, vs_sequential: concurrent / sequential, vs_predict_batch: concurrent / batch, rounds: runs.concurrent });
  log(`${arch} ${size}px: sequential ${sequential.toFixed(1)}/s, predictBatch ${batch.toFixed(1)}/s, ${n} concurrent ${concurrent.toFixed(1)}/s in ${batches} batches (${(concurrent / sequential).toFixed(1)}x sequential, ${((100 * concurrent) / batch).toFixed(0)}% of predictBatch)`);
}

function rssOf(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) * 1024 : NaN;
}

async function startServer(path: string, device: string): Promise<{ url: string; pid: number; stop: () => Promise<number | null> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', path, '--port', '0', '--device', device], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
  const t0 = Date.now();
  while (!/at (http:\/\/\S+)/.test(out)) {
    if (Date.now() - t0 > 120_000) throw new Error(`the server did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url: out.match(/at (http:\/\/\S+)/)![1], pid: child.pid!, stop: () => (child.kill('SIGTERM'), exited) };
}

function cannon(o: autocannon.Options): Promise<autocannon.Result> {
  return new Promise((res, rej) => autocannon(o, (err, r) => (err ? rej(err) : res(r))));
}

/** torchlearn serve under load: autocannon at 1, 16 and 64 connections, RSS over 10,000 requests, mixed bodies. */
async function load(rows: Row[], path: string, arch: string, size: number, device: string, image: Buffer, quick: boolean, log: (s: string) => void) {
  const server = await startServer(path, device);
  const request = { url: `${server.url}/predict`, method: 'POST' as const, headers: { 'content-type': 'image/jpeg' }, body: image };
  try {
    await cannon({ ...request, connections: 4, amount: 200 }); // warm-up
    for (const connections of [1, 16, 64]) {
      const r = await cannon({ ...request, connections, duration: quick ? 3 : 10 });
      const errors = r.errors + r.timeouts + r.non2xx;
      rows.push({ bench: 'torchlearn serve, POST /predict', impl: 'torchlearn (fastify)', arch, device, size, connections, requests_per_s: r.requests.average, p50_ms: r.latency.p50, p90_ms: r.latency.p90, p99_ms: r.latency.p99, errors });
      log(`serve ${arch} ${size}px, ${connections} connection(s): ${r.requests.average.toFixed(0)} req/s, latency p50 ${r.latency.p50} ms, p90 ${r.latency.p90} ms, p99 ${r.latency.p99} ms, ${errors} errors`);
    }
    // RSS over 10,000 requests, read after every 1,000 (a leak grows with the count; warm-up growth stops)
    const rss: number[] = [];
    let errors = 0;
    for (let k = 0; k < 10; k++) {
      const r = await cannon({ ...request, connections: 16, amount: 1000 });
      errors += r.errors + r.non2xx;
      rss.push(rssOf(server.pid));
    }
    rows.push({ bench: 'torchlearn serve, RSS over 10,000 requests', impl: 'torchlearn (fastify)', arch, device, size, rss_every_1000_bytes: rss, errors });
    log(`serve RSS every 1,000 requests (MiB): ${rss.map((b) => (b / 2 ** 20).toFixed(0)).join(' ')} (${errors} errors)`);
    // valid and corrupt bodies mixed: each gets its own status code
    const corrupt = Buffer.concat([image.subarray(0, 200), Buffer.alloc(300, 7)]);
    const codes: Record<string, Record<number, number>> = { valid: {}, corrupt: {}, empty: {} };
    await Promise.all(
      Array.from({ length: 300 }, async (_, i) => {
        const kind = i % 3 === 0 ? 'corrupt' : i % 3 === 1 ? 'valid' : 'empty';
        const body = kind === 'valid' ? image : kind === 'corrupt' ? corrupt : Buffer.alloc(0);
        const res = await fetch(request.url, { method: 'POST', headers: request.headers, body: new Uint8Array(body) });
        await res.arrayBuffer();
        codes[kind][res.status] = (codes[kind][res.status] ?? 0) + 1;
      }),
    );
    rows.push({ bench: 'torchlearn serve, mixed bodies', impl: 'torchlearn (fastify)', arch, device, size, status_codes: codes });
    log(`mixed bodies, status codes: ${JSON.stringify(codes)}`);
  } finally {
    const code = await server.stop();
    log(`server exited with ${code} after SIGTERM`);
  }
}

export async function servingBench(rows: Row[], o: { device: string; sample: string | null; quick: boolean; log: (s: string) => void }) {
  const dir = join('out', 'bench-serving');
  (await import('node:fs')).mkdirSync(dir, { recursive: true });
  // an upload as a phone or a PACS viewer would send it: a chest X-ray as a 512 px JPEG
  const image = o.sample
    ? await sharp(o.sample).resize(512, 512, { fit: 'inside' }).jpeg({ quality: 90 }).toBuffer()
    : await sharp({ create: { width: 512, height: 512, channels: 3, background: { r: 90, g: 90, b: 90 } } }).jpeg().toBuffer();
  const small = await makeExport(dir, 'resnet18', 32, 40, o.device);
  const rounds = o.quick ? 1 : 5;
  await concurrency(rows, small, 'resnet18', 32, o.device, image, 400, rounds, o.log);
  const big = await makeExport(dir, 'resnet50', 224, 256, o.device);
  await concurrency(rows, big, 'resnet50', 224, o.device, image, o.device.startsWith('cuda') ? 400 : 64, o.quick ? 1 : 3, o.log);
  await load(rows, small, 'resnet18', 32, o.device, image, o.quick, o.log);
}
