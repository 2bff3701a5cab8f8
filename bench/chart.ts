/**
 * The step-1 chart, hand-written SVG: gateway CPU per call (% of one core, left axis) and
 * round-trip loss (%, right axis) against concurrent calls, with the reference systems' CPU per
 * call and the 1 % loss limit as dashed lines.
 */
import type { MediaStepResult } from './media-step.js';

export interface Reference {
  label: string;
  cpuPercentPerCall: number;
  color: string;
}

const W = 760;
const H = 420;
const M = { left: 70, right: 70, top: 50, bottom: 60 };

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const fmt = (v: number) => String(Number(v.toFixed(Math.abs(v) >= 10 ? 0 : Math.abs(v) >= 1 ? 1 : 2)));

/** 5-ish round ticks from 0 to at least `max`. */
function ticks(max: number): number[] {
  const raw = max / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = 0; v <= max + step * 0.001; v += step) out.push(Number(v.toPrecision(6)));
  if (out[out.length - 1]! < max) out.push(Number((out[out.length - 1]! + step).toPrecision(6)));
  return out;
}

export function mediaChart(steps: MediaStepResult[], refs: Reference[], title: string, marginalCpuPerCall?: number): string {
  const pts = steps.filter((s) => s.established > 0);
  const maxN = Math.max(10, ...pts.map((s) => s.calls));
  const xTicks = ticks(maxN);
  const xMax = xTicks[xTicks.length - 1]!;
  const cpuMax = Math.max(...pts.map((s) => s.gateway.cpuPercentPerCall), ...refs.map((r) => r.cpuPercentPerCall), marginalCpuPerCall ?? 0, 0.1) * 1.1;
  const yTicks = ticks(cpuMax);
  const yMax = yTicks[yTicks.length - 1]!;
  const lossMax = Math.max(2, ...pts.map((s) => s.loss.roundTripPercent)) * 1.1;
  const lTicks = ticks(lossMax);
  const lMax = lTicks[lTicks.length - 1]!;
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const x = (v: number) => M.left + (v / xMax) * pw;
  const y = (v: number) => M.top + ph - (v / yMax) * ph;
  const yl = (v: number) => M.top + ph - (v / lMax) * ph;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${W / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`);
  // grid and axes
  for (const t of yTicks) {
    out.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${y(t)}" y2="${y(t)}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${M.left - 8}" y="${y(t) + 4}" text-anchor="end" fill="#1f5fbf">${fmt(t)}</text>`);
  }
  for (const t of lTicks) out.push(`<text x="${M.left + pw + 8}" y="${yl(t) + 4}" fill="#c0392b">${fmt(t)}</text>`);
  for (const t of xTicks) {
    out.push(`<line x1="${x(t)}" x2="${x(t)}" y1="${M.top + ph}" y2="${M.top + ph + 5}" stroke="#333"/>`);
    out.push(`<text x="${x(t)}" y="${M.top + ph + 20}" text-anchor="middle">${fmt(t)}</text>`);
  }
  out.push(`<rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  out.push(`<text x="${M.left + pw / 2}" y="${H - 18}" text-anchor="middle">concurrent bridged G.711 calls (N)</text>`);
  out.push(`<text transform="translate(18 ${M.top + ph / 2}) rotate(-90)" text-anchor="middle" fill="#1f5fbf">gateway CPU per call (% of one core)</text>`);
  out.push(`<text transform="translate(${W - 16} ${M.top + ph / 2}) rotate(90)" text-anchor="middle" fill="#c0392b">round-trip packet loss (%)</text>`);
  // references
  refs.forEach((r, i) => {
    const yy = y(r.cpuPercentPerCall);
    out.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${yy}" y2="${yy}" stroke="${r.color}" stroke-dasharray="6 4"/>`);
    // Labels staggered along the line: the reference values sit close together.
    const lx = M.left + pw - 4 - i * (pw / 3);
    out.push(`<text x="${lx}" y="${yy - 4}" text-anchor="end" fill="${r.color}" font-size="11">${esc(`${r.label} ${r.cpuPercentPerCall}%`)}</text>`);
  });
  if (marginalCpuPerCall !== undefined && marginalCpuPerCall > 0) {
    const yy = y(marginalCpuPerCall);
    out.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${yy}" y2="${yy}" stroke="#1f5fbf" stroke-dasharray="2 3"/>`);
    out.push(`<text x="${M.left + pw / 2}" y="${yy - 4}" text-anchor="middle" fill="#1f5fbf" font-size="11">${esc(`marginal cost per call (slope over N) ${marginalCpuPerCall.toFixed(3)}%`)}</text>`);
  }
  const limit = yl(1);
  out.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${limit}" y2="${limit}" stroke="#c0392b" stroke-dasharray="3 3" opacity="0.6"/>`);
  out.push(`<text x="${M.left + 6}" y="${limit - 4}" fill="#c0392b" font-size="11" opacity="0.8">1% loss limit</text>`);
  // series
  const line = (coords: Array<[number, number]>, color: string) =>
    coords.length > 1 ? `<polyline fill="none" stroke="${color}" stroke-width="2" points="${coords.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(' ')}"/>` : '';
  const cpu = pts.map((s) => [x(s.calls), y(s.gateway.cpuPercentPerCall)] as [number, number]);
  const loss = pts.map((s) => [x(s.calls), yl(s.loss.roundTripPercent)] as [number, number]);
  out.push(line(cpu, '#1f5fbf'));
  out.push(line(loss, '#c0392b'));
  pts.forEach((s, i) => {
    const [cx, cy] = cpu[i]!;
    const [lx, ly] = loss[i]!;
    out.push(`<circle cx="${cx}" cy="${cy}" r="4" fill="#1f5fbf"><title>${s.calls} calls: ${s.gateway.cpuPercentPerCall}% of a core per call (${s.gateway.cpuPercentOfCore}% total)</title></circle>`);
    out.push(`<text x="${cx}" y="${cy - 8}" text-anchor="middle" fill="#1f5fbf" font-size="10">${fmt(s.gateway.cpuPercentPerCall)}</text>`);
    out.push(`<rect x="${lx - 3.5}" y="${ly - 3.5}" width="7" height="7" fill="${s.withinLimits ? '#c0392b' : '#000'}"><title>${s.calls} calls: ${s.loss.roundTripPercent}% round-trip loss${s.stopReason ? ` (${esc(s.stopReason)})` : ''}</title></rect>`);
  });
  // legend
  const lx = M.left + 10;
  out.push(`<line x1="${lx}" x2="${lx + 24}" y1="${M.top - 12}" y2="${M.top - 12}" stroke="#1f5fbf" stroke-width="2"/><text x="${lx + 30}" y="${M.top - 8}">CPU per call = gateway CPU / N</text>`);
  out.push(`<line x1="${lx + 240}" x2="${lx + 264}" y1="${M.top - 12}" y2="${M.top - 12}" stroke="#c0392b" stroke-width="2"/><text x="${lx + 270}" y="${M.top - 8}">round-trip loss</text>`);
  out.push('</svg>');
  return out.filter(Boolean).join('\n');
}
