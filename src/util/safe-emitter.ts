import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';

/**
 * An EventEmitter whose safeEmit() catches and logs listener errors, so one bad
 * listener can never stop a teardown halfway (mediasoup's EnhancedEventEmitter).
 */
export class SafeEmitter<T extends Record<keyof T, unknown[]>> extends EventEmitter<T> {
  constructor(protected readonly emitterLog?: Logger) {
    super();
    this.setMaxListeners(Infinity);
  }

  safeEmit<K extends keyof T>(event: K, ...args: T[K]): boolean {
    try {
      // EventEmitter<T>'s typings are awkward with generic keys; the signature above keeps callers typed.
      return (this.emit as unknown as (e: K, ...a: T[K]) => boolean)(event, ...args);
    } catch (err) {
      this.emitterLog?.error({ err, event: String(event) }, 'event listener threw');
      return true;
    }
  }
}

/** Collects undo functions (listeners, timers, subscriptions) so teardown can empty them all at once. */
export class Disposer {
  #fns: Array<() => void> = [];

  add(fn: () => void): void {
    this.#fns.push(fn);
  }

  timeout(fn: () => void, ms: number): NodeJS.Timeout {
    const t = setTimeout(fn, ms);
    this.add(() => clearTimeout(t));
    return t;
  }

  on<E extends EventEmitter>(emitter: E, event: string, listener: (...args: any[]) => void): void {
    emitter.on(event, listener);
    this.add(() => emitter.off(event, listener));
  }

  dispose(onError?: (err: unknown) => void): void {
    const fns = this.#fns;
    this.#fns = [];
    for (const fn of fns.reverse()) {
      try {
        fn();
      } catch (err) {
        onError?.(err);
      }
    }
  }
}
