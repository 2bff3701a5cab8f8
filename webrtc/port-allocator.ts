import dgram from 'node:dgram';
import { GatewayError } from '../src/util/errors.js';

export type PortKind = 'rtp' | 'rtcp' | 'webrtc';

/**
 * `allocated`: bound (or reserved for werift), no packet yet. `active`: packets seen.
 * `releasing`: its socket is closing. A port is in exactly one of these states or free:
 * there is no view in which a taken port looks absent.
 */
export type PortState = 'allocated' | 'active' | 'releasing';

export interface PortOwner {
  callId: string;
  leg: string;
}

export interface PortRecord {
  port: number;
  kind: PortKind;
  owner: PortOwner;
  state: PortState;
  allocatedAt: number;
  lastPacketAt: number | undefined;
  packets: number;
  bytes: number;
}

export interface PortAllocatorOptions {
  /** Address the sockets bind to. */
  host: string;
  range: readonly [number, number];
  /** Candidates tried per allocation before giving up (bounded work even when the range is crowded). */
  maxAttempts?: number;
}

/** Ports of one allocation; release() closes every socket and frees every port, once. */
export class PortLease {
  #released: Promise<void> | undefined;

  constructor(
    private readonly allocator: PortAllocator,
    public records: readonly PortRecord[],
    /** Bound sockets, in the order of `records` (empty for reservations). */
    readonly sockets: readonly dgram.Socket[],
  ) {}

  get ports(): number[] {
    return this.records.map((r) => r.port);
  }

  /** Counts a packet on the i-th port; the first one turns it `active`. */
  touch(i: number, bytes: number): void {
    const r = this.records[i];
    if (!r) return;
    if (r.state === 'allocated') r.state = 'active';
    r.packets++;
    r.bytes += bytes;
    r.lastPacketAt = Date.now();
  }

  get released(): boolean {
    return this.#released !== undefined;
  }

  /** For reservations (no sockets): gives back every port but `port` (the one the library bound). */
  keepOnly(port: number): void {
    if (this.sockets.length > 0 || this.#released) throw new TypeError('keepOnly() is for unbound, unreleased reservations');
    const keep = this.records.filter((r) => r.port === port);
    if (keep.length === 0) throw new TypeError(`port ${port} is not in this lease`);
    this.allocator.forget(this.records.filter((r) => r.port !== port));
    this.records = keep;
  }

  release(): Promise<void> {
    this.#released ??= this.allocator.releaseLease(this);
    return this.#released;
  }
}

/**
 * Hands out UDP ports from a configured range, all-or-nothing: an allocation that cannot
 * get every port it needs closes what it bound and frees every port before it fails.
 */
export class PortAllocator {
  readonly host: string;
  readonly min: number;
  readonly max: number;
  #maxAttempts: number;
  #records = new Map<number, PortRecord>();
  #leases = new Set<PortLease>();
  #cursor: number;

  constructor(opts: PortAllocatorOptions) {
    const [min, max] = opts.range;
    if (!Number.isInteger(min) || !Number.isInteger(max) || min < 1 || max > 65535 || min > max) {
      throw new TypeError(`invalid port range [${min}, ${max}]`);
    }
    this.host = opts.host;
    this.min = min;
    this.max = max;
    this.#maxAttempts = opts.maxAttempts ?? 256;
    // A random start: two processes sharing a range (or a restart while old sockets linger) do not collide in lockstep.
    this.#cursor = min + Math.floor(Math.random() * (max - min + 1));
  }

  get total(): number {
    return this.max - this.min + 1;
  }

  get inUse(): number {
    return this.#records.size;
  }

  get free(): number {
    return this.total - this.#records.size;
  }

  snapshot(): PortRecord[] {
    return [...this.#records.values()].map((r) => ({ ...r, owner: { ...r.owner } }));
  }

  /**
   * Binds `kinds.length` consecutive ports (the first even when `evenStart`, as RTP/RTCP pairs
   * want) and returns them as one lease. With `bind: false` the ports are checked free, then
   * reserved for a library that binds them itself (werift).
   */
  async allocate(owner: PortOwner, kinds: readonly PortKind[], opts: { bind: boolean; evenStart?: boolean }): Promise<PortLease> {
    const n = kinds.length;
    if (n < 1 || n > this.total) throw new TypeError(`cannot allocate ${n} ports from a range of ${this.total}`);
    let lastError: unknown;
    for (const start of this.#candidates(n, opts.evenStart ?? false)) {
      const records: PortRecord[] = [];
      const sockets: dgram.Socket[] = [];
      try {
        for (let i = 0; i < n; i++) {
          const port = start + i;
          // Claim the number before the await so a concurrent allocation cannot take it.
          const record: PortRecord = { port, kind: kinds[i]!, owner: { ...owner }, state: 'allocated', allocatedAt: Date.now(), lastPacketAt: undefined, packets: 0, bytes: 0 };
          this.#records.set(port, record);
          records.push(record);
          const socket = await bindUdp(this.host, port);
          if (opts.bind) sockets.push(socket);
          else await closeUdp(socket);
        }
        const lease = new PortLease(this, records, sockets);
        this.#leases.add(lease);
        return lease;
      } catch (err) {
        lastError = err;
        await Promise.allSettled(sockets.map(closeUdp));
        for (const r of records) this.#records.delete(r.port);
      }
    }
    throw new GatewayError('GW_PORTS_EXHAUSTED', `no ${n} free port(s) in [${this.min}, ${this.max}]${lastError ? `: ${(lastError as Error).message}` : ''}`, {
      cause: lastError,
    });
  }

  /** Starting ports to try: free runs of `n`, round-robin from a cursor so freed ports rest a while. */
  *#candidates(n: number, even: boolean): Generator<number> {
    let tried = 0;
    const span = this.total;
    const origin = this.#cursor - this.min;
    for (let step = 0; step < span && tried < this.#maxAttempts; step++) {
      const start = this.min + ((origin + step) % span);
      if (even && start % 2 !== 0) continue;
      if (start + n - 1 > this.max) continue;
      let taken = false;
      for (let i = 0; i < n; i++) if (this.#records.has(start + i)) taken = true;
      if (taken) continue;
      tried++;
      this.#cursor = start + n > this.max ? this.min : start + n;
      yield start;
    }
  }

  /** Called by PortLease.keepOnly(): the ports were reserved, never bound. */
  forget(records: readonly PortRecord[]): void {
    for (const r of records) if (this.#records.get(r.port) === r) this.#records.delete(r.port);
  }

  /** Called by PortLease.release(). */
  async releaseLease(lease: PortLease): Promise<void> {
    for (const r of lease.records) if (this.#records.get(r.port) === r) r.state = 'releasing';
    await Promise.allSettled(lease.sockets.map(closeUdp));
    for (const r of lease.records) if (this.#records.get(r.port) === r) this.#records.delete(r.port);
    this.#leases.delete(lease);
  }

  /**
   * Releases every lease whose owner `isLive` no longer recognises, once older than `minAgeMs`:
   * an allocation nobody owns must not hold a port. Returns the ports reclaimed.
   */
  async reclaimOrphans(isLive: (owner: PortOwner) => boolean, minAgeMs: number, now = Date.now()): Promise<number[]> {
    const orphans = [...this.#leases].filter((l) => !l.released && !isLive(l.records[0]!.owner) && now - l.records[0]!.allocatedAt >= minAgeMs);
    await Promise.allSettled(orphans.map((l) => l.release()));
    return orphans.flatMap((l) => l.ports);
  }
}

function bindUdp(host: string, port: number): Promise<dgram.Socket> {
  const socket = dgram.createSocket({ type: host.includes(':') ? 'udp6' : 'udp4' });
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => {
      socket.close();
      reject(err);
    };
    socket.once('error', onError);
    socket.bind(port, host, () => {
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

function closeUdp(socket: dgram.Socket): Promise<void> {
  return new Promise((resolve) => {
    try {
      socket.close(() => resolve());
    } catch {
      resolve(); // already closed
    }
  });
}
