/**
 * Ports for SIPp on 127.0.0.1: free ones picked by binding them, and a check,
 * from /proc, that a SIPp process has bound one.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { readFile, readdir, readlink } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';

function bindUdp(port: number): Promise<UdpSocket | null> {
  return new Promise((res) => {
    const s = createSocket({ type: 'udp4', reuseAddr: false });
    s.once('error', () => {
      s.close();
      res(null);
    });
    s.bind({ port, address: '127.0.0.1', exclusive: true }, () => {
      s.removeAllListeners('error');
      res(s);
    });
  });
}

function listenTcp(port: number): Promise<Server | null> {
  return new Promise((res) => {
    const s = createServer();
    s.once('error', () => res(null));
    s.listen({ port, host: '127.0.0.1', exclusive: true }, () => {
      s.removeAllListeners('error');
      res(s);
    });
  });
}

export interface Ports {
  sip: number;
  media: number;
}

/**
 * Free ports for SIP and media, found by binding them and letting go just
 * before SIPp starts (a race another process can win: startSipp retries
 * once when SIPp then fails to bind). Media needs mediaPort and
 * mediaPort + 2 (SIPp's audio and video echo sockets); mediaPort is even.
 */
export async function pickPorts(transport: 'udp' | 'tcp'): Promise<Ports> {
  const held: Array<UdpSocket | Server> = [];
  try {
    let sip = 0;
    for (let i = 0; i < 20 && sip === 0; i++) {
      const u = await bindUdp(0);
      if (!u) continue;
      held.push(u);
      const p = u.address().port;
      if (transport === 'tcp') {
        const t = await listenTcp(p);
        if (!t) continue;
        held.push(t);
      }
      sip = p;
    }
    let media = 0;
    for (let i = 0; i < 20 && media === 0; i++) {
      const u = await bindUdp(0);
      if (!u) continue;
      held.push(u);
      let p = u.address().port;
      if (p % 2 === 1) {
        const even = await bindUdp(p + 1);
        if (!even) continue;
        held.push(even);
        p += 1;
      }
      const video = p + 2 <= 65535 ? await bindUdp(p + 2) : null;
      if (!video) continue;
      held.push(video);
      media = p;
    }
    if (sip === 0 || media === 0) throw new Error('no free ports on 127.0.0.1 for SIPp');
    return { sip, media };
  } finally {
    await Promise.all(
      held.map(
        (h) =>
          new Promise<void>((res) => {
            if ('send' in h) h.close(() => res());
            else h.close(() => res());
          }),
      ),
    );
  }
}

/** Socket inodes of `pid` bound to 127.0.0.1:port (TCP: listening), from /proc. */
export async function boundBy(pid: number, proto: 'udp' | 'tcp', port: number): Promise<boolean> {
  const table = await readFile(`/proc/net/${proto}`, 'utf8');
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const inodes = new Set<string>();
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[1] !== local) continue;
    if (proto === 'tcp' && f[3] !== '0A') continue;
    if (f[9]) inodes.add(f[9]);
  }
  if (inodes.size === 0) return false;
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m && inodes.has(m[1]!)) return true;
  }
  return false;
}

