/**
 * INVITE-to-200 timing at a softphone's WebSocket transport: the moment SIP.js hands a message to
 * the socket or gets one from it, per Call-ID. Wraps the transport's send/onMessage of phones the
 * bench owns; the cost is one regex per message.
 */
import { performance } from 'node:perf_hooks';
import type { Softphone } from '../test/support/softphone.js';

export interface InviteTiming {
  /** Outgoing calls: first INVITE sent (before any 407). Incoming: INVITE received. */
  inviteAt: number;
  /** Outgoing: 200 to INVITE received. Incoming: 200 to INVITE sent. */
  okAt?: number;
  /** Which way the INVITE went; the 200 goes the other way. */
  inviteDir: 'in' | 'out';
}

const CALL_ID = /^(?:Call-ID|i)[ \t]*:[ \t]*(\S+)/im;
const CSEQ_INVITE = /^CSeq[ \t]*:[ \t]*\d+[ \t]+INVITE\b/im;

interface TransportLike {
  send(message: string): Promise<void>;
  onMessage: ((message: string) => void) | undefined;
}

export class SipTimings {
  readonly #byCallId = new Map<string, InviteTiming>();

  /** Starts timing `phone`'s calls (call after Softphone.connect). */
  attach(phone: Softphone): void {
    const transport = phone.userAgent.transport as unknown as TransportLike;
    const send = transport.send.bind(transport);
    transport.send = (message: string) => {
      this.#seen(message, 'out');
      return send(message);
    };
    const onMessage = transport.onMessage;
    transport.onMessage = (message: string) => {
      this.#seen(message, 'in');
      onMessage?.(message);
    };
  }

  get(callId: string): InviteTiming | undefined {
    return this.#byCallId.get(callId);
  }

  /** INVITE to 200, ms; undefined without both. */
  setupMs(callId: string): number | undefined {
    const t = this.#byCallId.get(callId);
    return t?.okAt === undefined ? undefined : t.okAt - t.inviteAt;
  }

  forget(callId: string): void {
    this.#byCallId.delete(callId);
  }

  #seen(message: string, dir: 'in' | 'out'): void {
    const now = performance.now();
    const isInvite = message.startsWith('INVITE ');
    const isOk = message.startsWith('SIP/2.0 200');
    if (!isInvite && !isOk) return;
    const callId = CALL_ID.exec(message)?.[1];
    if (!callId) return;
    const t = this.#byCallId.get(callId);
    // Outgoing calls: the INVITE we send and the 200 we receive; incoming ones the other way round.
    if (isInvite && !t) this.#byCallId.set(callId, { inviteAt: now, inviteDir: dir });
    else if (isOk && t && t.okAt === undefined && t.inviteDir !== dir && CSEQ_INVITE.test(message)) t.okAt = now;
  }
}
