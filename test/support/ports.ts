import dgram from 'node:dgram';

/** Binds a UDP socket on 127.0.0.1 (port 0: any). */
export function bindUdp(port: number): Promise<dgram.Socket> {
  const s = dgram.createSocket('udp4');
  return new Promise((resolve, reject) => {
    s.once('error', (err) => {
      s.close();
      reject(err);
    });
    s.bind(port, '127.0.0.1', () => resolve(s));
  });
}

export function closeUdp(s: dgram.Socket): Promise<void> {
  return new Promise((r) => s.close(() => r()));
}

/** An even port p with p..p+n-1 all free on 127.0.0.1 right now (bounded attempts). */
export async function freeUdpRun(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const probe = await bindUdp(0);
    const p = probe.address().port;
    await closeUdp(probe);
    const base = p % 2 === 0 ? p : p + 1;
    if (base + n - 1 > 65535) continue;
    const held: dgram.Socket[] = [];
    try {
      for (let i = 0; i < n; i++) held.push(await bindUdp(base + i));
      return base;
    } catch {
      // one was taken: try elsewhere
    } finally {
      await Promise.all(held.map(closeUdp));
    }
  }
  throw new Error(`no run of ${n} free UDP ports found`);
}

/** Resolves when every port in [min, max] can be bound on 127.0.0.1, i.e. nothing holds them. */
export async function assertRangeFree(min: number, max: number): Promise<void> {
  const held: dgram.Socket[] = [];
  try {
    for (let p = min; p <= max; p++) held.push(await bindUdp(p));
  } finally {
    await Promise.all(held.map(closeUdp));
  }
}
