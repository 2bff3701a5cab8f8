import type { Dialog } from './dialog.js';
import type { DigestCredentials } from './digest.js';
import { authorizationFor, type ParsedRequest } from './message.js';
import type { StackContext } from './stack-context.js';
import type { ServerTransaction } from './transactions.js';

/**
 * Sends BYE in `dialog` (with an optional RFC 3326 Reason); failures are logged, never thrown.
 * With `credentials` (a trunk's account), a 401/407 to the BYE is answered once.
 */
export function sendBye(ctx: StackContext, dialog: Dialog, reasonHeader?: string, credentials?: DigestCredentials, authorization?: string): void {
  try {
    const headers = [...(reasonHeader ? [`Reason: ${reasonHeader}`] : []), ...(authorization ? [authorization] : [])];
    const { text, branch } = dialog.request('BYE', (b) => ctx.via(dialog.flow, b), ctx.contact(dialog.flow), { headers });
    const txn = ctx.sendRequest(dialog.flow, 'BYE', branch, text);
    if (credentials && !authorization) {
      txn.on('response', (res) => {
        if (res.status !== 401 && res.status !== 407) return;
        const answer = authorizationFor(res, credentials, { method: 'BYE', uri: dialog.remoteTarget });
        if (answer) sendBye(ctx, dialog, reasonHeader, credentials, answer);
        else ctx.log.info({ callId: dialog.callId, status: res.status }, 'BYE challenged with nothing we can answer');
      });
    }
    txn.start();
  } catch (err) {
    ctx.log.debug({ err, callId: dialog.callId }, 'BYE not sent');
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
