import { GatewayError } from '../../src/util/errors.js';

export type TransportErrorCode =
  /** TCP connect refused or timed out. */
  | 'GW_SIP_CONNECT_FAILED'
  /** TLS handshake refused, either way. */
  | 'GW_SIP_TLS_HANDSHAKE'
  /** A UDP datagram could not be sent (EMSGSIZE, ENETUNREACH, EPERM, EACCES...). */
  | 'GW_SIP_SEND_FAILED'
  /** A peer stopped reading: our unsent bytes to it passed the bound, so its connection was closed. */
  | 'GW_SIP_WRITE_OVERFLOW'
  /** An inbound connection refused: too many in total or from its address. */
  | 'GW_SIP_CONNECTION_LIMIT'
  /** An inbound connection closed: a message begun and not finished in time, or no message at all. */
  | 'GW_SIP_CONNECTION_TIMEOUT'
  /** A byte stream that cannot be split into SIP messages. */
  | 'GW_SIP_FRAMING';

/** A transport-level failure a caller can switch on. `flowId` names the flow it concerns, if any. */
export class TransportError extends GatewayError {
  flowId?: string;
  constructor(code: TransportErrorCode, message: string, options?: { cause?: unknown; flowId?: string }) {
    super(code, message, options);
    this.name = 'TransportError';
    if (options?.flowId !== undefined) this.flowId = options.flowId;
  }
}
