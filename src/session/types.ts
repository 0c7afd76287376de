import type { DescMessage, DescMethod } from '@bufbuild/protobuf';

/**
 * The two ends of one gRPC stream carried through a session, seen the same way from the daemon
 * (which calls the client's services) and from the client (which serves them).
 *
 * Contract: the owner calls `end()` when it has nothing more to send; reading ends when the peer
 * ends. `close(err)` aborts both directions. Iterating `recv()` throws the peer's error
 * (a gRPC status as a LoomError) if the call failed.
 */
export interface MessageStream<Send, Recv> {
  send(msg: Send): Promise<void>;
  /** Sends several messages in order as one write, where the stream can (fewer, larger frames). */
  sendMany?(msgs: readonly Send[]): Promise<void>;
  /** Messages already in gRPC frames, in one write (raw streams of the tunnel; see codecs.ts). */
  sendFrames?(frames: Buffer): Promise<void>;
  end(): void;
  close(err?: Error): void;
  recv(): AsyncIterable<Recv>;
  /** Request metadata (server side) or response headers (client side), lower-case keys. */
  readonly metadata: Record<string, string[]>;
}

/** Metadata sent with a call: lower-case keys, several values each (as gRPC metadata). */
export type CallMetadata = Record<string, string[]>;

/** The daemon's view of one client session: its identity and the services it exposes. */
export interface SessionCaller {
  readonly id: string;
  readonly name: string;
  readonly sharedKey: string;
  /** Full gRPC method paths the client said it serves (`/moby.filesync.v1.FileSync/DiffCopy`). */
  readonly methods: ReadonlySet<string>;
  supports(method: DescMethod): boolean;
  unary<M extends DescMethod>(
    method: M,
    req: unknown,
    opts?: { metadata?: CallMetadata; signal?: AbortSignal },
  ): Promise<any>;
  /**
   * Opens a streaming call. `input`/`output` override the message types for calls whose bytes are
   * not what the method declares (the local exporter sends fsutil Packets over FileSend.DiffCopy).
   */
  stream<M extends DescMethod>(
    method: M,
    opts?: { metadata?: CallMetadata; signal?: AbortSignal; input?: DescMessage; output?: DescMessage },
  ): Promise<MessageStream<any, any>>;
  /** Resolves when the session's stream is gone. */
  readonly closed: Promise<void>;
}

/**
 * The host of URLs whose bytes the client's session serves through Upload.Pull (upstream's upload
 * provider): the client names a stream `http://buildkit-session/<id>`, the daemon's HTTP source
 * fetches such a URL from the session instead of the network.
 */
export const UPLOAD_HOST = 'buildkit-session';
