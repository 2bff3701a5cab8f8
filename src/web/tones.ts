/**
 * Call progress tones made with WebAudio oscillators: no audio files to ship or fetch.
 * Browsers only let an AudioContext start after a user gesture, so `unlock()` is called from the
 * page's click handlers (Log in, Call, Answer); a tone asked for before that is silent.
 */

export type ToneName = 'ringback' | 'ringing';

interface Cadence {
  freqs: readonly number[];
  /** [on, off, on, off, ...] in seconds; the pattern repeats. */
  pattern: readonly number[];
  gain: number;
}

const CADENCES: Record<ToneName, Cadence> = {
  // North American ringback: 440 + 480 Hz, 2 s on, 4 s off.
  ringback: { freqs: [440, 480], pattern: [2, 4], gain: 0.08 },
  // A ringer for incoming calls: two short bursts, then a pause.
  ringing: { freqs: [480, 620], pattern: [0.4, 0.2, 0.4, 2], gain: 0.12 },
};

const DTMF_FREQS: Record<string, readonly [number, number]> = {
  '1': [697, 1209], '2': [697, 1336], '3': [697, 1477], A: [697, 1633],
  '4': [770, 1209], '5': [770, 1336], '6': [770, 1477], B: [770, 1633],
  '7': [852, 1209], '8': [852, 1336], '9': [852, 1477], C: [852, 1633],
  '*': [941, 1209], '0': [941, 1336], '#': [941, 1477], D: [941, 1633],
};

export class Tones {
  #ctx: AudioContext | undefined;
  #current: { name: ToneName; stop: () => void } | undefined;
  /** Called whenever the playing tone changes (for the status object). */
  onChange: (tone: ToneName | null) => void = () => {};

  get playing(): ToneName | null {
    return this.#current?.name ?? null;
  }

  /** Creates or resumes the AudioContext; call from a user gesture. */
  unlock(): void {
    try {
      this.#ctx ??= new AudioContext();
      if (this.#ctx.state === 'suspended') void this.#ctx.resume().catch(() => undefined);
    } catch {
      // No WebAudio: tones stay silent, calls work.
    }
  }

  play(name: ToneName): void {
    if (this.#current?.name === name) return;
    this.stop();
    const ctx = this.#ctx;
    const { freqs, pattern, gain } = CADENCES[name];
    const period = pattern.reduce((a, b) => a + b, 0);
    let stopAudio = () => {};
    if (ctx) {
      const out = ctx.createGain();
      out.gain.value = 0;
      out.connect(ctx.destination);
      const oscs = freqs.map((f) => {
        const o = ctx.createOscillator();
        o.frequency.value = f;
        o.connect(out);
        o.start();
        return o;
      });
      // Schedule the cadence a few periods ahead, topping up as time passes.
      let scheduledUntil = ctx.currentTime;
      const schedule = () => {
        while (scheduledUntil < ctx.currentTime + 2 * period) {
          let t = scheduledUntil;
          pattern.forEach((len, i) => {
            const on = i % 2 === 0;
            out.gain.setValueAtTime(on ? gain / freqs.length : 0, t);
            t += len;
          });
          scheduledUntil += period;
        }
      };
      schedule();
      const timer = setInterval(schedule, (period * 1000) / 2);
      stopAudio = () => {
        clearInterval(timer);
        out.gain.cancelScheduledValues(0);
        out.gain.value = 0;
        for (const o of oscs) o.stop();
        out.disconnect();
      };
    }
    this.#current = { name, stop: stopAudio };
    this.onChange(name);
  }

  stop(): void {
    const cur = this.#current;
    if (!cur) return;
    this.#current = undefined;
    cur.stop();
    this.onChange(null);
  }

  /** A short local DTMF beep as feedback for a dial pad key (the far end gets RFC 4733 events). */
  beep(key: string, ms = 120): void {
    const ctx = this.#ctx;
    const freqs = DTMF_FREQS[key.toUpperCase()];
    if (!ctx || !freqs) return;
    const out = ctx.createGain();
    out.gain.value = 0.05;
    out.connect(ctx.destination);
    const end = ctx.currentTime + ms / 1000;
    for (const f of freqs) {
      const o = ctx.createOscillator();
      o.frequency.value = f;
      o.connect(out);
      o.start();
      o.stop(end);
      o.onended = () => o.disconnect();
    }
    setTimeout(() => out.disconnect(), ms + 50);
  }

  close(): void {
    this.stop();
    void this.#ctx?.close().catch(() => undefined);
    this.#ctx = undefined;
  }
}
