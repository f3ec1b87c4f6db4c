// torchvision's .pth files: what torch.save(model.state_dict()) writes since PyTorch 1.6 (a zip
// holding data.pkl and one file per tensor storage), and the legacy format before it, in which torchvision
// still publishes its older weights (DenseNet, ResNeXt, Wide ResNet).
import { crc32 } from 'node:zlib';
import type { DType, NamedTensor } from '../binding.js';
import { DTYPE_SIZE, numel } from './dtypes.js';
import { pickleStateDict, unpickle, unpickleAt, type StorageRef, type TensorRef } from './pickle.js';
import { ZipReader } from './zip.js';

/** The most a state dict's pickle (names, shapes, storage keys) may declare. */
const MAX_PICKLE_BYTES = 256 * 1024 * 1024;

function isTensorRef(v: unknown): v is TensorRef {
  return typeof v === 'object' && v !== null && (v as TensorRef).kind === 'tensor';
}

/** The tensors of a state_dict (also found under 'model' or 'state_dict', as fast.ai and Lightning save). */
function findStateDict(root: unknown, path: string): Map<string, TensorRef> {
  if (root instanceof Map) {
    if ([...root.values()].some(isTensorRef)) return root as Map<string, TensorRef>;
    for (const k of ['model', 'state_dict', 'model_state_dict']) if (root.get(k) instanceof Map) return findStateDict(root.get(k), path);
  }
  throw new Error(`${path}: the checkpoint holds no state_dict (no tensors at its top level or under 'model'/'state_dict')`);
}

export function readPth(buf: Buffer, path: string): NamedTensor[] {
  if (buf.length >= 2 && buf[0] === 0x80 && buf.readUInt32LE(0) !== 0x04034b50) return readLegacyPth(buf, path);
  if (buf.length < 4 || buf.readUInt32LE(0) !== 0x04034b50) {
    throw new Error(`${path}: not a PyTorch checkpoint (expected a zip written by torch.save, or a .safetensors file)`);
  }
  const zip = new ZipReader(buf, path);
  const pklName = [...zip.entries.keys()].find((n) => n.endsWith('data.pkl') && n.split('/').length === 2);
  if (!pklName) throw new Error(`${path}: not a PyTorch checkpoint (no data.pkl inside the zip)`);
  const prefix = pklName.slice(0, -'data.pkl'.length);
  const pkl = zip.entries.get(pklName)!;
  // (a state dict's pickle is kilobytes; a declared size past this is a damaged or hostile file)
  if (pkl.size > MAX_PICKLE_BYTES) throw new Error(`${path}: data.pkl declares ${pkl.size} bytes, more than a state dict's pickle holds (${MAX_PICKLE_BYTES})`);
  const sd = findStateDict(unpickle(zip.read(pklName), path), path);
  const storages = new Map<string, Buffer>();
  const out: NamedTensor[] = [];
  for (const [name, t] of sd) {
    if (!isTensorRef(t)) continue; // e.g. _metadata
    const st: StorageRef = t.storage;
    const size = DTYPE_SIZE[st.dtype as DType];
    if (!(Number.isSafeInteger(st.numel) && st.numel >= 0)) throw new Error(`${path}: storage ${st.key} of '${name}' has a bad size (${st.numel})`);
    let raw = storages.get(st.key);
    if (!raw) {
      // torch.save writes a storage's bytes exactly: the entry must hold numel * element size
      raw = zip.read(`${prefix}data/${st.key}`, st.numel * size);
      storages.set(st.key, raw);
    }
    if (raw.length < st.numel * size) throw new Error(`${path}: storage ${st.key} of '${name}' is cut short (truncated file?)`);
    out.push({ name, dtype: st.dtype as DType, shape: t.shape, data: gather(raw, t, size, path, name) });
  }
  return out;
}

/** torch.save's magic number at the start of a legacy file, and the protocol version after it. */
const LEGACY_MAGIC = Number(0x1950a86a20f9469cfc6cn);
const LEGACY_PROTOCOL = 1001;

/**
 * A .pth in the format of PyTorch before 1.6: four pickles in a row (the magic number, the protocol
 * version, the machine's sizes, the state dict whose storages are persistent ids), a pickle of the storage
 * keys, then each storage in that order as an int64 element count and its raw little-endian bytes.
 */
function readLegacyPth(buf: Buffer, path: string): NamedTensor[] {
  const bad = (why: string): never => {
    throw new Error(`${path}: not a readable PyTorch checkpoint (legacy format: ${why})`);
  };
  let at = 0;
  const next = () => {
    const r = unpickleAt(buf, path, at);
    at = r.end;
    return r.value;
  };
  if (next() !== LEGACY_MAGIC) bad('no torch.save magic number');
  if (next() !== LEGACY_PROTOCOL) bad('an unknown protocol version');
  const info = next();
  if (info instanceof Map && info.get('little_endian') === false) bad('written on a big-endian machine');
  const sd = findStateDict(next(), path);
  const keys = next();
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string')) bad('no list of storage keys');
  const dtypes = new Map<string, DType>();
  for (const t of sd.values()) if (isTensorRef(t)) dtypes.set(t.storage.key, t.storage.dtype as DType);
  const storages = new Map<string, Buffer>();
  for (const key of keys as string[]) {
    if (at + 8 > buf.length) bad(`storage ${key} is cut short (truncated file?)`);
    const n = Number(buf.readBigInt64LE(at));
    at += 8;
    const dtype = dtypes.get(key);
    if (!dtype) bad(`storage ${key} belongs to no tensor`);
    const bytes = n * DTYPE_SIZE[dtype!];
    if (!(Number.isSafeInteger(bytes) && bytes >= 0) || at + bytes > buf.length) bad(`storage ${key} is cut short (truncated file?)`);
    storages.set(key, buf.subarray(at, at + bytes));
    at += bytes;
  }
  const out: NamedTensor[] = [];
  for (const [name, t] of sd) {
    if (!isTensorRef(t)) continue;
    const raw = storages.get(t.storage.key);
    if (!raw) bad(`the data of '${name}' is missing`);
    const size = DTYPE_SIZE[t.storage.dtype as DType];
    out.push({ name, dtype: t.storage.dtype as DType, shape: t.shape, data: gather(raw!, t, size, path, name) });
  }
  return out;
}

/** Copies a (possibly strided) view out of its storage into C order. */
function gather(raw: Buffer, t: TensorRef, size: number, path: string, name: string): Uint8Array {
  if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) || t.stride.length !== t.shape.length || !Number.isSafeInteger(t.offset))
    throw new Error(`${path}: tensor '${name}' has a bad shape, stride or offset ([${t.shape.join(', ')}], [${t.stride.join(', ')}], ${t.offset})`);
  const n = numel(t.shape);
  const contiguous = t.shape.every((_, i) => t.shape[i] === 1 || t.stride[i] === numel(t.shape.slice(i + 1)));
  const storageBytes = raw.length;
  if (contiguous) {
    const start = t.offset * size;
    const end = start + n * size;
    if (start < 0 || end > storageBytes) throw new Error(`${path}: tensor '${name}' lies outside its storage`);
    return new Uint8Array(raw.buffer, raw.byteOffset + start, n * size);
  }
  // A strided view (a transposed weight, say) reads each element of its storage at most once: its elements
  // fit in the storage. A broadcast view (stride 0) could claim any number of elements over a few bytes, and
  // copying them all took minutes: no weight file holds one.
  let last = t.offset;
  for (let d = 0; d < t.shape.length; d++) {
    if (!(Number.isSafeInteger(t.stride[d]) && t.stride[d] >= 0)) throw new Error(`${path}: tensor '${name}' has a bad stride (${t.stride[d]})`);
    if (t.shape[d] > 1 && t.stride[d] === 0) throw new Error(`${path}: tensor '${name}' is a broadcast view (stride 0 along dimension ${d}), not weights`);
    last += (t.shape[d] - 1) * t.stride[d];
  }
  if (n > 0 && (t.offset < 0 || (last + 1) * size > storageBytes || n * size > storageBytes - t.offset * size))
    throw new Error(`${path}: tensor '${name}' (shape [${t.shape.join(', ')}]) lies outside its storage of ${storageBytes} bytes`);
  const out = new Uint8Array(n * size);
  const idx = new Array(t.shape.length).fill(0);
  for (let k = 0; k < n; k++) {
    let off = t.offset;
    for (let d = 0; d < idx.length; d++) off += idx[d] * t.stride[d];
    if (off < 0 || (off + 1) * size > storageBytes) throw new Error(`${path}: tensor '${name}' lies outside its storage`);
    out.set(raw.subarray(off * size, off * size + size), k * size);
    for (let d = idx.length - 1; d >= 0; d--) {
      if (++idx[d] < t.shape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

/** Writes tensors as torch.save(state_dict) would, loadable by torch.load and torchvision. */
export function encodePth(tensors: NamedTensor[], archive = 'archive'): Uint8Array[] {
  const files: { name: string; data: Uint8Array }[] = [];
  const records = tensors.map((t, i) => ({ name: t.name, dtype: t.dtype, shape: t.shape, key: String(i) }));
  files.push({ name: `${archive}/data.pkl`, data: pickleStateDict(records) });
  files.push({ name: `${archive}/byteorder`, data: Buffer.from('little') });
  tensors.forEach((t, i) => files.push({ name: `${archive}/data/${i}`, data: t.data }));
  files.push({ name: `${archive}/version`, data: Buffer.from('3\n') });
  return zipStored(files);
}

/** A zip with stored entries, data aligned to 64 bytes as PyTorch's writer does. */
function zipStored(files: { name: string; data: Uint8Array }[]): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const f of files) {
    const name = Buffer.from(f.name, 'utf8');
    const pad = (64 - ((offset + 30 + name.length + 4) % 64)) % 64;
    const extra = Buffer.alloc(4 + pad);
    extra.writeUInt16LE(0xfa4b, 0); // an unused id, as PyTorch's padding field
    extra.writeUInt16LE(pad, 2);
    const crc = crc32(f.data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(f.data.byteLength, 18);
    local.writeUInt32LE(f.data.byteLength, 22);
    local.writeUInt16LE(name.length, 26);
    local.writeUInt16LE(extra.length, 28);
    chunks.push(local, name, extra, f.data);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0);
    cd.writeUInt16LE(20, 4);
    cd.writeUInt16LE(20, 6);
    cd.writeUInt32LE(crc, 16);
    cd.writeUInt32LE(f.data.byteLength, 20);
    cd.writeUInt32LE(f.data.byteLength, 24);
    cd.writeUInt16LE(name.length, 28);
    cd.writeUInt32LE(offset, 42);
    central.push(cd, name);
    offset += 30 + name.length + extra.length + f.data.byteLength;
  }
  const cdBuf = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(files.length, 8);
  end.writeUInt16LE(files.length, 10);
  end.writeUInt32LE(cdBuf.length, 12);
  end.writeUInt32LE(offset, 16);
  if (offset > 0xffffffff) throw new Error('checkpoints over 4 GiB are not supported in .pth; use .safetensors');
  chunks.push(cdBuf, end);
  return chunks;
}
