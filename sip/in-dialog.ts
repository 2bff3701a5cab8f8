import type { Dialog } from './dialog.js';
import type { ParsedRequest } from './message.js';
import type { StackContext } from './stack-context.js';
import type { ServerTransaction } from './transactions.js';

/** Sends BYE in `dialog` (with an optional RFC 3326 Reason); failures are logged, never thrown. */
export function sendBye(ctx: StackContext, dialog: Dialog, reasonHeader?: string): void {
  try {
    const { text, branch } = dialog.request('BYE', (b) => ctx.via(dialog.flow, b), ctx.contact(dialog.flow), {
      headers: reasonHeader ? [`Reason: ${reasonHeader}`] : [],
    });
    ctx.sendRequest(dialog.flow, 'BYE', branch, text).start();
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
