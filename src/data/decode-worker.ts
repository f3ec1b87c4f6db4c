// The child process of workers.ts: decodes the files it is sent, as decodeImage does in the parent, and sends
// each result back as it completes. It loads sharp and nothing of torchlearn's native layer.
import type { ResizeMethod } from './transforms.js';
import { decodeImage } from './images.js';

/** What the parent sends, once. */
export interface DecodeJob {
  paths: string[];
  presize: number;
  method: ResizeMethod;
  /** how many decodes run at once; 1 with `announce` when the parent is finding which file kills the decoder */
  inflight: number;
  /** send `{ begin: i }` before decoding file i */
  announce: boolean;
}

/** What the child sends back: `ready` once it listens, then one message per file, and `begin` markers when the job asks for them. */
export type DecodeMessage = { ready: true } | { i: number; ok: true; data: Uint8Array } | { i: number; ok: false; reason: string } | { begin: number };

// For the test of the parent's recovery only: a decoder that dies on a file (as a native crash in a decoding
// library would) is played by this process killing itself when a path contains this text.
const crashOn = process.env.TORCHLEARN_TEST_CRASH_DECODER_ON;

// The parent went away (it exited, or gave up on this child): nothing to send results to.
process.on('disconnect', () => process.exit(0));

process.once('message', (job: DecodeJob) => {
  let next = 0;
  const worker = async () => {
    while (next < job.paths.length) {
      const i = next++;
      if (job.announce) process.send!({ begin: i } satisfies DecodeMessage);
      if (crashOn && job.paths[i].includes(crashOn)) process.kill(process.pid, 'SIGSEGV');
      const d = await decodeImage(job.paths[i], job.presize, job.method);
      process.send!((d.ok ? { i, ok: true, data: d.data } : { i, ok: false, reason: d.reason }) satisfies DecodeMessage);
    }
  };
  void Promise.all(Array.from({ length: Math.max(1, Math.min(job.inflight, job.paths.length)) }, worker));
});
// A message that arrives before a listener exists is dropped, and module loading under a loader is
// asynchronous: the parent sends the job only once it hears this.
process.send!({ ready: true } satisfies DecodeMessage);
