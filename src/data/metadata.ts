// The covid-chestxray collection's metadata.csv, in every schema it has had (see
// ../shared/reference/covid-chestxray-domain.md): header names are matched after trimming,
// case-folding and turning spaces into underscores, so `Patientid`, ` url` and `clinical notes`
// all work; the trailing empty column is ignored.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parse } from 'csv-parse/sync';

/** The folder name of COVID-19 images. */
export const POSITIVE = 'covid_positive';
/** The folder name of the other images. */
export const NEGATIVE = 'covid_negative';

/** One image of the collection that passed the filters, with its label and patient. */
export interface CovidItem {
  path: string;
  label: typeof POSITIVE | typeof NEGATIVE;
  patient: string;
  finding: string;
  view: string;
  /** 1-based line of the row in the CSV (header = line 1) */
  row: number;
}

/** Which rows of metadata.csv to keep (default: X-ray, PA view). */
export interface MetadataFilters {
  /** Keep this modality (default 'X-ray'); without a modality column, CT rows (view CT/Axial/Coronal) are dropped. */
  modality?: string | null;
  /** Keep these views (default ['PA']). */
  views?: string[];
  /** Keep this folder where the column exists (default 'images'). */
  folder?: string | null;
  /** Folder holding the images (default: `images/` beside the CSV). */
  imageDir?: string;
}

/** The kept images and what was dropped, by reason. */
export interface MetadataResult {
  items: CovidItem[];
  rows: number;
  kept: number;
  dropped: { modality: number; view: number; folder: number; finding: number; duplicate: number };
  missingFiles: string[];
  perClass: Record<string, number>;
  columns: string[];
}

const REQUIRED = ['patientid', 'finding', 'view', 'filename'] as const;
const UNLABELLED = new Set(['todo', 'unknown']);
const CT_VIEWS = new Set(['ct', 'axial', 'coronal']);

/** A finding is positive when it names COVID-19 in any spelling the collection used. */
export function isCovidFinding(finding: string): boolean {
  return /covid-?19/i.test(finding);
}

/**
 * A finding as a set of labels, across the collection's schemas: comma-joined in mid-2020 ('COVID-19, ARDS'),
 * hierarchical later ('Pneumonia/Viral/COVID-19' is Pneumonia, Viral and COVID-19, as torchxrayvision reads
 * it), a single name otherwise. For multi-label training (`ImageDataLoaders.fromItems` with `labels`).
 */
export function findingLabels(finding: string): string[] {
  return [...new Set(finding.split(/[,/]/).map((s) => s.trim()).filter(Boolean))];
}

export function normaliseHeader(h: string): string {
  return h.trim().toLowerCase().replace(/\s+/g, '_');
}

/** Reads the covid-chestxray collection's metadata.csv (every schema version) into labelled items. */
export function readCovidMetadata(csvPath: string, filters: MetadataFilters = {}): MetadataResult {
  const modality = filters.modality === undefined ? 'X-ray' : filters.modality;
  const views = new Set((filters.views ?? ['PA']).map((v) => v.toLowerCase()));
  const folder = filters.folder === undefined ? 'images' : filters.folder;
  const base = dirname(resolve(csvPath));
  let text: string;
  try {
    text = readFileSync(csvPath, 'utf8');
  } catch (e) {
    throw new Error(`${csvPath}: cannot read the metadata file (${(e as NodeJS.ErrnoException).code ?? e})`);
  }
  let records: string[][];
  try {
    records = parse(text, { bom: true, relax_column_count: true, skip_empty_lines: true }) as string[][];
  } catch (e) {
    throw new Error(`${csvPath}: not a readable CSV file (${(e as Error).message})`);
  }
  if (records.length === 0) throw new Error(`${csvPath}: the CSV is empty; it needs the columns ${REQUIRED.join(', ')}`);
  const header = records[0].map(normaliseHeader);
  const col = new Map<string, number>();
  header.forEach((h, i) => {
    if (h !== '' && !col.has(h)) col.set(h, i);
  });
  const missing = REQUIRED.filter((c) => !col.has(c));
  if (missing.length) {
    throw new Error(
      `${csvPath}: the CSV lacks the column(s) ${missing.join(', ')} (found: ${header.filter((h) => h).join(', ') || 'none'}). ` +
        `Is it the covid-chestxray collection's metadata.csv?`,
    );
  }
  const get = (r: string[], c: string) => (col.has(c) ? (r[col.get(c)!] ?? '').trim() : undefined);
  const result: MetadataResult = {
    items: [],
    rows: records.length - 1,
    kept: 0,
    dropped: { modality: 0, view: 0, folder: 0, finding: 0, duplicate: 0 },
    missingFiles: [],
    perClass: { [NEGATIVE]: 0, [POSITIVE]: 0 },
    columns: header.filter((h) => h),
  };
  const seen = new Set<string>();
  for (let i = 1; i < records.length; i++) {
    const r = records[i];
    const view = get(r, 'view')!;
    const finding = get(r, 'finding')!;
    const mod = get(r, 'modality');
    if (modality !== null) {
      if (mod !== undefined ? mod.toLowerCase() !== modality.toLowerCase() : CT_VIEWS.has(view.toLowerCase())) {
        result.dropped.modality++;
        continue;
      }
    }
    if (view === '' || view === '?' || !views.has(view.toLowerCase())) {
      result.dropped.view++;
      continue;
    }
    const fold = get(r, 'folder');
    if (folder !== null && fold !== undefined && fold !== folder) {
      result.dropped.folder++;
      continue;
    }
    if (finding === '' || UNLABELLED.has(finding.toLowerCase())) {
      result.dropped.finding++;
      continue;
    }
    const file = get(r, 'filename')!;
    const dir = filters.imageDir ?? join(base, fold || 'images');
    const path = join(dir, file);
    if (seen.has(path)) {
      result.dropped.duplicate++;
      continue;
    }
    seen.add(path);
    if (!file || !existsSync(path)) {
      result.missingFiles.push(path);
      continue;
    }
    const label = isCovidFinding(finding) ? POSITIVE : NEGATIVE;
    result.items.push({ path, label, patient: get(r, 'patientid')!, finding, view, row: i + 1 });
    result.perClass[label]++;
  }
  result.kept = result.items.length;
  return result;
}
