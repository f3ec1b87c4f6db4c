// Weight files by format: .pth (torch.save zip) or .safetensors, chosen by content, not name.
import { readFileSync } from 'node:fs';
import type { NamedTensor } from '../binding.js';
import { writeFileAtomic, writeFileAtomicAsync } from '../io/atomic.js';
import { encodePth, readPth } from './pth.js';
import { encodeSafetensors, readSafetensors } from './safetensors.js';

/** A weight file's tensors (C order, raw bytes) and its string metadata. */
export interface WeightFile {
  tensors: NamedTensor[];
  metadata: Record<string, string>;
  format: 'pth' | 'safetensors';
}

/** Reads a weight file (`.safetensors`, or a `.pth` zip written by `torch.save`): its tensors and metadata. Hostile files are refused with a message naming the file. */
export function readWeightFile(path: string): WeightFile {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') throw new Error(`${path}: weight file not found. Check the path (a torchvision .pth or .safetensors file; visionLearner's pretrained: true finds torchvision's ImageNet weights by itself)`);
    throw new Error(`${path}: cannot read the weight file (${err.code ?? err.message})`);
  }
  if (buf.length === 0) throw new Error(`${path}: the weight file is empty`);
  // .safetensors first: its first byte is the low byte of the header's length, which can be anything (0x80,
  // the pickle opcode that opens a legacy .pth, among them); a length that fits the file and a '{' after it
  // say what it is
  if (buf.length >= 9 && buf[8] === 0x7b && Number(buf.readBigUInt64LE(0)) <= buf.length - 8) {
    const f = readSafetensors(buf, path);
    return { ...f, format: 'safetensors' };
  }
  if (buf.length >= 4 && (buf.readUInt32LE(0) === 0x04034b50 || buf[0] === 0x80)) {
    return { tensors: readPth(buf, path), metadata: {}, format: 'pth' };
  }
  throw new Error(`${path}: not a weight file torchlearn can read (neither a torch.save .pth zip nor .safetensors)`);
}

/** Writes .safetensors or .pth (by extension), atomically. */
export function writeWeightFile(path: string, tensors: NamedTensor[], metadata: Record<string, string> = {}): void {
  if (path.endsWith('.pth') || path.endsWith('.pt')) writeFileAtomic(path, encodePth(tensors));
  else writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}

/** writeWeightFile, the writing off the JavaScript thread. */
export async function writeWeightFileAsync(path: string, tensors: NamedTensor[], metadata: Record<string, string> = {}): Promise<void> {
  await writeFileAtomicAsync(path, path.endsWith('.pth') || path.endsWith('.pt') ? encodePth(tensors) : encodeSafetensors(tensors, metadata));
}
