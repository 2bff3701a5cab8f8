import { randomBytes } from 'node:crypto';
import { answerChallenge, canAnswer, parseChallenge, pickChallenge, type DigestCredentials, type DigestRequest } from './digest.js';

/** 401 carries WWW-Authenticate (answered in Authorization), 407 Proxy-Authenticate (in Proxy-Authorization). */
export type ChallengeKind = 'www' | 'proxy';

/** Bound on the realms answered for one request: a peer inventing a new realm per challenge cannot loop us. */
const MAX_REALMS = 4;

interface Answered {
  kind: ChallengeKind;
  /** The challenge value answered (the preferred algorithm among the realm's). */
  challenge: string;
  /** Last nonce count used with this nonce; every re-send counts up (RFC 7616 §3.4: a repeated nc is a replay). */
  nc: number;
  cnonce: string;
  /** The one retry after stale=true is used. */
  staleRetried: boolean;
}

/**
 * The UAC side of digest for one request and its re-sends (RFC 3261 §22.2, §22.3): every challenge of a
 * 401/407 whose realm the credentials may answer is answered, and the answers accumulate, so a proxy's
 * Proxy-Authorization is kept when the PBX behind it then asks for Authorization. Each (kind, realm) is
 * answered once; a second challenge for it means the credentials were refused, unless it says stale=true
 * (the nonce expired), which gets one more try with the new nonce (RFC 2617 §3.2.1, RFC 7616 §3.3).
 */
export class DigestClient {
  readonly #creds: DigestCredentials;
  readonly #answered = new Map<string, Answered>();

  constructor(creds: DigestCredentials) {
    this.#creds = creds;
  }

  /** Number of (kind, realm) answers held. */
  get size(): number {
    return this.#answered.size;
  }

  /**
   * Takes the challenge values of a 401 (`www`) or 407 (`proxy`). True when the request should be re-sent
   * with headers(); false when none can be answered, or a realm already answered is challenged again
   * (without stale=true, or after the stale retry): the request has then failed.
   */
  challenge(kind: ChallengeKind, values: readonly string[]): boolean {
    const byRealm = new Map<string, string[]>();
    for (const v of values) {
      const c = parseChallenge(v);
      if (!c || !canAnswer(c, this.#creds)) continue;
      const list = byRealm.get(c.realm);
      if (list) list.push(v);
      else byRealm.set(c.realm, [v]);
    }
    if (byRealm.size === 0) return false;
    const updates: Array<[string, Answered]> = [];
    for (const [realm, list] of byRealm) {
      const header = pickChallenge(list)!;
      const key = `${kind}|${realm}`;
      const prev = this.#answered.get(key);
      if (prev && (prev.staleRetried || !parseChallenge(header)!.stale)) return false;
      updates.push([key, { kind, challenge: header, nc: 0, cnonce: randomBytes(12).toString('hex'), staleRetried: prev !== undefined }]);
    }
    const realms = new Set([...this.#answered.keys(), ...updates.map(([k]) => k)]);
    if (realms.size > MAX_REALMS) return false;
    for (const [key, a] of updates) this.#answered.set(key, a);
    return true;
  }

  /** Authorization / Proxy-Authorization lines for the next send of the request, one per realm answered. */
  headers(req: DigestRequest): string[] {
    const lines: string[] = [];
    for (const a of this.#answered.values()) {
      a.nc++;
      const answer = answerChallenge(a.challenge, this.#creds, req, { nc: a.nc, cnonce: a.cnonce });
      if (answer) lines.push(`${a.kind === 'proxy' ? 'Proxy-Authorization' : 'Authorization'}: ${answer.header}`);
    }
    return lines;
  }
}
