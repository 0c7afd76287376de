/**
 * Go's text/tabwriter as buildctl configures it (minwidth 1, tabwidth 8, padding 1, padchar '\t',
 * no flags): tab-terminated cells form columns per block of consecutive lines, and each column is
 * padded with tabs to the next multiple of 8 past its widest cell + 1. Text is formatted on
 * flush(), which matters: upstream's prune flushes after every row, so rows align on their own.
 */
export class TabWriter {
  readonly #out: (s: string) => void;
  #buf = '';
  readonly #minwidth = 1;
  readonly #tabwidth = 8;
  readonly #padding = 1;

  constructor(out: (s: string) => void) {
    this.#out = out;
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
    const w = Math.ceil(cellw / this.#tabwidth) * this.#tabwidth;
    const n = w - textw;
    return '\t'.repeat(Math.ceil(n / this.#tabwidth));
  }
}

function runeLen(s: string): number {
  return Array.from(s).length;
}
