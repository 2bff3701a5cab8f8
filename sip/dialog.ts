import { NameAddrHeader, newBranch, parseUri, type ParsedRequest, type ParsedResponse, type URI } from './message.js';
import type { Flow } from './transport/flow.js';

/** Dialog state (RFC 3261 §12): what in-dialog requests need. */
export class Dialog {
  readonly id: string;
  localSeq: number;
  /** The peer's last CSeq; undefined in a dialog we started until the peer's first request (RFC 3261 §12.1.2). */
  remoteSeq: number | undefined;
  /** Last ACK we sent for a 2xx, re-sent if the 2xx is retransmitted. */
  lastAck: string | undefined;

  private constructor(
    readonly callId: string,
    readonly localTag: string,
    readonly remoteTag: string,
    /** Our From (UAC) or To (UAS) header value, with our tag. */
    readonly localHeader: string,
    /** The peer's header value, with its tag. */
    readonly remoteHeader: string,
    readonly remoteTarget: string,
    readonly routeSet: string[],
    localSeq: number,
    remoteSeq: number | undefined,
    /** The flow the last in-dialog request went on (first: the one the dialog was made on); see in-dialog.ts dialogFlow(). */
    public flow: Flow,
  ) {
    this.id = Dialog.key(callId, localTag, remoteTag);
    this.localSeq = localSeq;
    this.remoteSeq = remoteSeq;
  }

  static key(callId: string, localTag: string, remoteTag: string): string {
    return `${callId}|${localTag}|${remoteTag}`;
  }

  /** UAS side, from the INVITE and the To tag we put in our 2xx. */
  static asUas(req: ParsedRequest, localTag: string, flow: Flow): Dialog {
    const m = req.msg;
    const to = `${m.getHeader('to')};tag=${localTag}`;
    return new Dialog(m.callId, localTag, m.fromTag, to, m.getHeader('from') ?? '', contactUri(m) ?? m.from.uri.toString(), recordRoutes(m), 0, m.cseq, flow);
  }

  /** UAC side, from our INVITE's headers and the 2xx. */
  static asUac(res: ParsedResponse, fromHeader: string, localTag: string, cseq: number, flow: Flow, fallbackTarget: string): Dialog {
    const m = res.msg;
    return new Dialog(m.callId, localTag, m.toTag, fromHeader, m.getHeader('to') ?? '', contactUri(m) ?? fallbackTarget, recordRoutes(m).reverse(), cseq, undefined, flow);
  }

  /**
   * RFC 3261 §12.2.2: takes the CSeq of a request inside the dialog (never ACK or CANCEL, which
   * keep their INVITE's). False when it is lower than the last one: out of order, answer 500.
   */
  acceptRemoteSeq(cseq: number): boolean {
    if (this.remoteSeq !== undefined && cseq < this.remoteSeq) return false;
    this.remoteSeq = cseq;
    return true;
  }

  /**
   * RFC 3261 §12.2.1.1 with §8.1.2: the URI of the next hop of in-dialog requests: the first route
   * (loose, or strict: then it is also the Request-URI), else the remote target.
   */
  nextHop(): string {
    const first = this.routeSet[0];
    return first === undefined ? this.remoteTarget : routeUri(first);
  }

  /** Builds an in-dialog request (BYE, re-INVITE) or the ACK for a 2xx (same CSeq as the INVITE). */
  request(method: string, via: (branch: string) => string, contact: string, opts: { cseq?: number; headers?: string[]; body?: string } = {}): { text: string; branch: string; ruri: string } {
    const branch = newBranch();
    const cseq = opts.cseq ?? ++this.localSeq;
    // §12.2.1.1: a strict router (no ;lr) takes the Request-URI, and the remote target goes last in Route.
    const [first, ...rest] = this.routeSet;
    const strict = first !== undefined && !parseRoute(first)?.hasParam('lr');
    const ruri = strict ? routeUri(first).replace(/[?].*$/, '') : this.remoteTarget;
    const routes = strict ? [...rest, `<${this.remoteTarget}>`] : this.routeSet;
    const lines = [
      `${method} ${ruri} SIP/2.0`,
      `Via: ${via(branch)}`,
      'Max-Forwards: 70',
      ...routes.map((r) => `Route: ${r}`),
      `From: ${this.localHeader}`,
      `To: ${this.remoteHeader}`,
      `Call-ID: ${this.callId}`,
      `CSeq: ${cseq} ${method}`,
      `Contact: ${contact}`,
      ...(opts.headers ?? []),
    ];
    const body = opts.body ?? '';
    if (body) lines.push('Content-Type: application/sdp');
    lines.push(`Content-Length: ${Buffer.byteLength(body)}`);
    return { text: lines.join('\r\n') + '\r\n\r\n' + body, branch, ruri };
  }
}

/** The URI inside a Route/Record-Route value (`<sip:p.example;lr>;param`), as written. */
function routeUri(route: string): string {
  return /<([^>]*)>/.exec(route)?.[1] ?? route.trim();
}

function parseRoute(route: string): URI | undefined {
  return parseUri(routeUri(route));
}

function contactUri(m: { headers: Record<string, Array<{ parsed?: unknown }>> }): string | undefined {
  const c = m.headers['Contact']?.[0]?.parsed;
  return c instanceof NameAddrHeader ? c.uri.toString() : undefined;
}

export function recordRoutes(m: { headers: Record<string, Array<{ raw: string }>> }): string[] {
  return (m.headers['Record-Route'] ?? []).map((h) => h.raw);
}
