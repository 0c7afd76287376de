import { ArchiveExporter } from '../exporter/archive.js';
import { ImageExporter } from '../exporter/image.js';
import { LocalExporter } from '../exporter/local.js';
import { TarExporter } from '../exporter/tar.js';
import type { Exporter } from '../exporter/types.js';
import type { WorkerDeps } from './worker.js';

/** The exporters by the names clients use in `--output type=...`. */
export function createExporters(d: WorkerDeps): Map<string, Exporter> {
  const base = { content: d.content, layers: d.layers, defaultPlatform: d.native, leaseBlobs: (ds: string[]) => d.refs.leaseBlobs(ds) };
  const list: Exporter[] = [
    new ImageExporter({ ...base, registries: d.registries }),
    new ArchiveExporter('oci', base),
    new ArchiveExporter('docker', base),
    new TarExporter(),
    new LocalExporter(),
  ];
  return new Map(list.map((e) => [e.name, e]));
}
