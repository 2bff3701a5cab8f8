/**
 * Every process the benchmark starts is registered here, so that any way out of the run (normal
 * end, thrown error, SIGINT/SIGTERM, the global deadline) ends it. Stoppers run first (orderly:
 * SIGTERM, wait, SIGKILL); the `exit` hook SIGKILLs whatever is still alive as a last resort.
 */
import type { ChildProcess } from 'node:child_process';

type Stopper = () => Promise<unknown>;

const processes = new Set<ChildProcess>();
const stoppers = new Set<Stopper>();
let installed = false;

function install(): void {
  if (installed) return;
  installed = true;
  process.once('exit', () => {
    for (const c of processes) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  });
}

/** Tracks a child until it exits. */
export function trackProcess(child: ChildProcess): void {
  install();
  processes.add(child);
  child.once('exit', () => processes.delete(child));
}

/** Registers an orderly stop (e.g. a SIPp peer's stop()); returns the function that unregisters it. */
export function onCleanup(stop: Stopper): () => void {
  install();
  stoppers.add(stop);
  return () => stoppers.delete(stop);
}

/** Runs every registered stopper (bounded), then SIGKILLs any tracked child left. */
export async function cleanupAll(timeoutMs = 8000): Promise<void> {
  const pending = [...stoppers];
  stoppers.clear();
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.allSettled(pending.map((s) => s())),
    new Promise((r) => {
      timer = setTimeout(r, timeoutMs);
    }),
  ]);
  clearTimeout(timer);
  for (const c of processes) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

/** SIGINT/SIGTERM and a whole-run deadline: clean up, then exit with `code`. */
export function installExitGuards(deadlineMs: number, log: (line: string) => void): () => void {
  install();
  const bail = (why: string, code: number) => {
    log(`\n${why}: stopping every child process`);
    void cleanupAll().finally(() => process.exit(code));
  };
  const onInt = () => bail('SIGINT', 130);
  const onTerm = () => bail('SIGTERM', 143);
  process.once('SIGINT', onInt);
  process.once('SIGTERM', onTerm);
  const deadline = setTimeout(() => bail(`run exceeded its ${Math.round(deadlineMs / 1000)} s bound`, 124), deadlineMs);
  deadline.unref();
  return () => {
    clearTimeout(deadline);
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  };
}
