import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { crc32 } from 'node:zlib';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { native } from '../src/binding.js';
import { augTransforms, ImageDataLoaders, visionLearner } from '../src/index.js';
import { withItemTfms } from '../src/data/transforms.js';
import { hooks } from '../src/hooks.js';
import { isCovidFinding, readCovidMetadata, segregateByLabel } from '../src/datasets/covid.js';
import { makeStripes } from './helpers/fixtures.js';
import { runPython, tempDir } from './helpers/python.js';

const DATA = join(__dirname, '..', '..', 'shared', 'datasets', 'covid-chestxray');
if (!existsSync(join(DATA, 'metadata.csv'))) console.log(`real-snapshot test skipped: no covid-chestxray collection at ${DATA}`);

// The four schemas of metadata.csv, as small CSVs (headers verbatim from the collection's history).
const SCHEMAS: Record<string, string> = {
  earliest:
    'Patientid,offset,sex,age,finding,survival,view,date,location, filename,doi, url,\n' +
    '1,0,M,65,COVID-19,,PA,2020,Here,a.jpg,,http://x,\n' +
    '2,0,F,50,COVID-19,,CT,2020,Here,b.jpg,,http://x,\n' +
    '3,0,F,40,Streptococcus,,PA,2020,Here,c.jpg,,http://x,\n' +
    '4,0,M,30,COVID-19,,L,2020,Here,d.jpg,,http://x,\n',
  early2020:
    'Patientid,offset,sex,age,finding,survival,view,modality,date,location,filename,doi, url,license,clinical notes,other notes,\n' +
    '1,0,M,65,COVID-19,,PA,X-ray,2020,Here,a.jpg,,http://x,,"notes, with a comma",,\n' +
    '2,0,F,50,COVID-19,,Axial,CT,2020,Here,b.jpg,,http://x,,,,\n' +
    '3,0,F,40,Pneumocystis,,PA,X-ray,2020,Here,c.jpg,,http://x,,"multi\nline",,\n' +
    '4,0,M,30,COVID-19,,AP,X-ray,2020,Here,d.jpg,,http://x,,,,\n',
  mid2020:
    'patientid,offset,sex,age,finding,survival,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,other_notes,\n' +
    '1,0,M,65,"COVID-19, ARDS",,PA,X-ray,2020,Here,images,a.jpg,,http://x,,,,\n' +
    '2,0,F,50,COVID-19,,PA,X-ray,2020,Here,volumes,b.nii.gz,,http://x,,,,\n' +
    '3,0,F,40,No Finding,,PA,X-ray,2020,Here,images,c.jpg,,http://x,,,,\n' +
    '4,0,M,30,todo,,PA,X-ray,2020,Here,images,d.jpg,,http://x,,,,\n' +
    '5,0,M,30,COVID-19,,?,X-ray,2020,Here,images,e.jpg,,http://x,,,,\n' +
    '6,0,M,30,COVID-19,,PA,X-ray,2020,Here,images,missing.jpg,,http://x,,,,\n',
  latest:
    '\ufeffpatientid,offset,sex,age,finding,RT_PCR_positive,survival,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,other_notes,\r\n' +
    '1,0,M,65,Pneumonia/Viral/COVID-19,Y,,PA,X-ray,2020,Here,images,a.jpg,,http://x,,,,\r\n' +
    '2,0,F,50,Unknown,,,PA,X-ray,2020,Here,images,b.jpg,,http://x,,,,\r\n' +
    '3,0,F,40,Pneumonia/Bacterial/Legionella,,,PA,X-ray,2020,Here,images,c.jpg,,http://x,,,,\r\n' +
    '4,0,M,30,Pneumonia/Viral/COVID-19,,,AP Supine,X-ray,2020,Here,images,d.jpg,,http://x,,,,\r\n',
};

async function png(path: string, size = 40, value = 128, channels: 1 | 3 | 4 = 3) {
  await sharp(Buffer.alloc(size * size * channels, value), { raw: { width: size, height: size, channels } }).png().toFile(path);
}

describe('metadata.csv in every schema', () => {
  let dir: string;
  beforeAll(async () => {
    dir = tempDir();
    mkdirSync(join(dir, 'images'));
    for (const f of ['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg', 'e.jpg']) await png(join(dir, 'images', f));
    for (const [name, text] of Object.entries(SCHEMAS)) writeFileSync(join(dir, `${name}.csv`), text);
  });

  it('earliest: no modality column, CT as a view', () => {
    const r = readCovidMetadata(join(dir, 'earliest.csv'));
    expect(r.items.map((i) => [i.patient, i.label])).toEqual([['1', 'covid_positive'], ['3', 'covid_negative']]);
    expect(r.dropped).toMatchObject({ modality: 1, view: 1 });
  });

  it("early 2020: Patientid, ' url', 'clinical notes', quoted commas and newlines", () => {
    const r = readCovidMetadata(join(dir, 'early2020.csv'));
    expect(r.items.map((i) => i.patient)).toEqual(['1', '3']);
    expect(r.columns).toContain('url');
    expect(r.columns).toContain('clinical_notes');
    expect(r.dropped).toMatchObject({ modality: 1, view: 1 });
  });

  it("mid 2020: folder honoured, 'COVID-19, ARDS' positive, todo and '?' dropped, missing files reported", () => {
    const r = readCovidMetadata(join(dir, 'mid2020.csv'));
    expect(r.items.map((i) => [i.patient, i.label])).toEqual([['1', 'covid_positive'], ['3', 'covid_negative']]);
    expect(r.dropped).toMatchObject({ folder: 1, finding: 1, view: 1 });
    expect(r.missingFiles.map((p) => p.split('/').pop())).toEqual(['missing.jpg']);
  });

  it('latest: hierarchical findings, BOM, CRLF, Unknown dropped', () => {
    const r = readCovidMetadata(join(dir, 'latest.csv'));
    expect(r.items.map((i) => [i.patient, i.label])).toEqual([['1', 'covid_positive'], ['3', 'covid_negative']]);
    expect(r.dropped).toMatchObject({ finding: 1, view: 1 });
  });

  it('positive in every spelling the collection used', () => {
    for (const f of ['COVID-19', 'COVID-19, ARDS', 'Pneumonia/Viral/COVID-19', 'covid19']) expect(isCovidFinding(f)).toBe(true);
    for (const f of ['No Finding', 'Pneumonia/Viral/SARS', 'ARDS', 'Streptococcus']) expect(isCovidFinding(f)).toBe(false);
  });

  it('a CSV without the needed columns, or not a CSV, fails naming the columns', () => {
    writeFileSync(join(dir, 'bad.csv'), 'name,age\nx,3\n');
    expect(() => readCovidMetadata(join(dir, 'bad.csv'))).toThrow(/bad\.csv: the CSV lacks the column\(s\) patientid, finding, view, filename/);
    writeFileSync(join(dir, 'bin.csv'), Buffer.from([0, 1, 2, 0x22, 10, 0x22, 0x22, 0x41]));
    expect(() => readCovidMetadata(join(dir, 'bin.csv'))).toThrow(/bin\.csv/);
    expect(() => readCovidMetadata(join(dir, 'nope.csv'))).toThrow(/nope\.csv: cannot read/);
  });

  it('segregateByLabel links files into class folders, idempotently, never overwriting a different file', () => {
    const r = readCovidMetadata(join(dir, 'mid2020.csv'));
    const out = join(dir, 'out');
    const a = segregateByLabel(r.items, out);
    expect(a.created).toBe(2);
    expect(readdirSync(join(out, 'covid_positive'))).toEqual(['a.jpg']);
    const b = segregateByLabel(r.items, out);
    expect(b).toMatchObject({ created: 0, existing: 2 });
    rmSync(join(out, 'covid_negative', 'c.jpg'));
    writeFileSync(join(out, 'covid_negative', 'c.jpg'), 'different');
    expect(() => segregateByLabel(r.items, out)).toThrow(/c\.jpg already exists and is a different file/);
    const copies = segregateByLabel(r.items, join(dir, 'out-copy'), { mode: 'copy' });
    expect(copies.created).toBe(2);
    expect(lstatSync(join(dir, 'out-copy', 'covid_positive', 'a.jpg')).isFile()).toBe(true);
  });
});

describe('ImageDataLoaders', () => {
  it('splits by patient: no patient on both sides; random split is reproducible with a seed', async () => {
    const dir = tempDir();
    const items = [];
    for (let p = 0; p < 30; p++) {
      for (let k = 0; k < 1 + (p % 3); k++) {
        const path = join(dir, `p${p}-${k}.png`);
        await png(path, 36, 20 + p);
        items.push({ path, label: p % 4 === 0 ? 'neg' : 'pos', patient: `P${p}` });
      }
    }
    const dls = await ImageDataLoaders.fromItems(items, { size: 32, presize: 32, bs: 4, splitBy: 'patient', seed: 1 });
    const tp = new Set(dls.train.items.map((i) => i.patient));
    const vp = new Set(dls.valid.items.map((i) => i.patient));
    expect([...tp].filter((p) => vp.has(p))).toEqual([]);
    expect(dls.groups).toEqual({ train: tp.size, valid: vp.size });
    expect(dls.valid.classCounts(dls.vocab).neg).toBeGreaterThan(0); // stratified: both classes in validation
    const byFn = await ImageDataLoaders.fromItems(items, { size: 32, presize: 32, splitBy: (f) => f.split('/').pop()!.split('-')[0], seed: 1 });
    expect(byFn.valid.items.map((i) => i.path)).toEqual(dls.valid.items.map((i) => i.path));
    const r1 = await ImageDataLoaders.fromItems(items, { size: 32, presize: 32, seed: 7 });
    const r2 = await ImageDataLoaders.fromItems(items, { size: 32, presize: 32, seed: 7 });
    expect(r1.valid.items).toEqual(r2.valid.items);
    expect(r1.valid.n).toBe(Math.floor(0.2 * items.length));
  });

  it('skips corrupt, truncated, empty and non-image files with a warning and counts them; 16-bit, grey, RGBA and palette images decode', async () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'a'));
    mkdirSync(join(dir, 'b'));
    await png(join(dir, 'a', 'rgb.png'));
    await png(join(dir, 'a', 'grey.png'), 40, 90, 1);
    await png(join(dir, 'a', 'rgba.png'), 40, 90, 4);
    await sharp(Buffer.alloc(40 * 40 * 3, 200), { raw: { width: 40, height: 40, channels: 3 } }).png({ palette: true }).toFile(join(dir, 'b', 'palette.png'));
    await sharp(Buffer.alloc(40 * 40 * 2, 0x7f), { raw: { width: 40, height: 40, channels: 1 } }).toColourspace('grey16').png().toFile(join(dir, 'b', 'grey16.png')).catch(() => png(join(dir, 'b', 'grey16.png'), 40, 60, 1));
    await sharp(Buffer.alloc(40 * 40 * 3, 50), { raw: { width: 40, height: 40, channels: 3 } }).jpeg().toFile(join(dir, 'b', 'photo.jpg'));
    const jpg = readFileSync(join(dir, 'b', 'photo.jpg'));
    writeFileSync(join(dir, 'b', 'truncated.jpg'), jpg.subarray(0, jpg.length / 3));
    writeFileSync(join(dir, 'b', 'empty.png'), '');
    writeFileSync(join(dir, 'a', 'notes.txt'), 'not an image');
    // a "huge" image: a PNG whose header claims 40000x40000 pixels (over sharp's pixel limit)
    const small = readFileSync(join(dir, 'a', 'rgb.png'));
    const huge = Buffer.from(small);
    huge.writeUInt32BE(40000, 16);
    huge.writeUInt32BE(40000, 20);
    huge.writeUInt32BE(crc32(huge.subarray(12, 29)), 29);
    writeFileSync(join(dir, 'b', 'huge.png'), huge);
    const warnings: string[] = [];
    const orig = console.warn;
    console.warn = (m: string) => warnings.push(m);
    const dls = await ImageDataLoaders.fromFolder(dir, { size: 32, presize: 32, validPct: 0 }).finally(() => (console.warn = orig));
    expect(dls.skipped.map((s) => s.path.split('/').pop()).sort()).toEqual(['empty.png', 'huge.png', 'notes.txt', 'truncated.jpg']);
    expect(dls.skipped.find((s) => s.path.endsWith('huge.png'))!.reason).toMatch(/pixel limit/i);
    expect(warnings.length).toBe(4);
    expect(warnings[0]).toMatch(/skipping .*/);
    expect(dls.train.n).toBe(6);
    expect(dls.vocab).toEqual(['a', 'b']);
  });

  it('a folder with one class is refused, naming the folder and the class (it would train a classifier of one class)', async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 'only'), 4, 32, 1);
    // makeStripes writes one folder per orientation: keep one of them
    const [keep, ...rest] = readdirSync(join(dir, 'only')).sort();
    for (const r of rest) rmSync(join(dir, 'only', r), { recursive: true });
    await expect(ImageDataLoaders.fromFolder(join(dir, 'only'))).rejects.toThrow(new RegExp(`only/?: only one class folder found \\('${keep}'\\)`));
    const items = readdirSync(join(dir, 'only', keep)).map((f) => ({ path: join(dir, 'only', keep, f), label: keep }));
    await expect(ImageDataLoaders.fromItems(items, { quiet: true })).rejects.toThrow(new RegExp(`only one class in the data \\('${keep}'`));
  });

  it('a dangling or looping link in a class folder is skipped and counted like an unreadable image', async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 4, 32, 1);
    const cls = readdirSync(join(dir, 's')).sort()[0];
    symlinkSync(join(dir, 'nowhere.png'), join(dir, 's', cls, 'dangling.png'));
    symlinkSync(join(dir, 's', cls, 'loop.png'), join(dir, 's', cls, 'loop.png'));
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, quiet: true });
    expect(dls.skipped.map((s) => basename(s.path)).sort()).toEqual(['dangling.png', 'loop.png']);
    expect(dls.train.n + dls.valid.n).toBe(8);
  });

  it('a folder without classes or a class without images is an error that says so', async () => {
    const dir = tempDir();
    await expect(ImageDataLoaders.fromFolder(dir)).rejects.toThrow(/no class sub-folders/);
    mkdirSync(join(dir, 'x'));
    mkdirSync(join(dir, 'y'));
    await expect(ImageDataLoaders.fromFolder(dir)).rejects.toThrow(/the class 'x' has no images/);
    await expect(ImageDataLoaders.fromItems([{ path: 'a', label: 'x' }], { validPct: 1 })).rejects.toThrow(/validPct must be in \[0, 1\)/);
    await expect(ImageDataLoaders.fromItems([{ path: 'a', label: 'x' }], { bs: 0 })).rejects.toThrow(/bs must be a positive integer/);
    await expect(ImageDataLoaders.fromItems([{ path: 'a', label: 'x' }], { size: 0 })).rejects.toThrow(/size must be an integer of at least 32/);
  });
});

describe('decoding in worker processes (numWorkers)', () => {
  // 34 generated images (stripes in two classes), a grey and an RGBA one, and a corrupt file
  let dir: string;
  beforeAll(async () => {
    dir = tempDir();
    await makeStripes(dir, 17, 40, 3);
    await png(join(dir, 'horizontal', 'grey.png'), 40, 90, 1);
    await png(join(dir, 'vertical', 'rgba.png'), 40, 90, 4);
    writeFileSync(join(dir, 'vertical', 'corrupt.png'), 'not an image');
  });
  const load = (o: { numWorkers?: number; onProgress?: (done: number, total: number) => void } = {}) => ImageDataLoaders.fromFolder(dir, { size: 32, presize: 40, quiet: true, ...o });
  const sameData = (a: ImageDataLoaders, b: ImageDataLoaders) => {
    for (const k of ['train', 'valid'] as const) {
      expect(b[k].items.map((i) => i.path)).toEqual(a[k].items.map((i) => i.path));
      expect(Buffer.from(b[k].images).equals(Buffer.from(a[k].images))).toBe(true);
      expect([...b[k].labels]).toEqual([...a[k].labels]);
    }
  };
  const withEnv = async <T>(name: string, value: string, f: () => Promise<T>): Promise<T> => {
    const old = process.env[name];
    process.env[name] = value;
    try {
      return await f();
    } finally {
      if (old === undefined) delete process.env[name];
      else process.env[name] = old;
    }
  };

  it('one or two workers give the bytes, labels, split and skipped files of decoding in this process, with progress', async () => {
    const inProcess = await load({ numWorkers: 0 });
    expect(inProcess.skipped.map((s) => basename(s.path))).toEqual(['corrupt.png']);
    for (const numWorkers of [1, 2]) {
      const progress: [number, number][] = [];
      const dls = await load({ numWorkers, onProgress: (d, t) => progress.push([d, t]) });
      sameData(inProcess, dls);
      expect(dls.skipped).toEqual(inProcess.skipped);
      expect(progress.map(([d]) => d)).toEqual(Array.from({ length: 37 }, (_, i) => i + 1));
      expect(progress.every(([, t]) => t === 37)).toBe(true);
    }
    const test = await inProcess.testDl(join(dir, 'vertical'), { numWorkers: 1, quiet: true });
    const ref = await inProcess.testDl(join(dir, 'vertical'), { numWorkers: 0, quiet: true });
    expect(Buffer.from(test.images).equals(Buffer.from(ref.images))).toBe(true);
  });

  it('a file that kills the decoder costs that file: skipped and counted with the reason, the rest decoded as in this process', async () => {
    const inProcess = await load({ numWorkers: 0 });
    const victim = readdirSync(join(dir, 'horizontal')).sort()[5];
    const dls = await withEnv('TORCHLEARN_TEST_CRASH_DECODER_ON', victim, () => load({ numWorkers: 2 }));
    expect(dls.skipped.map((s) => basename(s.path)).sort()).toEqual(['corrupt.png', victim].sort());
    expect(dls.skipped.find((s) => s.path.endsWith(victim))!.reason).toMatch(/the decoder process died on this file \(SIGSEGV\)/);
    // the same split of the remaining images: compare image by image
    const pixels = (d: ImageDataLoaders) => {
      const m = new Map<string, string>();
      const p = d.presize * d.presize * 3;
      for (const k of ['train', 'valid'] as const) d[k].items.forEach((it, i) => m.set(it.path, Buffer.from(d[k].images.subarray(i * p, (i + 1) * p)).toString('base64')));
      return m;
    };
    const got = pixels(dls);
    const want = pixels(inProcess);
    expect(got.size).toBe(want.size - 1);
    for (const [path, px] of got) expect(px, path).toBe(want.get(path));
  });

  it('from 64 images a data set is decoded in a worker by default; numWorkers out of range is refused naming it', async () => {
    const big = tempDir();
    await makeStripes(big, 32, 32, 4);
    const victim = readdirSync(join(big, 'vertical')).sort()[0];
    // the crash hook acts only inside a worker process: a skipped victim shows the decode ran in one
    const dls = await withEnv('TORCHLEARN_TEST_CRASH_DECODER_ON', victim, () => ImageDataLoaders.fromFolder(big, { size: 32, quiet: true }));
    expect(dls.skipped.map((s) => basename(s.path))).toEqual([victim]);
    await expect(load({ numWorkers: -1 })).rejects.toThrow(/numWorkers must be an integer from 0 \(decode in this process\) to \d+/);
    await expect(load({ numWorkers: 1.5 })).rejects.toThrow(/numWorkers/);
  });

  it('a worker that cannot start is reported, and the images are decoded in this process instead', async () => {
    const inProcess = await load({ numWorkers: 0 });
    const warnings: string[] = [];
    const orig = console.warn;
    console.warn = (m: string) => warnings.push(m);
    const dls = await withEnv('NODE_OPTIONS', '--require /nonexistent/torchlearn-test.cjs', () => ImageDataLoaders.fromFolder(dir, { size: 32, presize: 40, numWorkers: 1 })).finally(() => (console.warn = orig));
    sameData(inProcess, dls);
    expect(warnings.some((w) => /a decoding worker process did not start \(exit code \d+: Error: Cannot find module '\/nonexistent\/torchlearn-test\.cjs'\); decoding in this process instead/.test(w))).toBe(true);
  });
});

describe('the image store (the decoded images, held once in native memory)', () => {
  it('holds what is written (grey repeated into RGB), reads copies, and refuses what does not fit', () => {
    const p = 4;
    const st = new native.ImageStore(3, p);
    expect([st.n, st.presize, st.sealed]).toEqual([3, p, false]);
    expect(Buffer.from(st.read(0, 3)).equals(Buffer.alloc(3 * p * p * 3))).toBe(true);
    const rgb = Uint8Array.from({ length: p * p * 3 }, (_, i) => i % 251);
    const grey = Uint8Array.from({ length: p * p }, (_, i) => 100 + i);
    st.set(0, rgb, 3);
    st.set(2, grey, 1);
    const back = st.read(0, 3);
    expect([...back.subarray(0, p * p * 3)]).toEqual([...rgb]);
    expect([...back.subarray(2 * p * p * 3)]).toEqual([...grey].flatMap((v) => [v, v, v]));
    // a copy: writing to what read returned changes nothing in the store
    back.fill(7);
    expect([...st.read(0, 1)]).toEqual([...rgb]);
    expect(() => st.set(3, rgb, 3)).toThrow(/ImageStore.set: index must be an integer in \[0, 2\]/);
    expect(() => st.set(0, rgb.subarray(1), 3)).toThrow(/ImageStore.set: pixels must hold 48 values, got 47/);
    expect(() => st.set(0, rgb, 2 as 3)).toThrow(/channels must be 1 or 3/);
    expect(() => st.read(2, 2)).toThrow(/ImageStore.read: count/);
    expect(() => new native.ImageStore(-1, p)).toThrow(/ImageStore: n must be/);
    expect(() => new native.ImageStore(2 ** 30, 8192)).toThrow(/too large/);
  });

  it("every learner on the loaders trains from the loaders' images without a copy: the store is sealed, and the learners agree", async () => {
    const dir = tempDir();
    await makeStripes(dir, 6, 32, 2);
    const dls = await ImageDataLoaders.fromFolder(dir, { size: 32, bs: 4, quiet: true });
    const before = dls.train.images;
    const a = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 1 });
    const b = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 1 });
    expect(dls.train.store.sealed && dls.valid.store.sealed).toBe(true);
    expect(() => dls.train.store.set(0, new Uint8Array(40 * 40 * 3), 3)).toThrow(/in use by a learner and no longer take writes/);
    const [pa, pb] = [await a.getPreds(), await b.getPreds()];
    expect([...pa.probs]).toEqual([...pb.probs]);
    expect(Buffer.from(dls.train.images).equals(Buffer.from(before))).toBe(true);
    a.dispose();
    b.dispose();
  });
});

describe('augmentation geometry', () => {
  // A 32x32 image, black except a white 8x8 block in the top-left corner.
  const p = 32;
  const img = new Uint8Array(p * p * 3);
  for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) img.fill(255, (y * p + x) * 3, (y * p + x) * 3 + 3);
  const centroid = (out: Uint8Array) => {
    let sx = 0, sy = 0, s = 0;
    for (let y = 0; y < p; y++) for (let x = 0; x < p; x++) {
      const v = out[(y * p + x) * 3];
      sx += v * x; sy += v * y; s += v;
    }
    return [sx / s, sy / s];
  };
  // flip, angle, zoom, centre x, centre y, warp x, warp y, brightness, contrast, y sign, transpose, crop (4)
  const params = (flip: number, angleDeg: number, zoom = 1) => Float64Array.from([flip, (angleDeg * Math.PI) / 180, zoom, 0, 0, 0, 0, 0.5, 1, 1, 0, 1, 1, 0, 0]);

  it('identity leaves the image as it is', () => {
    const out = native.augmentImages(img, 1, p, p, { params: params(1, 0) });
    expect(Buffer.from(out).equals(Buffer.from(img))).toBe(true);
  });

  it('a flip moves the block to the top-right corner', () => {
    const [x, y] = centroid(native.augmentImages(img, 1, p, p, { params: params(-1, 0) }));
    expect(x).toBeCloseTo(p - 4.5, 0);
    expect(y).toBeCloseTo(3.5, 0);
  });

  it('a 90° rotation moves the top-left block to the bottom-left corner (positive angles turn the picture counter-clockwise)', () => {
    const [x, y] = centroid(native.augmentImages(img, 1, p, p, { params: params(1, 90) }));
    expect(x).toBeCloseTo(3.5, 0);
    expect(y).toBeCloseTo(p - 4.5, 0);
  });

  it('zoom < 1 samples a smaller area around the centre: a centred block grows', () => {
    const centred = new Uint8Array(p * p * 3);
    for (let y = 12; y < 20; y++) for (let x = 12; x < 20; x++) centred.fill(255, (y * p + x) * 3, (y * p + x) * 3 + 3);
    const out = native.augmentImages(centred, 1, p, p, { params: params(1, 0, 0.5) });
    const lit = Array.from({ length: p * p }, (_, i) => out[i * 3]).filter((v) => v > 128).length;
    expect(lit).toBeGreaterThan(8 * 8 * 2);
  });

  it("flip (or any dihedral symmetry), rotate, zoom, warp, the random crop and lighting together equal fast.ai's formulas computed with PyTorch (uint8, within 1 level)", () => {
    // a smooth picture (no sharp edges, where a rounding of the sampling grid could move a value far)
    const q = 48, s = 40, n = 4;
    const pic = new Uint8Array(n * q * q * 3);
    for (let i = 0; i < n; i++) for (let y = 0; y < q; y++) for (let x = 0; x < q; x++) for (let c = 0; c < 3; c++)
      pic[((i * q + y) * q + x) * 3 + c] = Math.round(127.5 + 100 * Math.sin((x + 2 * c + i) / 7) * Math.cos((y - c) / 9));
    // x sign (flip), angle (rad), zoom s, centre x, centre y, warp x, warp y, brightness, contrast, y sign,
    // transpose, crop scale x, crop scale y, crop centre x, crop centre y
    const prm = Float64Array.from([
      -1, 0.15, 0.92, 0.03, -0.05, 0.18, -0.12, 0.58, 1.2, 1, 0, 1, 1, 0, 0,
      1, -0.17, 1, 0, 0, -0.2, 0.2, 0.41, 0.82, -1, 1, 0.7, 0.8, 0.1, -0.15, // dihedral k=5 (transposed, y sign flipped), cropped, warped
      1, 0.05, 0.95, -0.04, 0.02, 0, 0, 0.5, 1, 1, 1, 0.6, 0.6, -0.3, 0.25, // no warp, no lighting; transposed and cropped
      -1, 0, 1, 0, 0, 0.1, 0.05, 0.45, 1.1, -1, 0, 1, 1, 0, 0, // both signs: a half turn
    ]);
    const ours = native.augmentImages(pic, n, q, s, { params: prm });
    const dir = tempDir();
    writeFileSync(join(dir, 'pic.bin'), pic);
    writeFileSync(join(dir, 'prm.bin'), Buffer.from(prm.buffer));
    // fast.ai v2: one affine grid (flip @ rotate @ zoom), Warp's perspective applied to that grid
    // (find_coeffs / apply_perspective), one grid_sample (bilinear, reflection, align_corners), then
    // LightingTfm: sigmoid((logit(x) + logit(brightness)) * contrast)
    runPython(`
import sys, math, numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, sys.argv[2])
from pytorch_train import find_coeffs, apply_perspective  # fast.ai's, as the bench's PyTorch side runs them
d, n, q, s = sys.argv[1], ${n}, ${q}, ${s}
x = torch.from_numpy(np.fromfile(d + '/pic.bin', dtype=np.uint8).reshape(n, q, q, 3).copy()).permute(0, 3, 1, 2).double() / 255
p = torch.from_numpy(np.fromfile(d + '/prm.bin', dtype=np.float64).reshape(n, 15).copy())
xs, ang, z, cx, cy, wx, wy, br, ct, ys, m1, rx, ry, ox, oy = p.unbind(1)
m0 = 1 - m1
def mat(a, b, c, d, e, f):  # fast.ai's affine_mat: [B, 3, 3]
    return torch.stack([torch.stack([a, b, c], 1), torch.stack([d, e, f], 1), torch.stack([torch.zeros_like(a), torch.zeros_like(a), torch.ones_like(a)], 1)], 1)
zero, one = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
dihedral = mat(xs * m0, xs * m1, zero, ys * m1, ys * m0, zero)          # dihedral_mat
c, sn = torch.cos(ang), torch.sin(ang)
rotate = mat(c, -sn, zero, sn, c, zero)                                  # rotate_mat
zoom = mat(z, zero, cx, zero, z, cy)                                     # zoom_mat
theta = (dihedral @ rotate @ zoom)[:, :2]                               # _get_affine_mat: I @ flip @ rotate @ zoom
grid = F.affine_grid(theta, (n, 3, s, s), align_corners=True)
orig = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=torch.float64).unsqueeze(0).expand(n, 4, 2)
targ = torch.stack([torch.stack([-1 - wy, -1 - wx]), torch.stack([-1 + wy, 1 + wx]), torch.stack([1 + wy, -1 + wx]), torch.stack([1 - wy, 1 - wx])]).permute(2, 0, 1)
grid = apply_perspective(grid, find_coeffs(orig, targ))
# RandomResizedCrop first (continuous): the crop's output point g is the image's point (rx g_x + ox, ry g_y + oy)
grid = grid * torch.stack([rx, ry], 1).view(n, 1, 1, 2) + torch.stack([ox, oy], 1).view(n, 1, 1, 2)
y = F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=True)
lb = torch.log(br / (1 - br)).view(n, 1, 1, 1)
y = torch.sigmoid((torch.logit(y, eps=1e-7) + lb) * ct.view(n, 1, 1, 1))
(y * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy().tofile(d + '/ref.bin')
# no augmentation (validation, prediction): the resize alone, as the identity affine grid samples it
eye = torch.eye(2, 3, dtype=torch.float64).unsqueeze(0).expand(n, 2, 3)
y = F.grid_sample(x, F.affine_grid(eye, (n, 3, s, s), align_corners=True), mode='bilinear', padding_mode='reflection', align_corners=True)
(y * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy().tofile(d + '/plain.bin')
`, [dir, join(__dirname, '..', 'scripts', 'bench')]);
    const ref = new Uint8Array(readFileSync(join(dir, 'ref.bin')));
    expect(ref.length).toBe(ours.length);
    let worst = 0, off = 0;
    for (let i = 0; i < ref.length; i++) {
      const e = Math.abs(ref[i] - ours[i]);
      worst = Math.max(worst, e);
      if (e > 0) off++;
    }
    console.log(`augmentation vs fast.ai's formulas in PyTorch: ${off} of ${ref.length} values differ, by at most ${worst}`);
    expect(worst).toBeLessThanOrEqual(1);
    // and the transforms did something: the output is not the input resized
    const plain = native.augmentImages(pic, n, q, s, {});
    expect(Buffer.from(plain).equals(Buffer.from(ours))).toBe(false);
    // the resize alone (one interpolation) is the identity grid's resize
    const refPlain = new Uint8Array(readFileSync(join(dir, 'plain.bin')));
    let worstPlain = 0;
    for (let i = 0; i < refPlain.length; i++) worstPlain = Math.max(worstPlain, Math.abs(refPlain[i] - plain[i]));
    expect(worstPlain).toBeLessThanOrEqual(1);
  });

  it("augTransforms({ flipVert, minScale }) and itemTfms' randomResizedCrop draw as fast.ai's Dihedral and RandomResizedCrop do; the defaults draw what they drew before", () => {
    const n = 4000;
    const col = (p: Float64Array, c: number) => Array.from({ length: n }, (_, i) => p[i * 15 + c]);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    // the default settings: the new columns stay the identity, and the old ones are what the old draws were
    const plain = hooks.drawAugParams(n, augTransforms(), 7);
    expect([9, 10, 11, 12, 13, 14].map((c) => [...new Set(col(plain, c))])).toEqual([[1], [0], [1], [1], [0], [0]]);
    const withNew = hooks.drawAugParams(n, augTransforms({ flipVert: true, minScale: 0.35 }), 7);
    for (const c of [1, 2, 3, 4, 5, 6, 7, 8]) expect(col(withNew, c)).toEqual(col(plain, c)); // (drawn after them)
    // Dihedral(p=0.5): k = 0 with probability 1/2 + 1/16, each other symmetry 1/16; (x sign, y sign, transpose) by fast.ai's table
    const keys = Array.from({ length: n }, (_, i) => `${withNew[i * 15]},${withNew[i * 15 + 9]},${withNew[i * 15 + 10]}`);
    const freq = (k: string) => keys.filter((x) => x === k).length / n;
    const table = ['1,1,0', '-1,1,0', '1,-1,0', '-1,1,1', '-1,-1,0', '1,-1,1', '1,1,1', '-1,-1,1'];
    expect(freq(table[0])).toBeCloseTo(0.5625, 1);
    for (const k of table.slice(1)) expect(Math.abs(freq(k) - 1 / 16)).toBeLessThan(0.02);
    expect(new Set(keys).size).toBe(8);
    // aug_transforms' crop: square (ratio 1), area U(0.35, 1), inside the image
    const rx = col(withNew, 11), ry = col(withNew, 12), ox = col(withNew, 13);
    expect(rx).toEqual(ry);
    const area = rx.map((r) => r * r);
    expect(Math.min(...area)).toBeGreaterThanOrEqual(0.35 - 1e-12);
    expect(Math.abs(mean(area) - (0.35 + 1) / 2)).toBeLessThan(0.02);
    rx.forEach((r, i) => expect(Math.abs(ox[i]) + r).toBeLessThanOrEqual(1 + 1e-12));
    // item transforms' RandomResizedCrop: fast.ai's defaults (area from 0.08, ratio 3/4 to 4/3)
    const rrc = hooks.drawAugParams(n, withItemTfms(null, { randomResizedCrop: {} })!, 9);
    const w = col(rrc, 11), h = col(rrc, 12);
    const ratios = w.map((v, i) => v / h[i]);
    expect(Math.min(...ratios)).toBeGreaterThanOrEqual(0.75 - 1e-9);
    expect(Math.max(...ratios)).toBeLessThanOrEqual(4 / 3 + 1e-9);
    expect(Math.max(...w, ...h)).toBeLessThanOrEqual(1);
    expect(Math.min(...w.map((v, i) => v * h[i]))).toBeGreaterThanOrEqual(0.08 - 1e-12);
    expect([...new Set(col(rrc, 1))]).toEqual([0]); // nothing else: no rotation
    expect(() => augTransforms({ minScale: 0 })).toThrow(/minScale must be in \(0, 1\], got 0/);
  });

  it('random augmentation is reproducible with a seed and differs across seeds', () => {
    const aug = { doFlip: true, maxRotate: 10, minZoom: 1, maxZoom: 1.1, maxLighting: 0.2, maxWarp: 0.2, pAffine: 0.75, pLighting: 0.75 };
    const a = native.augmentImages(img, 1, p, p, { aug, seed: 3 });
    const b = native.augmentImages(img, 1, p, p, { aug, seed: 3 });
    const c = native.augmentImages(img, 1, p, p, { aug, seed: 4 });
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    expect(Buffer.from(a).equals(Buffer.from(c))).toBe(false);
  });
});

describe.skipIf(!existsSync(join(DATA, 'metadata.csv')))('the real covid-chestxray snapshot', () => {
  it('reads the PA X-rays, labels and counts them, decodes every image', async () => {
    const r = readCovidMetadata(join(DATA, 'metadata.csv'));
    console.log(`covid-chestxray: ${r.rows} rows, kept ${r.kept}, dropped ${JSON.stringify(r.dropped)}, missing ${r.missingFiles.length}, ${JSON.stringify(r.perClass)}`);
    expect(r.rows).toBe(673);
    // 302 PA X-ray rows: 4 name a file already named, 5 name files that are not in the snapshot
    expect(r.kept + r.dropped.duplicate + r.missingFiles.length).toBe(302);
    expect(r.missingFiles.length).toBe(5);
    expect(r.perClass.covid_positive).toBeGreaterThan(2 * r.perClass.covid_negative);
    const dls = await ImageDataLoaders.fromItems(r.items, { size: 64, splitBy: 'patient', seed: 42 });
    expect(dls.skipped).toEqual([]);
    expect(dls.train.n + dls.valid.n).toBe(r.kept);
    const tp = new Set(dls.train.items.map((i) => i.patient));
    expect(dls.valid.items.every((i) => !tp.has(i.patient))).toBe(true);
  });
});
