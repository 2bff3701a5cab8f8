/**
 * Options, codecs and errors of the werift browser stand-in (werift-sdh.ts), and the deadline helper
 * its waits use.
 */
import type { RTCPeerConnection } from 'werift';

/** An audio codec as offered in SDP (`a=rtpmap:<payloadType> <name>/<clockRate>[/<channels>]`). */
export interface AudioCodec {
  /** `audio/<encoding name>`, e.g. `audio/PCMU`. */
  readonly mimeType: string;
  readonly clockRate: number;
  readonly channels?: number;
  readonly payloadType: number;
  /** `a=fmtp` parameters. */
  readonly parameters?: string;
}

export const OPUS: AudioCodec = {
  mimeType: 'audio/opus',
  clockRate: 48000,
  channels: 2,
  payloadType: 111,
  parameters: 'minptime=10;useinbandfec=1',
};
export const PCMU: AudioCodec = { mimeType: 'audio/PCMU', clockRate: 8000, channels: 1, payloadType: 0 };
export const PCMA: AudioCodec = { mimeType: 'audio/PCMA', clockRate: 8000, channels: 1, payloadType: 8 };
export const TELEPHONE_EVENT: AudioCodec = {
  mimeType: 'audio/telephone-event',
  clockRate: 8000,
  payloadType: 101,
  parameters: '0-16',
};
/** The part of Chrome's audio offer the gateway cares about, in Chrome's order (Chrome numbers telephone-event 126). */
export const DEFAULT_AUDIO_CODECS: readonly AudioCodec[] = [OPUS, PCMU, PCMA, TELEPHONE_EVENT];

export interface WeriftSdhOptions {
  /** Codecs offered (or accepted, when answering), in preference order. Default {@link DEFAULT_AUDIO_CODECS}. */
  readonly codecs?: readonly AudioCodec[];
  /**
   * When true, `close()` (called by SIP.js when the session ends) leaves the PeerConnection running,
   * so a test can watch the gateway close its side; call `forceClose()` to release it.
   */
  readonly keepPeerConnectionOnClose?: boolean;
  /** The single host candidate address. Default `127.0.0.1`. */
  readonly hostAddress?: string;
  /** Bound on each getDescription/setDescription (gathering included). Default 10000 ms. */
  readonly operationTimeoutMs?: number;
}

export interface SendRtpOptions {
  /** Default: the first negotiated codec (what werift's sender and a browser would use). */
  readonly payloadType?: number;
  readonly marker?: boolean;
  /** Timestamp units to advance after this packet. Default: 20 ms at the codec's clock rate. */
  readonly timestampAdvance?: number;
}

export interface SendPacedRtpOptions {
  readonly payload: Buffer;
  readonly count: number;
  /** Default 20. */
  readonly intervalMs?: number;
  readonly payloadType?: number;
  /** How long to wait for the PeerConnection to connect before the first packet. Default 10000 ms. */
  readonly connectTimeoutMs?: number;
}

export type PeerConnectionState = RTCPeerConnection['connectionState'];
export type IceConnectionState = RTCPeerConnection['iceConnectionState'];

export interface ConnectionStates {
  readonly connectionState: PeerConnectionState;
  readonly iceConnectionState: IceConnectionState;
}

/** Use after close, or before the state needed exists. */
export class InvalidStateError extends Error {
  override readonly name = 'InvalidStateError';
}

export class TimeoutError extends Error {
  override readonly name = 'TimeoutError';
}

/**
 * Settles with the first of `start`'s resolve/reject or a {@link TimeoutError} after `timeoutMs`.
 * The cleanup `start` returns runs exactly once, however the wait ends; the timer is always cleared.
 */
export function waitWithDeadline<T>(
  timeoutMs: number,
  timeoutMessage: () => string,
  start: (resolve: (value: T) => void, reject: (error: Error) => void) => (() => void) | void,
): Promise<T> {
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > 600_000) {
    return Promise.reject(new TypeError(`timeoutMs must be in (0, 600000], got ${timeoutMs}`));
  }
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    let cleanup: (() => void) | void = undefined;
    let cleanedUp = false;
    const runCleanup = (): void => {
      if (cleanedUp || cleanup === undefined) return;
      cleanedUp = true;
      cleanup();
    };
    const finish = (settle: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        runCleanup();
      } finally {
        settle();
      }
    };
    const timer = setTimeout(() => finish(() => reject(new TimeoutError(timeoutMessage()))), timeoutMs);
    try {
      cleanup = start(
        (value) => finish(() => resolve(value)),
        (error) => finish(() => reject(error)),
      );
    } catch (error) {
      finish(() => reject(toError(error)));
    }
    // start() may have settled synchronously, before its cleanup existed.
    if (settled) runCleanup();
  });
}

export function toError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}

export function parseSdhOptions(options: object | undefined): WeriftSdhOptions {
  const o = (options ?? {}) as Record<keyof WeriftSdhOptions, unknown>;
  const check = (key: keyof WeriftSdhOptions, ok: boolean): void => {
    if (o[key] !== undefined && !ok) throw new TypeError(`sessionDescriptionHandlerFactoryOptions.${key} has the wrong type`);
  };
  check('codecs', Array.isArray(o.codecs));
  check('keepPeerConnectionOnClose', typeof o.keepPeerConnectionOnClose === 'boolean');
  check('hostAddress', typeof o.hostAddress === 'string');
  check('operationTimeoutMs', typeof o.operationTimeoutMs === 'number');
  return o as WeriftSdhOptions; // codecs are validated by the constructor
}

export function validateCodecs(codecs: readonly AudioCodec[]): readonly AudioCodec[] {
  if (codecs.length === 0) throw new TypeError('at least one codec is needed');
  const seen = new Set<number>();
  for (const c of codecs) {
    if (typeof c.mimeType !== 'string' || !/^audio\/[\w.-]+$/i.test(c.mimeType)) {
      throw new TypeError(`bad codec mimeType ${String(c.mimeType)}`);
    }
    if (!Number.isInteger(c.payloadType) || c.payloadType < 0 || c.payloadType > 127 || seen.has(c.payloadType)) {
      throw new TypeError(`bad or duplicate payload type ${c.payloadType} for ${c.mimeType}`);
    }
    if (!Number.isInteger(c.clockRate) || c.clockRate <= 0) throw new TypeError(`bad clock rate for ${c.mimeType}`);
    seen.add(c.payloadType);
  }
  return codecs;
}
