import { SafeEmitter } from '../src/util/safe-emitter.js';
import type { Destination, LegEnd, LegEvents, LegState, OutboundCall, OutboundCallOptions, TerminateOptions } from './backend.js';
import { Dialog } from './dialog.js';
import { handleInDialogRequest, sendAck, sendBye } from './in-dialog.js';
import { DigestClient } from './digest-client.js';
import { buildRequest, challengesOf, newBranch, randomToken, type ParsedRequest, type ParsedResponse } from './message.js';
import type { DialogOwner, StackContext } from './stack-context.js';
import type { ClientTransaction, ServerTransaction } from './transactions.js';
import type { Flow } from './transport/flow.js';
import { encodeSipUser } from './sip-user.js';
import { destinationName, flowToDestination, hostPort, nextHop, targetUri, trunkRoutes } from './trunk-target.js';

/** A common UA no-answer limit (RFC 3261 §16.6's "more than 3 minutes" is for proxies' Timer C). */
const DEFAULT_RING_TIMEOUT_MS = 180_000;
/** setTimeout's ceiling. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Bound on the dialogs we ended at once (2xx from losing forks, or after our CANCEL) whose ACK we keep to repeat. */
const MAX_RELEASED = 32;

/** One INVITE we sent: each attempt (destination, answer to a challenge) is a new one, in its own transaction. */
interface Invite {
  branch: string;
  via: string;
  ruri: string;
  from: string;
  to: string;
  route: string[];
  /** Its credentials, which the ACK for its 2xx repeats (RFC 3261 §13.2.2.4). */
  auth: string[];
  cseq: number;
  flow: Flow;
  txn: ClientTransaction;
  cancelSent: boolean;
}

/** The UAC side of a call: our INVITE toward a SIP peer (trunk, PBX). */
export class OutboundCallLeg extends SafeEmitter<LegEvents> implements OutboundCall, DialogOwner {
  readonly id = `out-${randomToken(6)}`;
  readonly callId = randomToken(12);
  #state: LegState = 'calling';
  #ended = false;
  #ctx: StackContext;
  #opts: OutboundCallOptions;
  #localTag = randomToken(6);
  #cseq = 1;
  /** The INVITE in progress; responses to earlier ones are stray (see #onStrayResponse). */
  #invite: Invite | undefined;
  /** Destinations not tried yet (RFC 3263 failover). */
  #destinations: Destination[] = [];
  #failoverTimer: NodeJS.Timeout | undefined;
  /** Bounds ringing: Timer B stops at the first provisional response. */
  #ringTimer: NodeJS.Timeout | undefined;
  readonly #ringTimeoutMs: number;
  /** Where the current INVITE went ("udp:10.0.0.1:5060"), for logs and the admin API. */
  #destination: string | undefined;
  #dialog: Dialog | undefined;
  /** CANCEL must wait for a provisional response (RFC 3261 §9.1). */
  #cancelPending: string | undefined;
  /** ACKs of dialogs we ended as soon as they were made (key: INVITE branch and To tag): a retransmitted 2xx gets the ACK again, no new BYE. */
  #released = new Map<string, Dialog>();
  /** Answers to the challenges to this destination's INVITEs so far (one per kind and realm, RFC 3261 §22.3). */
  #digest: DigestClient | undefined;

  constructor(ctx: StackContext, opts: OutboundCallOptions) {
    super(ctx.log);
    const ring = opts.ringTimeoutMs ?? DEFAULT_RING_TIMEOUT_MS;
    if (typeof ring !== 'number' || !(ring > 0)) throw new TypeError('ringTimeoutMs must be a positive number');
    this.#ctx = ctx;
    this.#opts = opts;
    this.#ringTimeoutMs = Math.min(ring, MAX_TIMER_MS);
  }

  get destination(): string | undefined {
    return this.#destination;
  }

  get state(): LegState {
    return this.#state;
  }

  /** Resolves the flow and sends the INVITE; failures end the leg (never reject). */
  async start(): Promise<void> {
    // Let the caller of createCall() attach its listeners before any outcome, even an immediate one.
    await Promise.resolve();
    if (this.#ended) return;
    this.#ringTimer = setTimeout(() => this.#onRingTimeout(), this.#ringTimeoutMs);
    const { target } = this.#opts;
    const o = this.#opts;
    if ('contact' in target) {
      // A registered device: its own flow (WebSocket/TCP) or its source address (UDP).
      const flow = this.#ctx.flowById(target.contact.source.transport, target.contact.source.flowId);
      if (!flow) {
        this.#end({ cause: 'transport', status: 480, reason: 'the contact is no longer connected' });
        return;
      }
      this.#sendInvite(flow, target.contact.uri, this.#from(flow), `<sip:${encodeSipUser(o.toUser)}@${this.#ctx.domain(flow)}>`, []);
      return;
    }
    const trunk = target.trunk;
    const next = nextHop(trunk);
    try {
      this.#destinations = await this.#ctx.resolve(next);
    } catch (err) {
      this.#end({ cause: 'transport', status: 503, reason: `cannot resolve ${next.host}: ${(err as Error).message}` });
      return;
    }
    if (this.#destinations.length === 0) {
      this.#end({ cause: 'transport', status: 503, reason: `no address for ${next.host}` });
      return;
    }
    void this.#tryNextDestination(`no destination for ${next.host} could be reached`);
  }

  #from(flow: Flow): string {
    const o = this.#opts;
    // Free text: quotes, backslashes and control characters would end the quoted string or the line.
    // eslint-disable-next-line no-control-regex
    const display = o.fromDisplayName ? `"${o.fromDisplayName.replace(/["\\]/g, '').replace(/[\x00-\x1f\x7f]+/g, ' ')}" ` : '';
    return `${display}<sip:${encodeSipUser(o.fromUser)}@${o.fromDomain ?? this.#ctx.domain(flow)}>;tag=${this.#localTag}`;
  }

  /**
   * RFC 3263 §4.3: the INVITE goes to the next destination after a transport failure, a 503, or
   * silence (no response at all within failoverTimeoutMs); each attempt is a new client transaction.
   */
  async #tryNextDestination(lastError: string): Promise<void> {
    const o = this.#opts;
    if (!('trunk' in o.target)) return;
    const trunk = o.target.trunk;
    for (;;) {
      if (this.#ended) return;
      const dest = this.#destinations.shift();
      if (!dest) {
        this.#end({ cause: 'transport', status: 503, reason: lastError });
        return;
      }
      let flow: Flow;
      try {
        flow = await flowToDestination(this.#ctx, trunk, dest);
      } catch (err) {
        lastError = `cannot reach ${destinationName(dest)}: ${(err as Error).message}`;
        this.#ctx.log.info({ callId: this.callId, destination: destinationName(dest), err: (err as Error).message }, 'destination unreachable, trying the next');
        continue;
      }
      if (this.#ended) return;
      this.#destination = destinationName(dest);
      const ruri = targetUri(trunk.target, o.toUser);
      const to = this.#invite?.to ?? `<sip:${encodeSipUser(o.toUser)}@${hostPort(trunk.target)}>`;
      const from = this.#invite?.from ?? this.#from(flow);
      const route = trunkRoutes(trunk);
      if (this.#invite) this.#cseq++;
      // A new attempt starts from scratch: no provisional response yet (CANCEL waits for one), no challenge answered.
      this.#digest = undefined;
      this.#state = 'calling';
      this.#sendInvite(flow, ruri, from, to, [], route);
      this.#armFailover(trunk.failoverTimeoutMs ?? 4000);
      return;
    }
  }

  /**
   * Silence from this destination: try the next (the last one keeps Timer B). The silent one's transaction
   * stays until its Timer B, so that a late answer from it is CANCELled or ended rather than left ringing.
   */
  #armFailover(ms: number): void {
    clearTimeout(this.#failoverTimer);
    if (this.#destinations.length === 0) return;
    const inv = this.#invite;
    this.#failoverTimer = setTimeout(() => {
      // Any response (even 100 Trying) moved the transaction on from 'calling': this destination answers.
      if (this.#ended || this.#invite !== inv || inv?.txn.state !== 'calling') return;
      this.#ctx.log.info({ callId: this.callId, destination: this.#destination, ms }, 'no response, failing over');
      inv.txn.abandon();
      void this.#tryNextDestination(`no response from ${this.#destination}`);
    }, ms);
  }

  /** Sends (or re-sends with credentials, RFC 3261 §22.2) the INVITE in a new client transaction. */
  #sendInvite(flow: Flow, ruri: string, from: string, to: string, auth: string[], route = this.#invite?.route ?? []): void {
    const o = this.#opts;
    const branch = newBranch();
    const via = this.#ctx.via(flow, branch);
    const cseq = this.#cseq;
    let text: string;
    try {
      text = buildRequest({
        method: 'INVITE',
        ruri,
        via,
        from,
        to,
        callId: this.callId,
        cseq,
        contact: this.#ctx.contact(flow),
        routes: route,
        headers: ['Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO', ...auth, ...(o.headers ?? [])],
        body: o.offer,
      });
    } catch (err) {
      // A part from outside (a number, a domain, a header) would break the message: nothing is sent.
      this.#ctx.log.warn({ callId: this.callId, err: (err as Error).message }, 'INVITE not sent: invalid request');
      this.#end({ cause: 'local', status: 400, reason: `invalid request: ${(err as Error).message}` });
      return;
    }
    const buildAck = (res: ParsedResponse) =>
      buildRequest({ method: 'ACK', ruri, via, from, to: res.msg.getHeader('to') ?? to, callId: this.callId, cseq, routes: route });
    const txn = this.#ctx.sendRequest(flow, 'INVITE', branch, text, buildAck);
    const invite: Invite = { branch, via, ruri, from, to, route, auth, cseq, flow, txn, cancelSent: false };
    this.#invite = invite;
    txn.on('response', (res) => (this.#invite === invite ? this.#onResponse(res) : this.#onStrayResponse(invite, res)));
    txn.on('timeout', () => {
      if (this.#invite !== invite || this.#ended) return;
      if (this.#destinations.length > 0 && txn.state === 'calling') void this.#tryNextDestination(`no response from ${this.#destination}`);
      else this.#end({ cause: 'timeout', status: 408, reason: 'no final response (Timer B)' });
    });
    txn.on('transportError', (err) => {
      if (this.#invite !== invite || this.#ended) return;
      if (this.#destinations.length > 0 && this.#state === 'calling') void this.#tryNextDestination(err.message);
      else this.#end({ cause: 'transport', status: 503, reason: err.message });
    });
    txn.start();
  }

  /**
   * Re-sends the INVITE answering a 401/407 with the trunk's credentials, keeping the answers to earlier
   * challenges (a proxy's 407, then the PBX's 401); true if it did, false when the call has failed.
   */
  #retryWithCredentials(res: ParsedResponse): boolean {
    const creds = this.#opts.credentials;
    const inv = this.#invite;
    if (!creds || !inv || this.#ended) return false;
    const digest = (this.#digest ??= new DigestClient(creds));
    const { kind, values } = challengesOf(res);
    if (!digest.challenge(kind, values)) return false;
    const auth = digest.headers({ method: 'INVITE', uri: inv.ruri });
    this.#cseq++;
    // A new INVITE transaction: CANCEL waits for a provisional response to it, not to the challenged one (§9.1).
    this.#state = 'calling';
    this.#sendInvite(inv.flow, inv.ruri, inv.from, inv.to, auth);
    return true;
  }

  terminate(opts: TerminateOptions = {}): void {
    if (this.#ended) return;
    if (this.#dialog) {
      this.#end({ cause: 'local', reason: opts.reason });
      this.#sendBye(this.#dialog, opts.reasonHeader);
      return;
    }
    this.#cancel({ cause: 'local', reason: opts.reason }, opts.reasonHeader);
  }

  /** Ends the unanswered leg; CANCEL goes now if a provisional response came, else at the first one (RFC 3261 §9.1). */
  #cancel(end: LegEnd, reasonHeader: string | undefined): void {
    this.#cancelPending = reasonHeader ?? '';
    if (this.#state === 'early' && this.#invite) this.#sendCancel(this.#invite, this.#cancelPending);
    this.#end(end);
  }

  #onRingTimeout(): void {
    this.#ringTimer = undefined;
    if (this.#ended || this.#dialog) return;
    this.#ctx.log.info({ callId: this.callId, destination: this.#destination, ms: this.#ringTimeoutMs }, 'no answer, cancelling (ring timeout)');
    this.#cancel({ cause: 'timeout', status: 408, reason: 'no answer (ring timeout)' }, 'SIP;cause=408;text="ring timeout"');
  }

  #onResponse(res: ParsedResponse): void {
    const s = res.status;
    const inv = this.#invite!;
    if (s < 200) {
      if (this.#cancelPending !== undefined) {
        this.#sendCancel(inv, this.#cancelPending);
        return;
      }
      if (this.#ended) return;
      if (s > 100) this.#state = 'early';
      else if (this.#state === 'calling') this.#state = 'early';
      // An SDP answer in an unreliable 18x is early media (RFC 3261 §13.3.1.1; we never ask for 100rel).
      const body = res.msg.body;
      const sdp = body && /^application\/sdp\b/i.test(res.msg.getHeader('content-type') ?? '') ? body : undefined;
      this.safeEmit('progress', s, res.msg.reasonPhrase ?? '', ...(sdp ? [sdp] : []));
      return;
    }
    if (s >= 300) {
      if ((s === 401 || s === 407) && this.#cancelPending === undefined && this.#retryWithCredentials(res)) return;
      if (s === 503 && this.#cancelPending === undefined && this.#destinations.length > 0 && !this.#ended) {
        this.#ctx.log.info({ callId: this.callId, destination: this.#destination }, '503 from destination, trying the next');
        void this.#tryNextDestination(`503 from ${this.#destination}`);
        return;
      }
      this.#end({ cause: 'rejected', status: s, reason: res.msg.reasonPhrase });
      return;
    }
    this.#on2xx(inv, res);
  }

  /**
   * A response to an INVITE we moved on from (failover after silence): the destination woke up late. A
   * provisional response is CANCELled, a 2xx ACKed and ended with BYE, so that nothing rings or stays
   * connected there; the transaction goes away by itself (Timer B, or 64*T1 after the CANCEL).
   */
  #onStrayResponse(inv: Invite, res: ParsedResponse): void {
    if (res.status < 200) {
      if (!inv.cancelSent) this.#ctx.log.info({ callId: this.callId, status: res.status }, 'late answer from an abandoned destination, cancelling');
      this.#sendCancel(inv, '');
    } else if (res.status < 300) {
      this.#on2xx(inv, res);
    }
  }

  #on2xx(inv: Invite, res: ParsedResponse): void {
    const flow = inv.flow;
    const d = this.#dialog;
    const toTag = res.msg.toTag ?? '';
    if (d && d.remoteTag === toTag) {
      if (d.lastAck) this.#ctx.sendRaw(d.flow, d.lastAck);
      return;
    }
    // A retransmission of a 2xx whose dialog we already ended: ACK it again, never a second BYE.
    const key = `${inv.branch}|${toTag}`;
    const released = this.#released.get(key);
    if (released !== undefined) {
      if (released.lastAck) this.#ctx.sendRaw(released.flow, released.lastAck);
      return;
    }
    const release = this.#ended || this.#dialog !== undefined || inv !== this.#invite;
    if (release && this.#released.size >= MAX_RELEASED) {
      this.#ctx.log.warn({ callId: this.callId, toTag }, '2xx from yet another fork ignored');
      return;
    }
    // A new dialog: the first 2xx, a 2xx from another fork, from an abandoned destination, or one that crossed our CANCEL.
    const dialog = Dialog.asUac(res, inv.from, this.#localTag, inv.cseq, flow, inv.ruri);
    sendAck(this.#ctx, dialog, inv.cseq, inv.auth);
    if (release) {
      this.#released.set(key, dialog);
      this.#sendBye(dialog, 'SIP;cause=487;text="Call terminated"');
      return;
    }
    this.#dialog = dialog;
    this.#ctx.registerDialog(dialog, this);
    this.#state = 'confirmed';
    clearTimeout(this.#ringTimer);
    this.safeEmit('answered', res.msg.body ?? '');
  }

  /** CANCELs `inv` once (same branch, CSeq and Route as the INVITE, RFC 3261 §9.1), with an optional RFC 3326 Reason. */
  #sendCancel(inv: Invite, reason: string | undefined): void {
    if (inv.cancelSent) return;
    inv.cancelSent = true;
    const cancel = (headers: string[]) =>
      buildRequest({ method: 'CANCEL', ruri: inv.ruri, via: inv.via, from: inv.from, to: inv.to, callId: this.callId, cseq: inv.cseq, routes: inv.route, headers });
    let text: string;
    try {
      text = cancel(reason ? [`Reason: ${reason}`] : []);
    } catch (err) {
      // Only the Reason can be at fault (the rest was sent in the INVITE): the CANCEL matters more than it.
      this.#ctx.log.warn({ callId: this.callId, err: (err as Error).message }, 'Reason left out of the CANCEL');
      text = cancel([]);
    }
    this.#ctx.sendRequest(inv.flow, 'CANCEL', inv.branch, text).start();
    inv.txn.cancelled();
  }

  #sendBye(dialog: Dialog, reasonHeader?: string): void {
    sendBye(this.#ctx, dialog, reasonHeader, this.#opts.credentials);
  }

  onRequest(req: ParsedRequest, txn: ServerTransaction): void {
    handleInDialogRequest(this.#ctx, req, txn, () => this.#end({ cause: 'bye' }));
  }

  onAck(): void {}

  on2xxRetransmission(res: ParsedResponse): void {
    // Only the dialog we kept is registered with the stack: this re-sends its ACK.
    if (this.#invite) this.#on2xx(this.#invite, res);
  }

  #end(end: LegEnd): void {
    if (this.#ended) return;
    this.#ended = true;
    clearTimeout(this.#failoverTimer);
    clearTimeout(this.#ringTimer);
    this.#destinations = [];
    this.#state = 'ended';
    if (this.#dialog) this.#ctx.unregisterDialog(this.#dialog);
    this.safeEmit('ended', end);
    this.removeAllListeners('progress').removeAllListeners('answered').removeAllListeners('confirmed');
  }
}
