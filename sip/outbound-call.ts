import { SafeEmitter } from '../src/util/safe-emitter.js';
import type { LegEnd, LegEvents, LegState, OutboundCall, OutboundCallOptions, TerminateOptions } from './backend.js';
import { Dialog } from './dialog.js';
import { handleInDialogRequest, sendBye } from './in-dialog.js';
import { answerChallenge, pickChallenge } from './digest.js';
import { buildRequest, newBranch, randomToken, type ParsedRequest, type ParsedResponse } from './message.js';
import type { DialogOwner, StackContext } from './stack-context.js';
import type { ClientTransaction, ServerTransaction } from './transactions.js';
import type { Flow } from './transport/flow.js';

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
  #flow: Flow | undefined;
  #invite: { branch: string; via: string; ruri: string; from: string; to: string; txn: ClientTransaction } | undefined;
  #dialog: Dialog | undefined;
  /** CANCEL must wait for a provisional response (RFC 3261 §9.1). */
  #cancelPending: string | undefined;
  #cancelSent = false;
  /** A challenge is answered once; a second one ends the call. */
  #authTried = false;

  constructor(ctx: StackContext, opts: OutboundCallOptions) {
    super(ctx.log);
    this.#ctx = ctx;
    this.#opts = opts;
  }

  get state(): LegState {
    return this.#state;
  }

  /** Resolves the flow and sends the INVITE; failures end the leg (never reject). */
  async start(): Promise<void> {
    // Let the caller of createCall() attach its listeners before any outcome, even an immediate one.
    await Promise.resolve();
    if (this.#ended) return;
    const { target } = this.#opts;
    const o = this.#opts;
    let flow: Flow;
    let ruri: string;
    let to: string;
    if ('contact' in target) {
      // A registered device: its own flow (WebSocket/TCP) or its source address (UDP).
      const found = this.#ctx.flowById(target.contact.source.transport, target.contact.source.flowId);
      if (!found) {
        this.#end({ cause: 'transport', status: 480, reason: 'the contact is no longer connected' });
        return;
      }
      flow = found;
      ruri = target.contact.uri;
      to = `<sip:${o.toUser}@${this.#ctx.domain(flow)}>`;
    } else {
      try {
        flow = await this.#ctx.flowTo(target.transport, { address: target.host, port: target.port });
      } catch (err) {
        this.#end({ cause: 'transport', status: 503, reason: `cannot reach ${target.host}:${target.port}: ${(err as Error).message}` });
        return;
      }
      const hostPort = `${target.host}:${target.port}`;
      ruri = `sip:${o.toUser}@${hostPort}${target.transport === 'tcp' ? ';transport=tcp' : ''}`;
      to = `<sip:${o.toUser}@${hostPort}>`;
    }
    if (this.#ended) return;
    this.#flow = flow;
    const display = o.fromDisplayName ? `"${o.fromDisplayName.replace(/["\\]/g, '')}" ` : '';
    const from = `${display}<sip:${o.fromUser}@${this.#ctx.domain(flow)}>;tag=${this.#localTag}`;
    this.#sendInvite(flow, ruri, from, to, []);
  }

  /** Sends (or re-sends with credentials, RFC 3261 §22.2) the INVITE in a new client transaction. */
  #sendInvite(flow: Flow, ruri: string, from: string, to: string, authHeaders: string[]): void {
    const o = this.#opts;
    const branch = newBranch();
    const via = this.#ctx.via(flow, branch);
    const cseq = this.#cseq;
    const text = buildRequest({
      method: 'INVITE',
      ruri,
      via,
      from,
      to,
      callId: this.callId,
      cseq,
      contact: this.#ctx.contact(flow),
      headers: ['Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO', ...authHeaders, ...(o.headers ?? [])],
      body: o.offer,
    });
    const buildAck = (res: ParsedResponse) => buildRequest({ method: 'ACK', ruri, via, from, to: res.msg.getHeader('to') ?? to, callId: this.callId, cseq });
    const txn = this.#ctx.sendRequest(flow, 'INVITE', branch, text, buildAck);
    this.#invite = { branch, via, ruri, from, to, txn };
    txn.on('response', (res) => this.#onResponse(res));
    txn.on('timeout', () => this.#end({ cause: 'timeout', status: 408, reason: 'no final response (Timer B)' }));
    txn.on('transportError', (err) => this.#end({ cause: 'transport', status: 503, reason: err.message }));
    txn.start();
  }

  /** Answers a 401/407 to our INVITE once with the trunk's credentials; true if it did. */
  #retryWithCredentials(res: ParsedResponse): boolean {
    const creds = this.#opts.credentials;
    const inv = this.#invite;
    if (!creds || this.#authTried || !inv || !this.#flow || this.#ended) return false;
    const proxy = res.status === 407;
    const name = proxy ? 'Proxy-Authenticate' : 'WWW-Authenticate';
    // sip.js keeps only the last challenge header: read them all from the raw message.
    const challenges = res.msg.data
      .slice(0, res.msg.data.indexOf('\r\n\r\n'))
      .split('\r\n')
      .filter((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`))
      .map((l) => l.slice(name.length + 1).trim());
    const challenge = pickChallenge(challenges, creds);
    const answer = challenge ? answerChallenge(challenge, creds, { method: 'INVITE', uri: inv.ruri }) : undefined;
    if (!answer) return false;
    this.#authTried = true;
    this.#cseq++;
    this.#sendInvite(this.#flow, inv.ruri, inv.from, inv.to, [`${proxy ? 'Proxy-Authorization' : 'Authorization'}: ${answer.header}`]);
    return true;
  }

  terminate(opts: TerminateOptions = {}): void {
    if (this.#ended) return;
    if (this.#dialog) {
      this.#end({ cause: 'local', reason: opts.reason });
      this.#sendBye(this.#dialog, opts.reasonHeader);
      return;
    }
    this.#cancelPending = opts.reasonHeader ?? '';
    if (this.#state === 'early') this.#sendCancel();
    this.#end({ cause: 'local', reason: opts.reason });
  }

  #onResponse(res: ParsedResponse): void {
    const s = res.status;
    if (s < 200) {
      if (this.#cancelPending !== undefined) {
        this.#sendCancel();
        return;
      }
      if (this.#ended) return;
      if (s > 100) this.#state = 'early';
      else if (this.#state === 'calling') this.#state = 'early';
      this.safeEmit('progress', s, res.msg.reasonPhrase ?? '');
      return;
    }
    if (s >= 300) {
      if ((s === 401 || s === 407) && this.#cancelPending === undefined && this.#retryWithCredentials(res)) return;
      this.#end({ cause: 'rejected', status: s, reason: res.msg.reasonPhrase });
      return;
    }
    this.#on2xx(res);
  }

  #on2xx(res: ParsedResponse): void {
    const inv = this.#invite!;
    const flow = this.#flow!;
    const d = this.#dialog;
    if (d && d.remoteTag === res.msg.toTag) {
      if (d.lastAck) this.#ctx.sendRaw(d.flow, d.lastAck);
      return;
    }
    // A new dialog: the first 2xx, a 2xx from another fork, or a 2xx that crossed our CANCEL.
    const dialog = Dialog.asUac(res, inv.from, this.#localTag, this.#cseq, flow, inv.ruri);
    const ack = dialog.request('ACK', (b) => this.#ctx.via(flow, b), this.#ctx.contact(flow), { cseq: this.#cseq });
    dialog.lastAck = ack.text;
    this.#ctx.sendRaw(flow, ack.text);
    if (this.#ended || this.#dialog) {
      this.#sendBye(dialog, 'SIP;cause=487;text="Call terminated"');
      return;
    }
    this.#dialog = dialog;
    this.#ctx.registerDialog(dialog, this);
    this.#state = 'confirmed';
    this.safeEmit('answered', res.msg.body ?? '');
  }

  #sendCancel(): void {
    const inv = this.#invite;
    if (!inv || this.#cancelSent || !this.#flow) return;
    this.#cancelSent = true;
    const reason = this.#cancelPending;
    const text = buildRequest({
      method: 'CANCEL',
      ruri: inv.ruri,
      via: inv.via,
      from: inv.from,
      to: inv.to,
      callId: this.callId,
      cseq: this.#cseq,
      headers: reason ? [`Reason: ${reason}`] : [],
    });
    this.#ctx.sendRequest(this.#flow, 'CANCEL', inv.branch, text).start();
  }

  #sendBye(dialog: Dialog, reasonHeader?: string): void {
    sendBye(this.#ctx, dialog, reasonHeader);
  }

  onRequest(req: ParsedRequest, txn: ServerTransaction): void {
    handleInDialogRequest(this.#ctx, req, txn, () => this.#end({ cause: 'bye' }));
  }

  onAck(): void {}

  on2xxRetransmission(res: ParsedResponse): void {
    this.#on2xx(res);
  }

  #end(end: LegEnd): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#state = 'ended';
    if (this.#dialog) this.#ctx.unregisterDialog(this.#dialog);
    this.safeEmit('ended', end);
    this.removeAllListeners('progress').removeAllListeners('answered').removeAllListeners('confirmed');
  }
}
