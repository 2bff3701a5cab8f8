import type { EventEmitter } from 'node:events';

export type TransportKind = 'udp' | 'tcp' | 'tls' | 'ws';

export interface Address {
  address: string;
  port: number;
}

/** Where to open a flow: TLS also needs the name to verify the peer's certificate against. */
export interface FlowDestination extends Address {
  /** TLS: the server name (SNI and certificate check); default the address. */
  servername?: string;
  /** TLS: verify the peer's certificate (default true). */
  verify?: boolean;
}

/**
 * A path messages travel on: a UDP 5-tuple, a TCP connection or a WebSocket.
 * Responses go back down the flow their request arrived on; in-dialog requests
 * to WebSocket clients must (their Contact hosts are `*.invalid`).
 */
export interface Flow {
  readonly id: string;
  readonly transport: TransportKind;
  /** Reliable transports carry no retransmissions (RFC 3261 §17). */
  readonly reliable: boolean;
  readonly local: Address;
  readonly remote: Address;
  /** Throws a TransportError-like Error if the flow is gone. */
  send(data: string): void;
}

export type TransportEvents = {
  message: [data: string, flow: Flow];
  /** A message left on `flow` (for metrics and tracing). */
  sent: [data: string, flow: Flow];
  flowClosed: [flow: Flow];
  error: [err: Error];
};

export interface SipTransport extends EventEmitter<TransportEvents> {
  readonly kind: TransportKind;
  readonly local: Address;
  /** The flow to send a request to `dest` on (reusing a connection, opening one if needed). */
  flowTo(dest: FlowDestination): Promise<Flow>;
  /** A live flow by id (connection-oriented transports), for requests to registered clients. */
  flowById(id: string): Flow | undefined;
  close(): Promise<void>;
}

/** Bound on one SIP message: larger ones are dropped (UDP) or end the connection (stream). */
export const MAX_SIP_MESSAGE = 65535;
