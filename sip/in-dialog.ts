import { isIP } from 'node:net';
import { GatewayError, errorMessage } from '../src/util/errors.js';
import type { PeerTransport } from './backend.js';
import type { Dialog } from './dialog.js';
import type { DigestCredentials } from './digest.js';
import { DigestClient } from './digest-client.js';
import { challengesOf, parseUri, type ParsedRequest } from './message.js';
import type { StackContext } from './stack-context.js';
import type { ServerTransaction } from './transactions.js';
import type { Flow } from './transport/flow.js';

/** Where the next hop of a dialog is, as its URI says: the transport only when the URI names one. */
interface NextHop {
  host: string;
  port: number | undefined;
  transport: PeerTransport | undefined;
}

function nextHopOf(dialog: Dialog): NextHop {
  const text = dialog.nextHop();
  const uri = parseUri(text);
  if (!uri?.host) throw new GatewayError('GW_SIP_DIALOG_UNREACHABLE', `next hop ${text} is not a SIP URI`);
  const param = uri.getParam('transport')?.toLowerCase();
  let transport: PeerTransport | undefined;
  if (uri.scheme === 'sips') transport = 'tls';
  else if (param === 'udp' || param === 'tcp' || param === 'tls') transport = param;
  else if (param !== undefined && param !== null) throw new GatewayError('GW_SIP_DIALOG_UNREACHABLE', `next hop ${text}: transport ${param} cannot be reached from here`);
  return { host: uri.host.replace(/^\[(.*)\]$/, '$1'), port: uri.port, transport };
}

/**
 * Whether `flow` (open) reaches `dest`. A URI without a transport parameter keeps the dialog's
 * transport while its connection is there, as before the connection closed. A connection the peer
 * opened to us came from an ephemeral port: it reaches the peer's address, whatever port it listens on.
 */
function leadsTo(ctx: StackContext, flow: Flow, dest: { address: string; port: number; transport: PeerTransport | undefined }): boolean {
  if (flow.remote.address !== dest.address) return false;
  if (dest.transport !== undefined && flow.transport !== dest.transport) return false;
  return ctx.accepted(flow) || flow.remote.port === dest.port;
}

function isOpen(ctx: StackContext, flow: Flow): boolean {
  return ctx.flowById(flow.transport, flow.id)?.id === flow.id;
}

const defaultPort = (t: string | undefined) => (t === 'tls' ? 5061 : 5060);

/** RFC 1918, shared (RFC 6598), link-local and unique-local addresses: reachable only inside some private network. */
export function isPrivateAddress(address: string): boolean {
  if (isIP(address) === 4) {
    const [a, b] = address.split('.').map(Number) as [number, number];
    return a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 100 && b >= 64 && b <= 127) || (a === 169 && b === 254);
  }
  return isIP(address) === 6 && /^(f[cd]|fe[89ab])/i.test(address);
}

/**
 * A peer behind NAT that says so without meaning to: no proxy on the path (no route set), a
 * Contact naming a private address, and its messages arriving from an address that is not
 * private. Its Contact cannot be reached from here; where it sends from can (what Kamailio's
 * fix_nated_contact and Asterisk's rewrite_contact do).
 */
function behindNat(dialog: Dialog, flow: Flow, hop: NextHop): boolean {
  return dialog.routeSet.length === 0 && isPrivateAddress(hop.host) && hop.host !== flow.remote.address && !isPrivateAddress(flow.remote.address);
}

/** The dialog's flow if it can carry the next request without a lookup or a connection; else undefined. */
function flowAtHand(ctx: StackContext, dialog: Dialog): Flow | undefined {
  const flow = dialog.flow;
  if (!isOpen(ctx, flow)) return undefined;
  if (ctx.pinned(flow)) return flow;
  const hop = nextHopOf(dialog);
  if (behindNat(dialog, flow, hop)) return flow;
  if (!isIP(hop.host)) return undefined;
  return leadsTo(ctx, flow, { address: hop.host, port: hop.port ?? defaultPort(hop.transport ?? flow.transport), transport: hop.transport }) ? flow : undefined;
}

/**
 * The flow for the dialog's next request (RFC 3261 §12.2.1.1, §8.1.2, §18.1.1, RFC 3263 §4):
 * its own flow when that is the only way to the peer (a WebSocket, a registered device's flow),
 * or while it is open and leads to the next hop (the first route, else the remote target);
 * otherwise a flow to the next hop's first reachable destination, opened if need be, which
 * becomes the dialog's flow. `avoid`: a flow that just failed to send. Rejects when there is no way.
 */
export async function dialogFlow(ctx: StackContext, dialog: Dialog, avoid?: Flow): Promise<Flow> {
  if (!avoid) {
    const ready = flowAtHand(ctx, dialog);
    if (ready) return ready;
  }
  const current = dialog.flow;
  const usable = current !== avoid && isOpen(ctx, current);
  if (ctx.pinned(current)) {
    if (usable) return current;
    throw new GatewayError('GW_SIP_DIALOG_UNREACHABLE', `the ${current.transport} flow to the peer (${current.id}) is closed`);
  }
  const hop = nextHopOf(dialog);
  const dests = await ctx.resolve({ host: hop.host, ...(hop.port !== undefined ? { port: hop.port } : {}), ...(hop.transport ? { transport: hop.transport } : {}) });
  if (usable && dests.some((d) => leadsTo(ctx, current, { ...d, transport: hop.transport }))) return current;
  const failures: string[] = [];
  for (const d of dests) {
    if (ctx.closed()) break;
    try {
      // TLS: the certificate is checked against the URI's host (RFC 5922).
      const flow = await ctx.flowTo(d.transport, { address: d.address, port: d.port, servername: d.hostname });
      if (flow === avoid) continue;
      dialog.flow = flow;
      return flow;
    } catch (err) {
      failures.push(`${d.transport}:${d.address}:${d.port}: ${errorMessage(err)}`);
    }
  }
  throw new GatewayError('GW_SIP_DIALOG_UNREACHABLE', `cannot reach ${dialog.nextHop()}${failures.length ? ` (${failures.join('; ')})` : ctx.closed() ? ' (SIP stack closed)' : ' (no address)'}`);
}

/**
 * Sends the ACK for a 2xx (RFC 3261 §13.2.2.4) where the dialog's requests go (§12.2.1.1), like
 * BYE: at once on the dialog's flow when it leads to the next hop, else after a lookup. Keeps it in
 * `dialog.lastAck` for the 2xx's retransmissions. Never throws; failures are logged.
 */
export function sendAck(ctx: StackContext, dialog: Dialog, cseq: number, headers: readonly string[]): void {
  const send = (flow: Flow) => {
    const ack = dialog.request('ACK', (b) => ctx.via(flow, b), ctx.contact(flow), { cseq, headers: [...headers] });
    dialog.lastAck = ack.text;
    ctx.sendRaw(flow, ack.text);
  };
  const failed = (err: unknown) => ctx.log.info({ callId: dialog.callId, err: errorMessage(err) }, 'ACK not sent');
  try {
    const ready = flowAtHand(ctx, dialog);
    if (ready) return send(ready);
  } catch (err) {
    return failed(err);
  }
  dialogFlow(ctx, dialog).then(send, failed);
}

/**
 * Sends BYE in `dialog` (with an optional RFC 3326 Reason) on the flow dialogFlow() picks, at once
 * when the dialog's flow will do, else once a flow is found. Never throws; failures are logged.
 * With `credentials` (a trunk's account), a 401/407 to the BYE is answered as an INVITE's is
 * (DigestClient: every realm we may answer, the answers kept across re-sends, once per realm plus
 * one stale=true retry), each re-send a new transaction with a higher CSeq.
 */
export function sendBye(ctx: StackContext, dialog: Dialog, reasonHeader?: string, credentials?: DigestCredentials): void {
  sendByeRequest({ ctx, dialog, reasonHeader, digest: credentials ? new DigestClient(credentials) : undefined, auth: [] });
}

function sendByeRequest(bye: Bye): void {
  const { ctx, dialog } = bye;
  let ready: Flow | undefined;
  try {
    ready = flowAtHand(ctx, dialog);
  } catch (err) {
    return byeNotSent(bye, err);
  }
  // Sent synchronously when possible: a call ended during shutdown still gets its BYE out before the stack closes.
  if (ready) byeOn(bye, ready, true);
  else dialogFlow(ctx, dialog).then((flow) => byeOn(bye, flow, false), (err: unknown) => byeNotSent(bye, err));
}

interface Bye {
  ctx: StackContext;
  dialog: Dialog;
  reasonHeader: string | undefined;
  /** Answers challenges with the trunk's account; undefined: none to give. */
  digest: DigestClient | undefined;
  /** Authorization / Proxy-Authorization lines for this send. */
  auth: string[];
}

function byeNotSent(bye: Bye, err: unknown): void {
  bye.ctx.log.info({ callId: bye.dialog.callId, err: errorMessage(err) }, 'BYE not sent');
}

/** `retry`: a send failure on this (reused) flow tries once more on a fresh one (the peer may have just closed it). */
function byeOn(bye: Bye, flow: Flow, retry: boolean): void {
  const { ctx, dialog, reasonHeader, digest, auth } = bye;
  if (ctx.closed()) return byeNotSent(bye, new Error('SIP stack closed'));
  try {
    const headers = [...(reasonHeader ? [`Reason: ${reasonHeader}`] : []), ...auth];
    const { text, branch, ruri } = dialog.request('BYE', (b) => ctx.via(flow, b), ctx.contact(flow), { headers });
    const txn = ctx.sendRequest(flow, 'BYE', branch, text);
    txn.on('transportError', (err) => {
      if (!retry) return byeNotSent(bye, err);
      ctx.log.debug({ callId: dialog.callId, flow: flow.id, err: err.message }, 'BYE failed on the dialog flow, trying a new one');
      dialogFlow(ctx, dialog, flow).then((next) => byeOn(bye, next, false), (e: unknown) => byeNotSent(bye, e));
    });
    txn.on('timeout', () => ctx.log.info({ callId: dialog.callId, flow: flow.id }, 'no response to BYE'));
    if (digest) {
      txn.on('response', (res) => {
        if (res.status !== 401 && res.status !== 407) return;
        const { kind, values } = challengesOf(res);
        if (digest.challenge(kind, values)) sendByeRequest({ ...bye, auth: digest.headers({ method: 'BYE', uri: ruri }) });
        else ctx.log.info({ callId: dialog.callId, status: res.status }, 'BYE challenged again, or with nothing we can answer');
      });
    }
    txn.start();
  } catch (err) {
    byeNotSent(bye, err);
  }
}

/** What both leg kinds do with requests inside an established dialog. */
export function handleInDialogRequest(ctx: StackContext, req: ParsedRequest, txn: ServerTransaction, onBye: () => void): void {
  switch (req.method) {
    case 'BYE':
      ctx.respond(txn, 200);
      onBye();
      return;
    case 'OPTIONS':
    case 'INFO':
      ctx.respond(txn, 200);
      return;
    case 'INVITE':
      // Session changes (hold, codec change) are not negotiated yet: refuse, the session stays as it is.
      ctx.respond(txn, 488, { reason: 'Not Acceptable Here' });
      return;
    default:
      ctx.respond(txn, 501, { headers: ['Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO'] });
  }
}
