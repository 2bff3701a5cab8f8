/** Base of every error the gateway raises on purpose: a stable `code` callers can switch on. */
export class GatewayError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GatewayError';
    this.code = code;
  }
}

/** Use of an object after its close(). */
export class InvalidStateError extends GatewayError {
  constructor(message: string) {
    super('GW_INVALID_STATE', message);
    this.name = 'InvalidStateError';
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
