// The safetensors format: an 8-byte little-endian header length, a JSON header, then the tensor
// bytes. The header is validated as the reference reader does.
import type { DType, NamedTensor } from '../binding.js';
import { DTYPE_SIZE, numel } from './dtypes.js';

const MAX_HEADER = 100_000_000; // the reference reader's limit

export interface SafetensorsFile {
  tensors: NamedTensor[];
  metadata: Record<string, string>;
}

export function readSafetensors(buf: Buffer, path: string): SafetensorsFile {
  const fail = (why: string): never => {
    throw new Error(`${path}: not a valid .safetensors file: ${why}`);
  };
  if (buf.length < 8) fail('shorter than its 8-byte header length');
  const n = buf.readBigUInt64LE(0);
  if (n > BigInt(MAX_HEADER)) fail(`header length ${n} is over the ${MAX_HEADER}-byte limit`);
  const headerLen = Number(n);
  if (8 + headerLen > buf.length) fail(`header length ${headerLen} runs past the end of the file (truncated?)`);
  if (buf[8] !== 0x7b) fail("the header does not start with '{'");
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + headerLen)));
  } catch (e) {
    fail(`the header is not UTF-8 JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('the header is not a JSON object');
  const data = buf.subarray(8 + headerLen);
  const metadata: Record<string, string> = {};
  const entries: { name: string; dtype: DType; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) fail('__metadata__ must be an object of strings');
      for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
        if (typeof s !== 'string') return fail(`__metadata__.${k} is not a string`);
        metadata[k] = s;
      }
      continue;
    }
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e !== 'object' || e === null) fail(`entry '${name}' is not an object`);
    if (typeof e.dtype !== 'string' || !(e.dtype in DTYPE_SIZE)) fail(`tensor '${name}' has unsupported dtype ${JSON.stringify(e.dtype)}`);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) fail(`tensor '${name}' has an invalid shape`);
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[1] < off[0])
      fail(`tensor '${name}' has invalid data_offsets`);
    const [begin, end] = off as [number, number];
    const dtype = e.dtype as DType;
    const shape = e.shape as number[];
    if (end - begin !== numel(shape) * DTYPE_SIZE[dtype])
      fail(`tensor '${name}' has ${end - begin} bytes but ${dtype} ${JSON.stringify(shape)} needs ${numel(shape) * DTYPE_SIZE[dtype]}`);
    entries.push({ name, dtype, shape, begin, end });
  }
  // Offsets must tile the data buffer exactly: no gaps, no overlaps, nothing after.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const e of sorted) {
    if (e.begin !== cursor) fail(`tensor '${e.name}' does not start where the previous one ends (offsets are not contiguous)`);
    cursor = e.end;
  }
  if (cursor !== data.length) fail(`the tensors cover ${cursor} bytes but the file holds ${data.length} (truncated or padded?)`);
  const tensors = entries.map((e) => ({
    name: e.name,
    dtype: e.dtype,
    shape: e.shape,
    data: new Uint8Array(data.buffer, data.byteOffset + e.begin, e.end - e.begin),
  }));
  return { tensors, metadata };
}

export function encodeSafetensors(tensors: NamedTensor[], metadata: Record<string, string> = {}): Uint8Array[] {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((Buffer.byteLength(json) + 8) % 8)) % 8); // align the data to 8 bytes
  const h = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return [len, h, ...tensors.map((t) => t.data)];
}
