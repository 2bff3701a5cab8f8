import { SafeEmitter } from '../src/util/safe-emitter.js';
import type { InboundCall, LegEnd, LegEvents, LegState, TerminateOptions } from './backend.js';
import { Dialog, recordRoutes } from './dialog.js';
import { randomToken, type ParsedRequest, type ParsedResponse } from './message.js';
import { handleInDialogRequest, sendBye } from './in-dialog.js';
import type { DialogOwner, FlowBound, StackContext } from './stack-context.js';
import type { ServerTransaction } from './transactions.js';
import type { Flow } from './transport/flow.js';

/** The UAS side of a call: an INVITE we received (from a WebSocket softphone, a trunk...). */
export class InboundCallLeg extends SafeEmitter<LegEvents> implements InboundCall, DialogOwner, FlowBound {
  readonly id: string;
  readonly callId: string;
  readonly fromUser: string;
  readonly fromUri: string;
  readonly toUser: string;
  readonly requestUri: string;
  readonly offer: string;
  readonly source: InboundCall['source'];
  readonly authUser: string | undefined;
  readonly trunk: string | undefined;
  #state: LegState = 'calling';
  #ended = false;
  #localTag = randomToken(6);
  #dialog: Dialog | undefined;
  /** A BYE waiting for the ACK of our 2xx (RFC 3261 §15: no BYE before the ACK or its timeout). */
  #byePending: string | undefined;
  #ctx: StackContext;
  #txn: ServerTransaction;
  #flow: Flow;
  /** Ends with its flow: true only on a WebSocket, the one way back to a browser. */
  #boundToFlow: boolean;

  constructor(ctx: StackContext, req: ParsedRequest, txn: ServerTransaction, flow: Flow, identity: { authUser?: string; trunk?: string } = {}) {
    super(ctx.log);
    this.authUser = identity.authUser;
    this.trunk = identity.trunk;
    this.#ctx = ctx;
    this.#txn = txn;
    this.#flow = flow;
    const m = req.msg;
    this.id = `in-${randomToken(6)}`;
    this.callId = m.callId;
    this.fromUser = m.from.uri.user ?? '';
    this.fromUri = m.from.uri.toString();
    this.toUser = req.ruri.user ?? '';
    this.requestUri = req.ruri.toString();
    this.offer = m.body ?? '';
    this.source = { transport: flow.transport, address: flow.remote.address, port: flow.remote.port, flowId: flow.id };
    // A browser is reachable only down its WebSocket (RFC 7118), so the call ends with it. A SIP peer
    // over TCP/TLS may close its connection mid-dialog (RFC 3261 §18; Kamailio after 120 s idle):
    // later requests travel on new connections, so such a leg must outlive it.
    this.#boundToFlow = flow.transport === 'ws';
    if (this.#boundToFlow) ctx.bindFlow(flow, this);
    txn.on('ackTimeout', () => {
      if (this.#byePending !== undefined) return this.#flushBye();
      if (this.#state !== 'answered') return;
      this.#end({ cause: 'no-ack', status: 408, reason: 'no ACK for 200 OK' });
      this.#sendBye('SIP;cause=408;text="ACK Timeout"');
    });
    txn.on('transportError', () => this.#end({ cause: 'transport', reason: 'cannot send response' }));
  }

  get state(): LegState {
    return this.#state;
  }

  progress(status: number, reason?: string): void {
    if (this.#ended || this.#txn.hasFinalResponse) return;
    if (status <= 100 || status >= 200) throw new TypeError(`not a provisional status: ${status}`);
    // A Contact makes the early dialog usable (SIP.js drops 1xx without one).
    this.#ctx.respond(this.#txn, status, { reason, toTag: this.#localTag, headers: [...this.#recordRoute(), `Contact: ${this.#ctx.contact(this.#flow)}`] });
    this.#state = 'early';
  }

  accept(sdp: string): void {
    if (this.#ended || this.#txn.hasFinalResponse) return;
    const d = Dialog.asUas(this.#txn.request, this.#localTag, this.#flow);
    this.#dialog = d;
    this.#ctx.registerDialog(d, this);
    this.#state = 'answered';
    this.#ctx.respond(this.#txn, 200, {
      toTag: this.#localTag,
      headers: [...this.#recordRoute(), `Contact: ${this.#ctx.contact(this.#flow)}`, 'Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO'],
      body: sdp,
    });
  }

  /** RFC 3261 §12.1.1: responses that establish a dialog copy the INVITE's Record-Route, in order, so the caller's ACK and BYE follow the proxies. */
  #recordRoute(): string[] {
    return recordRoutes(this.#txn.request.msg).map((r) => `Record-Route: ${r}`);
  }

  reject(status: number, reason?: string, headers?: string[]): void {
    if (this.#ended || this.#txn.hasFinalResponse) return;
    if (status < 300 || status > 699) throw new TypeError(`not a final error status: ${status}`);
    this.#ctx.respond(this.#txn, status, { reason, toTag: this.#localTag, ...(headers ? { headers } : {}) });
    this.#end({ cause: 'local', status, reason });
  }

  terminate(opts: TerminateOptions = {}): void {
    if (this.#ended) return;
    if (!this.#txn.hasFinalResponse) {
      const status = opts.status && opts.status >= 300 ? opts.status : 480;
      this.reject(status, opts.reason);
      return;
    }
    if (this.#state === 'answered') {
      // Answered but not yet ACKed: the caller may still be applying our answer and would drop a BYE.
      this.#byePending = opts.reasonHeader ?? '';
      this.#end({ cause: 'local', reason: opts.reason });
      return;
    }
    this.#end({ cause: 'local', reason: opts.reason });
    this.#sendBye(opts.reasonHeader);
  }

  #flushBye(): void {
    const reason = this.#byePending;
    this.#byePending = undefined;
    this.#sendBye(reason || undefined);
    if (this.#dialog) this.#ctx.unregisterDialog(this.#dialog);
  }

  /** CANCEL matched our INVITE transaction (the stack has already answered the CANCEL with 200). */
  onCancel(): void {
    if (this.#ended || this.#txn.hasFinalResponse) return;
    this.#ctx.respond(this.#txn, 487, { toTag: this.#localTag });
    this.#end({ cause: 'cancel', status: 487 });
  }

  onRequest(req: ParsedRequest, txn: ServerTransaction): void {
    if (req.method === 'BYE' && this.#byePending !== undefined) {
      this.#byePending = undefined; // both hung up: theirs ends the dialog, ours is moot
      if (this.#dialog) this.#ctx.unregisterDialog(this.#dialog);
    }
    handleInDialogRequest(this.#ctx, req, txn, () => this.#end({ cause: 'bye' }));
  }

  onAck(): void {
    if (this.#byePending !== undefined) {
      this.#txn.ackReceived();
      this.#flushBye();
      return;
    }
    if (this.#state !== 'answered') return;
    this.#txn.ackReceived();
    this.#state = 'confirmed';
    this.safeEmit('confirmed');
  }

  on2xxRetransmission(_res: ParsedResponse): void {}

  onFlowClosed(): void {
    this.#end({ cause: 'transport', reason: 'connection closed' });
  }

  #sendBye(reasonHeader?: string): void {
    if (this.#dialog) sendBye(this.#ctx, this.#dialog, reasonHeader);
  }

  #end(end: LegEnd): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#state = 'ended';
    // With a BYE pending the dialog stays matched until the ACK (or its timeout) releases it.
    if (this.#dialog && this.#byePending === undefined) this.#ctx.unregisterDialog(this.#dialog);
    if (this.#boundToFlow) this.#ctx.unbindFlow(this.#flow, this);
    this.safeEmit('ended', end);
    this.removeAllListeners('progress').removeAllListeners('answered').removeAllListeners('confirmed');
  }
}
