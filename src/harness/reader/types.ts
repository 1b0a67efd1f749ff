/**
 * A reader: an implementation that only opens and reads images. The reader
 * target (targets/reader.ts) pairs one with a producer engine that writes the
 * images the reader is then asked to read.
 */

/** One link of an image's backing chain, as the image's header names it. */
export interface BackingLink {
  /** The name stored in the header (relative to the image's directory). */
  file: string;
  /** Absolute path of that file. */
  path: string;
  format: 'raw' | 'qcow2';
}

export interface Reader {
  readonly name: string;
  /**
   * Opens `image` read-only (closing whatever was open). Throws RefusalError
   * when the implementation declines the image, any other error when it fails.
   */
  open(image: string, chain: BackingLink[]): Promise<OpenInfo | void>;
  /** The media size, when the reader learns it later than at open (qemu-img convert's output). */
  mediaSize?(): Promise<number | undefined>;
  read(off: number, len: number): Promise<Uint8Array>;
  /** A snapshot's first `length` bytes (or fewer), or undefined when the reader cannot read snapshots. */
  readSnapshot(id: string, length: number): Promise<Uint8Array | undefined>;
  close(): Promise<void>;
}

/** What a reader says at open about the image it opened. */
export interface OpenInfo {
  /** The virtual disk size in bytes as the reader sees it (protocol 2 `size`, optional). */
  size?: number;
}

/**
 * An implementation declined a configuration (a reader at `open`, a writer at
 * `create`): counted per feature, never a failure.
 */
export class RefusalError extends Error {
  constructor(
    readonly features: string[],
    message: string,
  ) {
    super(message);
    this.name = 'RefusalError';
  }
}

export interface Refusal {
  /** The features named as declined (by the program, or else every feature of the config). */
  features: string[];
  message: string;
  /** Ops run before the refusal (0: the image was declined before any op). */
  atOp: number;
}
