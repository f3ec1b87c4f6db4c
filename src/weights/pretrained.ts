// torchvision's ImageNet weights, found as PyTorch finds them: the hub cache first
// ($TORCH_HOME/hub/checkpoints, torchvision's file names), then a download from torchvision's published
// URL into that cache, verified against the SHA-256 prefix in the file name (torch.hub's check_hash) and
// written atomically. Nothing half-downloaded is ever left under the final name.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { get as httpGet, type IncomingMessage } from 'node:http';
import { get as httpsGet } from 'node:https';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { HttpProxyAgent } from 'http-proxy-agent';
import { HttpsProxyAgent } from 'https-proxy-agent';
import { getProxyForUrl } from 'proxy-from-env';
import type { Arch } from '../model.js';

/** torchvision's names for its ImageNet weights. */
export type WeightsVersion = 'IMAGENET1K_V1' | 'IMAGENET1K_V2';
/** The ImageNet weight versions torchvision publishes (`IMAGENET1K_V1` is fast.ai's `pretrained=True`). */
export const WEIGHTS_VERSIONS: readonly WeightsVersion[] = ['IMAGENET1K_V1', 'IMAGENET1K_V2'];

/** torchvision's weight files (torchvision.models.*_Weights, as torchvision 0.14 names them), by
 * architecture and version. V1 is fast.ai's default (the weights its published results use); V2 is
 * torchvision's newer recipe, where it has one. */
export const PRETRAINED: Readonly<Record<Arch, Partial<Record<WeightsVersion, string>>>> = {
  resnet18: { IMAGENET1K_V1: 'resnet18-f37072fd.pth' },
  resnet34: { IMAGENET1K_V1: 'resnet34-b627a593.pth' },
  resnet50: { IMAGENET1K_V1: 'resnet50-0676ba61.pth', IMAGENET1K_V2: 'resnet50-11ad3fa6.pth' },
  resnet101: { IMAGENET1K_V1: 'resnet101-63fe2227.pth', IMAGENET1K_V2: 'resnet101-cd907fc2.pth' },
  resnet152: { IMAGENET1K_V1: 'resnet152-394f9c45.pth', IMAGENET1K_V2: 'resnet152-f82ba261.pth' },
  resnext50_32x4d: { IMAGENET1K_V1: 'resnext50_32x4d-7cdf4587.pth', IMAGENET1K_V2: 'resnext50_32x4d-1a0047aa.pth' },
  resnext101_32x8d: { IMAGENET1K_V1: 'resnext101_32x8d-8ba56ff5.pth', IMAGENET1K_V2: 'resnext101_32x8d-110c445d.pth' },
  resnext101_64x4d: { IMAGENET1K_V1: 'resnext101_64x4d-173b62eb.pth' },
  wide_resnet50_2: { IMAGENET1K_V1: 'wide_resnet50_2-95faca4d.pth', IMAGENET1K_V2: 'wide_resnet50_2-9ba9bcbe.pth' },
  wide_resnet101_2: { IMAGENET1K_V1: 'wide_resnet101_2-32ee1156.pth', IMAGENET1K_V2: 'wide_resnet101_2-d733dc28.pth' },
  densenet121: { IMAGENET1K_V1: 'densenet121-a639ec97.pth' },
  densenet161: { IMAGENET1K_V1: 'densenet161-8d451a50.pth' },
  densenet169: { IMAGENET1K_V1: 'densenet169-b2777c0a.pth' },
  densenet201: { IMAGENET1K_V1: 'densenet201-c1103571.pth' },
  efficientnet_b0: { IMAGENET1K_V1: 'efficientnet_b0_rwightman-3dd342df.pth' },
  efficientnet_b1: { IMAGENET1K_V1: 'efficientnet_b1_rwightman-533bc792.pth', IMAGENET1K_V2: 'efficientnet_b1-c27df63c.pth' },
  efficientnet_b2: { IMAGENET1K_V1: 'efficientnet_b2_rwightman-bcdf34b7.pth' },
  efficientnet_b3: { IMAGENET1K_V1: 'efficientnet_b3_rwightman-cf984f9c.pth' },
  efficientnet_b4: { IMAGENET1K_V1: 'efficientnet_b4_rwightman-7eb33cd5.pth' },
  efficientnet_b5: { IMAGENET1K_V1: 'efficientnet_b5_lukemelas-b6417697.pth' },
  efficientnet_b6: { IMAGENET1K_V1: 'efficientnet_b6_lukemelas-c76e70fd.pth' },
  efficientnet_b7: { IMAGENET1K_V1: 'efficientnet_b7_lukemelas-dcc49843.pth' },
  convnext_tiny: { IMAGENET1K_V1: 'convnext_tiny-983f1562.pth' },
  convnext_small: { IMAGENET1K_V1: 'convnext_small-0c510722.pth' },
  convnext_base: { IMAGENET1K_V1: 'convnext_base-6075fbad.pth' },
  convnext_large: { IMAGENET1K_V1: 'convnext_large-ea097f82.pth' },
};

/** Where torchvision publishes them; TORCHLEARN_WEIGHTS_URL replaces it (a mirror, or a test's server). */
export const TORCHVISION_WEIGHTS_URL = 'https://download.pytorch.org/models/';

/** Where weights are downloaded from: `TORCHLEARN_WEIGHTS_URL`, else torchvision's URL. */
export function weightsBaseUrl(): string {
  const u = process.env.TORCHLEARN_WEIGHTS_URL || TORCHVISION_WEIGHTS_URL;
  return u.endsWith('/') ? u : `${u}/`;
}

/** torch.hub's cache: $TORCH_HOME/hub/checkpoints, TORCH_HOME defaulting to $XDG_CACHE_HOME/torch or ~/.cache/torch. */
export function hubCacheDir(): string {
  const torchHome = process.env.TORCH_HOME || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'torch');
  return join(torchHome, 'hub', 'checkpoints');
}

/** The file name of an architecture's weights in a version. */
export function pretrainedFileName(arch: Arch, version: WeightsVersion = 'IMAGENET1K_V1'): string {
  if (!WEIGHTS_VERSIONS.includes(version)) throw new Error(`pretrained: unknown weights version '${version}': use ${WEIGHTS_VERSIONS.map((v) => `'${v}'`).join(' or ')}`);
  const file = PRETRAINED[arch][version];
  if (!file) {
    const has = Object.keys(PRETRAINED[arch]).join(', ');
    throw new Error(`pretrained: torchvision has no ${version} weights for ${arch} (it has ${has})`);
  }
  return file;
}

/** The SHA-256 prefix torch.hub reads from a file name ('resnet50-0676ba61.pth' -> '0676ba61'), or null. */
export function hashPrefix(file: string): string | null {
  const m = /-([a-f0-9]+)\./.exec(file);
  return m ? m[1] : null;
}

/** Options of the download of pretrained weights. */
export interface DownloadOptions {
  /** called as bytes arrive (total is 0 when the server does not say) */
  onProgress?: (received: number, total: number) => void;
  /** no byte for this long ends the download (default 60 s) */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** What to tell a user whose download failed: the URL, the cache path, the file to put there, the way out. */
function failure(file: string, url: string, why: string): Error {
  const dest = join(hubCacheDir(), file);
  return new Error(
    `pretrained weights: cannot download ${url} (${why}).\n` +
      `Put the file there by hand, named exactly ${file}: ${dest}\n` +
      `(a mirror: TORCHLEARN_WEIGHTS_URL; another cache: TORCH_HOME), or train from scratch with pretrained: false.`,
  );
}

function request(url: string, timeoutMs: number, signal?: AbortSignal): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const proxy = getProxyForUrl(url);
    const https = url.startsWith('https:');
    const agent = proxy ? (https ? new HttpsProxyAgent(proxy) : new HttpProxyAgent(proxy)) : undefined;
    const req = (https ? httpsGet : httpGet)(url, { agent, signal, timeout: timeoutMs }, resolve);
    req.on('timeout', () => req.destroy(new Error(`no answer in ${timeoutMs / 1000} s`)));
    req.on('error', reject);
  });
}

/**
 * The weight file `file` in the hub cache: its path if it is there (used as it is, as torch.hub does),
 * else downloaded from the base URL, its SHA-256 checked against the prefix in its name, and renamed into
 * place only when whole and verified.
 */
export async function cachedWeightFile(file: string, o: DownloadOptions = {}): Promise<string> {
  const dir = hubCacheDir();
  const dest = join(dir, file);
  if (existsSync(dest) && statSync(dest).size > 0) return dest;
  const url = weightsBaseUrl() + file;
  const timeoutMs = o.timeoutMs ?? 60_000;
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw failure(file, url, `cannot create the cache folder ${dir}: ${(e as NodeJS.ErrnoException).code ?? e}`);
  }
  const tmp = `${dest}.${process.pid}.${Date.now()}.partial`;
  try {
    let res: IncomingMessage | undefined;
    let current = url;
    for (let hops = 0; hops < 5; hops++) {
      try {
        res = await request(current, timeoutMs, o.signal);
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        throw failure(file, url, err.code ? `${err.code}${err.message ? `: ${err.message}` : ''}` : err.message);
      }
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400 && res.headers.location) {
        res.resume();
        current = new URL(res.headers.location, current).toString();
        continue;
      }
      if (status !== 200) {
        res.resume();
        throw failure(file, url, `HTTP ${status}`);
      }
      break;
    }
    if (!res || res.statusCode !== 200) throw failure(file, url, 'too many redirects');
    const total = Number(res.headers['content-length'] ?? 0);
    const hash = createHash('sha256');
    let received = 0;
    const body = res;
    body.setTimeout(timeoutMs, () => body.destroy(new Error(`no data for ${timeoutMs / 1000} s`)));
    const out = await open(tmp, 'wx');
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        hash.update(chunk);
        received += chunk.length;
        await out.write(chunk);
        o.onProgress?.(received, total);
      }
      if (total && received !== total) throw new Error(`the connection closed after ${received} of ${total} bytes`);
      await out.sync(); // whole on disk before it has its final name
    } catch (e) {
      throw failure(file, url, (e as Error).message === 'aborted' ? `the connection closed after ${received}${total ? ` of ${total}` : ''} bytes` : (e as Error).message);
    } finally {
      await out.close();
    }
    const digest = hash.digest('hex');
    const prefix = hashPrefix(file);
    if (prefix && !digest.startsWith(prefix)) throw failure(file, url, `wrong SHA-256: the file's is ${digest.slice(0, 16)}..., its name says ${prefix}: a damaged download or a wrong mirror; nothing was kept`);
    renameSync(tmp, dest);
    return dest;
  } finally {
    rmSync(tmp, { force: true });
  }
}
