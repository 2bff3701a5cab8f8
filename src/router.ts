import type { TrunkTarget } from '../sip/backend.js';
import type { DigestCredentials } from '../sip/digest.js';
import type { PlainRtpCodec } from '../webrtc/sdp.js';
import type { GatewayConfig } from './config.js';

type TrunkConfig = GatewayConfig['trunks'][number];
type RouteConfig = NonNullable<GatewayConfig['routes']>[number];

/** Everything a call needs to reach one trunk. */
export interface TrunkRoute {
  name: string;
  target: TrunkTarget;
  credentials?: DigestCredentials;
  fromUser?: string;
  fromDomain?: string;
  codecs?: readonly PlainRtpCodec[];
}

export function trunkTarget(t: TrunkConfig): TrunkTarget {
  return {
    target: { host: t.host, ...(t.port ? { port: t.port } : {}), ...(t.transport ? { transport: t.transport } : {}) },
    ...(t.outboundProxy ? { outboundProxy: t.outboundProxy } : {}),
    failoverTimeoutMs: t.failoverTimeoutMs,
    tlsVerify: t.tlsVerify,
  };
}

export function trunkCredentials(t: TrunkConfig): DigestCredentials | undefined {
  if (!t.username || (!t.password && !t.ha1)) return undefined;
  return {
    username: t.username,
    ...(t.authUsername ? { authUsername: t.authUsername } : {}),
    ...(t.password ? { password: t.password } : {}),
    ...(t.ha1 ? { ha1: t.ha1 } : {}),
    ...(t.realm ? { realm: t.realm } : {}),
  };
}

export function trunkRoute(t: TrunkConfig): TrunkRoute {
  const credentials = trunkCredentials(t);
  return {
    name: t.name,
    target: trunkTarget(t),
    ...(credentials ? { credentials } : {}),
    ...(t.fromUser ? { fromUser: t.fromUser } : {}),
    ...(t.fromDomain ? { fromDomain: t.fromDomain } : {}),
    ...(t.codecs ? { codecs: t.codecs } : {}),
  };
}

export interface RouteDecision {
  trunk: TrunkRoute;
  /** The dialled number after the rule's rewriting. */
  toUser: string;
  /** The rule that matched (its name, or its index). */
  rule: string;
}

interface CompiledRule {
  rule: string;
  to: ((user: string) => boolean) | undefined;
  from: ((user: string) => boolean) | undefined;
  trunk: TrunkRoute;
  strip: number;
  prepend: string;
}

function matcher(m: RouteConfig['to']): ((user: string) => boolean) | undefined {
  if (!m) return undefined;
  if (m.prefix !== undefined) {
    const prefix = m.prefix;
    return (user) => user.startsWith(prefix);
  }
  const re = new RegExp(m.regex!);
  return (user) => re.test(user);
}

/**
 * Outbound routing for calls from softphones: rules in config order, the first whose `to` and
 * `from` both match wins; its trunk gets the number with `strip` digits removed and `prepend` added.
 * Without rules, everything goes to the first trunk unchanged (the one-trunk setup).
 */
export class OutboundRouter {
  #rules: CompiledRule[];

  constructor(config: Pick<GatewayConfig, 'trunks' | 'routes'>) {
    const trunks = new Map(config.trunks.map((t) => [t.name, trunkRoute(t)]));
    const routes: RouteConfig[] = config.routes ?? [{ trunk: config.trunks[0]!.name, strip: 0, prepend: '' }];
    this.#rules = routes.map((r, i) => {
      const trunk = trunks.get(r.trunk);
      if (!trunk) throw new TypeError(`routes.${i}.trunk: no trunk "${r.trunk}"`);
      return { rule: r.name ?? `#${i}`, to: matcher(r.to), from: matcher(r.from), trunk, strip: r.strip, prepend: r.prepend };
    });
  }

  route(toUser: string, fromUser: string): RouteDecision | undefined {
    for (const r of this.#rules) {
      if (r.to && !r.to(toUser)) continue;
      if (r.from && !r.from(fromUser)) continue;
      // Nothing left to dial (a lone "0" under a strip-1 rule) stays with this rule: the caller
      // gets 484, rather than a later rule sending the number somewhere else unrewritten.
      return { trunk: r.trunk, toUser: r.prepend + toUser.slice(r.strip), rule: r.rule };
    }
    return undefined;
  }
}
