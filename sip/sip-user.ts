/**
 * The user part of SIP URIs we build from numbers and names that came from outside (a dialled
 * number, a caller ID from a trunk). sip.js hands us users already percent-decoded, so they can
 * hold anything, CR and LF included: they are checked before routing and encoded again when they
 * go into a URI (RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved )).
 */

/** Longer users are refused: no numbering plan needs them, and they end up in logs and headers. */
export const MAX_SIP_USER_LENGTH = 128;

// Characters that may stand unescaped in a SIP URI user: alphanum, mark, user-unreserved.
const USER_SAFE = /[A-Za-z0-9\-_.!~*'()&=+$,;?/]/;

/** Why `user` cannot be routed or written into a URI, or undefined if it can. */
export function sipUserProblem(user: string): string | undefined {
  if (user.length > MAX_SIP_USER_LENGTH) return `longer than ${MAX_SIP_USER_LENGTH} characters`;
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(user)) return 'contains control characters';
  return undefined;
}

/** Percent-encodes what RFC 3261 does not allow unescaped in a URI user ('#' becomes %23, and so on). */
export function encodeSipUser(user: string): string {
  let out = '';
  for (const ch of user) {
    if (USER_SAFE.test(ch)) {
      out += ch;
      continue;
    }
    for (const byte of Buffer.from(ch, 'utf8')) out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
