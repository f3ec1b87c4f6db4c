// The bench's data-parallel scaling rows. On the CPU: 2 ranks x 1 thread (Gloo, `torchlearn launch`) against
// 1 process x 1 thread doing the same per-rank work, and 1 process with every core for reference. On CUDA:
// the plain learner, a world of one joined with NCCL (the distributed step's overhead), and one rank per GPU
// when there are several. Each
// configuration in processes of its own (scripts/bench/scaling-worker.ts), the configurations interleaved
// over `rounds` rounds (a small machine's speed drifts by more than the differences measured); each row is
// the median round, with every round's figure beside it. Images/s over the whole world, and the share of a
// step rank 0 waits for the gradient all-reduces after backward.
import { execFileSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { freePort } from '../../src/distributed/launch.js';

export interface ScalingConfig {
  device: 'cpu' | 'cuda';
  gpus: number;
  arch: string;
  size: number;
  presize: number;
  bs: number;
  iters: number;
  rounds: number;
  log: (line: string) => void;
}

export async function scalingBench(rows: Record<string, unknown>[], c: ScalingConfig): Promise<void> {
  const worker = ['--import', 'tsx', 'scripts/bench/scaling-worker.ts', c.arch, String(c.size), String(c.presize), String(c.bs), String(c.iters), c.device];
  const launch = (n: number) => ['--import', 'tsx', 'src/cli.ts', 'launch', '--nproc', String(n), process.execPath, ...worker];
  const cores = availableParallelism();
  type Cfg = { impl: string; args: string[]; threads?: number; env?: NodeJS.ProcessEnv };
  const configs: Cfg[] =
    c.device === 'cpu'
      ? [
          { impl: 'torchlearn, 1 process x 1 thread', args: worker, threads: 1 },
          { impl: `torchlearn, 2 ranks x 1 thread (Gloo)`, args: launch(2), threads: 1 },
          ...(cores > 1 ? [{ impl: `torchlearn, 1 process x ${cores} threads`, args: worker, threads: cores }] : []),
        ]
      : [
          { impl: 'torchlearn, 1 process (plain learner)', args: worker },
          // (its port is chosen when the row runs: MASTER_PORT below)
          { impl: 'torchlearn, world size 1 (NCCL)', args: worker, env: { RANK: '0', LOCAL_RANK: '0', WORLD_SIZE: '1', MASTER_ADDR: '127.0.0.1', TORCHLEARN_BENCH_JOIN: 'nccl' } },
          ...(c.gpus > 1 ? [{ impl: `torchlearn, ${c.gpus} ranks, one per GPU (NCCL)`, args: launch(c.gpus) }] : []),
        ];
  const env = async (cfg: Cfg) => {
    const e: NodeJS.ProcessEnv = { ...process.env };
    for (const k of ['TORCHLEARN_THREADS', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'OMP_NUM_THREADS']) delete e[k];
    if (cfg.threads) e.OMP_NUM_THREADS = String(cfg.threads);
    if (cfg.env) Object.assign(e, cfg.env, { MASTER_PORT: String(await freePort()) });
    return e;
  };
  const runs = configs.map(() => [] as Record<string, number>[]);
  for (let round = 0; round < c.rounds; round++)
    for (const [k, cfg] of configs.entries()) {
      try {
        const out = execFileSync(process.execPath, cfg.args, { encoding: 'utf8', env: await env(cfg), maxBuffer: 1 << 24 });
        const r = JSON.parse(out.trim().split('\n').filter((l) => l.startsWith('{')).pop()!);
        runs[k].push(r);
        c.log(`round ${round + 1} ${cfg.impl}: ${JSON.stringify(r)}`);
      } catch (e) {
        c.log(`scaling row '${cfg.impl}' failed: ${(e as Error).message.split('\n')[0]}`);
      }
    }
  configs.forEach((cfg, k) => {
    const rs = runs[k].slice().sort((a, b) => a.images_per_s - b.images_per_s);
    if (!rs.length) return;
    const r = rs[(rs.length - 1) >> 1];
    rows.push({
      bench: 'data-parallel scaling', impl: cfg.impl, arch: c.arch, device: c.device, bs: c.bs, size: c.size, world: r.world, threads: r.threads,
      images_per_s: r.images_per_s, step_s: r.step_s, allreduce_share: r.allreduce_s / r.step_s, peak_rss_bytes: r.peak_rss_bytes,
      ...(c.device === 'cuda' ? { peak_device_bytes: r.peak_device_bytes, graph: r.graph } : {}),
      rounds_images_per_s: runs[k].map((q) => q.images_per_s), rounds_allreduce_share: runs[k].map((q) => q.allreduce_s / q.step_s),
    });
  });
}
