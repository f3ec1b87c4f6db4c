// Data-parallel training on c10d's Gloo process group: 2 ranks of 1 thread each on 127.0.0.1, started as
// torchrun starts them (test/helpers/dist-worker.ts), against one process doing the same work; the faults
// (a rank killed, a world that never assembles, a port in use) and the launcher's exit codes.
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readWeightFile, type NamedTensor } from '../src/index.js';
import { freePort } from '../src/distributed/launch.js';
import { makeStripes } from './helpers/fixtures.js';
import { tempDir } from './helpers/python.js';

const ROOT = join(__dirname, '..');
const WORKER = join(ROOT, 'test', 'helpers', 'dist-worker.ts');
const CLI = join(ROOT, 'src', 'cli.ts');
let dir: string;
let data: string;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

// One Node process (node --import tsx, so that a signal reaches the script itself), one thread of LibTorch.
function node(args: string[], env: NodeJS.ProcessEnv = {}, onStdout?: (all: string) => void): { done: Promise<Run>; pid: number } {
  const base = { ...process.env };
  delete base.TORCHLEARN_THREADS;
  for (const k of ['RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT']) delete base[k];
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], { cwd: ROOT, env: { ...base, OMP_NUM_THREADS: '1', ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => {
    stdout += d;
    onStdout?.(stdout);
  });
  child.stderr.on('data', (d) => (stderr += d));
  const done = new Promise<Run>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { done, pid: child.pid! };
}

// `world` ranks of the worker with torchrun's variables, each its own process.
async function ranks(world: number, args: string[], env: NodeJS.ProcessEnv = {}, onStdout?: (rank: number, all: string) => void) {
  const port = await freePort();
  return Array.from({ length: world }, (_, r) =>
    node([WORKER, ...args], { RANK: String(r), LOCAL_RANK: String(r), WORLD_SIZE: String(world), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), ...env }, (all) => onStdout?.(r, all)),
  );
}

// ||a - b|| / ||b|| of two gradient files
function gradsRel(a: string, b: string): number {
  const x = floats(a);
  const y = floats(b);
  expect(x.length).toBe(y.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < y.length; i++) {
    num += (x[i] - y[i]) ** 2;
    den += y[i] ** 2;
  }
  return Math.sqrt(num / den);
}

function ok(r: Run): Run {
  if (r.code !== 0) throw new Error(`exit ${r.code ?? r.signal}:\n${r.stderr}`);
  return r;
}

const f32 = (t: NamedTensor) => new Float32Array(t.data.slice().buffer);
const floats = (path: string) => {
  const b = readFileSync(path);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};
// ||a - b|| / ||b|| over every float tensor of two weight files
function weightsRel(a: string, b: string): number {
  const ta = readWeightFile(a).tensors;
  const tb = readWeightFile(b).tensors;
  expect(ta.map((t) => t.name)).toEqual(tb.map((t) => t.name));
  let num = 0;
  let den = 0;
  ta.forEach((t, i) => {
    if (t.dtype !== 'F32') return;
    const x = f32(t);
    const y = f32(tb[i]);
    for (let k = 0; k < x.length; k++) {
      num += (x[k] - y[k]) ** 2;
      den += y[k] ** 2;
    }
  });
  return Math.sqrt(num / den);
}
function sameBytes(a: string, b: string): boolean {
  const tb = readWeightFile(b).tensors;
  return readWeightFile(a).tensors.every((t, i) => t.name === tb[i].name && Buffer.compare(Buffer.from(t.data), Buffer.from(tb[i].data)) === 0);
}

beforeAll(async () => {
  dir = tempDir();
  data = join(dir, 's');
  // 38 training images (an even number: the two shards of a batch are the single process's batch) and 10
  // validating, 48 px
  await makeStripes(data, 24, 48);
});

describe('distributed data-parallel training (Gloo, 2 ranks x 1 thread)', () => {
  it('2 ranks at batch 8 give the gradients of one process at batch 16, and after a fit its weights and validation; with syncBatchNorm also on batch statistics', async () => {
    const single = join(dir, 'single');
    const multi = join(dir, 'multi');
    ok(await node([WORKER, 'parity', data, single, '16']).done);
    (await Promise.all((await ranks(2, ['parity', data, multi, '8'])).map((p) => p.done))).forEach(ok);
    const g = floats(`${single}.grads.0.bin`);
    const g0 = floats(`${multi}.grads.0.bin`);
    const g1 = floats(`${multi}.grads.1.bin`);
    // (the body's gradients too: BatchNorm held in eval must not cut them)
    expect(g.length).toBeGreaterThan(11_000_000);
    expect(g0.length).toBe(g.length);
    let num = 0;
    let den = 0;
    let rankDiff = 0;
    for (let i = 0; i < g.length; i++) {
      num += (g0[i] - g[i]) ** 2;
      den += g[i] ** 2;
      rankDiff = Math.max(rankDiff, Math.abs(g0[i] - g1[i]));
    }
    expect(Math.sqrt(num / den)).toBeLessThan(1e-5);
    expect(rankDiff).toBe(0); // every rank steps with the same all-reduced gradients
    // 2 epochs of 2 steps: the weights and the validation (gathered from both ranks) of the single process
    expect(weightsRel(`${multi}.weights.0.safetensors`, `${single}.weights.0.safetensors`)).toBeLessThan(1e-5);
    expect(sameBytes(`${multi}.weights.0.safetensors`, `${multi}.weights.1.safetensors`)).toBe(true);
    // the all-reduces started while backward ran: every bucket from the gradient accumulators' hooks
    const info = JSON.parse(readFileSync(`${multi}.info.0.json`, 'utf8'));
    expect(info.buckets).toBeGreaterThan(5); // (the gradients step of 1 + the fit's 4 steps, several buckets each)
    expect(info.bucketsDuringBackward).toBe(info.buckets);
    const vs = JSON.parse(readFileSync(`${single}.values.0.json`, 'utf8')) as number[][];
    for (const r of [0, 1]) {
      const vm = JSON.parse(readFileSync(`${multi}.values.${r}.json`, 'utf8')) as number[][];
      vm.forEach((row, e) => expect(Math.abs(row[1] - vs[e][1]) / vs[e][1]).toBeLessThan(1e-5));
    }
    // syncBatchNorm, BatchNorm on batch statistics: the 16 images' statistics on both ranks, so one process's
    // gradients and running statistics again. Gradients through training-mode BatchNorm are sensitive to
    // rounding: one process's own differ by about 2e-5 between 1 and 2 threads, hence 1e-4 here. Without the
    // option each rank normalises with its own 8 images' statistics, and the gradients are far off.
    const sbn = gradsRel(`${multi}.sbn.grads.0.bin`, `${single}.sbn.grads.0.bin`);
    const nosync = gradsRel(`${multi}.nosync.grads.0.bin`, `${single}.nosync.grads.0.bin`);
    console.log(`syncBatchNorm: gradients ${sbn.toExponential(2)} from one process at batch 16 (without it: ${nosync.toExponential(2)})`);
    expect(sbn).toBeLessThan(1e-4);
    expect(nosync).toBeGreaterThan(1e-2);
    expect(weightsRel(`${multi}.sbn.state.0.safetensors`, `${single}.sbn.state.0.safetensors`)).toBeLessThan(1e-5);
    expect(sameBytes(`${multi}.sbn.state.0.safetensors`, `${multi}.sbn.state.1.safetensors`)).toBe(true);
  });

  it('lrFind and a fit with augmentation, dropout and BatchNorm: the same suggestion and identical weights on both ranks, the whole validation set scored, the stripes learned', async () => {
    const out = join(dir, 'fit');
    // through the launcher, as a user starts it
    const r = ok(await node([CLI, 'launch', '--nproc', '2', process.execPath, '--import', 'tsx', WORKER, 'fit', data, out, '8', '3']).done);
    expect(r.stdout).toMatch(/rank 0 epoch 2 done/);
    expect(r.stdout).toMatch(/rank 1 epoch 2 done/);
    expect(sameBytes(`${out}.weights.0.safetensors`, `${out}.weights.1.safetensors`)).toBe(true);
    const v0 = JSON.parse(readFileSync(`${out}.values.0.json`, 'utf8'));
    const v1 = JSON.parse(readFileSync(`${out}.values.1.json`, 'utf8'));
    expect(v0.world).toBe(2);
    expect(v0.validSizes).toEqual(Array(3).fill(v0.validN));
    // the validation columns are the same on both ranks (the train loss is each rank's own, as in fast.ai)
    expect(v1.values.map((row: number[]) => row.slice(1))).toEqual(v0.values.map((row: number[]) => row.slice(1)));
    // lrFind on both ranks: the same curve (the ranks' mean loss) and the same suggestion
    expect(v0.lrFindLosses.length).toBeGreaterThan(5);
    expect(v1.lrFindLosses).toEqual(v0.lrFindLosses);
    expect(v1.suggestions).toEqual(v0.suggestions);
    const last = v0.values[v0.values.length - 1];
    expect(last[2]).toBeGreaterThanOrEqual(0.8);
    expect(last[1]).toBeLessThan(v0.values[0][1]);
  });

  it('the graph step on 2 ranks (the all-reduce, and accumulation, in its tail) trains to the weights of ordinary steps', async () => {
    const out = join(dir, 'graph');
    (await Promise.all((await ranks(2, ['graph', data, out, '8'])).map((p) => p.done))).forEach(ok);
    // 19 images a rank, 2 batches an epoch: 3 ordinary warm-up steps, then the graph's
    expect(JSON.parse(readFileSync(`${out}.steps.0.json`, 'utf8'))).toEqual({ plain: [], graph: [0, 1, 2], 'plain-acc': [], 'graph-acc': [0, 1, 2] });
    for (const acc of ['', '-acc']) {
      // (LibTorch's kernels on the same inputs: the same numbers, whatever the order of the steps' parts)
      expect(weightsRel(`${out}.graph${acc}.0.safetensors`, `${out}.plain${acc}.0.safetensors`)).toBeLessThan(1e-6);
      expect(sameBytes(`${out}.graph${acc}.0.safetensors`, `${out}.graph${acc}.1.safetensors`)).toBe(true);
    }
    // (accumulating does change the training)
    expect(weightsRel(`${out}.plain-acc.0.safetensors`, `${out}.plain.0.safetensors`)).toBeGreaterThan(1e-3);
  });

  it("a distributed fit stopped after its first epoch, a step half accumulated, resumes from rank 0's checkpoint to the weights of the fit that ran through", async () => {
    // batch 4: 4 batches a rank and epoch, a step every 3, one batch's gradients waiting at the epoch's end
    // (every rank's averaged there, so that rank 0's checkpoint holds what each rank needs)
    const out = join(dir, 'resume');
    for (const mode of ['full', 'stop', 'resume']) (await Promise.all((await ranks(2, [mode, data, out, '4'])).map((p) => p.done))).forEach(ok);
    expect(weightsRel(`${out}.resume.0.safetensors`, `${out}.full.0.safetensors`)).toBeLessThan(1e-6);
    expect(weightsRel(`${out}.stop.0.safetensors`, `${out}.full.0.safetensors`)).toBeGreaterThan(1e-3); // (the stop did stop early)
    expect(sameBytes(`${out}.resume.0.safetensors`, `${out}.resume.1.safetensors`)).toBe(true);
  });

  it('a rank killed with SIGKILL makes the other stop within seconds, with an error that names it', async () => {
    let killedAt = 0;
    let victim = 0;
    // 500 epochs: it never ends by itself; rank 1 is killed once rank 0 has finished an epoch
    const procs = await ranks(2, ['fit', data, join(dir, 'kill'), '8', '500'], {}, (rank, all) => {
      if (rank === 0 && !killedAt && /epoch 0 done/.test(all)) {
        killedAt = Date.now();
        process.kill(victim, 'SIGKILL');
      }
    });
    victim = procs[1].pid;
    const [r0, r1] = await Promise.all(procs.map((p) => p.done));
    const waited = (Date.now() - killedAt) / 1000;
    expect(r1.signal).toBe('SIGKILL');
    expect(r0.code).not.toBe(0);
    expect(r0.stderr).toMatch(/distributed training stopped on rank 0 of 2 .*(rank 1 is gone|no heartbeat from rank 1)/);
    // Gloo's own timeout is 300 s: the heartbeats end the wait (10 s of silence at most, then the diagnosis)
    expect(waited).toBeLessThan(60);
  });

  it('a rank that hangs (alive, its heartbeat going on) makes the other stop after the timeout, naming it', async () => {
    const procs = await ranks(2, ['hang'], { TORCHLEARN_DIST_TIMEOUT: '2' });
    const r0 = await procs[0].done;
    process.kill(procs[1].pid, 'SIGKILL');
    await procs[1].done;
    expect(r0.code).not.toBe(0);
    expect(r0.stderr).toMatch(/stopped on rank 0 of 2 during an all-reduce \(sum\): rank 1 did not reach this collective within 2 s \(alive, but hung/);
  });

  it('the launcher passes exit codes through: the first failing rank decides, a killed one as 128 + signal', async () => {
    const script = join(dir, 'exit.mjs');
    writeFileSync(script, [
      "const r = process.env.RANK;",
      "console.log(JSON.stringify({ r, w: process.env.WORLD_SIZE, lr: process.env.LOCAL_RANK, port: process.env.MASTER_PORT, omp: process.env.OMP_NUM_THREADS }));",
      "const mode = process.argv[2];",
      "if (mode === 'fail' && r === '1') process.exit(3);",
      "if (mode === 'kill' && r === '1') process.kill(process.pid, 'SIGKILL');",
      "if (mode !== 'ok' && r === '0') setTimeout(() => {}, 60000); // hangs: the launcher stops it after the grace",
    ].join('\n'));
    const okRun = await node([CLI, 'launch', '--nproc', '2', script, 'ok']).done;
    expect(okRun.code).toBe(0);
    const seen = okRun.stdout.trim().split('\n').map((l) => JSON.parse(l)).sort((a, b) => a.r.localeCompare(b.r));
    expect(seen.map((s) => [s.r, s.w, s.lr])).toEqual([['0', '2', '0'], ['1', '2', '1']]);
    expect(seen[0].port).toBe(seen[1].port);
    expect(Number(seen[0].omp)).toBeGreaterThanOrEqual(1);
    const fail = await node([CLI, 'launch', '--nproc', '2', '--grace', '1', script, 'fail']).done;
    expect(fail.code).toBe(3);
    expect(fail.stderr).toMatch(/rank 1 \(pid \d+\) exited with code 3/);
    const kill = await node([CLI, 'launch', '--nproc', '2', '--grace', '1', script, 'kill']).done;
    expect(kill.code).toBe(128 + 9);
    expect(kill.stderr).toMatch(/rank 1 \(pid \d+\) was killed by SIGKILL/);
  });

  it("under torchrun's elastic agent the ranks join through the agent's store, their keys under its attempt's prefix", async () => {
    // (Debian's torchrun 1.13 does not start under Python 3.11; its agent's part, the store, is played by
    // PyTorch's TCPStore in Python, and the variables are the ones the agent sets)
    const port = await freePort();
    const host = spawn('/usr/bin/python3', ['-c', [
      'import sys, time, torch.distributed as d',
      `s = d.TCPStore('127.0.0.1', ${port}, None, True, wait_for_workers=False)`,
      "print('up', flush=True)",
      "k = '/worker/attempt_3/torchlearn/joined'",
      'while s.add(k, 0) < 2: time.sleep(0.05)',
      "print('joined', s.add(k, 0), flush=True)",
      'time.sleep(5)',
    ].join('\n')]);
    let out = '';
    await new Promise<void>((res, rej) => {
      host.stdout.on('data', (d) => ((out += d), out.includes('up') && res()));
      host.once('exit', (code) => rej(new Error(`the store's host exited (${code})`)));
    });
    try {
      const agentEnv = { TORCHELASTIC_USE_AGENT_STORE: 'True', TORCHELASTIC_RESTART_COUNT: '3', WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) };
      const runs = await Promise.all([0, 1].map((r) => node([WORKER, 'join'], { ...agentEnv, RANK: String(r), LOCAL_RANK: String(r) }).done));
      runs.forEach(ok);
      expect(runs.map((r) => JSON.parse(r.stdout.trim()).agentStorePrefix)).toEqual(['/worker/attempt_3', '/worker/attempt_3']);
      await new Promise((res) => setTimeout(res, 200));
      expect(out).toMatch(/joined 2/);
    } finally {
      host.kill();
    }
  });

  it('a world that never assembles, a port in use and wrong variables get errors that say what to do', async () => {
    // one rank of two, a 2-second wait
    const port = await freePort();
    const lone = await node([WORKER, 'join'], { RANK: '0', LOCAL_RANK: '0', WORLD_SIZE: '2', MASTER_PORT: String(port), TORCHLEARN_DIST_TIMEOUT: '2' }).done;
    expect(lone.code).not.toBe(0);
    expect(lone.stderr).toMatch(/only 1 of WORLD_SIZE=2 ranks joined at 127\.0\.0\.1:\d+ within 2 s/);
    const busy: Server = createServer();
    await new Promise<void>((res) => busy.listen(0, '127.0.0.1', () => res()));
    try {
      const taken = (busy.address() as { port: number }).port;
      const r = await node([WORKER, 'join'], { RANK: '0', LOCAL_RANK: '0', WORLD_SIZE: '2', MASTER_PORT: String(taken), TORCHLEARN_DIST_TIMEOUT: '2' }).done;
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(new RegExp(`rank 0 cannot listen at MASTER_ADDR:MASTER_PORT = 127\\.0\\.0\\.1:${taken}: the port is in use`));
    } finally {
      busy.close();
    }
    const bad = await node([WORKER, 'join'], { RANK: '5', WORLD_SIZE: '2' }).done;
    expect(bad.stderr).toMatch(/RANK=5 must be an integer in \[0, 1\]/);
  });
});
