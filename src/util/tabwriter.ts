/**
 * Go's text/tabwriter: tab-terminated cells form columns per block of consecutive lines that have
 * the cell, each column as wide as its widest cell (in code points) plus the padding, at least
 * minwidth; a line's last cell is written as is. Padded with tabs (buildctl's configuration:
 * minwidth 1, tabwidth 8, padding 1, padchar '\t', the default), a column reaches the next multiple
 * of tabwidth; padded with spaces, exactly its width. Text is formatted on flush(), which matters:
 * upstream's prune flushes after every row, so rows align on their own.
 */
export interface TabWriterOptions {
  minwidth?: number;
  tabwidth?: number;
  padding?: number;
  padchar?: '\t' | ' ';
}

export class TabWriter {
  readonly #out: (s: string) => void;
  #buf = '';
  readonly #minwidth: number;
  readonly #tabwidth: number;
  readonly #padding: number;
  readonly #padchar: '\t' | ' ';

  constructor(out: (s: string) => void, opts: TabWriterOptions = {}) {
    this.#out = out;
    this.#minwidth = opts.minwidth ?? 1;
    this.#tabwidth = opts.tabwidth ?? 8;
    this.#padding = opts.padding ?? 1;
    this.#padchar = opts.padchar ?? '\t';
  }

  write(s: string): void {
    this.#buf += s;
  }

  flush(): void {
    if (!this.#buf) return;
    const text = this.#buf;
    this.#buf = '';
    const rawLines = text.split('\n');
    const trailingNewline = rawLines[rawLines.length - 1] === '';
    if (trailingNewline) rawLines.pop();
    const lines = rawLines.map((l) => l.split('\t'));
    const widths: number[] = [];
    let out = '';
    const writeLines = (from: number, to: number): void => {
      for (let i = from; i < to; i++) {
        const line = lines[i]!;
        line.forEach((cell, j) => {
          out += cell;
          if (j < widths.length && j < line.length - 1) out += this.#pad(runeLen(cell), widths[j]!);
        });
        if (i + 1 < lines.length || trailingNewline) out += '\n';
      }
    };
    const format = (line0: number, line1: number): void => {
      const column = widths.length;
      for (let t = line0; t < line1; t++) {
        if (column >= lines[t]!.length - 1) continue;
        writeLines(line0, t);
        line0 = t;
        let width = this.#minwidth;
        for (; t < line1; t++) {
          const line = lines[t]!;
          if (column >= line.length - 1) break;
          const w = runeLen(line[column]!) + this.#padding;
          if (w > width) width = w;
        }
        widths.push(width);
        format(line0, t);
        widths.pop();
        line0 = t;
        // Line t ended the block: it has no cell in this column, so it cannot start the next one.
      }
      writeLines(line0, line1);
    };
    format(0, lines.length);
    this.#out(out);
  }

  #pad(textw: number, cellw: number): string {
    if (this.#padchar === ' ') return ' '.repeat(Math.max(0, cellw - textw));
    const w = Math.ceil(cellw / this.#tabwidth) * this.#tabwidth;
    const n = w - textw;
    return '\t'.repeat(Math.ceil(n / this.#tabwidth));
  }
}

function runeLen(s: string): number {
  return Array.from(s).length;
}

/** What a TabWriter with these options writes for `text`, flushed once. */
export function tabwrite(text: string, opts: TabWriterOptions): string {
  let out = '';
  const tw = new TabWriter((s) => (out += s), opts);
  tw.write(text);
  tw.flush();
  return out;
}
