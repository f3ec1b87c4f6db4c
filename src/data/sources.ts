// Where labelled items come from, as fast.ai's ImageDataLoaders factories read them: a table (a CSV file or
// rows in memory) with a file-name column, a label column and optionally a validation column; a function
// or a regular expression of the file's path; an ImageNet-style folder with its own train/ and valid/.
// Each returns items (path, label, and the row's other values) and, where the source says which items
// validate, their indices. Everything that cannot work is refused naming the file, row, column or folder.
import { readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { parse } from 'csv-parse/sync';
import type { Item } from './loaders.js';

/** A column of a table: its name, or its position (0 is the first). */
export type Column = string | number;

/** How a table's rows become labelled images (fast.ai's from_df / from_csv). */
export interface TableOptions {
  /** the folder the file names are relative to (default: the CSV's folder; for fromTable, the current one) */
  path?: string;
  /** a sub-folder of `path` the images are in (fast.ai's `folder`) */
  folder?: string;
  /** the file-name column (default 0, the first) */
  fnCol?: Column;
  /** the label column (default 1, the second) */
  labelCol?: Column;
  /** a column saying which rows validate (true/1/yes; false/0/no/empty train): fast.ai's valid_col */
  validCol?: Column;
  /** appended to every file name (fast.ai's `suffix`, e.g. '.jpg') */
  suffix?: string;
  /** a row's labels separated by this (e.g. '|' or ' '): multi-label classification */
  labelDelim?: string;
  /** the CSV's field delimiter (default ',') */
  delimiter?: string;
}

/** Items and, when the source names them, the indices of the validation items. */
export interface Sourced {
  items: Item[];
  validIdx?: number[];
  /** the items' label sets, when labelDelim made the task multi-label */
  multiLabel?: boolean;
}

/** A truthy or falsy cell of a validation column; anything else is refused. */
export function isValidCell(v: unknown, where: () => string): boolean {
  if (v === true || v === 1) return true;
  if (v === false || v === 0 || v === null || v === undefined) return false;
  const s = String(v).trim().toLowerCase();
  if (['1', 'true', 'yes', 'y', 't', 'valid'].includes(s)) return true;
  if (['0', 'false', 'no', 'n', 'f', '', 'train'].includes(s)) return false;
  throw new Error(`${where()}: '${String(v)}' is not a validation flag (use true/false, 1/0 or yes/no)`);
}

function column(names: string[], c: Column, what: string, source: string): string {
  if (typeof c === 'number') {
    if (!Number.isInteger(c) || c < 0 || c >= names.length) throw new Error(`${source}: ${what} ${c} is not a column (the table has ${names.length}: ${names.join(', ')})`);
    return names[c];
  }
  if (!names.includes(c)) throw new Error(`${source}: no column '${c}' for the ${what} (the columns are: ${names.join(', ')})`);
  return c;
}

/** Rows (objects, one key per column) to items. `source` names the table in errors; `line(i)` a row. */
export function tableItems(rows: readonly Record<string, unknown>[], o: TableOptions, source: string, base: string, line: (i: number) => string): Sourced {
  if (rows.length === 0) throw new Error(`${source}: the table has no rows`);
  const names = Object.keys(rows[0]);
  const fn = column(names, o.fnCol ?? 0, 'file-name column', source);
  const label = column(names, o.labelCol ?? 1, 'label column', source);
  const valid = o.validCol === undefined ? undefined : column(names, o.validCol, 'validation column', source);
  if (o.labelDelim !== undefined && o.labelDelim === '') throw new Error(`${source}: labelDelim must not be empty`);
  const dir = join(base, o.folder ?? '');
  const items: Item[] = [];
  const validIdx: number[] = [];
  rows.forEach((row, i) => {
    const f = row[fn];
    if (f === undefined || f === null || String(f).trim() === '') throw new Error(`${source}, ${line(i)}: the file-name column '${fn}' is empty`);
    const l = row[label];
    if (l === undefined || l === null || String(l).trim() === '')
      throw new Error(`${source}, ${line(i)} (${String(f)}): the label column '${label}' is empty; give every row a label, or leave the row out`);
    const item: Item = { ...row, path: join(dir, String(f).trim() + (o.suffix ?? '')), label: String(l).trim() };
    if (o.labelDelim !== undefined) {
      const labels = [...new Set(String(l).split(o.labelDelim).map((s) => s.trim()).filter(Boolean))];
      if (labels.length === 0) throw new Error(`${source}, ${line(i)} (${String(f)}): the label column '${label}' holds no label between the delimiters '${o.labelDelim}'`);
      item.labels = labels;
      item.label = labels.join(o.labelDelim);
    }
    if (valid !== undefined && isValidCell(row[valid], () => `${source}, ${line(i)}, column '${valid}'`)) validIdx.push(i);
    items.push(item);
  });
  return { items, validIdx: valid === undefined ? undefined : validIdx, multiLabel: o.labelDelim !== undefined };
}

/** A CSV file with a header row to items (csv-parse reads it). */
export function csvItems(csvPath: string, o: TableOptions): Sourced {
  let text: string;
  try {
    text = readFileSync(csvPath, 'utf8');
  } catch (e) {
    throw new Error(`${csvPath}: cannot read the CSV file (${(e as NodeJS.ErrnoException).code ?? e})`);
  }
  let rows: Record<string, string>[];
  try {
    rows = parse(text, { columns: true, skip_empty_lines: true, bom: true, delimiter: o.delimiter ?? ',', relax_column_count: false });
  } catch (e) {
    throw new Error(`${csvPath}: not a CSV file with a header row (${(e as Error).message})`);
  }
  return tableItems(rows, o, csvPath, o.path ?? dirname(csvPath), (i) => `line ${i + 2}`);
}

/** Files labelled by a function of their path (fast.ai's from_name_func). */
export function nameFuncItems(dir: string, files: readonly string[], labelFunc: (path: string) => string): Sourced {
  if (files.length === 0) throw new Error(`${dir}: no files given`);
  return {
    items: files.map((f) => {
      const path = join(dir, f);
      const label = labelFunc(path);
      if (typeof label !== 'string' || label === '') throw new Error(`${path}: the label function returned ${JSON.stringify(label)}, not a label`);
      return { path, label };
    }),
  };
}

/** Files labelled by the first group of a regular expression matched on their path (fast.ai's from_path_re). */
export function pathReItems(dir: string, files: readonly string[], re: RegExp): Sourced {
  if (files.length === 0) throw new Error(`${dir}: no files given`);
  return {
    items: files.map((f) => {
      const path = join(dir, f);
      // (posix separators, as fast.ai matches `str(path)` on Linux)
      const m = re.exec(path.split('\\').join('/'));
      if (!m || m[1] === undefined) throw new Error(`${path}: the pattern ${re} does not match this file's path (it needs a group around the label, e.g. /([a-z]+)_\\d+\\.jpg$/)`);
      return { path, label: m[1] };
    }),
  };
}

/** An ImageNet-style folder: `train/<class>/...` and `valid/<class>/...` (fast.ai's GrandparentSplitter). */
export function grandparentItems(dir: string, train: string, valid: string, list: (d: string) => { items: { path: string; label?: string }[]; folders: string[] }): Sourced {
  const side = (name: string) => {
    const d = join(dir, name);
    if (!statSync(d, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`${d}: no such folder (fromFolder with { train: '${train}', valid: '${valid}' } needs both, each with one sub-folder per class)`);
    const { items, folders } = list(d);
    if (folders.length === 0) throw new Error(`${d}: no class sub-folders (expected ${d}/<class>/<image>)`);
    const loose = items.filter((i) => i.label === undefined);
    if (loose.length) throw new Error(`${relative(dir, loose[0].path)}: an image directly in '${name}/', not in a class folder`);
    return items as Item[];
  };
  const t = side(train);
  const v = side(valid);
  return { items: [...t, ...v], validIdx: v.map((_, k) => t.length + k) };
}
