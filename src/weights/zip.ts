// A reader for the zip container torch.save writes (entries stored, sometimes deflated; zip64 for
// files over 4 GiB). Reads the central directory only, so a truncated file is detected.
import { inflateRawSync } from 'node:zlib';

/** The most an entry over 1 MiB may inflate, as a multiple of its compressed size. */
const MAX_INFLATE_RATIO = 100;

export interface ZipEntry {
  name: string;
  method: number;
  compressedSize: number;
  size: number;
  localOffset: number;
}

export class ZipReader {
  readonly entries = new Map<string, ZipEntry>();

  constructor(private readonly buf: Buffer, private readonly path: string) {
    const eocd = this.findEocd();
    let count = buf.readUInt16LE(eocd + 10);
    let cdSize = buf.readUInt32LE(eocd + 12);
    let cdOffset = buf.readUInt32LE(eocd + 16);
    if (cdOffset === 0xffffffff || count === 0xffff) {
      // zip64: the locator sits right before the end record
      const loc = eocd - 20;
      if (loc < 0 || buf.readUInt32LE(loc) !== 0x07064b50) this.fail('zip64 locator missing');
      const rec = Number(buf.readBigUInt64LE(loc + 8));
      if (rec + 56 > buf.length || buf.readUInt32LE(rec) !== 0x06064b50) this.fail('zip64 end record missing');
      count = Number(buf.readBigUInt64LE(rec + 32));
      cdSize = Number(buf.readBigUInt64LE(rec + 40));
      cdOffset = Number(buf.readBigUInt64LE(rec + 48));
    }
    if (cdOffset + cdSize > buf.length) this.fail('central directory lies past the end of the file (truncated?)');
    let p = cdOffset;
    for (let i = 0; i < count; i++) {
      if (p + 46 > buf.length || buf.readUInt32LE(p) !== 0x02014b50) this.fail('bad central directory entry');
      const method = buf.readUInt16LE(p + 10);
      let compressedSize = buf.readUInt32LE(p + 20);
      let size = buf.readUInt32LE(p + 24);
      const nameLen = buf.readUInt16LE(p + 28);
      const extraLen = buf.readUInt16LE(p + 30);
      const commentLen = buf.readUInt16LE(p + 32);
      let localOffset = buf.readUInt32LE(p + 42);
      if (p + 46 + nameLen + extraLen > buf.length) this.fail('bad central directory entry');
      const name = buf.toString('utf8', p + 46, p + 46 + nameLen);
      // zip64 extra field: the 0xffffffff fields follow in order size, compressed size, offset
      let e = p + 46 + nameLen;
      const eEnd = e + extraLen;
      while (e + 4 <= eEnd) {
        const id = buf.readUInt16LE(e);
        const len = buf.readUInt16LE(e + 2);
        if (id === 0x0001) {
          let q = e + 4;
          const next = () => {
            if (q + 8 > e + 4 + len) this.fail('bad zip64 extra field');
            const v = Number(buf.readBigUInt64LE(q));
            q += 8;
            return v;
          };
          if (size === 0xffffffff) size = next();
          if (compressedSize === 0xffffffff) compressedSize = next();
          if (localOffset === 0xffffffff) localOffset = next();
        }
        e += 4 + len;
      }
      this.entries.set(name, { name, method, compressedSize, size, localOffset });
      p += 46 + nameLen + extraLen + commentLen;
    }
  }

  /** An entry's bytes. `expectedSize`: what the entry must hold (a tensor storage's bytes), checked before
   * anything is inflated; a deflated entry never inflates past its declared size, which must match. */
  read(name: string, expectedSize?: number): Buffer {
    const e = this.entries.get(name);
    if (!e) this.fail(`entry '${name}' is missing`);
    if (expectedSize !== undefined && e.size !== expectedSize) this.fail(`entry '${name}' holds ${e.size} bytes where ${expectedSize} are expected`);
    const p = e.localOffset;
    if (p + 30 > this.buf.length || this.buf.readUInt32LE(p) !== 0x04034b50) this.fail(`bad local header for '${name}'`);
    const start = p + 30 + this.buf.readUInt16LE(p + 26) + this.buf.readUInt16LE(p + 28);
    const end = start + e.compressedSize;
    if (end > this.buf.length) this.fail(`entry '${name}' is cut short (truncated file?)`);
    const raw = this.buf.subarray(start, end);
    if (e.method === 0) return raw;
    if (e.method === 8) {
      // Weights are close to incompressible (deflate gains a few percent on floats): an entry declaring many
      // times its compressed size is a decompression bomb, refused before anything is inflated.
      if (e.size > 1 << 20 && e.size > MAX_INFLATE_RATIO * e.compressedSize)
        this.fail(`entry '${name}' declares ${e.size} bytes from ${e.compressedSize} compressed (over ${MAX_INFLATE_RATIO}x: not weights)`);
      let out: Buffer;
      try {
        out = inflateRawSync(raw, { maxOutputLength: Math.max(1, e.size) });
      } catch (err) {
        this.fail(`entry '${name}' does not inflate to its declared ${e.size} bytes (${(err as Error).message})`);
      }
      if (out.length !== e.size) this.fail(`entry '${name}' inflates to ${out.length} bytes, not its declared ${e.size}`);
      return out;
    }
    this.fail(`entry '${name}' uses compression method ${e.method}, which is not supported`);
  }

  private findEocd(): number {
    const min = Math.max(0, this.buf.length - 65557);
    for (let i = this.buf.length - 22; i >= min; i--) if (this.buf.readUInt32LE(i) === 0x06054b50) return i;
    this.fail('no zip end record (the file is truncated or not a zip)');
  }

  private fail(why: string): never {
    throw new Error(`${this.path}: not a readable PyTorch zip checkpoint: ${why}`);
  }
}
