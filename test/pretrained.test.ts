// Pretrained weights as torch.hub finds them, against a local HTTP server on 127.0.0.1 that this file
// starts and stops: the hub cache first, then a verified, atomic download; every failure named.
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachedWeightFile, hubCacheDir, ImageDataLoaders, Model, PRETRAINED, pretrainedFileName, visionLearner } from '../src/index.js';
import { makeStripes } from './helpers/fixtures.js';
import { runPython, tempDir } from './helpers/python.js';

const ROOT = join(__dirname, '..');
let dir: string;
let server: Server;
let base: string;
let requests: string[] = [];
// what the server serves: path -> bytes; 'drop' sends half the body and closes the connection once
const files = new Map<string, Buffer>();
const dropOnce = new Set<string>();
let weights: Buffer;
let goodName: string;
const env: Record<string, string | undefined> = {};

function setEnv(k: string, v: string | undefined) {
  if (!(k in env)) env[k] = process.env[k];
  if (v === undefined) delete process.env[k];
  else process.env[k] = v;
}

beforeAll(async () => {
  dir = tempDir();
  // torchvision-format weights of a resnet18, named as torchvision names files: name-<sha256 prefix>.pth
  const m = new Model('resnet18');
  m.saveWeights(join(dir, 'w.pth'));
  m.dispose();
  weights = readFileSync(join(dir, 'w.pth'));
  goodName = `resnet18-${createHash('sha256').update(weights).digest('hex').slice(0, 8)}.pth`;
  files.set(`/models/${goodName}`, weights);
  files.set('/models/resnet18-00000000.pth', weights); // a name whose hash prefix is wrong
  files.set(`/models/dropped-${goodName.slice('resnet18-'.length)}`, weights);
  dropOnce.add(`/models/dropped-${goodName.slice('resnet18-'.length)}`);
  server = createServer((req, res) => {
    requests.push(req.url!);
    // as a forward proxy, the request line holds the whole URL
    const path = req.url!.startsWith('http://') ? new URL(req.url!).pathname : req.url!;
    const body = files.get(path);
    if (!body) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'content-length': body.length });
    if (dropOnce.delete(path)) {
      res.write(body.subarray(0, body.length >> 1), () => res.destroy());
      return;
    }
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/models/`;
  setEnv('TORCHLEARN_WEIGHTS_URL', base);
  setEnv('TORCH_HOME', join(dir, 'torch-home'));
  for (const k of ['HTTP_PROXY', 'http_proxy', 'HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy', 'NO_PROXY', 'no_proxy']) setEnv(k, undefined);
});

afterAll(async () => {
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  await new Promise((r) => server.close(r));
});

describe('the registry', () => {
  it("names torchvision's files and URLs, as Debian's torchvision does", () => {
    const ref = JSON.parse(
      runPython(`import json, torchvision.models as m
print(json.dumps({a: {v: getattr(getattr(m, c), v).url for v in ('IMAGENET1K_V1', 'IMAGENET1K_V2') if hasattr(getattr(m, c), v)} for a, c in [('resnet18', 'ResNet18_Weights'), ('resnet34', 'ResNet34_Weights'), ('resnet50', 'ResNet50_Weights'), ('resnet101', 'ResNet101_Weights'), ('resnet152', 'ResNet152_Weights')]}))`),
    ) as Record<string, Record<string, string>>;
    for (const [arch, versions] of Object.entries(ref))
      for (const [v, url] of Object.entries(versions)) expect(`https://download.pytorch.org/models/${PRETRAINED[arch as 'resnet18'][v as 'IMAGENET1K_V1']}`, `${arch} ${v}`).toBe(url);
    expect(pretrainedFileName('resnet50')).toBe('resnet50-0676ba61.pth');
    expect(pretrainedFileName('resnet50', 'IMAGENET1K_V2')).toBe('resnet50-11ad3fa6.pth');
    expect(() => pretrainedFileName('resnet18', 'IMAGENET1K_V2')).toThrow(/torchvision has no IMAGENET1K_V2 weights for resnet18 \(it has IMAGENET1K_V1\)/);
  });
});

describe('download', () => {
  it('downloads into the hub cache, verified; a second call uses the cache without a request', async () => {
    requests = [];
    const seen: number[] = [];
    const path = await cachedWeightFile(goodName, { onProgress: (r) => seen.push(r) });
    expect(path).toBe(join(hubCacheDir(), goodName));
    expect(readFileSync(path).equals(weights)).toBe(true);
    expect(seen.at(-1)).toBe(weights.length);
    expect(requests).toEqual([`/models/${goodName}`]);
    await cachedWeightFile(goodName);
    expect(requests.length).toBe(1);
    expect(readdirSync(hubCacheDir()).filter((f) => f.includes('.partial'))).toEqual([]);
  });

  it('a wrong hash leaves nothing in the cache and says so', async () => {
    await expect(cachedWeightFile('resnet18-00000000.pth')).rejects.toThrow(/wrong SHA-256: .* its name says 00000000/);
    expect(readdirSync(hubCacheDir()).filter((f) => f.startsWith('resnet18-0000'))).toEqual([]);
  });

  it('a connection dropped mid-body leaves no partial file; the next call succeeds', async () => {
    const name = `dropped-${goodName.slice('resnet18-'.length)}`;
    await expect(cachedWeightFile(name)).rejects.toThrow(/cannot download .*dropped-.*\(the connection closed after \d+ (of \d+ )?bytes\)/);
    expect(readdirSync(hubCacheDir()).filter((f) => f.startsWith('dropped-'))).toEqual([]);
    const path = await cachedWeightFile(name);
    expect(readFileSync(path).equals(weights)).toBe(true);
  });

  it('a 404 and a refused connection name the URL, the cache path, the file to put there, and pretrained: false', async () => {
    await expect(cachedWeightFile('resnet34-b627a593.pth')).rejects.toThrow(
      new RegExp(`cannot download ${base.replace(/[.]/g, '\\.')}resnet34-b627a593\\.pth \\(HTTP 404\\)[^]*named exactly resnet34-b627a593\\.pth: .*torch-home/hub/checkpoints/resnet34-b627a593\\.pth[^]*pretrained: false`),
    );
    // a port nobody listens on
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    setEnv('TORCHLEARN_WEIGHTS_URL', `http://127.0.0.1:${port}/`);
    try {
      await expect(cachedWeightFile('resnet34-b627a593.pth')).rejects.toThrow(/cannot download http:\/\/127\.0\.0\.1:\d+\/resnet34-b627a593\.pth \(ECONNREFUSED[^]*pretrained: false/);
    } finally {
      setEnv('TORCHLEARN_WEIGHTS_URL', base);
    }
  });

  it('goes through the proxy that HTTP_PROXY names (NO_PROXY respected)', async () => {
    const port = (server.address() as AddressInfo).port;
    setEnv('TORCHLEARN_WEIGHTS_URL', 'http://weights.invalid/models/');
    setEnv('HTTP_PROXY', `http://127.0.0.1:${port}`);
    setEnv('TORCH_HOME', join(dir, 'proxied-home'));
    try {
      requests = [];
      const path = await cachedWeightFile(goodName);
      expect(readFileSync(path).equals(weights)).toBe(true);
      expect(requests).toEqual([`http://weights.invalid/models/${goodName}`]);
      setEnv('NO_PROXY', 'weights.invalid');
      setEnv('TORCH_HOME', join(dir, 'unproxied-home'));
      await expect(cachedWeightFile(goodName)).rejects.toThrow(/cannot download http:\/\/weights\.invalid\/models\/.* \((ENOTFOUND|EAI_AGAIN)/);
    } finally {
      setEnv('TORCHLEARN_WEIGHTS_URL', base);
      setEnv('HTTP_PROXY', undefined);
      setEnv('NO_PROXY', undefined);
      setEnv('TORCH_HOME', join(dir, 'torch-home'));
    }
  });
});

describe('visionLearner', () => {
  it("pretrained defaults to torchvision's weights: a file in the hub cache is loaded without any request, and the body starts frozen", async () => {
    await makeStripes(join(dir, 's'), 8, 32, 1);
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 32, bs: 4 });
    mkdirSync(hubCacheDir(), { recursive: true });
    copyFileSync(join(dir, 'w.pth'), join(hubCacheDir(), pretrainedFileName('resnet18')));
    requests = [];
    const learn = await visionLearner(dls, 'resnet18', { verbose: false });
    expect(requests).toEqual([]);
    expect(learn.pretrained).toBe(true);
    expect(learn.frozenTo).toBe(2);
    const conv = (await learn.state(false)).find((t) => t.name === 'model.body.conv1.weight')!;
    // the body's first convolution is the file's
    const fileConv = (await import('../src/weights/index.js')).readWeightFile(join(dir, 'w.pth')).tensors.find((t) => t.name === 'conv1.weight')!;
    expect(Buffer.from(conv.data).equals(Buffer.from(fileConv.data))).toBe(true);
    learn.dispose();
    // V2 of resnet18 does not exist: said before anything is fetched
    await expect(visionLearner(dls, 'resnet18', { verbose: false, pretrained: 'IMAGENET1K_V2' })).rejects.toThrow(/no IMAGENET1K_V2 weights for resnet18/);
    // not cached and not served: the download's error, never a silent fallback
    await expect(visionLearner(dls, 'resnet34', { verbose: false })).rejects.toThrow(/cannot download .*resnet34-b627a593\.pth \(HTTP 404\)[^]*pretrained: false/);
    const scratch = await visionLearner(dls, 'resnet34', { verbose: false, pretrained: false });
    expect(scratch.pretrained).toBe(false);
    scratch.dispose();
  });

  it('the command line lists the weights and what is cached, and gets them', async () => {
    const cli = join(ROOT, 'src', 'cli.ts');
    const tsx = join(ROOT, 'node_modules', '.bin', 'tsx');
    // asynchronously: the server answering the download lives in this process
    const run = (args: string[]) =>
      new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
        const c = spawn(tsx, [cli, ...args], { env: process.env });
        let stdout = '';
        let stderr = '';
        c.stdout.on('data', (d) => (stdout += d));
        c.stderr.on('data', (d) => (stderr += d));
        c.on('close', (status) => resolve({ status, stdout, stderr }));
      });
    const list = await run(['weights', 'list']);
    expect(list.status).toBe(0);
    expect(list.stdout).toMatch(/resnet18\s+IMAGENET1K_V1\s+resnet18-f37072fd\.pth\s+cached/);
    expect(list.stdout).toMatch(/resnet50\s+IMAGENET1K_V2\s+resnet50-11ad3fa6\.pth\s+not cached/);
    const get = await run(['weights', 'get', 'resnet50', '--version', 'IMAGENET1K_V2']);
    expect(get.status).toBe(1);
    expect(get.stderr).toMatch(/resnet50-11ad3fa6\.pth \(HTTP 404\)/);
    expect(existsSync(join(hubCacheDir(), 'resnet50-11ad3fa6.pth'))).toBe(false);
    // served: downloaded into the cache, and its path printed
    files.set('/models/resnet50-11ad3fa6.pth', Buffer.from('not checked: no hash prefix matches this, so this must fail'));
    const bad = await run(['weights', 'get', 'resnet50', '--version', 'IMAGENET1K_V2']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/wrong SHA-256/);
    files.delete('/models/resnet50-11ad3fa6.pth');
  });
});
