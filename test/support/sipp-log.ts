/**
 * Reading what SIPp wrote: its -trace_stat counters and its -trace_msg log.
 */

/** Cumulative counters from SIPp's -trace_stat file at exit. */
export interface SippStats {
  created: number;
  successful: number;
  failed: number;
  retransmissions: number;
  /** Messages for calls already ended (e.g. a late retransmission). */
  deadCallMessages: number;
  /** Messages matching no call (SIPp ignores them). */
  outOfCallMessages: number;
  /** Every "(C)" column of the file, by name without the suffix. */
  counters: Record<string, number>;
}

export interface SippMessage {
  /**
   * sent / received: as on the wire. unexpected: a received message that
   * matched no scenario step (SIPp logs it as received too). dead-call: one
   * for a call already ended (also logged as received).
   */
  kind: 'sent' | 'received' | 'unexpected' | 'dead-call' | 'other';
  /**
   * Dropped by SIPp for -lost: a received one is in the log (SIPp then
   * ignored it); a sent one never left and has no text.
   */
  lost: boolean;
  transport: string;
  /**
   * As SIPp logs it: "2026-01-01 12:00:00.123456". Entries logged without
   * one (unexpected, dead-call, lost sends) take the one before.
   */
  time: string;
  /** The SIP message, lines joined with \r\n ('' for a lost send). */
  text: string;
  method?: string;
  status?: number;
  callId?: string;
  cseq?: { seq: number; method: string };
}

export function parseStats(csv: string): SippStats | null {
  const lines = csv.split('\n').filter((l) => l.trim() !== '');
  if (lines.length < 2) return null;
  const head = lines[0]!.split(';');
  const last = lines[lines.length - 1]!.split(';');
  const counters: Record<string, number> = {};
  head.forEach((h, i) => {
    const m = /^(.*)\(C\)$/.exec(h);
    const v = Number(last[i]);
    if (m && last[i] !== undefined && last[i] !== '' && Number.isFinite(v)) counters[m[1]!] = v;
  });
  const total = Number(last[head.indexOf('TotalCallCreated')]);
  return {
    created: Number.isFinite(total) ? total : 0,
    successful: counters['SuccessfulCall'] ?? 0,
    failed: counters['FailedCall'] ?? 0,
    retransmissions: counters['Retransmissions'] ?? 0,
    deadCallMessages: counters['DeadCallMsgs'] ?? 0,
    outOfCallMessages: counters['OutOfCallMsgs'] ?? 0,
    counters,
  };
}

// SIPp appends its -lost notes ("UDP message lost (recv).", "UDP message
// voluntary lost (while sending).") to the entry before, with no newline
// ahead of the next separator. Entries for unexpected and dead-call
// messages have a separator without a timestamp.
const SEPARATOR = /-{47}(?: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+))?\n/g;
const LOST_RECV = /(\w+) message (?:\(retrans\) )?lost \(recv\)\./g;
const LOST_SEND = /(\w+) message voluntary lost \(while sending\)\./g;

/** Parses SIPp's -trace_msg log: entries start with a dashed line and a timestamp. */
export function parseSippMessageLog(log: string): SippMessage[] {
  const out: SippMessage[] = [];
  // split() with a capture group alternates text and timestamps.
  const parts = log.replace(/\r\n/g, '\n').split(SEPARATOR);
  let time = '';
  for (let i = 1; i + 1 < parts.length; i += 2) {
    time = parts[i] ?? time;
    let body = parts[i + 1]!;
    const lostSends = [...body.matchAll(LOST_SEND)].map((m) => m[1]!);
    body = body.replace(LOST_SEND, '');
    const lost = body.search(LOST_RECV) >= 0;
    body = body.replace(LOST_RECV, '');
    const nl = body.indexOf('\n');
    const header = nl < 0 ? body : body.slice(0, nl);
    const rest = nl < 0 ? '' : body.slice(nl + 1);
    const transport = /(\w+) message/.exec(header)?.[1] ?? '';
    let kind: SippMessage['kind'];
    if (/^Unexpected \w+ message received/.test(header)) kind = 'unexpected';
    else if (/^Dead call/.test(header)) kind = 'dead-call';
    else if (/^\w+ message sent/.test(header)) kind = 'sent';
    else if (/^\w+ message received/.test(header)) kind = 'received';
    else kind = 'other';
    const text = rest.replace(/^\n+/, '').replace(/\n+$/, '\n').replace(/\n/g, '\r\n');
    out.push({ kind, lost, transport, time, text, ...describe(text) });
    for (const t of lostSends) out.push({ kind: 'sent', lost: true, transport: t, time, text: '' });
  }
  return out;
}

function describe(text: string): Pick<SippMessage, 'method' | 'status' | 'callId' | 'cseq'> {
  const d: Pick<SippMessage, 'method' | 'status' | 'callId' | 'cseq'> = {};
  const eol = text.indexOf('\r\n');
  const first = eol < 0 ? text : text.slice(0, eol);
  const resp = /^SIP\/2\.0 (\d{3})/.exec(first);
  if (resp) d.status = Number(resp[1]);
  else {
    const req = /^([A-Z]+) \S+ SIP\/2\.0/.exec(first);
    if (req) d.method = req[1]!;
  }
  const callId = /^(?:Call-ID|i)[ \t]*:[ \t]*(.+)$/im.exec(text);
  if (callId) d.callId = callId[1]!.trim();
  const cseq = /^CSeq[ \t]*:[ \t]*(\d+)[ \t]+([A-Za-z]+)/im.exec(text);
  if (cseq) d.cseq = { seq: Number(cseq[1]), method: cseq[2]!.toUpperCase() };
  return d;
}

