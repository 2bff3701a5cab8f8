import { equivalentURI, Grammar, type URI } from 'sip.js/lib/core/index.js';
import type { TransportKind } from './transport/flow.js';

/** One Contact of a REGISTER, with its parameters already read by the REGISTER handler. */
export interface RegisterContact {
  /** Contact URI as sent (e.g. `sip:k7a@x1.invalid;transport=ws`), or `*`. */
  uri: string;
  /** The Contact's `expires` parameter. */
  expires?: number;
  /** The `+sip.instance` parameter as sent (e.g. `"<urn:uuid:...>"`). */
  instance?: string;
  /** The `reg-id` parameter (RFC 5626); ignored without `instance`. */
  regId?: number;
  q?: number;
}

/** Where the REGISTER arrived; requests to the binding go back down this flow. */
export interface BindingSource {
  transport: TransportKind;
  address: string;
  port: number;
  flowId: string;
}

export interface RegisterInput {
  /** The address-of-record: the To user (the domain is ours). Case-sensitive, as SIP user parts are. */
  aor: string;
  callId: string;
  cseq: number;
  /** Empty array: a query (RFC 3261 §10.2.3). */
  contacts: RegisterContact[] | '*';
  expiresHeader?: number;
  source: BindingSource;
  userAgent?: string;
}

export interface Binding {
  readonly aor: string;
  readonly uri: string;
  /** Epoch ms (of the injected clock). */
  readonly expiresAt: number;
  /** Seconds left, rounded up: what the 200's Contact `expires` carries. */
  readonly expires: number;
  readonly callId: string;
  readonly cseq: number;
  readonly instance?: string;
  readonly regId?: number;
  /** 1 when the Contact had no q. */
  readonly q: number;
  readonly source: Readonly<BindingSource>;
  readonly userAgent?: string;
  /** When this binding (this Contact URI, or this instance/reg-id) was first registered. */
  readonly registeredAt: number;
  /** Its last successful REGISTER. */
  readonly updatedAt: number;
}

export type RegisterOutcome =
  /** `bindings`: every live binding of the AOR, for the 200's Contact list. `removed`: what this request took away (un-registered, `*`, evicted, or found expired). */
  | { ok: true; bindings: Binding[]; removed: Binding[] }
  /** Nothing changed. 403 only when one request alone carries more contacts than maxContactsPerAor. */
  | { ok: false; status: 400 | 403 | 423 | 500; reason: string; minExpires?: number };

export interface LocationServiceOptions {
  /** Seconds; shorter non-zero requests get 423 (default 60). */
  minExpires?: number;
  /** Seconds; longer requests are clamped (default 3600). */
  maxExpires?: number;
  /** Seconds, when neither the Contact nor the Expires header says (default 600). */
  defaultExpires?: number;
  /** Default 10; beyond it the least recently refreshed binding is evicted. */
  maxContactsPerAor?: number;
  /** Default 10000; a REGISTER for a new AOR beyond it gets 500. */
  maxAors?: number;
  /** Epoch ms (default Date.now). */
  now?: () => number;
}

type Entry = Omit<Binding, 'expires'> & { readonly parsed: URI; readonly key?: string };

interface Checked {
  uri: string;
  parsed: URI;
  expires: number;
  q: number;
  instance?: string;
  regId?: number;
  key?: string;
}

type Failure = Extract<RegisterOutcome, { ok: false }>;

const fail = (status: Failure['status'], reason: string, minExpires?: number): Failure =>
  minExpires === undefined ? { ok: false, status, reason } : { ok: false, status, reason, minExpires };

const isDelta = (n: number | undefined): boolean => n === undefined || (Number.isSafeInteger(n) && n >= 0);

/** URN comparison is case-insensitive for UUIDs; the quotes and angle brackets are syntax, not identity. */
const normalizeInstance = (s: string): string => s.trim().replace(/^"(.*)"$/, '$1').replace(/^<(.*)>$/, '$1').toLowerCase();

/**
 * The registrar's bindings (RFC 3261 §10.3, RFC 5626 §6), as pure state driven by the REGISTER
 * handler, which does authentication and the responses. No timers: the caller runs expire().
 */
export class LocationService {
  readonly #min: number;
  readonly #max: number;
  readonly #default: number;
  readonly #maxContacts: number;
  readonly #maxAors: number;
  readonly #now: () => number;
  readonly #aors = new Map<string, Entry[]>();
  /** Bindings per stream flow, so a closed WebSocket costs no scan. */
  readonly #flows = new Map<string, Set<Entry>>();

  constructor(opts: LocationServiceOptions = {}) {
    this.#min = opts.minExpires ?? 60;
    this.#max = opts.maxExpires ?? 3600;
    this.#default = opts.defaultExpires ?? 600;
    this.#maxContacts = opts.maxContactsPerAor ?? 10;
    this.#maxAors = opts.maxAors ?? 10000;
    this.#now = opts.now ?? Date.now;
    const positive = [this.#min, this.#max, this.#default, this.#maxContacts, this.#maxAors];
    if (!positive.every((n) => Number.isSafeInteger(n) && n > 0)) throw new TypeError('LocationService limits must be positive integers');
    if (this.#min > this.#max || this.#default < this.#min || this.#default > this.#max) {
      throw new TypeError('LocationService needs minExpires <= defaultExpires <= maxExpires');
    }
  }

  register(input: RegisterInput): RegisterOutcome {
    const { aor, callId, cseq } = input;
    if (!aor || !callId || !Number.isSafeInteger(cseq) || cseq < 0) throw new TypeError('register() needs an aor, a Call-ID and a CSeq number');
    const now = this.#now();
    const old = this.#aors.get(aor) ?? [];
    const live = old.filter((e) => e.expiresAt > now);
    if (!isDelta(input.expiresHeader)) return fail(400, 'malformed Expires');

    let contacts = input.contacts;
    if (Array.isArray(contacts) && contacts.some((c) => c.uri.trim() === '*')) {
      if (contacts.length > 1) return fail(400, "'*' must be the only Contact");
      contacts = '*';
    }
    if (contacts === '*') {
      if (input.expiresHeader !== 0) return fail(400, "Contact '*' requires Expires: 0");
      // §10.3 step 6: bindings with another Call-ID go; ours only if this CSeq is newer.
      if (live.some((e) => e.callId === callId && cseq <= e.cseq)) return fail(500, 'out-of-order CSeq');
      this.#commit(aor, old, []);
      return { ok: true, bindings: [], removed: old.map((e) => this.#view(e, now)) };
    }
    if (contacts.length === 0) return { ok: true, bindings: this.#sorted(live, now), removed: [] };

    // Step 5 and the checks before it: the whole request fails before anything changes.
    const checked: Checked[] = [];
    for (const c of contacts) {
      const parsed = Grammar.URIParse(c.uri.trim());
      if (!parsed) return fail(400, `malformed Contact URI ${c.uri}`);
      if (!isDelta(c.expires)) return fail(400, 'malformed Contact expires');
      if (c.q !== undefined && !(c.q >= 0 && c.q <= 1)) return fail(400, 'Contact q out of range');
      const requested = c.expires ?? input.expiresHeader ?? this.#default;
      if (requested !== 0 && requested < this.#min) return fail(423, 'Interval Too Brief', this.#min);
      // RFC 5626 §6: reg-id without an instance is ignored.
      const instance = c.instance?.trim() ? c.instance : undefined;
      const regId = instance !== undefined ? c.regId : undefined;
      if (regId !== undefined && !(Number.isSafeInteger(regId) && regId > 0)) return fail(400, 'malformed reg-id');
      checked.push({
        uri: c.uri.trim(),
        parsed,
        expires: Math.min(requested, this.#max),
        q: c.q ?? 1,
        ...(instance !== undefined && { instance }),
        ...(regId !== undefined && { regId, key: `${normalizeInstance(instance!)} ${regId}` }),
      });
    }
    // RFC 5626 §6: an outbound registration carries exactly one Contact.
    if (checked.length > 1 && checked.some((c) => c.key !== undefined)) return fail(400, 'reg-id with more than one Contact');

    // Step 7, on a staged copy so a failure leaves the store untouched.
    const staged = [...live];
    const original = new Set(live);
    const touched = new Set<Entry>();
    const superseded = new Set<Entry>();
    for (const c of checked) {
      const i = staged.findIndex((e) => (c.key !== undefined ? e.key === c.key : e.key === undefined && equivalentURI(e.parsed, c.parsed)));
      const existing = i >= 0 ? staged[i] : undefined;
      if (existing && original.has(existing) && existing.callId === callId && cseq <= existing.cseq) return fail(500, 'out-of-order CSeq');
      if (c.expires === 0) {
        if (i >= 0) staged.splice(i, 1);
        continue;
      }
      const entry: Entry = {
        aor,
        uri: c.uri,
        parsed: c.parsed,
        expiresAt: now + c.expires * 1000,
        callId,
        cseq,
        q: c.q,
        source: Object.freeze({ ...input.source }),
        registeredAt: existing?.registeredAt ?? now,
        updatedAt: now,
        ...(c.instance !== undefined && { instance: c.instance }),
        ...(c.regId !== undefined && { regId: c.regId }),
        ...(c.key !== undefined && { key: c.key }),
        ...(input.userAgent !== undefined && { userAgent: input.userAgent }),
      };
      if (existing) superseded.add(existing);
      if (i >= 0) staged[i] = entry;
      else staged.push(entry);
      touched.add(entry);
    }

    // Over the limit: evict the binding refreshed longest ago (most likely a dead tab or phone),
    // never one this request just wrote.
    while (staged.length > this.#maxContacts) {
      let victim = -1;
      staged.forEach((e, i) => {
        if (!touched.has(e) && (victim < 0 || e.updatedAt < staged[victim]!.updatedAt)) victim = i;
      });
      if (victim < 0) return fail(403, `more than ${this.#maxContacts} contacts`);
      staged.splice(victim, 1);
    }
    if (!this.#aors.has(aor) && staged.length > 0 && this.#aors.size >= this.#maxAors) return fail(500, 'registrar full');

    this.#commit(aor, old, staged);
    const removed = old.filter((e) => !staged.includes(e) && !superseded.has(e));
    return { ok: true, bindings: this.#sorted(staged, now), removed: removed.map((e) => this.#view(e, now)) };
  }

  /** Live bindings of `aor`, highest q first, then most recently refreshed. */
  lookup(aor: string): Binding[] {
    const now = this.#now();
    return this.#sorted((this.#aors.get(aor) ?? []).filter((e) => e.expiresAt > now), now);
  }

  /** Drops every binding learned over this flow (a WebSocket/TCP connection closed). Returns the dropped ones. */
  dropFlow(flowId: string): Binding[] {
    const set = this.#flows.get(flowId);
    if (!set) return [];
    const now = this.#now();
    const dropped = [...set];
    for (const e of dropped) {
      const list = this.#aors.get(e.aor) ?? [];
      this.#commit(e.aor, list, list.filter((x) => x !== e));
    }
    return dropped.map((e) => this.#view(e, now));
  }

  /** Removes expired bindings and returns them (the caller runs it from one timer). */
  expire(): Binding[] {
    const now = this.#now();
    const expired: Binding[] = [];
    for (const [aor, list] of [...this.#aors]) {
      const keep = list.filter((e) => e.expiresAt > now);
      if (keep.length === list.length) continue;
      for (const e of list) if (e.expiresAt <= now) expired.push(this.#view(e, now));
      this.#commit(aor, list, keep);
    }
    return expired;
  }

  /** Every live binding, grouped by AOR. */
  all(): Binding[] {
    return [...this.#aors.keys()].flatMap((aor) => this.lookup(aor));
  }

  /** Live bindings (expired ones no longer count, even before expire()). */
  get size(): number {
    const now = this.#now();
    let n = 0;
    for (const list of this.#aors.values()) for (const e of list) if (e.expiresAt > now) n++;
    return n;
  }

  /** Replaces `aor`'s list `old` with `next`, keeping the flow index in step. */
  #commit(aor: string, old: readonly Entry[], next: Entry[]): void {
    const keep = new Set(next);
    const had = new Set(old);
    for (const e of old) if (!keep.has(e)) this.#unindex(e);
    for (const e of next) if (!had.has(e) && e.source.transport !== 'udp') {
      let set = this.#flows.get(e.source.flowId);
      if (!set) this.#flows.set(e.source.flowId, (set = new Set()));
      set.add(e);
    }
    if (next.length > 0) this.#aors.set(aor, next);
    else this.#aors.delete(aor);
  }

  #unindex(e: Entry): void {
    const set = this.#flows.get(e.source.flowId);
    if (!set) return;
    set.delete(e);
    if (set.size === 0) this.#flows.delete(e.source.flowId);
  }

  #sorted(list: readonly Entry[], now: number): Binding[] {
    return [...list].sort((a, b) => b.q - a.q || b.updatedAt - a.updatedAt || b.registeredAt - a.registeredAt).map((e) => this.#view(e, now));
  }

  #view(e: Entry, now: number): Binding {
    const { parsed: _parsed, key: _key, ...rest } = e;
    return { ...rest, expires: Math.max(0, Math.ceil((e.expiresAt - now) / 1000)) };
  }
}
