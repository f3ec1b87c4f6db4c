// Serving a trained model over HTTP, on fastify: POST /predict (an image's bytes, or a multipart form with
// one file), GET /health, GET /info and a page at / to try the model. Concurrent requests share forward
// passes through the learner's batcher. `torchlearnServe` is a fastify plugin for a user's own app;
// `createServer` and `serve` (the CLI's `torchlearn serve`) wrap it in a server of their own.
import multipart from '@fastify/multipart';
import Fastify, { type FastifyInstance, type FastifyPluginAsync, type FastifyReply } from 'fastify';
import { torchInfo } from '../info.js';
import { loadLearner, type InferenceLearner, type LoadLearnerOptions } from '../inference.js';
import { heatmapPng } from '../plot/grid.js';
import { ImageDecodeError, QueueFullError } from './batcher.js';
import { PAGE_HTML } from './page.js';

/** Options of the serving plugin. */
export interface ServeOptions {
  /** the model: a loaded export */
  learner: InferenceLearner;
  /** the largest request body (an image, or a multipart form) in bytes (default 20 MiB): larger ones get 413 */
  bodyLimit?: number;
  /** serve the page at / (default true) */
  page?: boolean;
  /** what Retry-After says when the queue is full, in seconds (default 1) */
  retryAfterSeconds?: number;
}

/** The body of a successful POST /predict. */
export interface PredictResponse {
  /** the predicted class; a multi-label model: its labels joined by ';' */
  label: string;
  /** a multi-label model: every label above the export's threshold */
  labels?: string[];
  index: number;
  /** every class's probability, by class name */
  probs: Record<string, number>;
  /** milliseconds: the whole request's handling, and the prediction's decode, queue and forward pass */
  timing: { totalMs: number; decodeMs: number; queueMs: number; inferMs: number; batchSize: number; gradcamMs?: number };
  /** with ?gradcam=1: the Grad-CAM of the predicted class over the image, as a PNG data URL */
  gradcam?: string;
}

const MiB = 2 ** 20;

function fail(reply: FastifyReply, status: number, error: string): FastifyReply {
  return reply.code(status).type('application/json').send({ error });
}

/**
 * The serving routes as a fastify plugin: register it in your own app (under a prefix if you like).
 *
 * @example
 * ```ts
 * const app = Fastify();
 * await app.register(torchlearnServe, { prefix: '/xray', learner: loadLearner('export.safetensors') });
 * await app.listen({ port: 8080 });
 * ```
 */
export const torchlearnServe: FastifyPluginAsync<ServeOptions> = async (app, o) => {
  const learn = o.learner;
  const bodyLimit = o.bodyLimit ?? 20 * MiB;
  if (!(Number.isInteger(bodyLimit) && bodyLimit > 0)) throw new Error(`bodyLimit must be a positive integer (bytes), got ${o.bodyLimit}`);
  const retryAfter = String(o.retryAfterSeconds ?? 1);
  const vocab = learn.vocab;

  await app.register(multipart, { limits: { fileSize: bodyLimit, files: 1, fields: 8 } });
  // An image's bytes as the body: any image/* type, or octet-stream.
  const rawBody = (_req: unknown, body: string | Buffer, done: (err: null, body: Buffer) => void) => done(null, body as Buffer);
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer', bodyLimit }, rawBody);
  app.addContentTypeParser(/^image\//, { parseAs: 'buffer', bodyLimit }, rawBody);

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
    if (status === 413) return fail(reply, 413, `the body is larger than the limit of ${bodyLimit} bytes: send a smaller image`);
    if (status === 415)
      return fail(reply, 415, `unsupported Content-Type: send the image's bytes (Content-Type image/jpeg, image/png, ... or application/octet-stream) or a multipart form with one file`);
    return fail(reply, status, err.message);
  });

  if (o.page ?? true) app.get('/', async (_req, reply) => reply.type('text/html; charset=utf-8').send(PAGE_HTML));

  app.get('/health', async () => ({ status: 'ok', pending: learn.batcher.pending }));

  app.get('/info', async () => {
    const t = torchInfo();
    return {
      classes: vocab,
      arch: learn.info.arch,
      size: learn.info.size,
      presize: learn.info.presize,
      device: learn.device,
      torchVersion: t.torchVersion,
      cuda: t.cuda,
      batching: { maxBatch: learn.batcher.maxBatch, maxDelayMs: learn.batcher.maxDelayMs, maxQueue: learn.batcher.maxQueue },
    };
  });

  app.post<{ Querystring: { gradcam?: string } }>('/predict', async (req, reply) => {
    const t0 = performance.now();
    let bytes: Buffer | undefined;
    if (req.isMultipart()) {
      const file = await req.file();
      if (file) bytes = await file.toBuffer(); // (413 past the limit, through the error handler)
    } else if (Buffer.isBuffer(req.body)) {
      bytes = req.body;
    } else if (req.body !== undefined && req.body !== null) {
      // (a type fastify parses itself: JSON, text)
      return fail(reply, 415, `unsupported Content-Type '${req.headers['content-type']}': send the image's bytes (Content-Type image/jpeg, image/png, ... or application/octet-stream) or a multipart form with one file`);
    }
    if (!bytes || bytes.length === 0)
      return fail(reply, 400, 'no image: send its bytes as the body (Content-Type image/jpeg, image/png, ...) or a multipart form with one file');
    try {
      const p = await learn.predict(bytes);
      const out: PredictResponse = {
        label: p.label,
        ...(p.labels ? { labels: p.labels } : {}),
        index: p.index,
        probs: Object.fromEntries(vocab.map((c, i) => [c, p.probs[i]])),
        timing: { totalMs: 0, ...p.timing },
      };
      const gradcam = req.query.gradcam;
      if (gradcam === '1' || gradcam === 'true') {
        const tc = performance.now();
        const cam = await learn.gradcam(bytes, { classIdx: p.index });
        const png = await heatmapPng(cam.rgb, cam.size, { map: cam.map, h: cam.h, w: cam.w, alpha: 0.5 });
        out.gradcam = `data:image/png;base64,${png.toString('base64')}`;
        out.timing.gradcamMs = performance.now() - tc;
      }
      out.timing.totalMs = performance.now() - t0;
      return out;
    } catch (e) {
      if (e instanceof ImageDecodeError) return fail(reply, 400, `not an image, or a corrupt one: ${e.reason}`);
      if (e instanceof QueueFullError) {
        reply.header('Retry-After', retryAfter);
        return fail(reply, 503, e.message);
      }
      throw e;
    }
  });
};

/** A fastify server with the serving plugin on a loaded export (not listening yet: `listen()` it, or
 * `inject()` requests in tests). */
export async function createServer(learner: InferenceLearner, o: Omit<ServeOptions, 'learner'> = {}): Promise<FastifyInstance> {
  // the plugin's own limits answer 413; the server's default (1 MiB) must not answer first
  const app = Fastify({ logger: false, bodyLimit: (o.bodyLimit ?? 20 * MiB) + MiB, forceCloseConnections: 'idle' });
  await app.register(torchlearnServe, { ...o, learner });
  return app;
}

/** Options of `serve`: where to listen, and the model's loading and serving options. */
export interface ServeCommandOptions extends Omit<ServeOptions, 'learner'>, LoadLearnerOptions {
  /** default 8080 (0: any free port) */
  port?: number;
  /** default 127.0.0.1; '0.0.0.0' to be reachable from other machines */
  host?: string;
  /** where the "listening" line goes (default console.log) */
  log?: (line: string) => void;
}

/** A server `serve` started. */
export interface RunningServer {
  /** the fastify instance */
  app: FastifyInstance;
  /** where it listens, as http://host:port */
  url: string;
  /** stops accepting requests, lets those in flight finish and frees the model (what SIGTERM does, without exiting) */
  close: () => Promise<void>;
}

/**
 * `torchlearn serve`: loads an export and serves it until SIGTERM or SIGINT, which stop accepting requests,
 * let those in flight finish, free the model and exit. Resolves with the server once it listens.
 */
export async function serve(modelPath: string, o: ServeCommandOptions = {}): Promise<RunningServer> {
  const { port = 8080, host = '127.0.0.1', log = (l: string) => console.log(l), bodyLimit, page, retryAfterSeconds, ...load } = o;
  const learner = loadLearner(modelPath, load);
  const app = await createServer(learner, { bodyLimit, page, retryAfterSeconds });
  const url = await app.listen({ port, host });
  log(`torchlearn: serving ${modelPath} (${learner.info.arch}, classes ${learner.vocab.join(', ')}, ${learner.device}) at ${url}`);
  let closing: Promise<void> | null = null;
  const close = () =>
    (closing ??= (async () => {
      // close() waits for the requests in flight; a keep-alive connection that goes idle after them would hold
      // it for the keep-alive timeout, so idle connections are closed as they appear
      const idle = setInterval(() => app.server.closeIdleConnections(), 50);
      try {
        await app.close();
      } finally {
        clearInterval(idle);
      }
      learner.dispose();
    })());
  const onSignal = (sig: NodeJS.Signals) => {
    log(`torchlearn: ${sig}: finishing the requests in flight, then exiting`);
    close().then(
      () => process.exit(0),
      (e) => {
        console.error(e);
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  return { app, url, close };
}
