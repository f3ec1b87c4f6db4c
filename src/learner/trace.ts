// The operator table of a traced stretch of training: what LibTorch ran (operators on the CPU side, kernels
// on the GPU), how often, and for how long. torchlearn writes it from `fit(..., { trace })`; the PyTorch
// baseline of the bench writes the same format from torch.profiler, so the two steps can be put side by
// side operator by operator (`compareTraces`), which is how a gap between them is found.
import { existsSync, readFileSync } from 'node:fs';
import { torchInfo } from '../info.js';
import { writeFileAtomic } from '../io/atomic.js';

/** One operator (or CUDA kernel) of a trace: calls and total time. */
export interface TraceOp {
  name: string;
  device: 'cpu' | 'cuda';
  /** calls over the traced steps */
  count: number;
  /** microseconds over the traced steps; an operator's time includes the operators it calls */
  totalUs: number;
}

/** A trace's operator table, with what produced it. */
export interface TraceTable {
  impl: string;
  torchVersion: string;
  device: string;
  /** training steps traced */
  steps: number;
  /** the Chrome trace beside it, where the LibTorch has Kineto (PyTorch's builds; not Debian's 1.13) */
  chromeTrace?: string;
  ops: TraceOp[];
}

/** Where the Chrome trace of the table at `path` goes. */
export function chromeTracePath(path: string): string {
  return path.replace(/\.json$/, '') + '.chrome.json';
}

export function writeTrace(path: string, t: TraceTable): void {
  const ops = [...t.ops].sort((a, b) => b.totalUs - a.totalUs);
  writeFileAtomic(path, [Buffer.from(JSON.stringify({ ...t, ops }, null, 1))]);
}

/** The table of a traced native call (a fit's first epoch, a predictImages call) at `path`, naming the Chrome
 * trace LibTorch wrote beside it (chromeTracePath) when it could. */
export function writeNativeTrace(path: string, device: string, steps: number, ops: TraceOp[]): void {
  const chrome = chromeTracePath(path);
  writeTrace(path, { impl: 'torchlearn', torchVersion: torchInfo().torchVersion, device, steps, chromeTrace: existsSync(chrome) ? chrome : undefined, ops });
}

/** Reads a Chrome trace written by torchlearn or torch.profiler into an operator table. */
export function readTrace(path: string): TraceTable {
  const t = JSON.parse(readFileSync(path, 'utf8')) as TraceTable;
  if (!Array.isArray(t.ops) || !(t.steps > 0)) throw new Error(`${path} is not an operator table (no ops or steps)`);
  return t;
}

/**
 * A Markdown table of the operators where two traces differ most, per training step: calls and
 * milliseconds on each side. Rows are ranked by the larger of the two times, so that an operator that
 * one side runs and the other does not shows up as well as one that is slower.
 */
export function compareTraces(a: TraceTable, b: TraceTable, top = 30): string {
  const key = (o: TraceOp) => `${o.device} ${o.name}`;
  const per = (t: TraceTable) => {
    const m = new Map<string, { calls: number; ms: number; op: TraceOp }>();
    for (const o of t.ops) m.set(key(o), { calls: o.count / t.steps, ms: o.totalUs / 1000 / t.steps, op: o });
    return m;
  };
  const pa = per(a);
  const pb = per(b);
  const keys = [...new Set([...pa.keys(), ...pb.keys()])];
  const rows = keys
    .map((k) => ({ k, a: pa.get(k), b: pb.get(k) }))
    .map((r) => ({ ...r, diff: Math.abs((r.a?.ms ?? 0) - (r.b?.ms ?? 0)), callDiff: (r.a?.calls ?? 0) !== (r.b?.calls ?? 0) }))
    .sort((x, y) => y.diff - x.diff)
    .slice(0, top);
  const f = (x: number | undefined, d: number) => (x === undefined ? '-' : x.toFixed(d));
  const lines = [
    `| operator | device | calls/step ${a.impl} | calls/step ${b.impl} | ms/step ${a.impl} | ms/step ${b.impl} |`,
    '|---|---|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    const [device, ...name] = r.k.split(' ');
    lines.push(`| ${name.join(' ').slice(0, 70)} | ${device} | ${f(r.a?.calls, 1)} | ${f(r.b?.calls, 1)} | ${f(r.a?.ms, 2)} | ${f(r.b?.ms, 2)} |`);
  }
  return lines.join('\n');
}
