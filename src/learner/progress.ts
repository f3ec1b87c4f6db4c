// fast.ai's results table (fastprogress's console format) and a progress bar on a TTY.
export function formatTime(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (x: number) => String(x).padStart(2, '0');
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${pad(m)}:${pad(s % 60)}`;
}

export function formatValue(v: number | string): string {
  if (typeof v === 'string') return v;
  return Number.isNaN(v) ? '#na#' : v.toFixed(6);
}

export class ResultsTable {
  #names: string[] | null = null;
  constructor(private readonly write: (line: string) => void) {}

  /** fastprogress: names padded to 8, joined by two spaces; each value padded to its name + 2. */
  header(names: string[]): void {
    this.#names = names.map((n) => (n.length < 8 ? n + ' '.repeat(8 - n.length) : n));
    this.write(this.#names.join('  '));
  }

  row(values: string[]): void {
    if (!this.#names) throw new Error('header() first');
    this.write(values.map((t, i) => t + ' '.repeat(Math.max(0, 2 + this.#names![i].length - t.length))).join(''));
  }
}

/** A one-line bar redrawn in place; silent when the stream is not a TTY. */
export class ProgressBar {
  #last = 0;
  constructor(private readonly stream: NodeJS.WriteStream = process.stdout, readonly enabled = Boolean(process.stdout.isTTY)) {}

  update(label: string, done: number, total: number, comment = ''): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (done < total && now - this.#last < 100) return;
    this.#last = now;
    const width = 30;
    const filled = Math.round((width * done) / Math.max(1, total));
    const pct = Math.round((100 * done) / Math.max(1, total));
    this.stream.write(`\r${label} [${'█'.repeat(filled)}${' '.repeat(width - filled)}] ${pct}% ${done}/${total} ${comment}`.padEnd(100));
  }

  clear(): void {
    if (this.enabled) this.stream.write('\r' + ' '.repeat(100) + '\r');
  }
}
