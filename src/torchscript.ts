// Bring your own body: a module scripted or traced in PyTorch and saved with torch.jit.save (any timm or
// torchvision model cut before its pool and classifier), read and checked here before LibTorch loads it.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { torchInfo } from './info.js';
import { ZipReader } from './weights/zip.js';

/** A learner's body from PyTorch: the path of a TorchScript file (`torch.jit.save` of a scripted or traced module). */
export interface TorchScriptBody {
  torchscript: string;
}

/** The extra file a TorchScript body may carry (`torch.jit.save(m, path, _extra_files={'torchlearn.json': ...})`). */
export interface TorchScriptExtras {
  /** parameter-name prefixes where fast.ai's second, third ... layer groups of the body start, in parameter order */
  groupStarts?: string[];
}

/** A TorchScript body read from its file: the bytes LibTorch loads, where they came from, its layer groups. */
export interface ScriptSpec {
  bytes: Uint8Array;
  source: string;
  groupStarts: string[];
}

/** The name of the extra file that says where layer groups start. */
export const TORCHSCRIPT_EXTRAS = 'torchlearn.json';

/** Whether a learner's architecture argument is a TorchScript body. */
export function isTorchScriptBody(a: unknown): a is TorchScriptBody {
  return typeof a === 'object' && a !== null && typeof (a as TorchScriptBody).torchscript === 'string';
}

/**
 * Reads a TorchScript file: refuses what is not one (a torch.save checkpoint, another zip) and a file from a
 * PyTorch newer than this LibTorch reads, naming both versions, before anything is loaded.
 */
export function readTorchScript(path: string): ScriptSpec {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new Error(`${path}: cannot read the TorchScript body (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return parseTorchScript(buf, path);
}

/** As readTorchScript, on the bytes of a file already read (an export carries its body's). */
export function parseTorchScript(buf: Buffer, source: string): ScriptSpec {
  const save = `save it with torch.jit.save(torch.jit.script(body), '${basename(source)}') (or torch.jit.trace), the body cut before its pool and classifier`;
  if (buf.length < 4 || buf.readUInt32LE(0) !== 0x04034b50) throw new Error(`${source}: not a TorchScript file (not a zip); ${save}`);
  let zip: ZipReader;
  try {
    zip = new ZipReader(buf, source);
  } catch (e) {
    throw new Error(`${source}: not a TorchScript file (${(e as Error).message}); ${save}`);
  }
  const names = [...zip.entries.keys()];
  const versionName = names.find((n) => /^[^/]+\/(\.data\/)?version$/.test(n));
  const root = versionName?.split('/')[0];
  if (!versionName || !names.some((n) => n.startsWith(`${root}/code/`)))
    throw new Error(`${source}: a torch.save checkpoint or another zip, not TorchScript (no code/ in it); ${save}`);
  const version = Number(zip.read(versionName).toString('utf8').trim());
  const max = torchInfo().torchscriptFormat;
  if (!Number.isInteger(version)) throw new Error(`${source}: damaged TorchScript file (its version record is not a number)`);
  if (version > max)
    throw new Error(
      `${source}: written by a newer PyTorch (TorchScript file format ${version}) than this LibTorch ${torchInfo().torchVersion} reads (format ${max} at most): ` +
        `save it with a PyTorch of LibTorch's version, or build torchlearn against a newer LibTorch (LIBTORCH=...)`,
    );
  let groupStarts: string[] = [];
  const extras = names.find((n) => n === `${root}/extra/${TORCHSCRIPT_EXTRAS}`);
  if (extras) {
    let parsed: TorchScriptExtras;
    try {
      parsed = JSON.parse(zip.read(extras).toString('utf8')) as TorchScriptExtras;
    } catch (e) {
      throw new Error(`${source}: its ${TORCHSCRIPT_EXTRAS} is not JSON (${(e as Error).message})`);
    }
    const g = parsed.groupStarts ?? [];
    if (!Array.isArray(g) || !g.every((s) => typeof s === 'string' && s.length > 0) || g.length > 16)
      throw new Error(`${source}: ${TORCHSCRIPT_EXTRAS}: groupStarts must be a list of at most 16 parameter-name prefixes, e.g. ["layer3"]`);
    groupStarts = g;
  }
  return { bytes: new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength), source, groupStarts };
}
