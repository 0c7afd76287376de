import type { Platform } from '../gen/buildkit/ops_pb.js';
import type { GCPolicyConfig } from '../cli/config.js';

/** What ListWorkers reports of one worker. */
export interface WorkerInfo {
  id: string;
  labels: Record<string, string>;
  platforms: Platform[];
  gcPolicy: GCPolicyConfig[];
}

export interface VersionInfo {
  package: string;
  version: string;
  revision: string;
}

/** One cache record as `buildctl du` shows it. */
export interface UsageInfo {
  id: string;
  mutable: boolean;
  inUse: boolean;
  size: number;
  parents: string[];
  createdAt: Date;
  lastUsedAt?: Date;
  usageCount: number;
  description: string;
  recordType: string;
  shared: boolean;
}

export interface PruneOptions {
  filters: string[];
  all: boolean;
  /** Milliseconds; 0 = no age limit. */
  keepDurationMs: number;
  /** Bytes to keep at least (upstream's reserved-space, keep-storage before v0.17); 0 = none. */
  keepBytes: number;
  /** Bytes to keep at most (max-used-space); 0 or absent = no cap. */
  maxUsedSpace?: number;
  /** Bytes the file system should have free afterwards (min-free-space), with `freeBytes` its free bytes now. */
  minFreeSpace?: number;
  freeBytes?: number;
}
