/** Small helpers for the page's modules. */

export class InvalidStateError extends Error {
  override readonly name = 'InvalidStateError';
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));
