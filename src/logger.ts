import { pino, type Logger } from 'pino';

export type { Logger };

/** JSON logs on stdout; every call gets its own child (see Call). */
export function createLogger(level: string): Logger {
  return pino({ level, base: { svc: 'sip-webrtc-gateway' } });
}
