// Builds the labelled folders fast.ai's from_folder reads: outDir/<label>/<file>.
import { copyFileSync, existsSync, linkSync, lstatSync, mkdirSync, readFileSync, readlinkSync, statSync, symlinkSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';

/** Options of `segregateByLabel`. */
export interface SegregateOptions {
  /** 'link' (default): a hard link, or a symbolic link across file systems; 'symlink'; 'copy'. */
  mode?: 'link' | 'symlink' | 'copy';
}

/** What `segregateByLabel` linked or copied. */
export interface SegregateResult {
  created: number;
  existing: number;
  perClass: Record<string, number>;
  /** target path -> source path */
  files: Map<string, string>;
}

function sameFile(target: string, source: string): boolean {
  const lst = lstatSync(target);
  if (lst.isSymbolicLink()) return resolve(readlinkSync(target)) === resolve(source);
  const a = statSync(target);
  const b = statSync(source);
  if (a.ino === b.ino && a.dev === b.dev) return true;
  return a.size === b.size && readFileSync(target).equals(readFileSync(source));
}

/** Idempotent: a second run finds the same files and changes nothing; a different file is never overwritten. */
export function segregateByLabel(items: { path: string; label: string }[], outDir: string, opts: SegregateOptions = {}): SegregateResult {
  const mode = opts.mode ?? 'link';
  const res: SegregateResult = { created: 0, existing: 0, perClass: {}, files: new Map() };
  for (const it of items) {
    const dir = join(outDir, it.label);
    mkdirSync(dir, { recursive: true });
    const target = join(dir, basename(it.path));
    res.perClass[it.label] = (res.perClass[it.label] ?? 0) + 1;
    res.files.set(target, it.path);
    if (existsSync(target) || isDanglingLink(target)) {
      if (!existsSync(target) || !sameFile(target, it.path)) {
        throw new Error(`${target} already exists and is a different file than ${it.path}; remove it or choose another output folder`);
      }
      res.existing++;
      continue;
    }
    if (mode === 'copy') copyFileSync(it.path, target);
    else if (mode === 'symlink') symlinkSync(resolve(it.path), target);
    else {
      try {
        linkSync(it.path, target);
      } catch {
        symlinkSync(resolve(it.path), target);
      }
    }
    res.created++;
  }
  return res;
}

function isDanglingLink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}
