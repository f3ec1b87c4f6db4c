// Image grids with titles drawn as SVG text over the pictures (showBatch, showResults, plotTopLosses), and
// one image under its heat map (the serving page).
import sharp, { type OverlayOptions } from 'sharp';

export interface Tile {
  rgb: Uint8Array; // size*size*3
  size: number;
  title: string;
  /** the title's colour (CSS), default near-black */
  titleColor?: string;
  /** optional heat map drawn over the image, values >= 0, [h*w] */
  heat?: { map: Float32Array; h: number; w: number; alpha?: number };
}

const escapeXml = (s: string) => s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);

/** matplotlib's 'magma' colour map, at 9 stops (interpolated linearly). */
const MAGMA = [
  [0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122],
  [229, 80, 100], [251, 135, 97], [254, 194, 135], [252, 253, 191],
];

export function colormap(t: number): [number, number, number] {
  const x = Math.min(1, Math.max(0, t)) * (MAGMA.length - 1);
  const i = Math.min(MAGMA.length - 2, Math.floor(x));
  const f = x - i;
  return [0, 1, 2].map((c) => Math.round(MAGMA[i][c] * (1 - f) + MAGMA[i + 1][c] * f)) as [number, number, number];
}

/** Tiles smaller than this are scaled up so that their titles stay readable. */
export const MIN_TILE = 160;

async function heatOverlay(t: Tile, size: number): Promise<Buffer> {
  const { map, h, w } = t.heat!;
  const max = Math.max(1e-12, ...map);
  const rgba = Buffer.alloc(h * w * 4);
  for (let i = 0; i < h * w; i++) {
    const [r, g, b] = colormap(map[i] / max);
    rgba.set([r, g, b, Math.round(255 * (t.heat!.alpha ?? 0.6))], i * 4);
  }
  // bilinear upsampling of the coarse map, as matplotlib's imshow(interpolation='bilinear')
  return sharp(rgba, { raw: { width: w, height: h, channels: 4 } }).resize(size, size, { kernel: 'linear' }).png().toBuffer();
}

/** One image with its heat map over it, as a PNG (the serving page's Grad-CAM), at least MIN_TILE wide. */
export async function heatmapPng(rgb: Uint8Array, size: number, heat: NonNullable<Tile['heat']>): Promise<Buffer> {
  const out = Math.max(MIN_TILE, size);
  const img = await sharp(Buffer.from(rgb), { raw: { width: size, height: size, channels: 3 } }).resize(out, out, { kernel: 'lanczos3' }).png().toBuffer();
  return sharp(img)
    .composite([{ input: await heatOverlay({ rgb, size, title: '', heat }, out), left: 0, top: 0 }])
    .png()
    .toBuffer();
}

/** A grid of tiles, `ncols` wide, each with its title above it; writes a PNG to `path`. */
export async function writeGrid(tiles: Tile[], path: string, ncols = Math.ceil(Math.sqrt(tiles.length))): Promise<{ width: number; height: number }> {
  const size = Math.max(MIN_TILE, ...tiles.map((t) => t.size));
  const titleH = Math.max(18, Math.round(size * 0.12));
  const lines = Math.max(...tiles.map((t) => t.title.split('\n').length));
  const cellW = size + 8;
  const cellH = size + titleH * lines + 8;
  const nrows = Math.ceil(tiles.length / ncols);
  const width = cellW * ncols;
  const height = cellH * nrows;
  const composites: OverlayOptions[] = [];
  // shrink the font so that the longest title line fits its cell (DejaVu Sans: ~0.6 em per character)
  const longest = Math.max(...tiles.flatMap((t) => t.title.split('\n').map((l) => l.length)));
  const fontSize = Math.max(8, Math.min(Math.round(titleH * 0.6), Math.floor(cellW / (0.62 * longest))));
  for (let i = 0; i < tiles.length; i++) {
    const t = tiles[i];
    const left = (i % ncols) * cellW + 4;
    const top = Math.floor(i / ncols) * cellH + titleH * lines + 4;
    const img = await sharp(Buffer.from(t.rgb), { raw: { width: t.size, height: t.size, channels: 3 } }).resize(size, size, { kernel: 'lanczos3' }).png().toBuffer();
    composites.push({ input: img, left, top });
    if (t.heat) composites.push({ input: await heatOverlay(t, size), left, top });
    const text = t.title
      .split('\n')
      .map((l, k) => `<text x="${cellW / 2}" y="${titleH * (k + 0.75)}" font-family="DejaVu Sans, sans-serif" font-size="${fontSize}" text-anchor="middle" fill="${escapeXml(t.titleColor ?? '#111')}">${escapeXml(l)}</text>`)
      .join('');
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${cellW}" height="${titleH * lines}">${text}</svg>`;
    composites.push({ input: Buffer.from(svg), left: (i % ncols) * cellW, top: Math.floor(i / ncols) * cellH });
  }
  await sharp({ create: { width, height, channels: 3, background: { r: 255, g: 255, b: 255 } } })
    .composite(composites)
    .png()
    .toFile(path);
  return { width, height };
}
