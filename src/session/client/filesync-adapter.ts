/**
 * The one place the client's session services call the filesync package (owned by another
 * engineer): if names there change, only this file follows.
 */
export { sendDir } from '../filesync/send.js';
export { receiveDir } from '../filesync/receive.js';
export { receiveBytes } from '../filesync/bytes.js';
export { parseDiffCopyMetadata, parseExporterMetadata } from '../filesync/metadata.js';
