import type { Logger } from 'pino';
import type { Dialog } from './dialog.js';
import type { ParsedRequest, ParsedResponse, ResponseOptions } from './message.js';
import type { ClientTransaction, ServerTransaction, SipTimers } from './transactions.js';
import type { Destination, SipTarget } from './backend.js';
import type { Flow, FlowDestination, TransportKind } from './transport/flow.js';

/** What a dialog's owner (a call leg) handles once the stack has matched a message to it. */
export interface DialogOwner {
  onRequest(req: ParsedRequest, txn: ServerTransaction): void;
  onAck(req: ParsedRequest): void;
  /** A 2xx to our INVITE arrived after its transaction ended: re-send the ACK. */
  on2xxRetransmission(res: ParsedResponse): void;
}

/** A leg tied to a connection-oriented flow ends when the flow closes. */
export interface FlowBound {
  onFlowClosed(): void;
}

/** The services the stack gives its call legs. */
export interface StackContext {
  readonly timers: SipTimers;
  readonly log: Logger;
  /** True once the stack has closed: nothing may start a transaction any more. */
  closed(): boolean;
  respond(txn: ServerTransaction, status: number, opts?: ResponseOptions): void;
  /** Starts a client transaction for `text` on `flow`. */
  sendRequest(flow: Flow, method: string, branch: string, text: string, buildAck?: (res: ParsedResponse) => string): ClientTransaction;
  /** Sends outside any transaction (ACK for a 2xx). */
  sendRaw(flow: Flow, text: string): void;
  flowTo(transport: TransportKind, dest: FlowDestination): Promise<Flow>;
  /** RFC 3263: a target's destinations in order of preference. */
  resolve(target: SipTarget): Promise<Destination[]>;
  flowById(transport: TransportKind, id: string): Flow | undefined;
  /**
   * Requests to the peer on `flow` can only go down it: a WebSocket (RFC 7118), or the flow a
   * device registered from (its Contact may be an address behind NAT).
   */
  pinned(flow: Flow): boolean;
  /** A connection the peer opened to our listener: its remote port is not where the peer listens. */
  accepted(flow: Flow): boolean;
  /** The host part for our URIs on this flow (the announced address). */
  domain(flow: Flow): string;
  via(flow: Flow, branch: string): string;
  contact(flow: Flow, user?: string): string;
  registerDialog(dialog: Dialog, owner: DialogOwner): void;
  unregisterDialog(dialog: Dialog): void;
  bindFlow(flow: Flow, leg: FlowBound): void;
  unbindFlow(flow: Flow, leg: FlowBound): void;
}
